"""Every VM kernel's BTF, checked on the host in milliseconds, before any VM boots.

scripts/fetch-kernels.sh extracts each kernel's BTF (``build/kernels/NAME/vmlinux.btf``, the
blob its /sys/kernel/btf/vmlinux serves). From it: the sensor's struct offsets resolve, the
feature detection (sentinel.kernel.features) finds what each kernel is known to have, and every
BPF LSM hook the enforcement needs exists. The VM suites (test_vm.py) then prove the programs
load and behave; this catches a missing member or hook at once, and names it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sentinel.enforcement import cflags as enforcement_cflags
from sentinel.enforcement.lsm import REQUIRED_HOOKS, lsm_cflags
from sentinel.enforcement.lsm_btf import lsm_hooks
from sentinel.kernel.btf import Btf
from sentinel.kernel.features import detect
from sentinel.kernel.offsets import OFFSETS, sensor_cflags, uring_cflags
from tests.vm.test_vm import REPO, kernels

# What each kernel is known to offer (Linux versions of the helpers: bpf_get_current_task_btf
# 5.11, bpf_task_pt_regs 5.15; sched_process_exit's group_dead 6.16).
EXPECTED = {
    "5.10": {"task_btf": False, "task_pt_regs": False, "exit_group_dead": False},
    "6.1": {"task_btf": True, "task_pt_regs": True, "exit_group_dead": False},
    "6.12": {"task_btf": True, "task_pt_regs": True, "exit_group_dead": False},
}


@pytest.fixture(params=kernels(narrow=False))
def btf(request: pytest.FixtureRequest) -> tuple[str, Btf]:
    name = request.param
    path = REPO / "build" / "kernels" / name / "vmlinux.btf"
    if not path.exists():
        pytest.fail(f"{path} missing: run scripts/fetch-kernels.sh {name} (setup.sh does)")
    return name, Btf.load(Path(path))


def test_every_kernel_has_expectations() -> None:
    assert set(EXPECTED) == set(kernels(narrow=False))


def test_features(btf: tuple[str, Btf]) -> None:
    name, b = btf
    feats = detect(b, release=name)
    assert {f.name: f.present for f in feats.features} == EXPECTED[name]
    flags = set(feats.cflags)
    assert ("-DHAVE_TASK_BTF=1" in flags) == EXPECTED[name]["task_btf"]
    assert ("-DHAVE_TASK_PT_REGS=1" in flags) == EXPECTED[name]["task_pt_regs"]
    if not EXPECTED[name]["task_pt_regs"]:
        # the fallback's values: x86-64's 16 KiB kernel stack, struct pt_regs' size from BTF
        assert "-DTHREAD_SIZE_VAL=16384" in flags
        assert f"-DPT_REGS_SIZE={b.sizeof('pt_regs')}" in flags
        assert b.sizeof("pt_regs") == 21 * 8


def test_sensor_offsets_resolve(btf: tuple[str, Btf]) -> None:
    _name, b = btf
    flags = sensor_cflags(b, machine="x86_64")
    for macro in OFFSETS:
        assert any(f.startswith(f"-D{macro}=") for f in flags), macro


def test_io_uring_layout_where_its_tracepoints_name_the_request(btf: tuple[str, Btf]) -> None:
    """io_uring's requests are traced from 5.19 (bpf/sensor/uring.h): 6.1 and 6.12 have the
    request layout in BTF; 5.10 keeps requests differently (and its tracepoints do not name
    them), so the sensor leaves io_uring requests out there, as Sensor.uring_missing says."""
    name, b = btf
    assert (uring_cflags(b) is not None) == (name != "5.10")


def test_lsm_hooks_exist(btf: tuple[str, Btf]) -> None:
    _name, b = btf
    hooks = lsm_hooks(b)
    assert [h for h in REQUIRED_HOOKS if h not in hooks] == []
    built = lsm_cflags(b, hooks)  # every offset and hook argument position lsm.c reads
    print(f"optional LSM hooks this kernel lacks: {built.lacking}")


def test_kill_mode_offsets_resolve(btf: tuple[str, Btf]) -> None:
    _name, b = btf
    assert enforcement_cflags.kill(b).flags
