"""The LSM policy maps' two-slot reload, on real kernel maps of this host.

BPF LSM programs do not load here, but ``lsm.c``'s maps do: bcc compiles it and creates
them without loading any program. The hooks' view is modelled exactly as ``read_policy`` and
``ident`` in bpf/enforcement/common.h do it: read the generation word once, take the parity of
its bits as the slot, look the identity up with that slot. (That the real hooks deny what
these maps say is proven in the VM: tests/vm/guest/test_run_reload.py.)
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sentinel.enforcement import program
from sentinel.enforcement.abi import (
    CFG_GEN,
    F_CONNECT,
    F_DEVS,
    F_WRITE,
    MAX_NETS,
    IdentKey,
    IdentVal,
)
from sentinel.enforcement.lsm import ConnectDeny, DenyPolicy, lsm_cflags
from sentinel.enforcement.lsm_btf import lsm_hooks
from sentinel.enforcement.lsm_maps import (
    POLICY_MAPS,
    MapsError,
    PolicyMaps,
    check_size,
    gray,
    slot_of,
)
from sentinel.enforcement.policy import Ident, MapPlan, build_plan
from sentinel.kernel.btf import vmlinux_btf
from sentinel.kernel.loader import BPF_MAP_LOOKUP_ELEM, bpf_map_op
from tests.kernel.conftest import require_root

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def bpf() -> Iterator[Any]:
    require_root()
    btf = vmlinux_btf()
    flags = lsm_cflags(btf, lsm_hooks(btf)).flags
    from bcc import BPF

    class NoAutoload(BPF):  # type: ignore[misc]
        def _trace_autoload(self) -> None:  # creates the maps, loads no program
            pass

    b = NoAutoload(text=program.text("lsm").encode(), cflags=[*flags, "-DRING_PAGES=4"])
    yield b
    b.cleanup()


@pytest.fixture
def maps(bpf: Any) -> PolicyMaps:
    for m in ("idents", "net_trie", "net_ports", "devs", "mounts"):
        bpf[m.encode()].clear()
    pm = PolicyMaps({m: bpf[m.encode()].map_fd for m in POLICY_MAPS})
    pm.set_config(CFG_GEN, 0)
    return pm


def _hook_rule(maps: PolicyMaps, path: Path) -> int:
    """What a write hook finds for ``path``'s own identity (0: not protected)."""
    code = ctypes.c_uint32()
    assert bpf_map_op(BPF_MAP_LOOKUP_ELEM, maps.fds["config"], ctypes.c_uint32(CFG_GEN), code) == 0
    ident = Ident.of(os.stat(path))
    val = IdentVal()
    key = IdentKey(ident.dev, slot_of(code.value), ident.ino)
    if bpf_map_op(BPF_MAP_LOOKUP_ELEM, maps.fds["idents"], key, val):
        return 0
    return int(val.write_rule)


def _dirs(tmp_path: Path, *names: str) -> list[Path]:
    out = []
    for n in names:
        (tmp_path / n).mkdir()
        out.append(tmp_path / n)
    return out


def test_gray_code_generations_differ_in_one_bit_and_give_the_slot() -> None:
    for g in range(5000):
        assert slot_of(gray(g)) == g & 1
        assert bin(gray(g) ^ gray(g + 1)).count("1") == 1
    assert len({gray(g) for g in range(5000)}) == 5000


def test_update_fills_the_idle_slot_then_switches(
    maps: PolicyMaps, bpf: Any, tmp_path: Path
) -> None:
    a, b = _dirs(tmp_path, "a", "b")
    plan_a = build_plan(DenyPolicy(protect={str(a): "A"}))
    plan_b = build_plan(
        DenyPolicy(protect={str(b): "B"}, connect=[ConnectDeny("C", "10.0.0.0/8", (80,))])
    )
    maps.install(plan_a)
    assert maps.config(CFG_GEN) == gray(0) and _hook_rule(maps, a) == 1 and _hook_rule(maps, b) == 0
    maps.update(plan_b)
    assert maps.config(CFG_GEN) == gray(1) and maps.gen == 1
    assert _hook_rule(maps, a) == 0 and _hook_rule(maps, b) == 1
    slots = sorted(k.slot for k in bpf[b"idents"])
    # slot 0 (generation 0) is kept until the next reload: a hook may still be reading it.
    assert slots.count(0) == len(plan_a.idents) and slots.count(1) == len(plan_b.idents)
    cfg = {k.value: (v.flags, v.deep_exec_rule) for k, v in bpf[b"slot_cfg"].items()}
    devs = F_DEVS if plan_a.devs else 0  # tmp_path is on a block device (or a tmpfs)
    assert cfg == {0: (F_WRITE | devs, 0), 1: (F_WRITE | F_CONNECT | devs, 0)}
    assert [(k.slot, k.prefixlen) for k in bpf[b"net_trie"]] == [(1, 8 + 96 + 8)]
    maps.update(plan_a)
    assert maps.config(CFG_GEN) == gray(2) and _hook_rule(maps, a) == 1 and _hook_rule(maps, b) == 0
    slots = sorted(k.slot for k in bpf[b"idents"])
    assert slots.count(0) == len(plan_a.idents) and slots.count(1) == len(plan_b.idents)
    maps.update(MapPlan())  # no deny rules: the slot says there is nothing to check
    assert _hook_rule(maps, a) == 0 and _hook_rule(maps, b) == 0
    assert bpf[b"slot_cfg"][ctypes.c_int(1)].flags == 0
    assert sorted(k.slot for k in bpf[b"idents"]) == [0] * len(plan_a.idents)
    # Events of older generations still decode with their own plan.
    assert maps.plan_for(gray(1)) is plan_b and maps.plan_for(gray(2)) is plan_a


