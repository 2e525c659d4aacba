"""Hot reload of ``action: deny`` rules in a running ``sentinel run``, inside the BPF LSM VM.

One sentinel process; the rules file is rewritten and SIGHUP sent between steps:

1. start: directories A and KEEP protected;
2. reload to B and KEEP (a write loop on KEEP runs across it and must never succeed):
   writes to A succeed, writes to B fail with EPERM, one alert per denial;
3. reload with a deny rule that cannot be enforced (its path does not exist): rejected,
   B stays protected;
4. reload with no deny rules: enforcement lifted, programs still attached;
5. reload protecting A again: enforced without a new compile.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_armed
from tests.vm.guest.conftest import denials

BASE = Path(os.environ.get("TMPDIR", "/run/sentinel-vm")) / "run-reload"

DENY = """
- rule: {name}
  desc: nothing modifies this tree
  condition: >
    evt.type in (open, openat, openat2) and evt.is_open_write = true
    and fd.name pmatch ({path})
  output: "blocked write to %fd.name by %proc.name"
  priority: CRITICAL
  action: deny
"""
# Keeps the sensor's open family attached whatever the deny rules are.
WATCH = """
- rule: Watch reload marker
  desc: an ordinary alert rule
  condition: evt.type in (open, openat) and fd.name = {path}
  output: "marker opened by %proc.name"
  priority: NOTICE
"""

LOOP = """
import os, sys, time
path, stop = sys.argv[1], sys.argv[2]
ok = denied = 0
ready = False
while not os.path.exists(stop):
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except PermissionError:
        denied += 1
    else:
        os.close(fd)
        ok += 1
    if not ready:
        print("ready", flush=True)
        ready = True
    time.sleep(0.002)  # ~1 denial (one alert) per 2 ms: enough to cross the switch many times
