"""``sentinel run`` with deny rules on this host, where BPF LSM programs do not load.

``enforcement.unavailable: refuse`` (the default) must refuse to start, saying why and how to
enable BPF LSM; ``alert`` must run the deny rules as alerts marked ``deny-unenforced``. (The
enforcing path is tested in the BPF LSM VM, tests/vm.)
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.kernel.conftest import require_root

pytestmark = pytest.mark.kernel
REPO = Path(__file__).resolve().parents[2]

RULE = """
- rule: Protect sntl dir
  desc: nobody writes below the protected directory
  condition: >
    evt.type in (open, openat, openat2) and evt.is_open_write = true
    and fd.name pmatch ({dir})
  output: "write to protected %fd.name by %proc.name"
  priority: CRITICAL
  action: deny
"""


def _write(tmp_path: Path, protected: Path, unavailable: str | None) -> tuple[Path, Path]:
    rules = tmp_path / "deny.yaml"
    rules.write_text(RULE.format(dir=protected))
    cfg = tmp_path / "sentinel.yaml"
    lines = [
        f"rules: [{rules}]",
        'metrics_address: ""',
        f"spool:\n  dir: {tmp_path / 'spool'}",
    ]
    if unavailable:
        lines.append(f"enforcement:\n  unavailable: {unavailable}")
    cfg.write_text("\n".join(lines) + "\n")
    return rules, cfg


def test_refuses_to_start_without_bpf_lsm(tmp_path: Path) -> None:
    require_root()
    _rules, cfg = _write(tmp_path, tmp_path / "protected", None)
    res = subprocess.run(
        [sys.executable, "-m", "sentinel", "run", "--config", str(cfg), "--duration", "5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1, res.stderr
    assert "BPF LSM is unavailable" in res.stderr
    assert "lsm=" in res.stderr and "enforcement.unavailable: alert" in res.stderr
    assert res.stdout == ""


def test_alert_mode_reports_deny_unenforced(tmp_path: Path) -> None:
    require_root()
    protected = tmp_path / "protected"
    protected.mkdir()
    _rules, cfg = _write(tmp_path, protected, "alert")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sentinel", "run", "--config", str(cfg), "--duration", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        deadline = time.monotonic() + 60
        err: list[str] = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            err.append(line)
            if "armed" in line:
                break
        else:
            raise AssertionError("never armed: " + "".join(err))
        assert any("NOT enforced" in e for e in err), err
        target = protected / "f.txt"
        target.write_text("allowed: not enforced here")  # the write succeeds
        assert target.read_text() == "allowed: not enforced here"
        os.sync()
        alert = None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("{"):
                a = json.loads(line)
                if a["rule"] == "Protect sntl dir" and a["output_fields"]["fd.name"] == str(target):
                    alert = a
                    break
        assert alert is not None
        assert alert["action"] == "deny-unenforced"
        assert alert["priority"] == "Critical"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- reload: the same rules as at start --------------------------------------------------------

WATCH = """
- rule: Watch sntl dir
  desc: an ordinary alert on writes below the directory
  condition: >
    evt.type in (open, openat, openat2) and evt.is_open_write = true
    and fd.name pmatch ({dir})
  output: "write to watched %fd.name by %proc.name"
  priority: WARNING
