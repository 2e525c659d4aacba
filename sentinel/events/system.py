"""The system family: calls whose arguments are numbers and short strings (credentials,
namespaces, ptrace, signals, BPF, memfd, io_uring, kernel modules, mounts).

One record layout serves them all: the result, six numeric values and three strings, filled by
one BPF handler (``emit_args`` in bpf/sensor/system.h) from the C call each event type's line
gives; and the task's capability sets after the call (credential changes: the process table
follows them). Strings are read from the caller's memory at the syscall's exit (see the
kernel-truth limits in the README: the kernel has its own copy by then, which a racing thread
cannot change, but this record's copy can differ from it).
"""

from __future__ import annotations

from typing import Any

from sentinel.events import schema
from sentinel.events.common import HDR
from sentinel.events.dims import Bind
from sentinel.events.record import Record

STR_SIZE = 256  # the first two strings (paths, names)
STR2_SIZE = 64  # the third (a file system type)
LAYOUT = schema.Layout(
    "sys_ev",
    "s64 res, u64 v0, u64 v1, u64 v2, u64 v3, u64 v4, u64 v5, u64 cap_inheritable,"
    "u64 cap_permitted, u64 cap_effective, u32 s0_len, u32 s1_len, u32 s2_len, u32 pad,"
    f"char s0[{STR_SIZE}], char s1[{STR_SIZE}], char s2[{STR2_SIZE}]",
    base=HDR,
)
_RES = LAYOUT.index["res"]
_V = tuple(LAYOUT.index[f"v{i}"] for i in range(6))
_CAPS = tuple(LAYOUT.index[n] for n in ("cap_inheritable", "cap_permitted", "cap_effective"))
_SLEN = tuple(LAYOUT.index[f"s{i}_len"] for i in range(3))


def value(rec: Record, i: int) -> int:
    return int(rec.fixed[_V[i]])


def string(rec: Record, i: int) -> str:
    raw: bytes = rec.buf(f"s{i}", rec.fixed[_SLEN[i]])
    return raw.decode("utf-8", "surrogateescape")


def caps(rec: Record) -> tuple[int, int, int]:
    """(inheritable, permitted, effective) of the task after the call."""
    f = rec.fixed
    return int(f[_CAPS[0]]), int(f[_CAPS[1]]), int(f[_CAPS[2]])


# ---- value names (what libsinsp's flag tables render) -------------------------------------------

