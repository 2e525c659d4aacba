"""The process family: clone (a new process or thread) and procexit (a process ends).

Both come from sched raw tracepoints that are always attached: they keep the process table
exact and cost almost nothing (KERNEL.md). ``sched_process_fork`` runs in the parent, so the
record's header is the parent's and ``child_pid``/``child_tid`` name the child; a clone
that made a thread is flagged (the table follows processes, not threads).
``sched_process_exit`` is reported once per process, for its last thread.
"""

from __future__ import annotations

from typing import Any

from sentinel.events import schema
from sentinel.events.common import FLAG_THREAD, HDR
from sentinel.events.record import Record

LAYOUT = schema.Layout("proc_ev", "u32 child_pid, u32 child_tid, s32 exit_code, u32 pad", base=HDR)
_CHILD_PID, _CHILD_TID, _EXIT_CODE = (
    LAYOUT.index[n] for n in ("child_pid", "child_tid", "exit_code")
)
SIGNAL_NAMES = [(n, f"SIG{s}") for n, s in ((9, "KILL"), (15, "TERM"), (6, "ABRT"), (11, "SEGV"))]


def child(rec: Record) -> tuple[int, int]:
    """(child pid, child tid) of a clone record."""
    return int(rec.fixed[_CHILD_PID]), int(rec.fixed[_CHILD_TID])


def is_thread(rec: Record) -> bool:
    return bool(rec.flags & FLAG_THREAD)


def exit_code(rec: Record) -> int:
    """The task's exit status as wait(2) reports it: (code << 8) | signal."""
    return int(rec.fixed[_EXIT_CODE])


def _status(e: Any) -> int:
    return exit_code(e.rec)


P = schema.ParamType
CLONE = [
    schema.Param("res", P.PID, lambda e: child(e.rec)[0]),
    schema.Param("tid", P.PID, lambda e: e.rec.tid),
    schema.Param("pid", P.PID, lambda e: e.rec.pid),
    schema.Param("ptid", P.PID, lambda e: e.rec.ppid),
    schema.Param("comm", P.CHARBUF, lambda e: e.rec.comm),
    schema.Param("uid", P.UINT, lambda e: e.rec.uid),
    schema.Param("gid", P.UINT, lambda e: e.rec.gid),
]
PROCEXIT = [
    schema.Param("status", P.INT, _status),
    schema.Param("ret", P.INT, lambda e: (_status(e) >> 8) & 0xFF),
    schema.Param("sig", P.ENUM, lambda e: _status(e) & 0x7F, names=SIGNAL_NAMES),
    schema.Param("core", P.UINT, lambda e: (_status(e) >> 7) & 1),
]
PROCESS = schema.Category.PROCESS
EVENT_TYPES = [
    schema.EventType("clone", PROCESS, CLONE, sched="sched_process_fork"),
    schema.EventType("procexit", PROCESS, PROCEXIT, sched="sched_process_exit", returns=False),
]

FIELDS = schema.Getters()
FIELDS("proc.exitcode", only=("procexit",))(_status)

FAMILY = schema.Family(
    "process",
    LAYOUT,
    "process.h",
    EVENT_TYPES,
    FIELDS,
    prefilter=False,
    truth={"*": "kernel: the task structs (pids, exit code)"},
)
