"""BPF LSM enforcement: load ``lsm.c``, fill its maps from a DenyPolicy, stream denials.

Why in the kernel: a deny decision cannot wait for Python, so the whole decision lives in BPF
maps and LSM hooks that return ``-EPERM`` before the operation happens; user space only hears
about it afterwards (one ring-buffer event per denial, handed to ``on_deny``). How paths are
matched (identities + dentry walk, not strings) is explained in :mod:`lsm_policy`; which hooks
exist on this kernel comes from BTF (:mod:`lsm_btf`); whether BPF LSM works at all is
:func:`lsm_available` (:mod:`lsm_probe`).

This process never imports bcc: a short-lived child (:mod:`sentinel.kernel.loader`) compiles
``lsm.c`` and loads every program, then hands back program and map fds; here the policy
maps are filled by bpf(2), each program is attached with one bpf(2) call (closing its link fd
detaches it), and the ring buffer is read from its mmap (:mod:`sentinel.kernel.ringbuf`).

Hooks used (see ``bpf/enforcement/lsm.c``): ``bprm_check_security``; ``file_open`` (FMODE_WRITE or
O_TRUNC), ``file_permission`` (writes through descriptors opened earlier), ``path_truncate``,
``file_truncate`` (6.2+), ``path_unlink``, ``path_rename`` (source and target),
``path_link``, ``path_symlink``, ``path_mknod`` (also open(O_CREAT) of a new file),
``path_mkdir``, ``path_rmdir``, ``path_chmod``, ``path_chown``, ``inode_setattr``,
``inode_setxattr``, ``inode_removexattr``, ``inode_set_acl``/``inode_remove_acl`` (6.2+),
``mmap_file`` and ``file_mprotect`` (shared writable mappings of protected files, and
executable mappings of exec-denied files, which ``ld.so /denied/binary`` would use);
``sb_mount`` and ``move_mount`` (mounting onto a protected path or an ancestor would hide
it); ``socket_connect``. ``file_free_security`` only maintains the write-verdict cache (see
``write_ok`` in bpf/enforcement/lsm.c) that keeps write() storms off the dentry walk.

Known limits: unmounting a file system that holds a protected path is not denied; a shared
writable mapping made before the policy loaded keeps working (the kernel does not revoke
mappings); ``sendto``/``sendmsg`` with an address on an unconnected UDP socket is not a
connect and is not covered. The dentry walk is bounded (32 levels, mount crossings included)
for the verifier: protected trees deeper than that are refused at load (lsm_policy), and an
exec too deep to check is denied while exec-prefix rules are loaded (fail closed). The policy is
replaced live with :meth:`LsmEnforcer.update`: every policy map holds two slots, a reload fills
the idle one and publishes it with one generation switch (see ``lsm.c``), so each hook
sees the whole old or the whole new policy; a path protected by both is never unprotected.
"""

from __future__ import annotations

import ctypes
import ipaddress
import mmap
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import structlog

from sentinel.enforcement.lsm_btf import arg_index, lsm_hooks
from sentinel.enforcement.lsm_maps import (
    MAX_IDENTS,
    MAX_NET_PORTS,
    MAX_NETS,
    POLICY_MAPS,
    MapsError,
    PolicyMaps,
    check_size,
)
from sentinel.enforcement.policy import (
    ConnectDeny,
    DenyPolicy,
    Ident,
    MapPlan,
    PolicyError,
    build_plan,
)
from sentinel.enforcement.probe import lsm_available
from sentinel.kernel.btf import Btf, BtfError, vmlinux_btf
from sentinel.kernel.loader import (
    Loaded,
    LoaderError,
    attach_lsm,
    load_in_child,
    percpu_u64,
    possible_cpus,
)
from sentinel.kernel.ringbuf import RingBufferReader
from sentinel.paths import BPF_DIR

__all__ = [
    "HOOKS",
    "OPERATIONS",
    "ConnectDeny",
    "DenyEvent",
    "DenyPolicy",
    "LsmEnforcer",
    "LsmError",
    "PolicyError",
    "lsm_available",
]

