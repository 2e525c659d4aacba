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

from typing import Any

from sentinel.events import schema
from sentinel.events.common import (
    FLAG_ARGS_TRUNC,
    FLAG_CWD_TRUNC,
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

LAYOUT = schema.Layout(
    "exec_ev",
    "u32 tty, u32 sid, u32 pgid, u32 args_len, u32 exe_len, u32 cwd_len, u32 old_pid, s32 res,"
    f"char filename[{FNAME_SIZE}], char args[{ARGS_SIZE}], char exe[{WALK_SIZE}],"
    f"char cwd[{WALK_SIZE}]",
    base=HDR,
)
_TTY, _SID, _PGID, _ARGS_LEN, _EXE_LEN, _CWD_LEN, _OLD_PID, _RES = (
    LAYOUT.index[n]
    for n in ("tty", "sid", "pgid", "args_len", "exe_len", "cwd_len", "old_pid", "res")
)


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
        )
    ]


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


# Record builder: ``args`` (argv, a list), ``exe`` (the executable's path), ``cwd``.
ENCODE = schema.buffers(
    {
        "args": ("args_len", _argv_block),
        "exe": ("exe_len", _exe_buffer),
        "cwd": ("cwd_len", walk_buffer),
    }
)
KERNEL_FIELDS = {"proc.name": Bind.COMM, "user.uid": Bind.UID, "proc.exepath": Bind.PATH}
FAMILY = schema.Family(
    "exec", LAYOUT, "exec.h", EVENT_TYPES, schema.Getters(), KERNEL_FIELDS, encode=ENCODE
)
