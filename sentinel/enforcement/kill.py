"""Kill mode (``enforcement.unavailable: kill``): where BPF LSM is missing, tracepoint programs
send SIGKILL to a process doing what a deny rule forbids (Tetragon's ``Sigkill`` action).

Why not deny: without BPF LSM no program can make a system call fail. A tracepoint program
can only see the call (at entry or exit) and signal the caller; SIGKILL is handled on the
way back to user space, so the process never runs another instruction of its own. What the
call itself did is another matter, and this is what kill mode guarantees, measured on this
project's host kernel (tests/kernel/test_kill.py):

* **exec** of a denied binary (exact, below a denied directory, a memfd, a file in an
  overlayfs upper layer): killed at ``sched_process_exec``, after the kernel loaded the new
  image and before it runs a single instruction. The exec happened (the old image is gone,
  credentials of a set-uid binary were applied). A denied *script* is not seen: by then the
  kernel only knows its interpreter.
* **open for writing** of a protected file (or a new file in a protected directory, or a
  device holding protected data): killed at syscall exit, before it can use the descriptor.
  O_TRUNC truncation and O_CREAT creation have happened. An O_RDONLY|O_TRUNC open is not
  judged.
* **write(), pwrite64(), writev(), pwritev(), pwritev2()** on a protected file through any
  descriptor (also one opened before the policy): the signal is sent at syscall entry; a
  buffered write to tmpfs or ext4 then stops before copying any byte (the copy loop checks
  for a fatal signal first), but the file's modification time has been updated by then, and
  other write paths (direct I/O, other file systems) may complete.
* **connect** (and TCP Fast Open through sendto/sendmsg with MSG_FASTOPEN) to a denied
  address: killed at syscall exit, judged on the peer address the socket really has (kernel
  state, not the caller's memory). The TCP handshake has completed: the peer may see a
  connection that closes at once, without data; with Fast Open, the data of that very
  sendto has reached the peer (nothing after it).

Not judged at all (they need BPF LSM): rename, unlink, link, mkdir, rmdir, mknod, symlink,
chmod, chown, utimes, truncate(), xattrs, ioctls, mounts, mmap, io_uring and AIO writes,
splice/sendfile/copy_file_range, fallocate, unconnected UDP and SCTP sends. Every kill is an
alert with ``"action": "kill"``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sentinel.enforcement import cflags as enforcement_cflags
from sentinel.enforcement import program
from sentinel.enforcement.abi import KILL_PROBES
from sentinel.enforcement.enforcer import CHILD_MAPS, DenyEvent, Enforcer
from sentinel.enforcement.policy import DenyPolicy, MapPlan
from sentinel.kernel.btf import BtfError, vmlinux_btf
from sentinel.kernel.loader import LoaderError, load_in_child

__all__ = ["KillEnforcer", "KillError"]


class KillError(RuntimeError):
    """Kill mode cannot be set up (the message says why)."""


class KillEnforcer(Enforcer):
    """Attaches the kill programs for ``policy`` and reports each kill to ``on_deny``."""

    error = KillError

    def __init__(
        self,
        policy: DenyPolicy | MapPlan,
        on_deny: Callable[[DenyEvent], None],
        *,
        thread: bool = True,
        ring_pages: int = 64,
    ) -> None:
        super().__init__(policy, on_deny, thread=thread, ring_pages=ring_pages)
        try:
            built = enforcement_cflags.kill(vmlinux_btf())
        except (enforcement_cflags.CflagsError, BtfError) as exc:
            raise KillError(str(exc)) from None
        self.notes = built.notes
        t0 = time.monotonic()
        # The child attaches every program as it loads it; until the maps are filled below
        # the programs find an empty policy and return at once.
        try:
            loaded = load_in_child(
                program.text("kill"),
                [*built.flags, f"-DRING_PAGES={ring_pages}"],
                list(CHILD_MAPS),
                timeout=900,
            )
        except LoaderError as exc:
            raise KillError(f"loading the kill programs failed: {exc}") from None
        self.compile_seconds = time.monotonic() - t0
        self._start(loaded, lambda: sorted(loaded.links))
        expected = {
            f"raw:{p}" if p == "sched_process_exec" else f"tp:syscalls:{p}" for p in KILL_PROBES
        }
        missing = expected - set(self.attached)
        if missing:
            self.close()
            raise KillError(f"kill programs not attached: {sorted(missing)}")

    def __enter__(self) -> KillEnforcer:
        return self