# Hook ids and operation ids exactly as in bpf/enforcement/lsm.c.
HOOKS: dict[int, str] = {
    1: "bprm_check_security",
    2: "file_open",
    3: "file_permission",
    4: "path_truncate",
    5: "file_truncate",
    6: "path_unlink",
    7: "path_rename",
    8: "path_link",
    9: "path_symlink",
    10: "path_mknod",
    11: "path_mkdir",
    12: "path_rmdir",
    13: "path_chmod",
    14: "path_chown",
    15: "inode_setattr",
    16: "inode_setxattr",
    17: "inode_removexattr",
    18: "mmap_file",
    19: "file_mprotect",
    20: "socket_connect",
    21: "inode_set_acl",
    22: "inode_remove_acl",
    23: "sb_mount",
    24: "move_mount",
    25: "file_free_security",
}
OPERATIONS: dict[int, str] = {
    1: "exec",
    2: "open_write",
    3: "open_trunc",
    4: "write",
    5: "truncate",
    6: "unlink",
    7: "rename_from",
    8: "rename_to",
    9: "link_from",
    10: "link_to",
    11: "symlink",
    12: "mknod",
    13: "mkdir",
    14: "rmdir",
    15: "chmod",
    16: "chown",
    17: "setattr",
    18: "setxattr",
    19: "removexattr",
    20: "mmap_shared_write",
    21: "mprotect_shared_write",
    22: "connect",
    23: "set_acl",
    24: "remove_acl",
    25: "mount",
    26: "mmap_exec",
    27: "mprotect_exec",
}
# Falco event type a denial corresponds to (for the alert's evt.type).
EVT_TYPES: dict[str, str] = {
    "exec": "execve",
    "open_write": "openat",
    "open_trunc": "openat",
    "write": "write",
    "truncate": "truncate",
    "unlink": "unlinkat",
    "rename_from": "renameat2",
    "rename_to": "renameat2",
    "link_from": "linkat",
    "link_to": "linkat",
    "symlink": "symlinkat",
    "mknod": "mknodat",
    "mkdir": "mkdirat",
    "rmdir": "unlinkat",
    "chmod": "fchmodat",
    "chown": "fchownat",
    "setattr": "utimensat",
    "setxattr": "setxattr",
    "removexattr": "removexattr",
    "mmap_shared_write": "mmap",
    "mprotect_shared_write": "mprotect",
    "connect": "connect",
    "set_acl": "setxattr",
    "remove_acl": "removexattr",
    "mount": "mount",
    "mmap_exec": "mmap",
    "mprotect_exec": "mprotect",
}
# Hooks compiled only if the kernel has them; absence is reported, never fatal.
OPTIONAL_HOOKS = ("file_truncate", "inode_set_acl", "inode_remove_acl")
REQUIRED_HOOKS = tuple(h for h in HOOKS.values() if h not in OPTIONAL_HOOKS)

# struct field offsets read by bpf/enforcement/lsm.c: macro -> (struct, member path).
OFFSETS: dict[str, tuple[str, str]] = {
    "OFF_FILE_F_PATH_DENTRY": ("file", "f_path.dentry"),
    "OFF_FILE_F_PATH_MNT": ("file", "f_path.mnt"),
    "OFF_FILE_F_MODE": ("file", "f_mode"),
    "OFF_FILE_F_FLAGS": ("file", "f_flags"),
    "OFF_PATH_DENTRY": ("path", "dentry"),
    "OFF_PATH_MNT": ("path", "mnt"),
    "OFF_DENTRY_D_PARENT": ("dentry", "d_parent"),
    "OFF_DENTRY_D_INODE": ("dentry", "d_inode"),
    "OFF_DENTRY_D_SB": ("dentry", "d_sb"),
    "OFF_DENTRY_D_NAME_NAME": ("dentry", "d_name.name"),
    "OFF_SB_S_DEV": ("super_block", "s_dev"),
    "OFF_INODE_I_INO": ("inode", "i_ino"),
    "OFF_MOUNT_MNT": ("mount", "mnt"),
    "OFF_MOUNT_MNT_PARENT": ("mount", "mnt_parent"),
    "OFF_MOUNT_MNT_MOUNTPOINT": ("mount", "mnt_mountpoint"),
    "OFF_BPRM_FILE": ("linux_binprm", "file"),
    "OFF_TASK_REAL_PARENT": ("task_struct", "real_parent"),
    "OFF_TASK_TGID": ("task_struct", "tgid"),
    "OFF_VMA_VM_FILE": ("vm_area_struct", "vm_file"),
    "OFF_VMA_VM_FLAGS": ("vm_area_struct", "vm_flags"),
}
# Sizes the C code assumes for the fields it reads by value.
SIZES: dict[tuple[str, str], int] = {
    ("file", "f_mode"): 4,
    ("file", "f_flags"): 4,
    ("super_block", "s_dev"): 4,
    ("inode", "i_ino"): 8,
    ("task_struct", "tgid"): 4,
    ("vm_area_struct", "vm_flags"): 8,
}
# Hooks whose argument lists differ between kernels: macro -> (hook, argument name, allowed).
ARG_POSITIONS: dict[str, tuple[str, str, tuple[int, ...]]] = {
    "SETATTR_DENTRY_ARG": ("inode_setattr", "dentry", (0, 1)),
    "SETXATTR_DENTRY_ARG": ("inode_setxattr", "dentry", (0, 1)),
    "REMOVEXATTR_DENTRY_ARG": ("inode_removexattr", "dentry", (0, 1)),
}

