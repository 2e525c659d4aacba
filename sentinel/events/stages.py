"""Named points where a benchmark build of the sensor stops early, to attribute BPF time.

``bench/bench_stages.py`` builds the sensor once per stage with ``-DBENCH_CUT=<code>``: the
program returns at that point (``BENCH_STAGE(STAGE_...)`` in the C), and bpf_stats gives
the run time of everything before it. The difference between consecutive stages is the
cost of the work between them: the profile that says where an open's or an exec's BPF time
goes. A production build has ``BENCH_CUT`` 0: every ``BENCH_STAGE`` compiles to nothing.

The codes reach C through :mod:`sentinel.events.cgen` (``STAGE_<NAME>``), defined here
once; the order of each family's list is the order the program runs them in.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str  # STAGE_<NAME> in C
    code: int  # the -DBENCH_CUT value that stops there (never 0: 0 is a production build)
    work: str  # what ran before this point, since the previous stage


# A successful openat: its exit stub, then open_done (bpf/sensor/file.h) and the prefilter's
# two steps (bpf/prefilter/filter.h).
OPEN = (
    Stage("OPEN_DONE", 1, "exit stub, handler tail call, path argument copy, tail call"),
    Stage("OPEN_ACCESS", 2, "prefilter: generation, access mode and O_CREAT (family config)"),
    Stage("OPEN_COMM", 3, "prefilter: the process name's lookup"),
    Stage("OPEN_UID", 4, "prefilter: the uid's lookup"),
    Stage("OPEN_PRE", 5, "prefilter: the raw path's '..' scan, the result's lookup"),
    Stage("OPEN_WALK", 6, "the descriptor's file and the walk of its path"),
)
# sched_process_exec (bpf/sensor/exec.h): the raw tracepoint, exec_walk, exec_emit.
EXEC = (
    Stage("EXEC_PRE", 11, "self check, exec_comm update, prefilter's comm/uid step"),
    Stage("EXEC_WALK", 12, "tail call, the executable's path walk"),
    Stage("EXEC_RESERVE", 13, "tail call to exec_emit, ring buffer reservation"),
    Stage("EXEC_ARGS", 14, "filename and argv copies"),
    Stage("EXEC_CWD", 15, "the executable's path copy, the cwd walk"),
    Stage("EXEC_TTY", 16, "tty, session and process group"),
    Stage("EXEC_ENV", 17, "capability sets, the environment's copy"),
    Stage("EXEC_FACTS", 18, "the executable's inode, memfd and overlayfs facts"),
)
FAMILIES = {"open": OPEN, "exec": EXEC}
STAGES = [s for stages in FAMILIES.values() for s in stages]
