"""A small world for decoding records without a kernel: a process table with a known process
tree, and records built as the BPF side would emit them (sentinel.events.builder).

The table reads no real /proc (its root is an empty directory), so what the fields say comes
from the records and this tree alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sentinel.enrichment.event import LiveEvent
from sentinel.enrichment.live import Enricher
from sentinel.enrichment.proctable import Proc, ProcessTable
from sentinel.events.builder import build
from sentinel.events.exec import ExeFacts
from sentinel.events.net import FD_IS_RESULT, SERVER_LOCAL

PID, PARENT, SHELL = 4242, 4200, 4100  # the process, its parent, the session's login shell
TREE = [
    Proc(pid=1, ppid=0, comm="systemd", exe="/sbin/init", exepath="/usr/lib/systemd/systemd"),
    Proc(
        pid=SHELL,
        ppid=1,
        comm="bash",
        exe="-bash",
        exepath="/usr/bin/bash",
        sid=SHELL,
        pgid=SHELL,
        cwd="/root",
        tty=34816,
    ),
    Proc(
        pid=PARENT,
        ppid=SHELL,
        comm="make",
        exe="make",
        exepath="/usr/bin/make",
        args=["all"],
        sid=SHELL,
        pgid=PARENT,
        cwd="/src",
    ),
    Proc(
        pid=PID,
        ppid=PARENT,
        comm="tester",
        exe="./tester",
        exepath="/opt/t/tester",
        args=["-v", "x"],
        sid=SHELL,
        pgid=PARENT,
        cwd="/src",
        tty=34816,
        start_ns=5,
        env=["HOME=/root", "PATH=/usr/bin:/bin", "TERM=xterm"],
        caps=(0, (1 << 41) - 1, (1 << 41) - 1),
        exe_facts=ExeFacts(
            ino=131, ctime_ns=1, mtime_ns=1, mode=0o100755, uid=0, gid=0, flags=0, writable=True
        ),
    ),
]

# One record per event type whose every field has a value (the fields test walks them all).
SAMPLES: dict[str, dict[str, Any]] = {
    "execve": {
        "comm": "sh",
        "ppid": PARENT,
        "args": ["/bin/sh", "-c", "id"],
        "filename": "/bin/sh",
        "exe": "/usr/bin/dash",
        "env": ["HOME=/root", "LD_PRELOAD=/tmp/x.so"],
        "cap_permitted": (1 << 41) - 1,
        "cap_effective": (1 << 41) - 1,
        "exe_ino": 1234,
        "exe_ctime": 1_700_000_000_000_000_000,
        "exe_mtime": 1_700_000_000_000_000_000,
        "exe_mode": 0o100755,
        "exe_flags": 4 | 2,
        "cwd": "/root",
        "tty": 34817,
        "sid": SHELL,
        "pgid": PARENT,
    },
    "execveat": {
        "comm": "tool",
        "ppid": PARENT,
        "args": ["tool"],
        "filename": "/dev/fd/3",
        "exe": "/memfd:x (deleted)",
        "env": ["PATH=/bin", "HOME=/"],
        "exe_ino": 99,
        "exe_ctime": 1_700_000_000_000_000_000,
        "exe_mode": 0o100777,
        "exe_flags": 1,
        "cwd": "/",
        "sid": SHELL,
        "pgid": PARENT,
    },
    "clone": {"child_pid": 5000, "child_tid": 5000, "ppid": PARENT},
    "procexit": {"exit_code": 256},
    "open": {"path": "/etc/passwd", "flags": 0o2000000, "mode": 0, "res": 3},
    "openat": {"path": "shadow", "base": "/etc", "dirfd": 5, "flags": 0o2, "res": 4},
    "openat2": {"path": "/tmp/x", "flags": 0o101, "mode": 0o644, "res": 5},
    "creat": {"path": "out.txt", "base": "/src", "flags": 0o1101, "mode": 0o755, "res": 6},
    "unlink": {"path": "old.log", "base": "/var/log", "res": 0},
    "unlinkat": {"path": "sub/x", "base": "/var/tmp", "dirfd": 7, "flags": 0x200, "res": 0},
    "connect": {
        "fd": 4,
        "res": 0,
        "addr": ("198.51.100.7", 443),
        "laddr": "10.0.0.2",
        "lport": 40000,
        "state": 1,
        "sock_type": 1,
        "protocol": 6,
    },
    "mkdir": {"path": "new", "base": "/src", "mode": 0o755, "res": 0},
    "mkdirat": {"path": "d", "base": "/var/tmp", "dirfd": 7, "mode": 0o700, "res": 0},
    "rmdir": {"path": "/tmp/old", "res": 0},
    "chmod": {"path": "/usr/bin/tool", "mode": 0o4755, "res": 0},
    "fchmodat": {"path": "x.sh", "base": "/tmp", "dirfd": 3, "mode": 0o755, "res": 0},
    "umount2": {"path": "/mnt/host", "flags": 2, "res": 0},
    "chdir": {"path": "..", "base": "/src", "res": 0},
    "fchdir": {"mode": 3, "base": "/etc", "res": 0},
    "rename": {"path0": "a", "path1": "/tmp/b", "base0": "/src", "base1": "/src", "res": 0},
    "renameat": {
        "path0": "a",
        "path1": "b",
        "dirfd0": 3,
        "dirfd1": 4,
        "base0": "/etc",
        "base1": "/tmp",
        "res": 0,
    },
    "renameat2": {
        "path0": "a",
        "path1": "b",
        "base0": "/etc",
        "base1": "/etc",
        "flags": 1,
        "res": 0,
    },
    "link": {"path0": "/etc/shadow", "path1": "s", "base0": "/", "base1": "/tmp", "res": 0},
    "linkat": {
        "path0": "shadow",
        "path1": "s",
        "dirfd0": 3,
        "base0": "/etc",
        "base1": "/tmp",
        "flags": 0x400,
        "res": 0,
    },
    "symlink": {"path0": "/etc/shadow", "path1": "s", "dirfd0": -1, "base1": "/tmp", "res": 0},
    "symlinkat": {
        "path0": "/",
        "path1": "root",
        "dirfd0": -1,
        "dirfd1": 5,
        "base1": "/tmp",
        "res": 0,
    },
    "accept": {
        "fd": 5,
        "res": 5,
        "how": SERVER_LOCAL | FD_IS_RESULT,
        "laddr": "10.0.0.2",
        "lport": 22,
        "raddr": "203.0.113.9",
        "rport": 51000,
        "state": 1,
        "sock_type": 1,
        "protocol": 6,
    },
    "accept4": {
        "fd": 6,
        "res": 6,
        "how": SERVER_LOCAL | FD_IS_RESULT,
        "laddr": "::1",
        "lport": 8080,
        "raddr": "::1",
        "rport": 40001,
        "sk_family": 10,
        "state": 1,
        "sock_type": 1,
        "protocol": 6,
        "v0": 0o4000,
    },
    "bind": {
        "fd": 3,
        "res": 0,
        "how": SERVER_LOCAL,
        "addr": ("0.0.0.0", 4444),
        "laddr": "0.0.0.0",
        "lport": 4444,
        "sock_type": 1,
        "protocol": 6,
    },
    "listen": {
        "fd": 3,
        "res": 0,
        "how": SERVER_LOCAL,
        "laddr": "0.0.0.0",
        "lport": 4444,
        "state": 10,
        "sock_type": 1,
        "protocol": 6,
        "v0": 128,
    },
    "socket": {
        "fd": 3,
        "res": 3,
        "how": FD_IS_RESULT,
        "v0": 2,
        "v1": 2,
        "v2": 17,
        "laddr": "0.0.0.0",
        "sock_type": 2,
        "protocol": 17,
    },
    "sendto": {
        "fd": 4,
        "res": 40,
        "addr": ("8.8.8.8", 53),
        "laddr": "10.0.0.2",
        "lport": 53000,
        "sock_type": 2,
        "protocol": 17,
        "v0": 40,
    },
    "recvfrom": {
        "fd": 4,
        "res": 90,
        "addr": ("8.8.8.8", 53),
        "laddr": "10.0.0.2",
        "lport": 53000,
        "sock_type": 2,
        "protocol": 17,
        "v0": 512,
    },
    "sendmsg": {
        "fd": 4,
        "res": 12,
        "laddr": "10.0.0.2",
        "lport": 40002,
        "raddr": "192.0.2.1",
        "rport": 443,
        "state": 1,
        "sock_type": 1,
        "protocol": 6,
        "v0": 12,
    },
    "recvmsg": {
        "fd": 4,
        "res": 12,
        "laddr": "10.0.0.2",
        "lport": 40002,
        "raddr": "192.0.2.1",
        "rport": 443,
        "state": 1,
        "sock_type": 1,
        "protocol": 6,
        "v0": 64,
    },
    "dup": {"fd": 3, "res": 5, "path": "/etc/passwd", "i_mode": 0o100644},
    "dup2": {
        "fd": 4,
        "res": 0,
        "v0": 0,
        "i_mode": 0o140777,
        "sk_family": 2,
        "laddr": "10.0.0.2",
        "lport": 40003,
        "raddr": "198.51.100.7",
        "rport": 4444,
        "state": 1,
        "sock_type": 1,
        "protocol": 6,
    },
    "dup3": {"fd": 4, "res": 1, "v0": 1, "v1": 0o2000000, "path": "/dev/pts/1", "i_mode": 0o20620},
    "fchmod": {"fd": 3, "res": 0, "v0": 0o755, "path": "/tmp/x.sh", "i_mode": 0o100644},
    "setuid": {"res": 0, "v0": 0},
    "setgid": {"res": 0, "v0": 0},
    "setresgid": {"res": 0, "v0": 0, "v1": 0, "v2": 0},
    "setreuid": {"res": 0, "v0": 1000, "v1": 0},
    "setregid": {"res": 0, "v0": 1000, "v1": 0},
    "capset": {"res": 0, "cap_permitted": 1 << 21, "cap_effective": 1 << 21},
    "setresuid": {"res": 0, "v0": 0, "v1": 0, "v2": 0},
    "setns": {"res": 0, "v0": 3, "v1": 0x20000},
    "unshare": {"res": 0, "v0": 0x10000000},
    "ptrace": {"res": 0, "v0": 16, "v1": 1, "v2": 0, "v3": 0},
    "kill": {"res": 0, "v0": 9, "v1": 1},
    "userfaultfd": {"res": 3, "v0": 0o2000000},
    "bpf": {"res": 4, "v0": 5},
    "memfd_create": {"res": 3, "v0": 1, "s0": "payload"},
    "io_uring_setup": {"res": 3, "v0": 8, "v1": 8, "v2": 16, "v3": 0, "v4": 0, "v5": 0x1FFF},
    "init_module": {"res": 0, "v0": 4096, "s0": "param=1"},
    "finit_module": {"res": 0, "v0": 3, "v1": 0, "s0": ""},
    "mount": {"res": 0, "v0": 0, "s0": "/dev/sda1", "s1": "/mnt/host", "s2": "ext4"},
}


@pytest.fixture
def world(tmp_path: Path) -> Enricher:
    """An enricher over a table that holds TREE (and reads nothing from the real /proc)."""
    table = ProcessTable(proc_root=str(tmp_path))
    for p in TREE:
        table.insert(replace(p, args=list(p.args)))
    return Enricher(table=table)


@pytest.fixture
def event(world: Enricher) -> Callable[..., LiveEvent]:
    """``event("openat", path=...)``: the live event of one built record (pid PID unless
    given); process records update the table, as in ``sentinel run``."""

    def make(evt_type: str, **values: Any) -> LiveEvent:
        values.setdefault("pid", PID)
        values.setdefault("tid", values["pid"])
        values.setdefault("ppid", PARENT)
        return world.event(build(evt_type, **values))

    return make