_log = structlog.get_logger("sentinel.lsm")

MAX_OPEN_FILES = 65536
NAME_LEN = 64


class LsmError(RuntimeError):
    """BPF LSM enforcement cannot be set up (message says why and what to do)."""


class _Event(ctypes.Structure):
    """Mirror of ``struct deny_event`` in bpf/enforcement/lsm.c."""

    _fields_ = [
        ("ident_ino", ctypes.c_uint64),
        ("ident_dev", ctypes.c_uint32),
        ("rule", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("ppid", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("hook", ctypes.c_uint8),
        ("op", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("nnames", ctypes.c_uint8),
        ("port", ctypes.c_uint16),
        ("truncated", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("gen", ctypes.c_uint32),
        ("addr", ctypes.c_uint8 * 16),
        ("comm", ctypes.c_char * 16),
        ("names", (ctypes.c_char * NAME_LEN) * 8),
    ]


@dataclass(frozen=True, slots=True)
class DenyEvent:
    """One operation the kernel denied. ``path`` for file/exec denials, address for connect."""

    rule: str
    hook: str
    operation: str
    pid: int
    tid: int
    ppid: int
    uid: int
    comm: str
    time_ns: int
    path: str | None = None
    address: str | None = None
    port: int | None = None

    def fields(self) -> dict[str, Any]:
        """The denial as a flat Falco-style event (what the engine and alerts consume)."""
        out: dict[str, Any] = {
            "evt.type": EVT_TYPES.get(self.operation, self.operation),
            "evt.time": self.time_ns,
            "proc.pid": self.pid,
            "thread.tid": self.tid,
            "proc.ppid": self.ppid,
            "proc.name": self.comm,
            "user.uid": self.uid,
            "sentinel.lsm.hook": self.hook,
            "sentinel.lsm.operation": self.operation,
        }
        if self.path is not None:
            out["fd.name"] = self.path
            if self.operation == "exec":
                out["proc.exepath"] = self.path
        if self.address is not None:
            out["fd.sip"] = self.address
            out["fd.sport"] = self.port
            out["fd.name"] = (
                f"[{self.address}]:{self.port}"
                if ":" in self.address
                else f"{self.address}:{self.port}"
            )
        return out


def _cflags(btf: Btf, hooks: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """-D flags for bpf/enforcement/lsm.c, and the optional hooks this kernel lacks."""
    missing_required = [h for h in REQUIRED_HOOKS if h not in hooks]
    if missing_required:
        raise LsmError(f"this kernel lacks BPF LSM hooks Sentinel needs: {missing_required}")
    try:
        flags = btf.cflags(OFFSETS)
        for (s, m), size in SIZES.items():
            if btf.member_size(s, m) != size:
                raise LsmError(f"struct {s}.{m} is {btf.member_size(s, m)} bytes, expected {size}")
        for macro, (hook, arg, allowed) in ARG_POSITIONS.items():
            pos = arg_index(hooks, hook, arg)
            if pos not in allowed:
                raise LsmError(f"BPF LSM hook {hook}: argument {arg!r} at unexpected {pos}")
            flags.append(f"-D{macro}={pos}")
    except BtfError as exc:
        raise LsmError(
            f"kernel BTF does not describe what bpf/enforcement/lsm.c reads: {exc}"
        ) from exc
    lacking = []
    for hook in OPTIONAL_HOOKS:
        if hook in hooks and (hook == "file_truncate" or arg_index(hooks, hook, "dentry") == 1):
            flags.append(f"-DHAVE_{hook}=1")
        else:
            lacking.append(hook)
    flags += [
        f"-DMAX_IDENTS={MAX_IDENTS}",
        f"-DMAX_NETS={MAX_NETS}",
        f"-DMAX_NET_PORTS={MAX_NET_PORTS}",
        f"-DMAX_OPEN_FILES={MAX_OPEN_FILES}",
    ]
    return flags, lacking


# Maps whose fds the enforcer keeps: the policy, the deny events, the counters, write_ok.
CHILD_MAPS = (*POLICY_MAPS, "deny_events", "counters", "write_ok")


def _load(cflags: list[str], hooks: list[str]) -> Loaded:
    """Compile bpf/enforcement/lsm.c and load (verify) every program in a short-lived child process.

    Why a child: bcc brings LLVM, ~130 MB of resident memory that the long-lived process would
    keep for its whole life (see :mod:`sentinel.kernel.loader`). Nothing is attached yet:
    LsmEnforcer fills the policy maps first, then attaches all programs (or none).
    """
    try:
        return load_in_child(
            BPF_DIR / "enforcement" / "lsm.c", cflags, list(CHILD_MAPS), timeout=900, lsm=hooks
        )
    except LoaderError as exc:
        raise LsmError(str(exc)) from None


def _names(ev: _Event) -> Iterator[str]:
    for i in range(min(ev.nnames, 8)):
        yield ev.names[i].value.decode("utf-8", "surrogateescape")


class LsmEnforcer:
    """Loads the LSM programs for ``policy`` and reports each denial to ``on_deny``.

    Enforcement starts when the constructor returns and ends at :meth:`close` (which detaches
    and unloads every program). Events are delivered from a background thread unless
    ``thread=False``, in which case the caller calls :meth:`poll`. ``lost_events`` counts
    denials whose event did not fit the ring buffer (the operation was still denied).
    """

    def __init__(
        self,
        policy: DenyPolicy | MapPlan,
        on_deny: Callable[[DenyEvent], None],
        *,
        thread: bool = True,
        ring_pages: int = 64,
        check_available: bool = True,
    ) -> None:
        self.plan: MapPlan = policy if isinstance(policy, MapPlan) else build_plan(policy)
        try:
            check_size(self.plan)
        except MapsError as exc:
            raise LsmError(str(exc)) from None
        self._on_deny = on_deny
        if check_available:
            ok, why = lsm_available()
            if not ok:
                raise LsmError(why)
        try:
            btf = vmlinux_btf()
        except BtfError as exc:
            raise LsmError(f"BPF LSM enforcement needs kernel BTF: {exc}") from exc
        hooks = lsm_hooks(btf)
        flags, self.missing_hooks = _cflags(btf, hooks)
        flags.append(f"-DRING_PAGES={ring_pages}")
        hooks_to_attach = [h for h in HOOKS.values() if h not in self.missing_hooks]
        # file_free_security first, so that no write_ok entry can outlive its file.
        hooks_to_attach.sort(key=lambda h: h != "file_free_security")
        t0 = time.monotonic()
        # Every program is verified (in the child) before any is attached: a kernel that
        # rejects one hook must not be left half-enforcing.
        self._loaded = _load(flags, hooks_to_attach)
        self.compile_seconds = time.monotonic() - t0
        self._closed = False
        self.callback_errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reader: RingBufferReader | None = None
        try:
            self.maps = PolicyMaps({m: self._loaded.maps[m] for m in POLICY_MAPS})
            self.maps.install(self.plan)
            self._reader = RingBufferReader(
                self._loaded.maps["deny_events"], ring_pages * mmap.PAGESIZE
            )
            self._ncpus = possible_cpus()
            for hook in hooks_to_attach:
                try:
                    self._loaded.links[hook] = attach_lsm(self._loaded.progs[hook])
                except OSError as exc:
                    raise LsmError(f"attaching the {hook} program failed: {exc}") from exc
            # Only now may file_open cache "allowed" verdicts (see write_ok in lsm.c).
            self.maps.set_config(0, 1)
        except BaseException:
            if self._reader is not None:
                self._reader.close()
            self._loaded.close()  # closing the link fds detaches, the last fds unload
            raise
        self.attached_hooks = sorted(self._loaded.links)
        self.load_seconds = time.monotonic() - t0
        self._thread: threading.Thread | None = None
        if thread:
            self._thread = threading.Thread(target=self._run, name="sentinel-lsm", daemon=True)
            self._thread.start()

    # -- maps ------------------------------------------------------------------------------

    def update(self, policy: DenyPolicy | MapPlan) -> None:
        """Replace the enforced policy live (see :class:`.lsm_maps.PolicyMaps`).

        Raises PolicyError (a path that cannot be resolved) or LsmError (too large, or a map
        refused an entry); either way the old policy is still enforced. An empty policy is
        allowed: the hooks stay attached and return at once.
        """
        plan = policy if isinstance(policy, MapPlan) else build_plan(policy)
        # Not under self._lock: the poll thread holds it while delivering events, and under a
        # storm of denials it would hardly ever let go (measured: a reload waited > 5 min).
        if self._closed:
            raise LsmError("the enforcer is closed")
        try:
            self.maps.update(plan)
        except MapsError as exc:
            raise LsmError(str(exc)) from None
        self.plan = plan

    @property
    def generation(self) -> int:
        """How many times the policy was replaced since load."""
        return self.maps.gen

    # -- events ----------------------------------------------------------------------------

    def _decode(self, ev: _Event) -> DenyEvent:
        # The event names a rule index of the generation that denied (maybe not the current).
        plan = self.maps.plan_for(ev.gen)
        rules = plan.rules
        rule = rules[ev.rule - 1] if 0 < ev.rule <= len(rules) else f"#{ev.rule}"
        op = OPERATIONS.get(ev.op, f"op{ev.op}")
        common: dict[str, Any] = {
            "rule": rule,
            "hook": HOOKS.get(ev.hook, f"hook{ev.hook}"),
            "operation": op,
            "pid": ev.pid,
            "tid": ev.tid,
            "ppid": ev.ppid,
            "uid": ev.uid,
            "comm": ev.comm.decode("utf-8", "replace"),
            "time_ns": time.time_ns(),
        }
        if op == "connect":
            raw = bytes(ev.addr)
            addr = ipaddress.IPv6Address(raw)
            mapped = addr.ipv4_mapped
            shown = str(mapped) if ev.family == socket.AF_INET and mapped else str(addr)
            return DenyEvent(**common, address=shown, port=ev.port)
        # ident 0/0: an exec denied for being too deep to check; only the tail is known.
        base = plan.ident_paths.get(Ident(ev.ident_dev, ev.ident_ino), "/...")
        below = list(reversed(list(_names(ev))))
        if ev.truncated and ev.ident_ino:
            below.insert(0, "...")
        path = os.path.join(base, *below) if below else base
        return DenyEvent(**common, path=path)

    def _handle(self, raw: bytes) -> None:
        if len(raw) < ctypes.sizeof(_Event):
            self.callback_errors += 1
            _log.error("lsm deny event too short", size=len(raw))
            return
        ev = _Event.from_buffer_copy(raw)
        decoded = self._decode(ev)
        try:
            self._on_deny(decoded)
        except Exception:
            # A failing consumer must not stop delivery (the kernel keeps denying regardless).
            self.callback_errors += 1
            _log.exception("lsm deny callback failed", rule=decoded.rule, hook=decoded.hook)

    def poll(self, timeout_ms: int = 100) -> None:
        """Deliver pending events to ``on_deny`` (only needed with ``thread=False``)."""
        reader = self._reader
        if reader is None or self._closed:
            return
        reader.wait(timeout_ms)
        self._consume()

    def _consume(self) -> None:
        with self._lock:
            if self._closed or self._reader is None:
                return
            batch = self._reader.read_batch()
        for raw in batch:
            self._handle(raw)

    def _run(self) -> None:
        reported = 0
        next_check = time.monotonic() + 1.0
        while not self._stop.is_set():
            self.poll(100)
            if time.monotonic() >= next_check:
                # Lost events are never silent: the operations were denied, their alerts not.
                next_check = time.monotonic() + 1.0
                lost = self.lost_events
                if lost > reported:
                    _log.warning(
                        "lsm deny events lost (ring buffer full); the operations were denied",
                        lost_since_last=lost - reported,
                        lost_total=lost,
                    )
                    reported = lost

    def _counter(self, idx: int) -> int:
        return sum(percpu_u64(self._loaded.maps["counters"], idx, self._ncpus))

    @property
    def lost_events(self) -> int:
        """Denials whose event could not be reserved in the ring buffer."""
        return self._counter(0)

    @property
    def denials(self) -> int:
        """Operations denied in the kernel since load."""
        return self._counter(1)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Detach and unload every program: enforcement stops. Idempotent."""
        if self._closed:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with suppress(Exception):
            self._consume()
        with self._lock:
            self._closed = True
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            self._loaded.close()  # link fds first: detaches every program

    def __enter__(self) -> LsmEnforcer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
