"""The exec family: execve and execveat.

A successful exec is reported by ``sched:sched_process_exec`` with the new image: argv from the
new mm, the executable's path (a forward dentry walk of ``bprm->file``, the very string the
prefilter judged), the cwd, the controlling tty, session and process group. A failed exec is
reported at its own syscall exit (``sys_exit_execve``/``execveat``), with the attempted path and
argv; the image is unchanged. The process table (sentinel.enrichment.proctable) folds successful
execs in, and the ``proc.*`` fields come from there.

At ``sched_process_exec`` the syscall number is gone, but an execveat that names its file by a
directory fd (fexecve, fileless memfd execution, a path relative to a dirfd) leaves
``bprm->fdpath``: the record is then an execveat. With AT_FDCWD or an absolute path an execveat
is indistinguishable from execve there and is reported as execve (failed ones are told apart
exactly, at their own syscall exits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sentinel.events import schema
from sentinel.events.common import (
    FLAG_ARGS_TRUNC,
    FLAG_CWD_TRUNC,
    FLAG_ENV_TRUNC,
    FLAG_EXE_TRUNC,
    FWD_END,
    HDR,
    WALK_SIZE,
)
from sentinel.events.dims import Bind
from sentinel.events.record import Record, cstr, join_walk, walk_buffer

FNAME_SIZE = 256
ARGS_SIZE = 1024  # a power of two: the BPF reads mask with ARGS_SIZE - 1
FAILED_EXEC_ARGS = 16  # argv entries a failed exec records

# The environment: Falco's drivers keep a page of it; an attacker can pad the environment to
# push a variable past it (FLAG_ENV_TRUNC says so: README, limits).
ENV_SIZE = 4096  # a power of two, as ARGS_SIZE
# exec_opts bits (a map, set by user space): EXEC_SKIP_ENV: do not copy the environment, when
# no loaded rule reads proc.env (the copy is a page of user memory per exec; the bit is set
# and cleared again as rules are loaded and reloaded).
EXEC_SKIP_ENV = 1
# An exec's record wakes the reader at once (its alert should not wait for the poll timeout),
# unless another exec woke it less than WAKE_GAP_NS ago: a forced wakeup is an interrupt inside
# the exec's BPF time (~10 us in this VM), and in an exec storm one per gap is enough, because
# after a batch the reader waits at most this gap before it looks again
# (sentinel.kernel.sensor.Sensor.poll). So an exec's record is read within about the gap.
# 2 ms: under half the exec-to-alert p99 budget (5 ms, issue 3); a 1 ms gap still woke the
# reader for ~75% of the execs of a 1,000 execs/s storm (bench kernel --only e).
WAKE_GAP_NS = 2_000_000
# exe_flags bits: what the kernel knows of the executable (bpf/sensor/exec.h): a memfd (its
# dentry is "memfd:..." and it has no link), on overlayfs, in overlayfs's upper layer.
EXE_MEMFD, EXE_UPPER, EXE_OVERLAY = 1, 2, 4
OVERLAYFS_SUPER_MAGIC = 0x794C7630
CAP_DAC_OVERRIDE = 1
LAYOUT = schema.Layout(
    "exec_ev",
    "u32 tty, u32 sid, u32 pgid, u32 args_len, u32 exe_len, u32 cwd_len, u32 old_pid, s32 res,"
    "u64 cap_inheritable, u64 cap_permitted, u64 cap_effective, u64 exe_ino, u64 exe_ctime,"
    "u64 exe_mtime, u32 exe_mode, u32 exe_uid, u32 exe_gid, u32 exe_flags, u32 env_len, u32 pad,"
    f"char filename[{FNAME_SIZE}], char args[{ARGS_SIZE}], char exe[{WALK_SIZE}],"
    f"char cwd[{WALK_SIZE}], char env[{ENV_SIZE}]",
    base=HDR,
)
_TTY, _SID, _PGID, _ARGS_LEN, _EXE_LEN, _CWD_LEN, _OLD_PID, _RES = (
    LAYOUT.index[n]
    for n in ("tty", "sid", "pgid", "args_len", "exe_len", "cwd_len", "old_pid", "res")
)
_ENV_LEN = LAYOUT.index["env_len"]
_CAPS = tuple(LAYOUT.index[n] for n in ("cap_inheritable", "cap_permitted", "cap_effective"))


# ---- decoding (the process table uses these too) -------------------------------------------------


def _memo(rec: Record, key: str, fn: Any) -> Any:
    d = rec.__dict__
    if key not in d:
        d[key] = fn()
    return d[key]


def res(rec: Record) -> int:
    """0 for an exec that happened, -errno for a failed execve/execveat."""
    return int(rec.fixed[_RES])


def tty_sid_pgid(rec: Record) -> tuple[int, int, int]:
    f = rec.fixed
    return int(f[_TTY]), int(f[_SID]), int(f[_PGID])


def filename(rec: Record) -> str:
    """The path as passed to execve (what ``bprm->filename`` holds)."""
    return str(
        _memo(rec, "filename", lambda: cstr(rec.raw, LAYOUT.offsets["filename"], FNAME_SIZE))
    )


def argv(rec: Record) -> list[str]:
    def parse() -> list[str]:
        block = rec.buf("args", rec.fixed[_ARGS_LEN])
        if block.endswith(b"\0"):
            block = block[:-1]
        if not block:
            return []
        return [a.decode("utf-8", "surrogateescape") for a in block.split(b"\0")]

    got: list[str] = _memo(rec, "argv", parse)
    return got


def env(rec: Record) -> list[str]:
    """The environment of the new image (its KEY=VALUE entries), as far as the record holds
    (``env_truncated``)."""

    def parse() -> list[str]:
        block = rec.buf("env", rec.fixed[_ENV_LEN])
        return [x.decode("utf-8", "surrogateescape") for x in block.split(b"\0") if x]

    got: list[str] = _memo(rec, "env", parse)
    return got


def env_truncated(rec: Record) -> bool:
    return bool(rec.flags & FLAG_ENV_TRUNC)


def caps(rec: Record) -> tuple[int, int, int]:
    """(inheritable, permitted, effective) capability sets of the new image."""
    f = rec.fixed
    return int(f[_CAPS[0]]), int(f[_CAPS[1]]), int(f[_CAPS[2]])


@dataclass(frozen=True, slots=True)
class ExeFacts:
    """What the kernel said about the executable's inode at exec (times: ns since the epoch;
    flags: EXE_*)."""

    ino: int
    ctime_ns: int
    mtime_ns: int
    mode: int
    uid: int
    gid: int
    flags: int
    writable: bool  # by the exec'ing user (writable_by)


def writable_by(mode: int, owner: int, group: int, uid: int, gid: int, cap_eff: int) -> bool:
    """Whether ``uid``/``gid`` may write a file of this mode and ownership: the owner, group
    and other write bits as the kernel's permission check reads them, or CAP_DAC_OVERRIDE in
    the effective set (as libsinsp's drivers judge it; supplementary groups and read-only
    mounts are not considered: README, limits)."""
    if cap_eff & (1 << CAP_DAC_OVERRIDE):
        return True
    if uid == owner:
        return bool(mode & 0o200)
    if gid == group:
        return bool(mode & 0o020)
    return bool(mode & 0o002)


def exe_facts(rec: Record) -> ExeFacts:
    f, i = rec.fixed, LAYOUT.index
    mode, owner, group = int(f[i["exe_mode"]]), int(f[i["exe_uid"]]), int(f[i["exe_gid"]])
    return ExeFacts(
        ino=int(f[i["exe_ino"]]),
        ctime_ns=int(f[i["exe_ctime"]]),
        mtime_ns=int(f[i["exe_mtime"]]),
        mode=mode,
        uid=owner,
        gid=group,
        flags=int(f[i["exe_flags"]]),
        writable=bool(mode) and writable_by(mode, owner, group, rec.uid, rec.gid, caps(rec)[2]),
    )


def args_truncated(rec: Record) -> bool:
    return bool(rec.flags & FLAG_ARGS_TRUNC)


def exepath(rec: Record) -> str:
    """The executable (symlinks resolved); '' when the walk was cut short. The kernel built it
    forward, right-aligned to ``FWD_END``, and its prefilter judged exactly these bytes
    (``proc.exepath`` as a kernel dimension relies on that)."""
    n = rec.fixed[_EXE_LEN]
    if rec.flags & FLAG_EXE_TRUNC:
        return ""
    if not n:
        return filename(rec)
    start = LAYOUT.offsets["exe"] + FWD_END - min(n, FWD_END)
    return rec.raw[start : LAYOUT.offsets["exe"] + FWD_END].decode("utf-8", "surrogateescape")


def cwd(rec: Record) -> str:
    """The cwd at exec; '' when the walk was cut short (deeper than the BPF walk)."""
    if rec.flags & FLAG_CWD_TRUNC:
        return ""
    return join_walk(rec.raw, LAYOUT.offsets["cwd"], rec.fixed[_CWD_LEN])


# ---- the table ---------------------------------------------------------------------------------


def _exe(e: Any) -> str:
    a = argv(e.rec)
    return a[0] if a else filename(e.rec)


P = schema.ParamType


def _params() -> list[schema.Param]:
    """Falco's execve exit parameters that the record (or the header) carries."""
    return [
        schema.Param(name, kind, get)
        for name, kind, get in (
            ("res", P.ERRNO, lambda e: res(e.rec)),
            ("exe", P.CHARBUF, _exe),
            ("args", P.CHARBUF, lambda e: " ".join(argv(e.rec)[1:])),
            ("tid", P.PID, lambda e: e.rec.tid),
            ("pid", P.PID, lambda e: e.rec.pid),
            ("ptid", P.PID, lambda e: e.rec.ppid),
            ("cwd", P.CHARBUF, lambda e: cwd(e.rec) if res(e.rec) == 0 else None),
            ("comm", P.CHARBUF, lambda e: e.rec.comm),
            ("tty", P.UINT, lambda e: tty_sid_pgid(e.rec)[0]),
            ("loginuid", P.INT, lambda e: e.get("user.loginuid")),
            ("uid", P.UINT, lambda e: e.rec.uid),
            ("pgid", P.PID, lambda e: tty_sid_pgid(e.rec)[2] or None),
            ("gid", P.UINT, lambda e: e.rec.gid),
            ("filename", P.PATH, lambda e: filename(e.rec)),
            ("env", P.CHARBUF, lambda e: " ".join(env(e.rec)) if res(e.rec) == 0 else None),
            ("trusted_exepath", P.PATH, lambda e: exepath(e.rec) if res(e.rec) == 0 else None),
        )
    ] + [
        schema.Param("flags", P.FLAGS, _falco_flags, names=EXE_FLAG_NAMES),
        *[
            schema.Param(name, P.HEX, _cap(i))
            for i, name in enumerate(("cap_inheritable", "cap_permitted", "cap_effective"))
        ],
        *[
            schema.Param(name, P.UINT, _fact(attr))
            for name, attr in (
                ("exe_ino", "ino"),
                ("exe_ino_ctime", "ctime_ns"),
                ("exe_ino_mtime", "mtime_ns"),
            )
        ],
    ]


