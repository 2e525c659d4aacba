"""BPF LSM enforcement: load ``lsm.c``, fill its maps from a DenyPolicy, stream denials.

Why in the kernel: a deny decision cannot wait for Python, so the whole decision lives in BPF
maps and LSM hooks that return ``-EPERM`` before the operation happens; user space only hears
about it afterwards (one ring-buffer event per denial, handed to ``on_deny``). How files are
matched (identities of every inode of a protected tree, not strings) is explained in
:mod:`.policy`; which hooks exist on this kernel comes from BTF (:mod:`.lsm_btf`); whether BPF
LSM works at all is :func:`lsm_available` (:mod:`.probe`).

This process never imports bcc: a short-lived child (:mod:`sentinel.kernel.loader`) compiles
the program text (:mod:`.program`) and loads every program, then hands back program and map
fds; here the policy maps are filled by bpf(2), each program is attached with one bpf(2) call
(closing its link fd detaches it), and the ring buffer is read from its mmap.

The hooks (``bpf/enforcement/lsm.c`` says why each): ``file_open`` (writes, truncation, and
every exec: FMODE_EXEC), ``file_permission``, ``file_ioctl`` (+ compat), ``mmap_file``,
``file_mprotect``; the ``inode_*`` hooks for entries and attributes (create, mknod, mkdir,
symlink, link, unlink, rmdir, rename, setattr, xattrs, ACLs); ``sb_mount``, ``move_mount``,
``sb_umount``, ``sb_pivotroot``, ``sb_kern_mount``; ``uring_cmd``; ``socket_connect``,
``socket_sendmsg``, ``sctp_bind_connect``.

Known limits: a shared writable mapping made before the policy loaded keeps working (the
kernel does not revoke mappings); the exec walk is bounded (32 levels, mount crossings
included), and an exec it cannot place (deeper, or through a disconnected dentry) is denied
while exec-prefix rules are loaded (fail closed). The policy is replaced live with
:meth:`LsmEnforcer.update`: every policy map holds two slots, a reload fills the idle one and
publishes it with one generation switch (:mod:`.lsm_maps`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sentinel.enforcement import cflags as enforcement_cflags
from sentinel.enforcement import program
from sentinel.enforcement.abi import HOOKS, LSM_HOOKS, OPERATIONS, OPTIONAL_HOOKS
from sentinel.enforcement.enforcer import CHILD_MAPS, DenyEvent, Enforcer
from sentinel.enforcement.lsm_btf import lsm_hooks
from sentinel.enforcement.policy import ConnectDeny, DenyPolicy, MapPlan, PolicyError
from sentinel.enforcement.probe import lsm_available
from sentinel.kernel.btf import Btf, BtfError, vmlinux_btf
from sentinel.kernel.loader import Loaded, LoaderError, attach_lsm, load_in_child

__all__ = [
    "HOOKS",
    "OPERATIONS",
    "OPTIONAL_HOOKS",
    "REQUIRED_HOOKS",
    "ConnectDeny",
    "DenyEvent",
    "DenyPolicy",
    "LsmEnforcer",
    "LsmError",
    "PolicyError",
    "lsm_available",
    "lsm_cflags",
]

REQUIRED_HOOKS = enforcement_cflags.REQUIRED_HOOKS


class LsmError(RuntimeError):
    """BPF LSM enforcement cannot be set up (message says why and what to do)."""


def lsm_cflags(btf: Btf, hooks: dict[str, list[str]]) -> enforcement_cflags.Cflags:
    """-D flags for lsm.c on this kernel (LsmError when it cannot be compiled for it)."""
    try:
        return enforcement_cflags.lsm(btf, hooks)
    except enforcement_cflags.CflagsError as exc:
        raise LsmError(str(exc)) from None


def _load(flags: list[str], hooks: list[str]) -> Loaded:
    """Compile lsm.c and load (verify) every program in a short-lived child process.

    Why a child: bcc brings LLVM, ~130 MB of resident memory that the long-lived process would
    keep for its whole life (see :mod:`sentinel.kernel.loader`). Nothing is attached yet: the
    policy maps are filled first, then all programs attach (or none).
    """
    try:
        return load_in_child(program.text("lsm"), flags, list(CHILD_MAPS), timeout=900, lsm=hooks)
    except LoaderError as exc:
        raise LsmError(str(exc)) from None


class LsmEnforcer(Enforcer):
    """Loads the LSM programs for ``policy`` and reports each denial to ``on_deny``.

    Enforcement starts when the constructor returns and ends at :meth:`close` (which detaches
    and unloads every program).
    """

    error = LsmError

    def __init__(
        self,
        policy: DenyPolicy | MapPlan,
        on_deny: Callable[[DenyEvent], None],
        *,
        thread: bool = True,
        ring_pages: int = 64,
        check_available: bool = True,
    ) -> None:
        super().__init__(policy, on_deny, thread=thread, ring_pages=ring_pages)
        if check_available:
            ok, why = lsm_available()
            if not ok:
                raise LsmError(why)
        try:
            btf = vmlinux_btf()
        except BtfError as exc:
            raise LsmError(f"BPF LSM enforcement needs kernel BTF: {exc}") from exc
        built = lsm_cflags(btf, lsm_hooks(btf))
        self.missing_hooks = built.lacking
        self.notes = built.notes
        hooks = [h for h in LSM_HOOKS if h not in built.lacking]
        t0 = time.monotonic()
        # Every program is verified (in the child) before any is attached: a kernel that
        # rejects one hook must not be left half-enforcing.
        loaded = _load([*built.flags, f"-DRING_PAGES={ring_pages}"], hooks)
        self.compile_seconds = time.monotonic() - t0

        def attach() -> list[str]:
            for hook in hooks:
                try:
                    loaded.links[hook] = attach_lsm(loaded.progs[hook])
                except OSError as exc:
                    raise LsmError(f"attaching the {hook} program failed: {exc}") from exc
            return sorted(loaded.links)

        self._start(loaded, attach)
        self.attached_hooks = self.attached
        self.load_seconds = time.monotonic() - t0

    def __enter__(self) -> LsmEnforcer:
        return self
