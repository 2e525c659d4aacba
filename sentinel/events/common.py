"""What every record shares: the header, its flag bits, and the fields it alone fills.

Every record the sensor emits starts with the same 64-byte header (``struct hdr``, filled by
``fill_hdr`` in bpf/sensor/common.h): the event code (an index into the event table), the
task's ids, credentials and comm, its cgroup, and a flag word whose bits are declared here for
every family (one place, so no two families reuse a bit).
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
from functools import lru_cache

from sentinel.events.schema import Getters, Layout

HDR = Layout(
    "hdr",
    "u64 ts, u32 type, u32 pid, u32 tid, u32 ppid, u32 uid, u32 gid, u32 loginuid, u32 flags,"
    "u64 cgroup_id, char comm[16], char tcomm[16]",
)

# Header flag bits (``hdr.flags``), for all families.
FLAG_ARGS_TRUNC = 1  # exec: argv longer than the record holds
FLAG_PATH_TRUNC = 2  # file: the path argument longer than the record holds
FLAG_CWD_TRUNC = 4  # exec: the cwd walk was cut short
FLAG_EXE_TRUNC = 8  # exec: the executable's walk was cut short
FLAG_THREAD = 16  # clone: a thread, not a process
FLAG_BASE_DIRFD = 32  # file: a relative path's base is a dirfd (not the cwd)
FLAG_BASE_BAD = 64  # file: the dirfd is not an open file
FLAG_BASE_TRUNC = 128  # file: the base walk was cut short
FLAG_BASE_AFTER = 256  # file: the base walk is the cwd after the call (chdir, fchdir)
FLAG_PATH1_TRUNC = 512  # link: the second path longer than the record holds
FLAG_ENV_TRUNC = 1024  # exec: the environment longer than the record holds
FLAG_KPATH = 2048  # file: a successful open; base holds the kernel's path of the opened file
FLAG_TABLE_ONLY = 4096  # exec: no rule wants it (the prefilter said so); the process table does
FLAG_IO_URING = 8192  # file, link, net: an io_uring request, not a syscall (bpf/sensor/uring.h)
FLAG_BASE1_BAD = 1024  # link: the second path's dirfd is not an open file
FLAG_BASE1_TRUNC = 2048  # link: the second path's base walk was cut short
HEADER_FLAGS = {name: value for name, value in globals().items() if name.startswith("FLAG_")}

# Per event type, the kernel counts events the prefilter dropped (filtered), those it passed
# towards user space, and those of them lost to a full ring buffer: counter index
# code * len(COUNTERS) + position.
COUNTERS = ("filtered", "passed", "lost", "woken")

# A dentry walk buffer (NUL-separated components, leaf first; or a forward path right-aligned
# to end at FWD_END), shared by the families that walk paths (bpf/sensor/common.h).
WALK_SIZE = 768
FWD_END = 512
WALK_DEPTH = 16  # components per walk (each iteration is verified separately: start-up time)

UNSET_LOGINUID = 0xFFFFFFFF
AT_FDCWD = -100


def res_text(ret: int) -> str:
    """``evt.res``: SUCCESS, or the errno's name (ENOENT...)."""
    if ret >= 0:
        return "SUCCESS"
    return errno.errorcode.get(-ret, str(ret))


@lru_cache(maxsize=4096)
def user_name(uid: int) -> str | None:
    """The host's name of a uid (what ``user.name`` and a uid argument show)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


@lru_cache(maxsize=4096)
def user_entry(uid: int) -> tuple[str, str] | None:
    try:
        e = pwd.getpwuid(uid)
    except KeyError:
        return None
    return e.pw_dir, e.pw_shell


@lru_cache(maxsize=4096)
def group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


# The host's name, read once (as Falco does at start-up).
HOSTNAME = os.uname().nodename

# Fields every event type fills from the header and the result alone. The process, user and
# container fields are the process table's and the container resolver's (sentinel.enrichment).
COMMON = Getters()
COMMON("evt.dir")(lambda e: "<")
COMMON("evt.num")(lambda e: e.num)
COMMON("evt.source")(lambda e: "syscall")
COMMON("evt.time")(lambda e: e.clock.epoch(e.rec.ts))
COMMON("evt.rawtime")(lambda e: e.clock.epoch(e.rec.ts))
COMMON("evt.type")(lambda e: e.rec.evt.name)
COMMON("evt.category")(lambda e: e.rec.evt.category.value)
COMMON("thread.tid")(lambda e: e.rec.tid)
COMMON("thread.ismain")(lambda e: e.rec.pid == e.rec.tid)
COMMON("proc.pid")(lambda e: e.rec.pid)
COMMON("user.uid")(lambda e: e.rec.uid)
COMMON("thread.comm")(lambda e: e.rec.tcomm)
COMMON("evt.is_io_uring")(lambda e: bool(e.rec.flags & FLAG_IO_URING))
COMMON("group.gid")(lambda e: e.rec.gid)
COMMON("evt.hostname")(lambda e: HOSTNAME)
COMMON("user.loginuid")(lambda e: -1 if e.rec.loginuid == UNSET_LOGINUID else e.rec.loginuid)


# Capability names by bit (include/uapi/linux/capability.h), as libsinsp prints a set: the
# names of its bits, lowest first, separated by spaces.
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip


def caps_text(mask: int) -> str:
    """A capability set as libsinsp prints it ("CAP_CHOWN CAP_KILL"; "" for none)."""
    return " ".join(name for bit, name in enumerate(CAPABILITIES) if mask >> bit & 1)
