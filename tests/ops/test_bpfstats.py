"""sentinel.kernel.bpfstats without loading anything: the struct it reads matches the running
kernel's, and with the switch off /metrics carries no per-program counts."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from sentinel.kernel import bpfstats
from sentinel.kernel.btf import VMLINUX, Btf

FIELDS = ("id", "name", "run_time_ns", "run_cnt", "recursion_misses")


def test_prog_info_layout_is_the_running_kernels() -> None:
    if not Path(VMLINUX).exists():
        msg = f"no kernel BTF at {VMLINUX}"
        print(f"SKIP: {msg}")
        pytest.skip(msg)
    btf = Btf.load()
    info = bpfstats._ProgInfo
    for name in FIELDS:
        assert getattr(info, name).offset == btf.offsetof("bpf_prog_info", name), name
        assert getattr(info, name).size == btf.member_size("bpf_prog_info", name), name
    # the kernel accepts a shorter info_len from older callers, never a longer one than it knows
    assert ctypes.sizeof(info) <= btf.sizeof("bpf_prog_info")


def test_switch_off_exports_the_gauge_only() -> None:
    def programs() -> dict[tuple[str, str], int]:
        raise AssertionError("nothing is read while statistics are off")

    fams = list(bpfstats.collector(programs, None)())
    assert [(f.name, f.samples) for f in fams] == [("sentinel_bpf_stats_enabled", [((), 0.0)])]


def test_programs_are_labelled_without_bccs_prefix() -> None:
    progs = {
        "tracepoint__syscalls__sys_exit_openat": 3,
        "raw_tracepoint__sched_process_exec": 4,
        "exec_emit": 5,
    }
    assert bpfstats.labelled("sensor", progs) == {
        ("sensor", "sys_exit_openat"): 3,
        ("sensor", "sched_process_exec"): 4,
        ("sensor", "exec_emit"): 5,
    }
