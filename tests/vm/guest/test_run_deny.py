"""``sentinel run`` with ``action: deny`` rules, inside the BPF LSM VM.

The whole path: rules YAML -> deny compiler -> BPF LSM policy -> hooks return -EPERM -> one
alert with ``"action": "deny"`` per denial on stdout. Then stopping Sentinel lifts enforcement.
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_armed
from tests.vm.guest.conftest import denials, follow

BASE = Path(os.environ.get("TMPDIR", "/run/sentinel-vm")) / "run-deny"

RULES = """
- rule: Protect run-deny data
  desc: nothing modifies the protected tree
  condition: >
    evt.type in (open, openat, openat2) and evt.is_open_write = true
    and fd.name pmatch ({protected})
  output: "blocked write to %fd.name by %proc.name"
  priority: CRITICAL
  action: deny
- rule: Forbidden tool
  desc: this binary never runs
  condition: evt.type in (execve, execveat) and proc.exepath = {tool}
  output: "blocked exec of %proc.exepath"
  priority: CRITICAL
  action: deny
- rule: Forbidden port
  desc: no connection to this port
  condition: evt.type = connect and fd.sip = 127.0.0.1 and fd.sport = {port}
  output: "blocked connect to %fd.sip:%fd.sport"
  priority: CRITICAL
  action: deny
"""


@dataclass
class Run:
    proc: subprocess.Popen[str]
    protected: Path
    tool: Path
    port: int
    listener: socket.socket
    alerts: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    stderr: list[str] = field(default_factory=list)

    def deny_alerts(self, wait: float = 3.0) -> list[dict[str, Any]]:
        return denials(self.alerts, wait)


def _lsm_progs() -> int:
    res = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True, check=False)
    return sum(1 for line in res.stdout.splitlines() if " lsm " in line)


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    shutil.rmtree(BASE, ignore_errors=True)
    protected = BASE / "protected"
    protected.mkdir(parents=True)
    (protected / "data.txt").write_text("original\n")
    tool = BASE / "tool"
    shutil.copy2("/bin/true", tool)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    rules = BASE / "deny.yaml"
    rules.write_text(RULES.format(protected=protected, tool=tool, port=port))
    cfg = BASE / "sentinel.yaml"
    cfg.write_text(f'rules: [{rules}]\nmetrics_address: ""\nspool:\n  dir: {BASE / "spool"}\n')
    before = _lsm_progs()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sentinel", "run", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    r = Run(proc, protected, tool, port, listener)
    armed = follow(proc, r.alerts, r.stderr)
    wait_armed(proc, armed, 600, r.stderr)  # bcc compiles twice (sensor, LSM) under emulation
    assert _lsm_progs() > before, "no LSM programs attached"
    r.before = before  # type: ignore[attr-defined]
    try:
        yield r
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()


def test_write_to_protected_file_is_denied_with_one_alert(run: Run) -> None:
    target = run.protected / "data.txt"
    with pytest.raises(PermissionError):
        target.write_text("tampered\n")
    with pytest.raises(PermissionError):
        (run.protected / "new.txt").write_text("x")
    assert target.read_text() == "original\n"
    alerts = run.deny_alerts()
    assert len(alerts) == 2, alerts
    assert {a["rule"] for a in alerts} == {"Protect run-deny data"}
    assert all(a["priority"] == "Critical" for a in alerts)


def test_exec_of_forbidden_binary_is_denied(run: Run) -> None:
    with pytest.raises(PermissionError):
        subprocess.run([str(run.tool)], check=False)
    assert subprocess.run(["/bin/true"], check=False).returncode == 0
    alerts = run.deny_alerts()
    assert [a["rule"] for a in alerts] == ["Forbidden tool"]


def test_connect_to_forbidden_port_is_denied(run: Run) -> None:
    with socket.socket() as s, pytest.raises(PermissionError):
        s.connect(("127.0.0.1", run.port))
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen(1)
    with socket.socket() as s:
        s.connect(other.getsockname())  # another port still works
    other.close()
    alerts = run.deny_alerts()
    assert [a["rule"] for a in alerts] == ["Forbidden port"]


def test_stopping_sentinel_lifts_enforcement(run: Run) -> None:
    run.proc.terminate()
    run.proc.wait(timeout=120)
    assert _lsm_progs() == run.before  # type: ignore[attr-defined]
    target = run.protected / "data.txt"
    target.write_text("changed after stop\n")
    assert target.read_text() == "changed after stop\n"