PTRACE_REQUESTS = [
    (0, "PTRACE_TRACEME"), (1, "PTRACE_PEEKTEXT"), (2, "PTRACE_PEEKDATA"),
    (3, "PTRACE_PEEKUSR"), (4, "PTRACE_POKETEXT"), (5, "PTRACE_POKEDATA"),
    (6, "PTRACE_POKEUSR"), (7, "PTRACE_CONT"), (8, "PTRACE_KILL"), (9, "PTRACE_SINGLESTEP"),
    (12, "PTRACE_GETREGS"), (13, "PTRACE_SETREGS"), (14, "PTRACE_GETFPREGS"),
    (15, "PTRACE_SETFPREGS"), (16, "PTRACE_ATTACH"), (17, "PTRACE_DETACH"),
    (18, "PTRACE_GETFPXREGS"), (19, "PTRACE_SETFPXREGS"), (24, "PTRACE_SYSCALL"),
    (0x4200, "PTRACE_SETOPTIONS"), (0x4201, "PTRACE_GETEVENTMSG"), (0x4202, "PTRACE_GETSIGINFO"),
    (0x4203, "PTRACE_SETSIGINFO"), (0x4204, "PTRACE_GETREGSET"), (0x4205, "PTRACE_SETREGSET"),
    (0x4206, "PTRACE_SEIZE"), (0x4207, "PTRACE_INTERRUPT"), (0x4208, "PTRACE_LISTEN"),
    (0x4209, "PTRACE_PEEKSIGINFO"),
]  # fmt: skip
NS_FLAGS = [
    (0x00000080, "CLONE_NEWTIME"), (0x00000200, "CLONE_FS"), (0x00000400, "CLONE_FILES"),
    (0x00020000, "CLONE_NEWNS"), (0x00040000, "CLONE_SYSVSEM"), (0x02000000, "CLONE_NEWCGROUP"),
    (0x04000000, "CLONE_NEWUTS"), (0x08000000, "CLONE_NEWIPC"), (0x10000000, "CLONE_NEWUSER"),
    (0x20000000, "CLONE_NEWPID"), (0x40000000, "CLONE_NEWNET"),
]  # fmt: skip
BPF_CMDS = [
    (0, "BPF_MAP_CREATE"), (1, "BPF_MAP_LOOKUP_ELEM"), (2, "BPF_MAP_UPDATE_ELEM"),
    (3, "BPF_MAP_DELETE_ELEM"), (4, "BPF_MAP_GET_NEXT_KEY"), (5, "BPF_PROG_LOAD"),
    (6, "BPF_OBJ_PIN"), (7, "BPF_OBJ_GET"), (8, "BPF_PROG_ATTACH"), (9, "BPF_PROG_DETACH"),
    (10, "BPF_PROG_TEST_RUN"), (11, "BPF_PROG_GET_NEXT_ID"), (12, "BPF_MAP_GET_NEXT_ID"),
    (13, "BPF_PROG_GET_FD_BY_ID"), (14, "BPF_MAP_GET_FD_BY_ID"), (15, "BPF_OBJ_GET_INFO_BY_FD"),
    (16, "BPF_PROG_QUERY"), (17, "BPF_RAW_TRACEPOINT_OPEN"), (18, "BPF_BTF_LOAD"),
    (19, "BPF_BTF_GET_FD_BY_ID"), (20, "BPF_TASK_FD_QUERY"), (28, "BPF_LINK_CREATE"),
    (29, "BPF_LINK_UPDATE"),
]  # fmt: skip
MEMFD_FLAGS = [(1, "MFD_CLOEXEC"), (2, "MFD_ALLOW_SEALING"), (4, "MFD_HUGETLB"),
               (8, "MFD_NOEXEC_SEAL"), (16, "MFD_EXEC")]  # fmt: skip
UFFD_FLAGS = [(0o4000, "O_NONBLOCK"), (0o2000000, "O_CLOEXEC"), (1, "UFFD_USER_MODE_ONLY")]
MOUNT_FLAGS = [
    (1, "MS_RDONLY"), (2, "MS_NOSUID"), (4, "MS_NODEV"), (8, "MS_NOEXEC"),
    (16, "MS_SYNCHRONOUS"), (32, "MS_REMOUNT"), (64, "MS_MANDLOCK"), (128, "MS_DIRSYNC"),
    (1024, "MS_NOATIME"), (2048, "MS_NODIRATIME"), (4096, "MS_BIND"), (8192, "MS_MOVE"),
    (16384, "MS_REC"), (32768, "MS_SILENT"), (1 << 16, "MS_POSIXACL"), (1 << 17, "MS_UNBINDABLE"),
    (1 << 18, "MS_PRIVATE"), (1 << 19, "MS_SLAVE"), (1 << 20, "MS_SHARED"),
    (1 << 21, "MS_RELATIME"), (1 << 22, "MS_KERNMOUNT"), (1 << 23, "MS_I_VERSION"),
    (1 << 24, "MS_STRICTATIME"), (1 << 25, "MS_LAZYTIME"),
]  # fmt: skip
MODULE_FLAGS = [(1, "MODULE_INIT_IGNORE_MODVERSIONS"), (2, "MODULE_INIT_IGNORE_VERMAGIC")]
IO_URING_FLAGS = [
    (1, "IORING_SETUP_IOPOLL"), (2, "IORING_SETUP_SQPOLL"), (4, "IORING_SETUP_SQ_AFF"),
    (8, "IORING_SETUP_CQSIZE"), (16, "IORING_SETUP_CLAMP"), (32, "IORING_SETUP_ATTACH_WQ"),
    (64, "IORING_SETUP_R_DISABLED"),
]  # fmt: skip
SIGNALS = [(n, f"SIG{name}") for n, name in (
    (1, "HUP"), (2, "INT"), (3, "QUIT"), (4, "ILL"), (5, "TRAP"), (6, "ABRT"), (7, "BUS"),
    (8, "FPE"), (9, "KILL"), (10, "USR1"), (11, "SEGV"), (12, "USR2"), (13, "PIPE"),
    (14, "ALRM"), (15, "TERM"), (17, "CHLD"), (18, "CONT"), (19, "STOP"), (20, "TSTP"),
)]  # fmt: skip