# execve's flags parameter as libsinsp has it (PPM_EXE_*), from the record's EXE_* bits.
EXE_FLAG_NAMES = [(1, "EXE_WRITABLE"), (2, "EXE_UPPER_LAYER"), (4, "EXE_FROM_MEMFD"),
                  (8, "EXE_LOWER_LAYER")]  # fmt: skip


def _fact(attr: str) -> Any:
    return lambda e: getattr(exe_facts(e.rec), attr) if res(e.rec) == 0 else None


def _cap(i: int) -> Any:
    return lambda e: caps(e.rec)[i] if res(e.rec) == 0 else None


def _falco_flags(e: Any) -> int | None:
    if res(e.rec) != 0:
        return None
    x = exe_facts(e.rec)
    lower = x.flags & (EXE_OVERLAY | EXE_UPPER) == EXE_OVERLAY
    return (
        (1 if x.writable else 0)
        | (2 if x.flags & EXE_UPPER else 0)
        | (4 if x.flags & EXE_MEMFD else 0)
        | (8 if lower else 0)
    )


def exec_type(name: str, call: str) -> schema.EventType:
    """Successes come from sched_process_exec (exec.h); the syscall's own exit reports only
    failures, (path, argv) from its registers, attached only beside other syscalls."""
    sc = schema.Syscall(name, "emit_exec_failure", call, piggyback=True)
    return schema.EventType(
        name,
        schema.Category.PROCESS,
        _params(),
        sched="sched_process_exec",
        syscall=sc,
        deny="exec",
    )


