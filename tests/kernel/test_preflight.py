"""Start-up errors: each is one clear line, checked against the real conditions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sentinel.kernel.sensor import Sensor, SensorError, families_for, preflight
from tests.kernel.conftest import require_root

REPO = Path(__file__).resolve().parents[2]
SENTINEL = [sys.executable, "-m", "sentinel"]


def test_families_for_rules_event_types() -> None:
    # failed execs ride along only when a syscall tracepoint is attached anyway
    assert families_for({"execve", "openat", "connect", "procexit"}) == {
        "openat",
        "connect",
        "execve",
    }
    assert families_for({"execve", "procexit", "clone"}) == set()
    assert families_for({"openat"}) == {"openat"}
    assert families_for({"creat", "open"}) == {"creat", "open"}  # creat(2): its own tracepoint
    assert families_for(set()) == set()


def test_unknown_family_is_refused() -> None:
    with pytest.raises(SensorError, match="unknown syscall families: bogus"):
        Sensor({"bogus"})


def test_missing_tracepoint() -> None:
    require_root()
    with pytest.raises(
        SensorError, match=r"^tracepoint syscalls:sys_exit_nosuchcall does not exist"
    ):
        preflight(["nosuchcall"])


def test_missing_btf(tmp_path: Path) -> None:
    require_root()
    with pytest.raises(SensorError, match="no kernel BTF at"):
        preflight([], btf_path=tmp_path / "vmlinux")


def test_not_root_gives_one_line() -> None:
    require_root()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("no setpriv")
    res = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *SENTINEL, "run"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=120,
    )
    assert res.returncode != 0
    assert res.returncode == 1
    assert res.stderr.strip() == (
        "sentinel: error: sentinel must run as root to load BPF programs"
    ), res.stderr