# ---- the table ---------------------------------------------------------------------------------

P = schema.ParamType


def _res(e: Any) -> int:
    return int(e.rec.fixed[_RES])


def v(i: int, name: str, kind: schema.ParamType = P.UINT, **kw: Any) -> schema.Param:
    """Parameter ``name`` is the handler's i-th value."""
    return schema.Param(name, kind, lambda e: value(e.rec, i), **kw)


def fd_arg(i: int, name: str = "fd") -> schema.Param:
    """A descriptor argument (an int: the handler's u64 holds the register, so -1 arrives
    as 2**64 - 1; libsinsp shows it signed)."""

    def get(e: Any) -> int:
        x = value(e.rec, i) & 0xFFFFFFFF
        return x - (1 << 32) if x & 0x80000000 else x

    return schema.Param(name, P.FD, get)


def s(i: int, name: str, kind: schema.ParamType = P.CHARBUF) -> schema.Param:
    """Parameter ``name`` is the handler's i-th string."""
    return schema.Param(name, kind, lambda e: string(e.rec, i))


RES = schema.Param("res", P.ERRNO, _res)
FD_RES = schema.Param("fd", P.FD, _res)


def call(
    name: str, params: list[schema.Param], values: str, strings: str = "", key: str | None = None
) -> schema.EventType:
    """One call: Falco's parameters, and the handler's values (up to six numbers, v0..v5) and
    strings (up to three user string pointers, s0..s2), as C over the syscall's argument
    registers a0-a3; what is left out is 0. ``key``: the parameter (its value is v0, named by
    its table) the prefilter may judge."""
    vals = [x.strip() for x in values.split(",") if x.strip()]
    strs = [x.strip() for x in strings.split(",") if x.strip()]
    args = ", ".join([*vals, *["0"] * (6 - len(vals)), *strs, *["0"] * (3 - len(strs))])
    sc = schema.Syscall(name, "emit_args", args)
    binds = {f"evt.arg.{key}": Bind.ARG_ENUM} if key else {}
    return schema.EventType(name, schema.Category.PROCESS, params, syscall=sc, binds=binds)


NSTYPE = v(1, "nstype", P.FLAGS, names=NS_FLAGS)
RESUID = [v(0, "ruid", P.UID), v(1, "euid", P.UID), v(2, "suid", P.UID)]
PTRACE = [v(2, "addr", P.HEX), v(3, "data", P.HEX)]
PTRACE += [v(0, "request", P.ENUM, names=PTRACE_REQUESTS), v(1, "pid", P.PID)]
MEMFD = [s(0, "name"), v(0, "flags", P.FLAGS, names=MEMFD_FLAGS)]
FINIT = [fd_arg(0), s(0, "uargs"), v(1, "flags", P.FLAGS, names=MODULE_FLAGS)]
MOUNT = [s(0, "dev"), s(1, "dir", P.PATH), s(2, "type"), v(0, "flags", P.FLAGS, names=MOUNT_FLAGS)]
URING = [v(0, "entries"), v(1, "sq_entries"), v(2, "cq_entries")]
URING += [v(3, "flags", P.FLAGS, names=IO_URING_FLAGS), v(4, "sq_thread_cpu")]
URING += [v(5, "features", P.HEX)]
# io_uring_setup's struct io_uring_params (a1), filled in by the kernel: sq_entries at 0,
# cq_entries at 4, flags at 8, sq_thread_cpu at 12, features at 20.
URING_VALUES = "a0, " + ", ".join(f"user_u32(a1, {off})" for off in (0, 4, 8, 12, 20))
RESGID = [v(0, "rgid", P.GID), v(1, "egid", P.GID), v(2, "sgid", P.GID)]