EVENT_TYPES = [exec_type("execve", "a0, a1"), exec_type("execveat", "a1, a2")]


def _argv_block(argv_: list[str]) -> tuple[bytes, int]:
    block = b"".join(a.encode() + b"\0" for a in argv_)
    return block, len(block)


def _exe_buffer(path: str) -> tuple[bytes, int]:
    raw = path.encode("utf-8", "surrogateescape")
    return b"\0" * (FWD_END - len(raw)) + raw, len(raw)  # right-aligned to end at FWD_END


# Record builder: ``args`` (argv, a list), ``exe`` (the executable's path), ``cwd``, ``env`` (a
# list of KEY=VALUE).
ENCODE = schema.buffers(
    {
        "args": ("args_len", _argv_block),
        "exe": ("exe_len", _exe_buffer),
        "cwd": ("cwd_len", walk_buffer),
        "env": ("env_len", _argv_block),
    }
)
KERNEL_FIELDS = {"proc.name": Bind.COMM, "user.uid": Bind.UID, "proc.exepath": Bind.PATH}
# sched_process_exec's program tail-calls exec_walk (the executable's path), which calls
# exec_judge (the prefilter judges that path) when needed, then exec_emit (the record); see
# bpf/sensor/exec.h.
TAILS = (
    ("exec_tail", 0, "exec_emit", "raw_tracepoint"),
    ("exec_tail", 1, "exec_judge", "raw_tracepoint"),
    ("exec_tail", 2, "exec_walk", "raw_tracepoint"),
)
FAMILY = schema.Family(
    "exec",
    LAYOUT,
    "exec.h",
    EVENT_TYPES,
    schema.Getters(),
    KERNEL_FIELDS,
    encode=ENCODE,
    tail_calls=TAILS,
    truth={
        "*": "kernel: the executable (bprm's file, walked), argv and environment of the new "
        "image (written by the kernel, read before any thread of it runs), credentials, cwd, "
        "tty; a failed exec: the path and argv the caller passed, read at the syscall's exit",
    },
)