print(ok, denied)
"""


@dataclass
class Run:
    proc: subprocess.Popen[str]
    rules: Path
    a: Path
    b: Path
    keep: Path
    marker: Path
    lsm_before: int
    alerts: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    stderr: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def write_rules(self, *protect: tuple[str, Path]) -> None:
        text = WATCH.format(path=self.marker)
        for name, path in protect:
            text += DENY.format(name=name, path=path)
        tmp = self.rules.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.rules)

    def reload(self, expect: str, timeout: float = 300) -> str:
        """SIGHUP, then wait for a new stderr line containing ``expect``."""
        with self.lock:
            start = len(self.stderr)
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for line in self.stderr[start:]:
                    if expect in line:
                        return line
            time.sleep(0.05)
        raise AssertionError(f"no {expect!r} after SIGHUP:\n" + "".join(self.stderr[-30:]))

    def deny_alerts(self, wait: float = 3.0) -> list[dict[str, Any]]:
        return denials(self.alerts, wait)

    def drain(self, quiet: float = 2.0, timeout: float = 180.0) -> int:
        """Consume alerts until none came for ``quiet`` seconds; returns how many."""
        n = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.alerts.get(timeout=quiet)
                n += 1
            except queue.Empty:
                return n
        raise AssertionError("alerts never stopped coming")


def _lsm_progs() -> int:
    res = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True, check=False)
    return sum(1 for line in res.stdout.splitlines() if " lsm " in line)


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _writable(path: Path) -> bool:
    try:
        path.write_text("written\n")
    except PermissionError:
        return False
    return True


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    shutil.rmtree(BASE, ignore_errors=True)
    dirs = {n: BASE / n for n in ("a", "b", "keep")}
    for d in dirs.values():
        d.mkdir(parents=True)
        (d / "data.txt").write_text("original\n")
    rules = BASE / "deny.yaml"
    cfg = BASE / "sentinel.yaml"
    cfg.write_text(f'rules: [{rules}]\nmetrics_address: ""\nspool:\n  dir: {BASE / "spool"}\n')
    r = Run(
        proc=None,  # type: ignore[arg-type]
        rules=rules,
        a=dirs["a"],
        b=dirs["b"],
        keep=dirs["keep"],
        marker=BASE / "marker",
        lsm_before=_lsm_progs(),
    )
    r.write_rules(("Protect A", r.a), ("Protect KEEP", r.keep))
    r.proc = subprocess.Popen(
        [sys.executable, "-m", "sentinel", "run", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    armed = threading.Event()

    def read_out() -> None:
        assert r.proc.stdout is not None
        for line in r.proc.stdout:
            if line.startswith("{"):
                r.alerts.put(json.loads(line))

    def read_err() -> None:
        assert r.proc.stderr is not None
        for line in r.proc.stderr:
            with r.lock:
                r.stderr.append(line)
            if '"armed"' in line:  # the structlog JSON record {"event": "armed", ...}
                armed.set()

    threading.Thread(target=read_out, daemon=True).start()
    threading.Thread(target=read_err, daemon=True).start()
    wait_armed(r.proc, armed, 600, r.stderr)
    try:
        yield r
    finally:
        out = os.environ.get("SENTINEL_VM_OUT")
        if out and r.proc.poll() is None:
            # Peak RSS of the long-lived process (bench figure for the report, not asserted).
            Path(out, "run-reload-rss.txt").write_text(f"vmhwm_kib={_peak_rss_kib(r.proc.pid)}\n")
        if r.proc.poll() is None:
            r.proc.terminate()
            try:
                r.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                r.proc.kill()


def test_start_protects_a(run: Run) -> None:
    assert _lsm_progs() > run.lsm_before, "no LSM programs attached"
    assert not _writable(run.a / "data.txt")
    assert _writable(run.b / "data.txt")
    assert [a["rule"] for a in run.deny_alerts()] == ["Protect A"]


def test_reload_moves_protection_from_a_to_b_without_a_gap(run: Run) -> None:
    stop = BASE / "stop-loop"
    loop = subprocess.Popen(
        [sys.executable, "-c", LOOP, str(run.keep / "data.txt"), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert loop.stdout is not None
        assert loop.stdout.readline() == "ready\n"  # hammering KEEP before the reload starts
        time.sleep(0.5)
        run.write_rules(("Protect B", run.b), ("Protect KEEP", run.keep))
        line = run.reload("deny policy reloaded")
        assert '"generation": 1' in line, line
        time.sleep(1.0)
    finally:
        stop.touch()
        out, _ = loop.communicate(timeout=60)
        stop.unlink()
    ok, denied = (int(x) for x in out.split())
    assert ok == 0, f"{ok} writes to a path protected before and after the reload succeeded"
    assert denied > 10, denied
    assert (run.keep / "data.txt").read_text() == "original\n"
    run.drain()  # the loop's denials (some may have been lost from the ring: counted, logged)
    # Now A is writable and B is not; each denial is one alert.
    assert _writable(run.a / "data.txt")
    assert not _writable(run.b / "data.txt")
    assert not _writable(run.b / "new.txt")
    alerts = run.deny_alerts()
    assert [a["rule"] for a in alerts] == ["Protect B", "Protect B"], alerts
    assert {a["output_fields"]["fd.name"] for a in alerts} == {
        str(run.b / "data.txt"),
        str(run.b / "new.txt"),
    }


def test_reload_with_unenforceable_deny_rule_keeps_old_policy(run: Run) -> None:
    run.drain()
    run.write_rules(("Protect B", run.b), ("Protect missing", BASE / "does-not-exist"))
    line = run.reload("reload rejected")
    assert "does-not-exist" in line, line
    assert not _writable(run.b / "data.txt")
    assert _writable(run.a / "data.txt")
    assert [a["rule"] for a in run.deny_alerts()] == ["Protect B"]


def test_reload_without_deny_rules_lifts_enforcement(run: Run) -> None:
    run.drain()
    run.write_rules()
    run.reload("deny policy lifted")
    assert _lsm_progs() > run.lsm_before, "programs stay attached with an empty policy"
    assert _writable(run.b / "data.txt")
    assert _writable(run.keep / "data.txt")
    assert run.deny_alerts(wait=1.0) == []


def test_reload_protects_again_without_recompiling(run: Run) -> None:
    run.drain()
    run.write_rules(("Protect A again", run.a))
    t0 = time.monotonic()
    run.reload("deny policy reloaded")
    took = time.monotonic() - t0
    assert not _writable(run.a / "data.txt")
    assert _writable(run.b / "data.txt")
    assert [a["rule"] for a in run.deny_alerts()] == ["Protect A again"]
    assert not any("attaching BPF LSM" in ln for ln in run.stderr)
    print(f"reload to a new deny policy took {took:.2f} s (VM, emulated)")