# capset's parameters are the sets after the call (the record's, as every record here has)
def _cap(i: int) -> Any:
    return lambda e: caps(e.rec)[i]


CAPSET = [
    schema.Param(name, P.HEX, _cap(i))
    for i, name in enumerate(("cap_inheritable", "cap_permitted", "cap_effective"))
]
EVENT_TYPES = [
    call("setuid", [RES, v(0, "uid", P.UID)], "a0"),
    call("setgid", [RES, v(0, "gid", P.GID)], "a0"),
    call("setresuid", [RES, *RESUID], "a0, a1, a2"),
    call("setresgid", [RES, *RESGID], "a0, a1, a2"),
    call("setreuid", [RES, v(0, "ruid", P.UID), v(1, "euid", P.UID)], "a0, a1"),
    call("setregid", [RES, v(0, "rgid", P.GID), v(1, "egid", P.GID)], "a0, a1"),
    call("capset", [RES, *CAPSET], ""),
    call("setns", [RES, fd_arg(0), NSTYPE], "a0, a1"),
    call("unshare", [RES, v(0, "flags", P.FLAGS, names=NS_FLAGS)], "a0"),
    call("ptrace", [RES, *PTRACE], "a0, a1, a2, a3", key="request"),
    call(
        "kill", [RES, v(1, "pid", P.PID), v(0, "sig", P.ENUM, names=SIGNALS)], "a1, a0", key="sig"
    ),
    call("userfaultfd", [RES, v(0, "flags", P.FLAGS, names=UFFD_FLAGS)], "a0"),
    call("bpf", [FD_RES, v(0, "cmd", P.ENUM, names=BPF_CMDS)], "a0", key="cmd"),
    call("memfd_create", [FD_RES, *MEMFD], "a1", "a0"),
    call("io_uring_setup", [RES, *URING], URING_VALUES),
    call("init_module", [RES, v(0, "length"), s(0, "uargs")], "a1", "a2"),
    call("finit_module", [RES, *FINIT], "a0, a2", "a1"),
    call("mount", [RES, *MOUNT], "a3", "a0, a1, a2"),
]

# ---- fields ------------------------------------------------------------------------------------

FIELDS = schema.Getters()
# A mount's source and target are paths of a file system operation (Falco: dev and dir).
FIELDS("fs.path.source", only=("mount",))(lambda e: string(e.rec, 0))
FIELDS("fs.path.target", only=("mount",))(lambda e: string(e.rec, 1))
FIELDS("fd.num", only=("memfd_create", "bpf", "userfaultfd"))(
    lambda e: r if (r := _res(e)) >= 0 else -1
)
FIELDS("fd.name", only=("memfd_create",))(lambda e: f"memfd:{string(e.rec, 0)}")
FIELDS("fd.type", only=("memfd_create",))(lambda e: "memfd")
FIELDS("fd.typechar", only=("memfd_create",))(lambda e: "m")


KERNEL_FIELDS = {
    "proc.name": Bind.COMM,
    "user.uid": Bind.UID,
    "evt.res": Bind.RESULT,
    "evt.rawres": Bind.RESULT,
}
# Record builder: ``s0``..``s2`` the strings, as read.
ENCODE = schema.buffers({f"s{i}": (f"s{i}_len", schema.utf8) for i in range(3)})
FAMILY = schema.Family(
    "system",
    LAYOUT,
    "system.h",
    EVENT_TYPES,
    FIELDS,
    KERNEL_FIELDS,
    encode=ENCODE,
    truth={
        "*": "numbers: the arguments the kernel got (saved registers; io_uring_setup's "
        "parameters as the kernel filled them in); capabilities: the task's credentials after "
        "the call; strings (mount's, memfd's name, module arguments): the caller's memory at "
        "the exit",
    },
)
