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

from sentinel.events.common import (
    FLAG_ARGS_TRUNC,
    FLAG_CWD_TRUNC,
    FLAG_EXE_TRUNC,
    FWD_END,
    HDR,
    WALK_SIZE,
)
from sentinel.events.dims import Bind
from sentinel.events.record import Record, cstr, join_walk, walk
from sentinel.events.schema import (
    Category,
    EventType,
    Family,
    Getters,
    Layout,
    Member,
    Param,
    ParamType,
    Syscall,
    scalars,
)

FNAME_SIZE = 256
ARGS_SIZE = 1024  # a power of two: the BPF reads mask with ARGS_SIZE - 1
FAILED_EXEC_ARGS = 16  # argv entries a failed exec records

LAYOUT = Layout(
    "exec_ev",
    [
        *scalars("u32 tty, u32 sid, u32 pgid, u32 args_len, u32 exe_len, u32 cwd_len"),
        *scalars("u32 old_pid, s32 res"),
        Member("filename", "char", FNAME_SIZE),
        Member("args", "char", ARGS_SIZE),
        Member("exe", "char", WALK_SIZE),
        Member("cwd", "char", WALK_SIZE),
    ],
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


def _params() -> list[Param]:
    return [
        Param("res", ParamType.ERRNO, lambda e: res(e.rec)),
        Param("exe", ParamType.CHARBUF, _exe),
        Param("args", ParamType.CHARBUF, lambda e: " ".join(argv(e.rec)[1:])),
        Param("tid", ParamType.PID, lambda e: e.rec.tid),
        Param("pid", ParamType.PID, lambda e: e.rec.pid),
        Param("ptid", ParamType.PID, lambda e: e.rec.ppid),
        Param("cwd", ParamType.CHARBUF, lambda e: cwd(e.rec) if res(e.rec) == 0 else None),
        Param("comm", ParamType.CHARBUF, lambda e: e.rec.comm),
        Param("tty", ParamType.UINT, lambda e: tty_sid_pgid(e.rec)[0]),
        Param("loginuid", ParamType.INT, lambda e: e.get("user.loginuid")),
        Param("uid", ParamType.UINT, lambda e: e.rec.uid),
        Param("pgid", ParamType.PID, lambda e: tty_sid_pgid(e.rec)[2] or None),
        Param("gid", ParamType.UINT, lambda e: e.rec.gid),
        Param("filename", ParamType.PATH, lambda e: filename(e.rec)),
    ]


EVENT_TYPES = [
    EventType(
        "execve",
        Category.PROCESS,
        _params(),
        sched="sched_process_exec",
        # failures only (successes come from sched_process_exec)
        syscall=Syscall("execve", "emit_exec_failure", ("a.a0", "a.a1"), piggyback=True),
        deny="exec",
    ),
    EventType(
        "execveat",
        Category.PROCESS,
        _params(),
        sched="sched_process_exec",
        syscall=Syscall("execveat", "emit_exec_failure", ("a.a1", "a.a2"), piggyback=True),
        deny="exec",
    ),
]


def encode(values: dict[str, Any]) -> dict[str, Any]:
    """Builder values: ``argv`` (a list), ``exe`` (the executable's path), ``cwd``."""
    out = dict(values)
    argv_ = out.pop("argv", None)
    if argv_ is not None:
        out["args"] = block = b"".join(a.encode() + b"\0" for a in argv_)
        out.setdefault("args_len", len(block))
    exe = out.pop("exe", None)
    if exe is not None:
        raw = exe.encode("utf-8", "surrogateescape")
        out["exe"] = b"\0" * (FWD_END - len(raw)) + raw  # right-aligned to end at FWD_END
        out.setdefault("exe_len", len(raw))
    cwd_ = out.pop("cwd", None)
    if cwd_ is not None:
        out["cwd"] = w = walk(cwd_)
        out.setdefault("cwd_len", len(w))
    return out


FAMILY = Family(
    "exec",
    LAYOUT,
    source="exec.h",
    event_types=EVENT_TYPES,
    getters=Getters(),
    kernel_fields={"proc.name": Bind.COMM, "user.uid": Bind.UID, "proc.exepath": Bind.PATH},
    encode=encode,
)
