"""``proc.exepath`` as a kernel dimension of execs, in the real sensor with its prefilter.

Real binaries (copies of /bin/true) are executed at varied paths: under a watched prefix and
beside it, exact names, a suffix, a hidden directory, a symlink (the path is the resolved
one), a path longer than an exact-match key, and one deeper than the kernel's walk (which the
kernel cannot judge, so it keeps it). For each exec, whether its record reached user space
must equal the Python model's verdict (:func:`sentinel.prefilter.tables.passes`), the
path user space reports must be the real path, an exec under the watched prefix must alert,
and the kernel's counter must show the others dropped.
"""

from __future__ import annotations

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
from sentinel.events.exec import exepath
from sentinel.loader import load_rules
from sentinel.prefilter.model import KernelView, passes
from sentinel.prefilter.tables import KernelTables
from tests.kernel.conftest import require_root

pytestmark = pytest.mark.kernel

ROOT = Path("/tmp/sntl-exe")
LONG = ROOT / ("l" * 200) / ("m" * 60) / "tool"  # > 255 bytes: beyond an exact-match key
LONG2 = ROOT / ("l" * 200) / ("n" * 60) / "tool"  # differs within the first 252 bytes
DEEP = ROOT.joinpath(*["d"] * 20, "tool")  # deeper than the BPF walk (WALK_DEPTH 16)

RULES = [
    f"evt.type in (execve, execveat) and proc.exepath startswith {ROOT}/opt-x/",
    f"evt.type = execve and proc.exepath in ({ROOT}/bin/nc, {ROOT}/.hid/nc)",
    "evt.type = execve and proc.exepath endswith /ncat and user.uid = 0",
    f"evt.type = execve and proc.exepath pmatch ({ROOT}/tree)",
    f"evt.type = execve and proc.exepath = {LONG}",
    f"evt.type = execve and proc.exepath glob '{ROOT}/gl*/x'",
]

# (path executed, path of the file behind it if a symlink)
BINARIES = [
    ROOT / "opt-x" / "tool",
    ROOT / "opt-x" / "sub" / "deeper",
    ROOT / "opt-xy" / "tool",
    ROOT / "bin" / "nc",
    ROOT / "bin" / "nc2",
    ROOT / ".hid" / "nc",
    ROOT / "bin" / "ncat",
    ROOT / "bin" / "xncat",
    ROOT / "tree" / "a",
    ROOT / "treeish" / "a",
    ROOT / "glob1" / "x",
    ROOT / "glob1" / "y",
    LONG,
    LONG2,
    DEEP,
]
LINK = ROOT / "link-to-tool"  # -> opt-x/tool: the exec's path is the link's target


def _install() -> None:
    for p in [*BINARIES]:
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy("/bin/true", p)
    if LINK.is_symlink() or LINK.exists():
        LINK.unlink()
    LINK.symlink_to(ROOT / "opt-x" / "tool")


@pytest.fixture(scope="module")
def sensor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, list[bytes], Any]]:
    require_root()
    from sentinel.app.sensor import FilteredSensor

    _install()
    rules = tmp_path_factory.mktemp("rules") / "rules.yaml"
    rules.write_text(
        "".join(
            f"- rule: R{i}\n  desc: d\n  condition: >-\n    {c}\n  output: o\n  priority: INFO\n"
            for i, c in enumerate(RULES)
        )
    )
    engine = Engine(compile_rules(load_rules([rules])), matching="all")
    got: list[bytes] = []
    s = FilteredSensor([(r.name, r.expr) for r in engine.rules], event_types=engine.event_types())
    tables = s.tables
    assert not tables.types["execve"].pass_all, tables.types["execve"].reason
    s.start(got.append)
    try:
        yield s, got, (engine, tables)
    finally:
        s.close()


def _kernel_path(p: Path) -> str | None:
    """What the kernel's walk yields for the executable (None: too deep to judge)."""
    real = os.path.realpath(p)
    return None if real.count("/") > 16 else real


def test_exec_verdicts_match_the_model_and_paths_match_user_space(sensor: Any) -> None:
    s, got, (_engine, tables) = sensor
    assert isinstance(tables, KernelTables)
    s.drain()
    got.clear()
    before = s.counts()["execve"]
    procs = [(p, subprocess.Popen([str(p)])) for p in [*BINARIES, LINK]]
    for _p, proc in procs:
        assert proc.wait(10) == 0
    s.drain()
    after = s.counts()["execve"]
    assert after["lost"] == before["lost"]
    by_pid: dict[int, list[Any]] = {}
    for raw in got:
        r = decode(raw)
        if r.evt.name in ("execve", "execveat"):
            by_pid.setdefault(r.pid, []).append(r)
    expected, arrived = {}, {}
    for p, proc in procs:
        kv = KernelView("execve", p.name[:15], os.getuid(), path=_kernel_path(p))
        expected[str(p)] = passes(tables, kv)
        every = by_pid.get(proc.pid, [])
        assert len(every) == 1, p  # dropped or not, each exec reaches the process table
        recs = [r for r in every if not r.flags & FLAG_TABLE_ONLY]
        arrived[str(p)] = bool(recs)
        for r in recs:
            if kv.path is not None:
                assert exepath(r) == kv.path  # the very string the kernel judged
    assert arrived == expected
    # both verdicts on every kind of check
    assert expected[str(ROOT / "opt-x" / "tool")] and not expected[str(ROOT / "opt-xy" / "tool")]
    assert expected[str(ROOT / "bin" / "nc")] and not expected[str(ROOT / "bin" / "nc2")]
    assert expected[str(ROOT / "bin" / "ncat")] and not expected[str(ROOT / "bin" / "xncat")]
    # pmatch is tested in the kernel as a string prefix (the directory boundary is left to
    # user space): "treeish" is kept, an over-approximation
    assert expected[str(ROOT / "tree" / "a")] and expected[str(ROOT / "treeish" / "a")]
    assert expected[str(ROOT / "glob1" / "x")]
    assert expected[str(LONG)] and not expected[str(LONG2)]
    assert expected[str(LINK)] and expected[str(DEEP)]  # resolved link; too deep: kept
    dropped = sum(1 for v in expected.values() if not v)
    assert after["filtered"] - before["filtered"] >= dropped


def test_prefix_rule_alerts_while_the_kernel_drops_other_execs(sensor: Any) -> None:
    from sentinel.enrichment.live import Enricher

    s, got, (engine, _tables) = sensor
    s.drain()
    got.clear()
    before = s.counts()["execve"]
    tool = subprocess.Popen([str(ROOT / "opt-x" / "tool")])
    others = [subprocess.Popen(["/bin/true"]) for _ in range(50)]
    for proc in [tool, *others]:
        assert proc.wait(10) == 0
    s.drain()
    after = s.counts()["execve"]
    assert after["filtered"] - before["filtered"] >= 50
    pids = {p.pid for p in others}
    execs = [r for r in map(decode, got) if r.pid in pids and r.evt.name == "execve"]
    assert len(execs) == 50 and all(r.flags & FLAG_TABLE_ONLY for r in execs)  # table only
    enricher = Enricher()
    alerts, paths = [], []
    for raw in got:
        ev = enricher.event(raw)
        if ev.rec.pid == tool.pid and ev.rec.evt.name == "execve":
            paths.append(ev.get("proc.exepath"))
            alerts += engine.process(ev)
    assert paths == [str(ROOT / "opt-x" / "tool")]
    assert [a.rule for a in alerts] == ["R0"]
