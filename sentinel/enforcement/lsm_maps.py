"""The BPF LSM policy maps, written by fd with bpf(2): two slots and a generation switch.

Why two slots. A reload must never open a gap: a path protected by the old and the new policy
has to stay protected while the maps change. So every policy map (``idents``, ``net_trie``,
``net_ports``, ``slot_cfg``) holds two policies side by side, told apart by a ``slot`` in the
key. :meth:`PolicyMaps.update` fills the idle slot, then writes the new generation into
``config[1]``; each hook reads that word once and consults only its slot, so it sees the whole
old policy or the whole new one (``bpf/enforcement/lsm.c``, ``read_policy``).

Why a Gray code. ``config[1]`` holds the generation as a Gray code, in which consecutive
generations differ in exactly one bit: even if a hook's read raced with the kernel's copy of
the new value, it gets the old or the new word, never a third one. The slot is the
generation's parity, which is the parity of the code's set bits.

When a slot may be emptied. The idle slot last served two generations ago. BPF LSM programs
(non-sleepable) run inside an RCU read-side section, and ``membarrier(MEMBARRIER_CMD_GLOBAL)``
returns only after a full RCU grace period, so after it no hook can still be walking that slot.

Kept free of bcc: the long-lived process only holds map fds.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time

from sentinel.enforcement.policy import MapPlan
from sentinel.kernel.loader import (
    BPF_MAP_DELETE_ELEM,
    BPF_MAP_LOOKUP_ELEM,
    BPF_MAP_UPDATE_ELEM,
    _libc,
    bpf_map_op,
)

# One policy may use this many entries of each map (the maps are twice as large, lsm.c).
MAX_IDENTS = 65536
MAX_NETS = 4096
MAX_NET_PORTS = 16384

POLICY_MAPS = ("idents", "net_trie", "net_ports", "slot_cfg", "config")
F_WRITE, F_EXEC, F_CONNECT = 1, 2, 4  # slot_cfg.flags, as in bpf/enforcement/lsm.c
KEEP_PLANS = 4  # generations whose events can still be decoded (a ring may hold old ones)
GRACE_FALLBACK_S = 0.1  # wait instead when membarrier() is refused (nohz_full kernels)

_NR_MEMBARRIER = 324  # x86-64
_MEMBARRIER_CMD_GLOBAL = 1  # the kernel runs synchronize_rcu()


class MapsError(RuntimeError):
    """The kernel refused a policy map write; the previous policy is still in force."""


class IdentKey(ctypes.Structure):
    _fields_ = [("dev", ctypes.c_uint32), ("slot", ctypes.c_uint32), ("ino", ctypes.c_uint64)]


class IdentVal(ctypes.Structure):
    _fields_ = [
        ("write_rule", ctypes.c_uint32),
        ("exec_prefix_rule", ctypes.c_uint32),
        ("exec_exact_rule", ctypes.c_uint32),
        ("ancestor_rule", ctypes.c_uint32),
    ]


class NetKey(ctypes.Structure):
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),  # 8 (the slot byte) + the address prefix
        ("slot", ctypes.c_uint8),
        ("addr", ctypes.c_uint8 * 16),
        ("pad", ctypes.c_uint8 * 3),
    ]


class PortKey(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_uint32), ("entry", ctypes.c_uint32), ("port", ctypes.c_uint32)]


class SlotCfg(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint32), ("deep_exec_rule", ctypes.c_uint32)]


def gray(gen: int) -> int:
    """Generation number -> the code stored in config[1] (and carried by deny events)."""
    return (gen ^ (gen >> 1)) & 0xFFFFFFFF


def slot_of(code: int) -> int:
    """The slot a hook reads for ``code``: the parity of its set bits (= generation parity)."""
    return bin(code).count("1") & 1


def grace_period() -> None:
    """Return once no LSM hook still runs with a generation it read before the call."""
    if _libc.syscall(_NR_MEMBARRIER, _MEMBARRIER_CMD_GLOBAL, 0, 0) != 0:
        time.sleep(GRACE_FALLBACK_S)  # hooks run for microseconds


def check_size(plan: MapPlan) -> None:
    """MapsError if ``plan`` needs more entries than one slot may use."""
    for what, n, cap in (
        ("protected/exec identities", len(plan.idents), MAX_IDENTS),
        ("CIDRs", len(plan.nets), MAX_NETS),
        ("address/port entries", len(plan.ports), MAX_NET_PORTS),
    ):
        if n > cap:
            raise MapsError(f"the deny policy needs {n} {what}; at most {cap} are supported")


def flags_of(plan: MapPlan) -> int:
    """Which kinds of checks ``plan`` needs (hooks with nothing to check return at once)."""
    flags = 0
    for v in plan.idents.values():
        if v.write_rule or v.ancestor_rule:
            flags |= F_WRITE
        if v.exec_exact_rule or v.exec_prefix_rule:
            flags |= F_EXEC
    if plan.deep_exec_rule:
        flags |= F_EXEC
    if plan.ports:
        flags |= F_CONNECT
    return flags


class PolicyMaps:
    """The policy maps of one loaded ``bpf/enforcement/lsm.c``, by fd (``fds``: POLICY_MAPS -> fd).

    :meth:`install` writes the first policy (generation 0, before the programs attach);
    :meth:`update` replaces it live. :meth:`plan_for` gives the plan of the generation a deny
    event names.
    """

    def __init__(self, fds: dict[str, int]) -> None:
        missing = [m for m in POLICY_MAPS if m not in fds]
        if missing:
            raise MapsError(f"policy maps missing: {missing}")
        self.fds = dict(fds)
        self.gen = 0
        self.plan = MapPlan()
        self._plans: dict[int, MapPlan] = {}
        self._slot_keys: list[list[tuple[str, ctypes.Structure]]] = [[], []]
        self._lock = threading.Lock()

    # -- raw writes --------------------------------------------------------------------------
    def _put(self, name: str, key: ctypes.Structure | ctypes.c_uint32, value: object) -> None:
        err = bpf_map_op(BPF_MAP_UPDATE_ELEM, self.fds[name], key, value)
        if err:
            raise MapsError(f"writing the {name} map failed: {os.strerror(err)}")

    def set_config(self, idx: int, value: int) -> None:
        self._put("config", ctypes.c_uint32(idx), ctypes.c_uint32(value))

    def config(self, idx: int) -> int:
        val = ctypes.c_uint32()
        err = bpf_map_op(BPF_MAP_LOOKUP_ELEM, self.fds["config"], ctypes.c_uint32(idx), val)
        if err:
            raise MapsError(f"reading the config map failed: {os.strerror(err)}")
        return int(val.value)

    def _write_slot(self, slot: int, plan: MapPlan) -> None:
        """Write ``plan`` into ``slot`` (which no hook reads now); all or nothing."""
        written = self._slot_keys[slot]

        def put(name: str, key: ctypes.Structure, value: object) -> None:
            self._put(name, key, value)
            written.append((name, key))

        try:
            for ident, v in plan.idents.items():
                put(
                    "idents",
                    IdentKey(ident.dev, slot, ident.ino),
                    IdentVal(v.write_rule, v.exec_prefix_rule, v.exec_exact_rule, v.ancestor_rule),
                )
            for plen, addr, entry in plan.nets:
                nk = NetKey(8 + plen, slot)
                ctypes.memmove(nk.addr, addr, 16)
                put("net_trie", nk, ctypes.c_uint32(entry))
            for (entry, port), idx in plan.ports.items():
                put("net_ports", PortKey(slot, entry, port), ctypes.c_uint32(idx))
            self._put(
                "slot_cfg", ctypes.c_uint32(slot), SlotCfg(flags_of(plan), plan.deep_exec_rule)
            )
        except BaseException:
            self._clear_slot(slot)
            raise

    def _clear_slot(self, slot: int) -> None:
        """Empty ``slot``; only when no hook may be reading it."""
        bpf_map_op(BPF_MAP_UPDATE_ELEM, self.fds["slot_cfg"], ctypes.c_uint32(slot), SlotCfg())
        for name, key in self._slot_keys[slot]:
            bpf_map_op(BPF_MAP_DELETE_ELEM, self.fds[name], key)
        self._slot_keys[slot] = []

    def _remember(self, gen: int, plan: MapPlan) -> None:
        plans = dict(self._plans)
        plans[gray(gen)] = plan
        for old in list(plans)[:-KEEP_PLANS]:
            del plans[old]
        self._plans = plans  # one assignment: a reader thread sees the old or the new dict

    # -- policy ------------------------------------------------------------------------------
    def install(self, plan: MapPlan) -> None:
        """The first policy, as generation 0 (slot 0), before any program is attached."""
        check_size(plan)
        with self._lock:
            self._clear_slot(0)
            self._write_slot(0, plan)
            self.set_config(1, gray(0))
            self.gen, self.plan = 0, plan
            self._remember(0, plan)

    def update(self, plan: MapPlan) -> None:
        """Replace the policy, atomically from the hooks' point of view; on error (MapsError)
        nothing changed and the previous policy is still enforced."""
        check_size(plan)
        with self._lock:
            gen = self.gen + 1
            slot = gen & 1
            grace_period()  # hooks that read generation gen-2 (this slot) are done
            self._clear_slot(slot)
            self._write_slot(slot, plan)
            self._remember(gen, plan)
            self.set_config(1, gray(gen))  # the switch
            self.gen, self.plan = gen, plan

    def plan_for(self, code: int) -> MapPlan:
        """The plan of the generation whose code a deny event carries (current if unknown)."""
        return self._plans.get(code, self.plan)

    def entries(self, slot: int) -> int:
        """Entries written for ``slot`` (what a reload leaves behind is bounded by this)."""
        return len(self._slot_keys[slot])


__all__ = [
    "MAX_IDENTS",
    "MAX_NETS",
    "MAX_NET_PORTS",
    "POLICY_MAPS",
    "MapsError",
    "PolicyMaps",
    "check_size",
    "flags_of",
    "grace_period",
    "gray",
    "slot_of",
]