"""


class LiveRun:
    """``sentinel run`` in the background: alerts and stderr lines collected by threads."""

    def __init__(self, cfg: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sentinel", "run", "--config", str(cfg), "--duration", "120"],
            cwd=REPO,  # this checkout's sentinel, whatever directory an earlier test left us in
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.alerts: queue.Queue[dict[str, object]] = queue.Queue()
        self.err: list[str] = []
        self.skipped: list[dict[str, object]] = []  # alerts alert_for() passed over
        threading.Thread(target=self._out, daemon=True).start()
        threading.Thread(target=self._err, daemon=True).start()
        self.wait_err("armed", since=0, timeout=90)

    def _out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.alerts.put(json.loads(line))

    def _err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)

    def wait_err(self, text: str, since: int, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.err[since:]:
                if text in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} on stderr:\n" + "".join(self.err[-30:]))

    def reload(self, rules: Path, text: str, expect: str) -> str:
        rules.write_text(text)
        since = len(self.err)
        self.proc.send_signal(signal.SIGHUP)
        return self.wait_err(expect, since)

    def alert_for(self, path: Path, timeout: float = 20) -> dict[str, object]:
        """The next alert about ``path``; alerts about other files are skipped."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                a = self.alerts.get(timeout=0.5)
            except queue.Empty:
                continue
            fields = a["output_fields"]
            assert isinstance(fields, dict)
            if fields.get("fd.name") == str(path):
                return a
            self.skipped.append(a)
        raise AssertionError(f"no alert for {path}")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def test_kill_mode_kills_the_writer_and_alerts_with_action_kill(tmp_path: Path) -> None:
    """``enforcement.unavailable: kill``: the same deny rule, enforced by SIGKILL from a
    tracepoint program (what that does and does not stop: tests/kernel/test_kill.py)."""
    require_root()
    protected = tmp_path / "protected"
    protected.mkdir()
    target = protected / "f.txt"
    target.write_text("original\n")
    _rules, cfg = _write(tmp_path, protected, "kill")
    run = LiveRun(cfg)
    try:
        run.wait_err("enforced by killing", since=0)
        r = subprocess.run(["sh", "-c", f"exec 3>>{target}; echo alive"], capture_output=True)
        assert r.returncode == -signal.SIGKILL and r.stdout == b""
        assert target.read_text() == "original\n"
        alert = run.alert_for(target)
        assert (alert["rule"], alert["action"]) == ("Protect sntl dir", "kill")
        fields = alert["output_fields"]
        assert isinstance(fields, dict) and fields["proc.name"] == "sh"
        # Decided by the kill programs only: no second alert from the engine for that open.
        time.sleep(1.0)
        assert all(a["rule"] != "Protect sntl dir" for a in run.skipped)
        assert all(a["rule"] != "Protect sntl dir" for a in list(run.alerts.queue))
    finally:
        run.close()


def test_reload_adding_deny_rules_is_rejected_under_refuse(tmp_path: Path) -> None:
    require_root()
    protected = tmp_path / "protected"
    protected.mkdir()
    rules, cfg = _write(tmp_path, protected, None)
    rules.write_text(WATCH.format(dir=protected))
    run = LiveRun(cfg)
    try:
        line = run.reload(
            rules, WATCH.format(dir=protected) + RULE.format(dir=protected), "reload rejected"
        )
        assert "BPF LSM is unavailable" in line and "enforcement.unavailable: alert" in line
        run.wait_err("rules_reload_rejected", since=0)
        target = protected / "f.txt"
        target.write_text("the old rules still run")
        alert = run.alert_for(target)
        assert alert["rule"] == "Watch sntl dir" and alert["action"] == "alert"
        assert run.proc.poll() is None
        time.sleep(1.0)
        assert all(a["rule"] != "Protect sntl dir" for a in run.skipped)
        assert all(a["rule"] != "Protect sntl dir" for a in list(run.alerts.queue))
    finally:
        run.close()


def test_reload_follows_deny_rules_as_alerts_under_alert(tmp_path: Path) -> None:
    require_root()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    rules, cfg = _write(tmp_path, a, "alert")
    rules.write_text(WATCH.format(dir=tmp_path / "elsewhere"))  # no deny rule at start
    run = LiveRun(cfg)
    try:
        # First deny rules arrive by reload: they run as alerts, with the start-up warning.
        since = len(run.err)
        run.reload(rules, RULE.format(dir=a), "rules_reloaded")
        run.wait_err("NOT enforced", since)
        (a / "1.txt").write_text("not enforced here")
        alert = run.alert_for(a / "1.txt")
        assert alert["rule"] == "Protect sntl dir" and alert["action"] == "deny-unenforced"
        # Then they move from a to b.
        run.reload(rules, RULE.format(dir=b), "rules_reloaded")
        (a / "2.txt").write_text("no longer covered")
        (b / "2.txt").write_text("now covered")
        alert = run.alert_for(b / "2.txt")
        assert alert["action"] == "deny-unenforced"
        names = [json.dumps(x["output_fields"]) for x in run.skipped]
        assert not any(str(a / "2.txt") in n for n in names), names
    finally:
        run.close()
