"""The sensor's own cost on /metrics, for real: ``sentinel run`` on the live kernel, opens made
by a child process, the endpoint scraped over HTTP before and after.

With ``bpf_stats`` on, the run count of the program that handled the opens
(``sys_exit_openat``) must grow by at least the opens made, its run time must grow, and the
switch must be the fd Sentinel holds (an ``anon_inode:bpf-stats`` among its fds), not the
machine-wide sysctl, which it must leave as it found it. With the switch off, Sentinel holds
no such fd and exports no per-program counters (zeros would read as 'costs nothing').
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sentinel.kernel.bpfstats import sysctl_enabled
from tests.helpers import log_records, sentinel_env
from tests.kernel.conftest import require_root
from tests.ops.test_metrics import value

pytestmark = pytest.mark.kernel

OPENS = 2000
PROGRAM = {"component": "sensor", "program": "sys_exit_openat"}
RULES = """
- rule: Marker Open
  desc: an open of this test's file (keeps the openat program attached)
  condition: evt.type in (open, openat) and fd.name = "{path}"
  output: opened %fd.name
  priority: Warning
"""


@contextmanager
def sentinel(tmp: Path, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A ``sentinel run`` with metrics on a free loopback port: (process, metrics URL)."""
    rules = tmp / "rules.yaml"
    rules.write_text(RULES.format(path=tmp / "marker"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sentinel", "run", "--rules", str(rules)],
        env=sentinel_env({**os.environ, **env}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    armed = threading.Event()

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if any(r.get("event") == "armed" for r in log_records(line)):
                armed.set()

    threading.Thread(target=read_err, daemon=True).start()
    try:
        if not armed.wait(120):
            pytest.fail(f"sentinel did not arm: {''.join(lines)}")
        started = [r for r in log_records(lines) if r.get("event") == "started"]
        assert started and started[0]["metrics"], lines
        yield proc, str(started[0]["metrics"])
    finally:
        proc.terminate()
        proc.wait(60)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text: str = resp.read().decode()
    return text


def make_opens(path: Path, n: int) -> None:
    """n opens of ``path`` by a child process (the sensor drops its own process' events only;
    the program runs either way)."""
    code = f"import sys\nfor _ in range({n}): open({str(path)!r}).close()"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def stats_fds(pid: int) -> list[str]:
    """The process' fds that are BPF statistics switches (BPF_ENABLE_STATS returns these)."""
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target == "anon_inode:bpf-stats":
            out.append(target)
    return out


def test_metrics_count_the_runs_of_the_program_that_handled_the_events(tmp_path: Path) -> None:
    require_root()
    marker = tmp_path / "marker"
    marker.write_text("x")
    sysctl_before = sysctl_enabled()
    with sentinel(tmp_path, {"SENTINEL_BPF_STATS": "true"}) as (proc, url):
        assert len(stats_fds(proc.pid)) == 1, "bpf_stats must be held by an fd"
        assert sysctl_enabled() == sysctl_before, "the sysctl must be left alone"
        before = scrape(url)
        make_opens(marker, OPENS)
        after = scrape(url)
    assert value(before, "sentinel_bpf_stats_enabled") == 1
    runs0 = value(before, "sentinel_bpf_program_runs_total", **PROGRAM)
    runs1 = value(after, "sentinel_bpf_program_runs_total", **PROGRAM)
    secs0 = value(before, "sentinel_bpf_program_run_seconds_total", **PROGRAM)
    secs1 = value(after, "sentinel_bpf_program_run_seconds_total", **PROGRAM)
    assert runs0 is not None and runs1 is not None, after
    assert secs0 is not None and secs1 is not None, after
    # every openat exit of the machine runs it; the child's alone are OPENS
    assert runs1 - runs0 >= OPENS, (runs0, runs1)
    assert secs1 > secs0
    # the sensor's own event counters agree that the opens went through that program
    seen = [
        sum(
            value(t, f"sentinel_kernel_{k}_events_total", evt_type="openat") or 0
            for k in ("filtered", "passed")
        )
        for t in (before, after)
    ]
    assert seen[1] - seen[0] >= OPENS, seen
    assert runs1 - runs0 >= seen[1] - seen[0]  # Sentinel's own opens run it too, uncounted
    # the other programs are listed too, each once
    names = [
        line.split("{", 1)[1].split("}", 1)[0]
        for line in after.splitlines()
        if line.startswith("sentinel_bpf_program_runs_total{")
    ]
    assert len(names) == len(set(names)) > 1
    assert 'component="sensor",program="sched_process_exec"' in names


def test_switch_off_holds_nothing_and_exports_no_counts(tmp_path: Path) -> None:
    require_root()
    marker = tmp_path / "marker"
    marker.write_text("x")
    with sentinel(tmp_path, {"SENTINEL_BPF_STATS": "false"}) as (proc, url):
        assert stats_fds(proc.pid) == []
        make_opens(marker, 100)
        text = scrape(url)
    assert value(text, "sentinel_bpf_stats_enabled") == 0
    assert "sentinel_bpf_program_runs_total" not in text
    assert "sentinel_bpf_program_run_seconds_total" not in text
    # the sensor itself runs as before: its own counters saw the opens
    seen = sum(
        value(text, f"sentinel_kernel_{k}_events_total", evt_type="openat") or 0
        for k in ("filtered", "passed")
    )
    assert seen >= 100
    assert value(text, "sentinel_rules_loaded") == 1