def test_path_protected_before_and_after_never_looks_unprotected(
    maps: PolicyMaps, tmp_path: Path
) -> None:
    keep, a, b = _dirs(tmp_path, "keep", "a", "b")
    plans = [
        build_plan(DenyPolicy(protect={str(keep): "K", str(a): "A"})),
        build_plan(DenyPolicy(protect={str(b): "B", str(keep): "K"})),
    ]
    maps.install(plans[0])
    stop = threading.Event()
    seen = {"lookups": 0, "gaps": 0, "a": 0, "b": 0}

    def hook() -> None:
        while not stop.is_set():
            seen["lookups"] += 1
            if not _hook_rule(maps, keep):
                seen["gaps"] += 1
            seen["a"] += bool(_hook_rule(maps, a))
            seen["b"] += bool(_hook_rule(maps, b))

    t = threading.Thread(target=hook)
    t.start()
    try:
        for i in range(1, 201):
            maps.update(plans[i % 2])
    finally:
        stop.set()
        t.join()
    assert seen["gaps"] == 0, seen
    assert seen["a"] and seen["b"], f"the reader never saw both policies: {seen}"
    assert maps.gen == 200 and _hook_rule(maps, a) and not _hook_rule(maps, b)


def test_refused_write_leaves_the_old_policy_in_force(
    maps: PolicyMaps, bpf: Any, tmp_path: Path
) -> None:
    from bcc import BPF

    (a,) = _dirs(tmp_path, "a")
    maps.install(build_plan(DenyPolicy(protect={str(a): "A"})))
    # A real kernel refusal: a one-entry map with net_ports' key and value types stands in for
    # net_ports, so the second port entry fails with E2BIG (a full map). The real net_ports is
    # sized for two full policies, which the plan size check already enforces.
    tiny = BPF(
        text=b"struct port_key { u32 slot; u32 entry; u32 port; };"
        b"BPF_HASH(tiny, struct port_key, u32, 1);"
    )
    try:
        broken = PolicyMaps({**maps.fds, "net_ports": tiny[b"tiny"].map_fd})
        broken.install(build_plan(DenyPolicy(protect={str(a): "A"})))
        before = sorted((k.slot, k.ino) for k in bpf[b"idents"])
        bad = build_plan(DenyPolicy(connect=[ConnectDeny("C", "10.0.0.0/8", (80, 443))]))
        with pytest.raises(MapsError, match="net_ports"):
            broken.update(bad)
        assert broken.gen == 0 and broken.config(CFG_GEN) == gray(0)
        assert _hook_rule(maps, a) == 1
        assert sorted((k.slot, k.ino) for k in bpf[b"idents"]) == before
        assert [k.slot for k in bpf[b"net_trie"]] == [], "the half-written slot is emptied"
        assert bpf[b"slot_cfg"][ctypes.c_int(1)].flags == 0
    finally:
        tiny.cleanup()


def test_a_policy_larger_than_one_slot_is_refused() -> None:
    plan = MapPlan(nets=[(128, bytes(16), i) for i in range(MAX_NETS + 1)])
    with pytest.raises(MapsError, match="CIDRs"):
        check_size(plan)


def test_scan_after_the_switch_adds_late_files_and_drops_deleted_ones(
    maps: PolicyMaps, tmp_path: Path
) -> None:
    """Between the scan and the switch a file may appear in (or vanish from) a protected
    tree; once the policy is in force nothing can change there, and the second scan
    makes the maps match the tree."""
    prot = tmp_path / "prot"
    prot.mkdir()
    gone = prot / "gone.txt"
    gone.write_text("deleted before the switch")
    gone_ident = Ident.of(os.stat(gone))
    plan = build_plan(DenyPolicy(protect={str(prot): "P"}))
    late = prot / "late.txt"
    late.write_text("created after the scan")
    gone.unlink()
    maps.install(plan)
    assert _hook_rule(maps, prot) == 1 and _hook_rule(maps, late) == 0
    maps.after_attach()
    assert _hook_rule(maps, late) == 1
    assert maps.rescan_added == 1
    assert gone_ident not in maps.plan.idents
    val = IdentVal()
    key = IdentKey(gone_ident.dev, 0, gone_ident.ino)
    assert bpf_map_op(BPF_MAP_LOOKUP_ELEM, maps.fds["idents"], key, val) != 0
