"""Per-Falco-event-type counters of the real sensor with its prefilter: open vs openat,
execve vs execveat each show up under their own type, in ``Sensor.counts()``, in the events
user space sees (``evt.type``) and in the Prometheus scrape (``evt_type`` label).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sentinel.compiler import compile_rules
from sentinel.engine import Engine
from sentinel.events import decode
from sentinel.events.common import FLAG_TABLE_ONLY
from sentinel.loader import load_rules
from tests.kernel.conftest import require_root
from tests.ops.test_metrics import scrape, value

pytestmark = pytest.mark.kernel

DIR = Path("/tmp/sntl-cnt")
WATCHED = DIR / "watched"
BINARY = DIR / "sntl-exat"  # a copy of /bin/true whose comm a rule watches
STORM = 5000
SYS_OPEN, SYS_EXECVEAT = 2, 322  # x86_64 (the sensor's only architecture)

RULES = f"""
- rule: Watched open
  desc: d
  condition: evt.type in (open, openat) and fd.name startswith {WATCHED}/
  output: o
  priority: INFO
- rule: Watched exec
  desc: d
  condition: evt.type in (execve, execveat) and proc.name = sntl-exat
  output: o
  priority: INFO
"""

# execveat(dirfd, name, argv, envp, 0) through syscall(2) (glibc has no wrapper): a file named
# relative to a directory fd, which the kernel can tell from execve at sched_process_exec (an
# execveat with AT_FDCWD cannot be told apart there; see exec_type() in bpf/sensor/exec.h).
EXECVEAT = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "argv = (ctypes.c_char_p * 2)(b'sntl-exat', None)\n"
    "envp = (ctypes.c_char_p * 1)(None)\n"
    "d = os.open(os.path.dirname(sys.argv[1]), os.O_RDONLY | os.O_DIRECTORY)\n"
    f"libc.syscall({SYS_EXECVEAT}, d, os.path.basename(sys.argv[1]).encode(), argv, envp, 0)\n"
    "sys.exit(3)\n"
)


@pytest.fixture(scope="module")
def sensor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, list[bytes]]]:
    require_root()
    from sentinel.app.sensor import FilteredSensor

    WATCHED.mkdir(parents=True, exist_ok=True)
    (WATCHED / "f").write_text("x")
    shutil.copy("/bin/true", BINARY)
    rules = tmp_path_factory.mktemp("rules") / "rules.yaml"
    rules.write_text(RULES)
    engine = Engine(compile_rules(load_rules([rules])))
    got: list[bytes] = []
    s = FilteredSensor([(r.name, r.expr) for r in engine.rules], event_types=engine.event_types())
    s.start(got.append)
    try:
        yield s, got
    finally:
        s.close()


def _storm_in_child(path: str, n: int, use_open_syscall: bool) -> int:
    """``n`` opens of ``path`` by a child, with openat (os.open) or the legacy open(2)."""
    pid = os.fork()
    if pid == 0:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            raw = path.encode()
            for _ in range(n):
                if use_open_syscall:
                    fd = libc.syscall(SYS_OPEN, raw, os.O_RDONLY)
                    if fd >= 0:
                        os.close(fd)
                else:
                    with contextlib.suppress(OSError):
                        os.close(os.open(path, os.O_RDONLY))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return pid


def _delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> Any:
    return {t: {k: after[t][k] - before[t][k] for k in after[t]} for t in after}


def _types_of(s: Any, got: list[bytes], pid: int, family: str) -> list[str]:
    """The event types that reached rules (not the execs sent for the process table alone)."""
    from sentinel.enrichment.live import Enricher

    s.drain()
    enricher = Enricher()
    recs = [(r, decode(r)) for r in got]
    return [
        str(enricher.event(raw).get("evt.type"))
        for raw, rec in recs
        if rec.pid == pid
        and rec.evt.family is not None
        and rec.evt.family.name == family
        and not rec.flags & FLAG_TABLE_ONLY
    ]


def test_open_and_openat_storms_are_counted_under_their_own_type(sensor: Any) -> None:
    s, got = sensor
    s.drain()
    got.clear()
    before = s.counts()
    at_pid = _storm_in_child("/usr/lib/os-release", STORM, use_open_syscall=False)
    mid = s.counts()
    open_pid = _storm_in_child("/usr/lib/os-release", STORM, use_open_syscall=True)
    after = s.counts()
    first, second = _delta(before, mid), _delta(mid, after)
    # the openat storm: dropped in the kernel as openat, and not counted as open
    assert first["openat"]["filtered"] >= STORM, first["openat"]
    assert first["open"]["filtered"] + first["open"]["passed"] < STORM, first["open"]
    # the legacy open(2) storm: dropped as open (glibc itself never calls open(2))
    assert second["open"]["filtered"] >= STORM, second["open"]
    assert _types_of(s, got, at_pid, "file") == []
    assert _types_of(s, got, open_pid, "file") == []
    # a watched path passes under its own type, and user space sees that type
    before = s.counts()
    at_pid = _storm_in_child(str(WATCHED / "f"), 50, use_open_syscall=False)
    open_pid = _storm_in_child(str(WATCHED / "f"), 30, use_open_syscall=True)
    d = _delta(before, s.counts())
    assert d["openat"]["passed"] >= 50 and d["open"]["passed"] >= 30, d
    assert _types_of(s, got, at_pid, "file") == ["openat"] * 50
    assert _types_of(s, got, open_pid, "file") == ["open"] * 30
    assert sum(c["lost"] for c in s.counts().values()) == 0


def test_execve_and_execveat_are_counted_under_their_own_type(sensor: Any) -> None:
    s, got = sensor
    s.drain()
    got.clear()
    before = s.counts()
    plain = [subprocess.Popen([str(BINARY)]) for _ in range(5)]
    via_at = [subprocess.Popen(["/usr/bin/python3", "-c", EXECVEAT, str(BINARY)]) for _ in range(5)]
    for p in plain + via_at:
        assert p.wait(10) == 0  # execveat worked (else the script exits 3)
    others = [subprocess.Popen(["/bin/true"]) for _ in range(20)]
    for p in others:
        assert p.wait(10) == 0
    d = _delta(before, s.counts())
    assert d["execveat"]["passed"] >= 5, d["execveat"]
    # execve: our 5 + 5 python interpreters + 20 /bin/true, some of them dropped by the filter
    assert d["execve"]["passed"] + d["execve"]["filtered"] >= 30, d["execve"]
    assert d["execve"]["filtered"] >= 20, d["execve"]
    for p in plain:
        assert _types_of(s, got, p.pid, "exec") == ["execve"]
    for p in via_at:
        assert _types_of(s, got, p.pid, "exec") == ["execveat"]  # the interpreter's was dropped
    for p in others:
        assert _types_of(s, got, p.pid, "exec") == []


def test_scrape_shows_the_kernel_counters_per_evt_type(sensor: Any) -> None:
    from sentinel.metrics import Metrics, MetricsServer, sensor_collector

    s, _got = sensor
    _storm_in_child("/usr/lib/os-release", 100, use_open_syscall=True)
    m = Metrics()
    m.collect_from(sensor_collector(s))
    with MetricsServer(m, "127.0.0.1", 0) as srv:
        status, _ctype, text = scrape(srv.url + "/metrics")
    assert status == 200
    counts = s.counts()
    filtered = value(text, "sentinel_kernel_filtered_events_total", evt_type="open")
    assert filtered is not None and filtered >= 100
    assert filtered <= counts["open"]["filtered"]
    from sentinel.events import EVENT_TYPES

    for t in (t.name for t in EVENT_TYPES):
        for key in ("filtered", "passed", "lost"):
            assert value(text, f"sentinel_kernel_{key}_events_total", evt_type=t) is not None
    assert value(text, "sentinel_kernel_lost_events_total", evt_type="openat") == 0
