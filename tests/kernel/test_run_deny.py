"""``sentinel run`` with deny rules on this host, where BPF LSM programs do not load.

``enforcement.unavailable: refuse`` (the default) must refuse to start, saying why and how to
enable BPF LSM; ``alert`` must run the deny rules as alerts marked ``deny-unenforced``. (The
enforcing path is tested in the BPF LSM VM, tests/vm.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.kernel.conftest import require_root

pytestmark = pytest.mark.kernel

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
