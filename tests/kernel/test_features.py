"""Kernel feature detection (sentinel.kernel.features) on the real kernel.

The detection reads the kernel's BTF; ``bpftool feature probe`` is the independent oracle: it
loads a probe program per helper and program type. Every kernel of the VM suites runs this
module too (it needs no VM-specific setup), so the oracle is checked on 5.10, 6.1 and 6.12.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sentinel.kernel import sensor as sensor_mod
from sentinel.kernel.btf import vmlinux_btf
from sentinel.kernel.features import detect
from tests.kernel.conftest import LiveSensor, require_root

pytestmark = pytest.mark.kernel

HELPER_OF = {"task_btf": "bpf_get_current_task_btf", "task_pt_regs": "bpf_task_pt_regs"}


def _bpftool_tracepoint_helpers() -> set[str]:
    out = subprocess.run(
        ["bpftool", "feature", "probe", "kernel"], capture_output=True, text=True, check=True
    ).stdout
    section = re.search(
        r"eBPF helpers supported for program type tracepoint:\n((?:\t- .*\n)+)", out
    )
    assert section, "bpftool did not list the tracepoint program type's helpers"
    return {ln.strip()[2:] for ln in section.group(1).splitlines()}


def test_detected_helpers_match_bpftool() -> None:
    require_root()
    feats = {f.name: f.present for f in detect(vmlinux_btf()).features}
    listed = _bpftool_tracepoint_helpers()
    assert "bpf_ringbuf_output" in listed
    for name, helper in HELPER_OF.items():
        assert feats[name] == (helper in listed), (name, helper, sorted(listed))


def test_a_missing_syscall_tracepoint_drops_only_its_event_type(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every kernel Sentinel supports has all the tracepoints it uses, so the missing one is
    faked (the lookup of tracefs answers "absent" for openat2): the fault a real kernel
    without CONFIG_FTRACE_SYSCALLS entries, or an older one, would produce."""
    require_root()
    real = sensor_mod.absent_syscalls
    truly_missing = set(real(sensor_mod.ALL_SYSCALLS))  # e.g. init_module without CONFIG_MODULES
    monkeypatch.setattr(
        sensor_mod, "absent_syscalls", lambda names: sorted({*real(names), "openat2"} & set(names))
    )
    live = LiveSensor()
    live.watch.add(os.getpid())
    live.start()
    try:
        assert live.sensor.missing == {"openat2"} | (
            truly_missing & set(live.sensor.missing | live.sensor.syscalls)
        )
        assert "openat2" in live.sensor.missing
        assert "openat2" not in live.sensor.syscalls
        assert "tp:syscalls:sys_exit_openat2" not in live.sensor.attachments
        assert "tp:syscalls:sys_exit_openat" in live.sensor.attachments
        target = tmp_path / "seen.txt"
        code = (
            "import ctypes, os\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "how = (ctypes.c_uint64 * 3)(0o101, 0o600, 0)\n"
            f"p = b'{tmp_path}/unseen.txt'\n"
            "assert libc.syscall(437, -100, p, ctypes.byref(how), 24) >= 0\n"
            f"os.close(os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT))\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True)
        seen = live.wait_for(lambda e: e.get("fd.name") == str(target))
        assert [e["evt.type"] for e in seen] == ["openat"]
        assert live.wait_for(lambda e: "unseen" in e.get("fd.name", ""), timeout=1) == []
    finally:
        live.close()
