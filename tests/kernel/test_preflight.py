"""Start-up errors: each is one clear line, checked against the real conditions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sentinel.kernel.sensor import Sensor, SensorError, preflight, syscalls_for
from tests.helpers import log_records
from tests.kernel.conftest import require_root

REPO = Path(__file__).resolve().parents[2]
SENTINEL = [sys.executable, "-m", "sentinel"]


def test_syscalls_for_rules_event_types() -> None:
    # failed execs ride along only when a syscall tracepoint is attached anyway
    assert syscalls_for({"execve", "openat", "connect", "procexit"}) == {
        "openat",
        "connect",
        "execve",
    }
    assert syscalls_for({"execve", "procexit", "clone"}) == set()
    assert syscalls_for({"openat"}) == {"openat"}
    assert syscalls_for({"creat", "open"}) == {"creat", "open"}  # creat(2): its own tracepoint
    assert syscalls_for({"execveat", "unlinkat"}) == {"execveat", "unlinkat"}
    assert syscalls_for(set()) == set()


def test_unknown_syscall_event_type_is_refused() -> None:
    with pytest.raises(SensorError, match="unknown syscall event types: bogus"):
        Sensor({"bogus"})


def test_missing_tracepoint() -> None:
    require_root()
    with pytest.raises(
        SensorError, match=r"^tracepoint syscalls:sys_exit_nosuchcall does not exist"
    ):
        preflight([("syscalls", "sys_exit_nosuchcall")])


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
    # one line, through structlog (JSON: stderr is not a terminal here)
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    (rec,) = log_records(res.stderr)
    assert rec["level"] == "error"
    assert rec["event"] == "sentinel must run as root to load BPF programs", res.stderr
