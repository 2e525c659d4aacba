"""The policy maps, written by fd with bpf(2): two slots and a generation switch.

Why two slots. A reload must never open a gap: a path protected by the old and the new policy
has to stay protected while the maps change. So every policy map (``idents``, ``net_trie``,
``net_ports``, ``devs``, ``mounts``, ``slot_cfg``) holds two policies side by side, told apart
by a ``slot`` in the key. :meth:`PolicyMaps.update` fills the idle slot, then writes the new
generation into ``config[CFG_GEN]``; each program reads that word once and consults only its
slot, so it sees the whole old policy or the whole new one (``read_policy`` in
``bpf/enforcement/common.h``).

Why a Gray code. The generation word holds the generation as a Gray code, in which
consecutive generations differ in exactly one bit: even if a program's read raced with the
kernel's copy of the new value, it gets the old or the new word, never a third one. The slot
is the generation's parity, which is the parity of the code's set bits.

When a slot may be emptied. The idle slot last served two generations ago. BPF LSM programs
(non-sleepable) and tracepoint programs run inside an RCU read-side section, and
``membarrier(MEMBARRIER_CMD_GLOBAL)`` returns only after a full RCU grace period, so after it
no program can still be reading that slot.

Why a second scan. The policy protects the identities found below each protected directory;
a file created there after the scan but before the switch would be missing. Once the new
generation is published (and a grace period later) nothing can be created there any more, so
:meth:`PolicyMaps.update` scans again and adds what it finds to the live slot (adding only
ever makes the policy stricter).

Kept free of bcc: the long-lived process only holds map fds.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable

import structlog

from sentinel.enforcement.abi import (
    CFG_GEN,
    CFG_MNTNS,
    F_CONNECT,
    F_DEVS,
    F_EXEC,
    F_WRITE,
    MAX_DEVS,
    MAX_IDENTS,
    MAX_MOUNTS,
    MAX_NET_PORTS,
    MAX_NETS,
    DevKey,
    IdentKey,
    IdentVal,
    MountKey,
    NetKey,
    PortKey,
    SlotCfg,
)
from sentinel.enforcement.policy import Ident, MapPlan, build_plan
from sentinel.kernel.loader import (
    BPF_MAP_DELETE_ELEM,
    BPF_MAP_LOOKUP_ELEM,
    BPF_MAP_UPDATE_ELEM,
    _libc,
    bpf_map_op,
)

_log = structlog.get_logger("sentinel.lsm")

POLICY_MAPS = ("idents", "net_trie", "net_ports", "devs", "mounts", "slot_cfg", "config")
KEEP_PLANS = 4  # generations whose events can still be decoded (a ring may hold old ones)
GRACE_FALLBACK_S = 0.1  # wait instead when membarrier() is refused (nohz_full kernels)

_NR_MEMBARRIER = 324  # x86-64
_MEMBARRIER_CMD_GLOBAL = 1  # the kernel runs synchronize_rcu()


class MapsError(RuntimeError):
    """The kernel refused a policy map write; the previous policy is still in force."""


def gray(gen: int) -> int:
    """Generation number -> the code stored in config[CFG_GEN] (and carried by events)."""
    return (gen ^ (gen >> 1)) & 0xFFFFFFFF


def slot_of(code: int) -> int:
    """The slot a program reads for ``code``: the parity of its set bits (= generation parity)."""
    return bin(code).count("1") & 1


def grace_period() -> None:
    """Return once no program still runs with a generation it read before the call."""
    if _libc.syscall(_NR_MEMBARRIER, _MEMBARRIER_CMD_GLOBAL, 0, 0) != 0:
        time.sleep(GRACE_FALLBACK_S)  # programs run for microseconds


def check_size(plan: MapPlan) -> None:
    """MapsError if ``plan`` needs more entries than one slot may use."""
    for what, n, cap in (
        ("protected/exec identities", len(plan.idents), MAX_IDENTS),
        ("CIDRs", len(plan.nets), MAX_NETS),
        ("address/port entries", len(plan.ports), MAX_NET_PORTS),
        ("devices", len(plan.devs), MAX_DEVS),
        ("mounts", len(plan.mounts), MAX_MOUNTS),
    ):
        if n > cap:
            raise MapsError(f"the deny policy needs {n} {what}; at most {cap} are supported")


def flags_of(plan: MapPlan) -> int:
    """Which kinds of checks ``plan`` needs (programs with nothing to check return at once)."""
    flags = 0
    for v in plan.idents.values():
        if v.write_rule or v.ancestor_rule:
            flags |= F_WRITE
        if v.exec_exact_rule or v.exec_prefix_rule:
            flags |= F_EXEC
    if plan.deep_exec_rule or plan.memfd_exec_rule or plan.upper_exec_rule:
        flags |= F_EXEC
    if plan.ports:
        flags |= F_CONNECT
    if plan.devs:
        flags |= F_DEVS
    return flags


def slot_cfg(plan: MapPlan) -> SlotCfg:
    return SlotCfg(
        flags_of(plan),
        plan.deep_exec_rule,
        plan.memfd_exec_rule,
        plan.upper_exec_rule,
        plan.any_write_rule,
        plan.any_connect_rule,
    )


Entry = tuple[str, ctypes.Structure, object]


def entries(plan: MapPlan, slot: int) -> list[Entry]:
    """Every (map, key, value) of ``plan`` in ``slot`` (slot_cfg apart)."""
    out: list[Entry] = []
    for ident, v in plan.idents.items():
        out.append(
            (
                "idents",
                IdentKey(ident.dev, slot, ident.ino),
                IdentVal(v.write_rule, v.exec_prefix_rule, v.exec_exact_rule, v.ancestor_rule),
            )
        )
    for plen, addr, entry in plan.nets:
        nk = NetKey(8 + plen, slot)
        ctypes.memmove(nk.addr, addr, 16)
        out.append(("net_trie", nk, ctypes.c_uint32(entry)))
    for (entry, port), idx in plan.ports.items():
        out.append(("net_ports", PortKey(slot, entry, port), ctypes.c_uint32(idx)))
    for (kind, dev), idx in plan.devs.items():
        out.append(("devs", DevKey(dev, kind, slot), ctypes.c_uint32(idx)))
    for mid, idx in plan.mounts.items():
        out.append(("mounts", MountKey(mid, slot), ctypes.c_uint32(idx)))
    return out


class PolicyMaps:
    """The policy maps of one loaded program set, by fd (``fds``: POLICY_MAPS -> fd).

    :meth:`install` writes the first policy (generation 0, before the programs attach);
    :meth:`update` replaces it live. :meth:`plan_for` gives the plan of the generation an
    event names. ``rescan`` (default: build the plan again from its policy) is what the scan
    after a switch uses.
    """

    def __init__(
        self, fds: dict[str, int], rescan: Callable[[MapPlan], MapPlan] | None = None
    ) -> None:
        missing = [m for m in POLICY_MAPS if m not in fds]
        if missing:
            raise MapsError(f"policy maps missing: {missing}")
        self.fds = dict(fds)
        self.gen = 0
        self.plan = MapPlan()
        self._plans: dict[int, MapPlan] = {}
        self._slot_keys: list[list[tuple[str, ctypes.Structure]]] = [[], []]
        self._lock = threading.Lock()
        self._rescan = rescan if rescan is not None else _rebuild
        self.rescan_added = 0  # identities the last scan after a switch added

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
        """Write ``plan`` into ``slot`` (which no program reads now); all or nothing."""
        written = self._slot_keys[slot]
        try:
            for name, key, value in entries(plan, slot):
                self._put(name, key, value)
                written.append((name, key))
            self._put("slot_cfg", ctypes.c_uint32(slot), slot_cfg(plan))
        except BaseException:
            self._clear_slot(slot)
            raise

    def _clear_slot(self, slot: int) -> None:
        """Empty ``slot``; only when no program may be reading it."""
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

    def _scan_again(self, slot: int, plan: MapPlan) -> None:
        """Add to the live ``slot`` what a scan made after the switch finds (see module)."""
        if plan.policy is None or not plan.policy.protect:
            return
        grace_period()
        try:
            fresh = self._rescan(plan)
        except Exception as exc:  # the policy is in force; only the second look failed
            _log.warning("scan after the policy switch failed", error=str(exc))
            return
        added = 0
        for ident, v in fresh.idents.items():
            if ident in plan.idents:
                continue
            key = IdentKey(ident.dev, slot, ident.ino)
            self._put(
                "idents",
                key,
                IdentVal(v.write_rule, v.exec_prefix_rule, v.exec_exact_rule, v.ancestor_rule),
            )
            self._slot_keys[slot].append(("idents", key))
            plan.idents[ident] = v
            plan.ident_paths.setdefault(ident, fresh.ident_paths.get(ident, "?"))
            added += 1
        # A file deleted between the first scan and the switch: its inode number may come
        # back for an unrelated file, which must not inherit the protection.
        for ident, v in list(plan.idents.items()):
            if ident not in fresh.idents and v.write_rule and not v.ancestor_rule:
                key = IdentKey(ident.dev, slot, ident.ino)
                bpf_map_op(BPF_MAP_DELETE_ELEM, self.fds["idents"], key)
                del plan.idents[ident]
        for mid, idx in fresh.mounts.items():
            if mid not in plan.mounts:
                mk = MountKey(mid, slot)
                self._put("mounts", mk, ctypes.c_uint32(idx))
                self._slot_keys[slot].append(("mounts", mk))
                plan.mounts[mid] = idx
        self.rescan_added = added

    # -- policy ------------------------------------------------------------------------------
    def install(self, plan: MapPlan, mntns: int | None = None) -> None:
        """The first policy, as generation 0 (slot 0), before any program is attached."""
        check_size(plan)
        with self._lock:
            self._clear_slot(0)
            self._write_slot(0, plan)
            self.set_config(CFG_MNTNS, own_mntns() if mntns is None else mntns)
            self.set_config(CFG_GEN, gray(0))
            self.gen, self.plan = 0, plan
            self._remember(0, plan)

    def after_attach(self) -> None:
        """The scan after the first policy took effect (the programs are attached now)."""
        with self._lock:
            self._scan_again(slot_of(gray(self.gen)), self.plan)

    def update(self, plan: MapPlan) -> None:
        """Replace the policy, atomically from the programs' point of view; on error
        (MapsError) nothing changed and the previous policy is still enforced."""
        check_size(plan)
        with self._lock:
            gen = self.gen + 1
            slot = gen & 1
            grace_period()  # programs that read generation gen-2 (this slot) are done
            self._clear_slot(slot)
            self._write_slot(slot, plan)
            self._remember(gen, plan)
            self.set_config(CFG_GEN, gray(gen))  # the switch
            self.gen, self.plan = gen, plan
            self._scan_again(slot, plan)

    def plan_for(self, code: int) -> MapPlan:
        """The plan of the generation whose code an event carries (current if unknown)."""
        return self._plans.get(code, self.plan)

    def entries(self, slot: int) -> int:
        """Entries written for ``slot`` (what a reload leaves behind is bounded by this)."""
        return len(self._slot_keys[slot])


def own_mntns() -> int:
    """This process's mount namespace (its ns inode number): the view paths are resolved in."""
    return os.stat("/proc/self/ns/mnt").st_ino


def _rebuild(plan: MapPlan) -> MapPlan:
    assert plan.policy is not None
    return build_plan(plan.policy)


__all__ = [
    "POLICY_MAPS",
    "Ident",
    "MapsError",
    "PolicyMaps",
    "check_size",
    "entries",
    "flags_of",
    "grace_period",
    "gray",
    "own_mntns",
    "slot_of",
]
