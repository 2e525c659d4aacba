"""The C side of the event table: constants, record structs and tracepoint stubs.

Every number C and Python share (event codes, counter positions, header flag bits, buffer
sizes, prefilter dimension codes) and every record layout is defined once, in
:mod:`sentinel.events`, and handed to C here, as text placed before the sensor's sources
(the way ``sentinel.kernel.offsets`` hands over struct offsets as ``-D`` flags). Nothing in
``bpf/sensor`` repeats a number this header defines.

The stubs are libsinsp's "one line per event": for each syscall event type to attach, a
``TRACEPOINT_PROBE`` on its exit that reads the argument registers and calls its family's
handler with ``ctx``, the result, the event code and the arguments the table names.
"""

from __future__ import annotations

from collections.abc import Iterable

from sentinel.events import EVENT_TYPES, FAMILIES
from sentinel.events import exec as exec_family
from sentinel.events import file as file_family
from sentinel.events import net as net_family
from sentinel.events.common import (
    AT_FDCWD,
    COUNTERS,
    FWD_END,
    HDR,
    HEADER_FLAGS,
    WALK_DEPTH,
    WALK_SIZE,
)
from sentinel.events.dims import BOOL_DIMS, DIM_CODES
from sentinel.events.schema import EventType, TailCall
from sentinel.events.stages import STAGES

# Sizes the BPF sources use, by the name they use.
SIZES = {
    "WALK_SIZE": WALK_SIZE,
    "WALK_DEPTH": WALK_DEPTH,
    "FWD_END": FWD_END,
    "PATH_SIZE": file_family.PATH_SIZE,
    "FNAME_SIZE": exec_family.FNAME_SIZE,
    "ARGS_SIZE": exec_family.ARGS_SIZE,
    "ENV_SIZE": exec_family.ENV_SIZE,
    "EXEC_SKIP_ENV": exec_family.EXEC_SKIP_ENV,
    "WAKE_GAP_NS": exec_family.WAKE_GAP_NS,
    "EXE_MEMFD": exec_family.EXE_MEMFD,
    "EXE_UPPER": exec_family.EXE_UPPER,
    "EXE_OVERLAY": exec_family.EXE_OVERLAY,
    "OVERLAYFS_SUPER_MAGIC": exec_family.OVERLAYFS_SUPER_MAGIC,
    "FAILED_EXEC_ARGS": exec_family.FAILED_EXEC_ARGS,
    "SOCKADDR_SIZE": net_family.SOCKADDR_SIZE,
    # how a socket call's handler reads its arguments (sentinel.events.net)
    "SOCK_FD_IS_RESULT": net_family.FD_IS_RESULT,
    "SOCK_SERVER_LOCAL": net_family.SERVER_LOCAL,
    "SOCK_ADDR_IN": net_family.ADDR_IN,
    "TCP_ESTABLISHED_VAL": net_family.TCP_ESTABLISHED,  # also a connected UDP socket's state
}


def evt_macro(t: EventType) -> str:
    return f"EVT_{t.name.upper()}"


def constants() -> dict[str, int]:
    """Every shared number, by its C name."""
    out: dict[str, int] = {evt_macro(t): t.code for t in EVENT_TYPES}
    out["EVT_MAX"] = len(EVENT_TYPES)
    out.update({f"C_{c.upper()}": i for i, c in enumerate(COUNTERS)})
    out["C_N"] = len(COUNTERS)
    out.update(HEADER_FLAGS)
    out.update(SIZES)
    out["AT_FDCWD_VAL"] = AT_FDCWD
    out["O_CREAT_VAL"] = file_family.O_CREAT
    out["F_NFAM"] = len(EVENT_TYPES)  # the prefilter's maps are keyed by event code
    out.update({f"D_{d.name}": code for d, code in DIM_CODES.items()})
    out["F_NDIM"] = len(DIM_CODES)
    out["F_BOOL_DIMS"] = sum(1 << DIM_CODES[d] for d in BOOL_DIMS)
    out.update({f"STAGE_{s.name}": s.code for s in STAGES})
    return out


def structs() -> str:
    """The record structs, header first."""
    return "\n\n".join([HDR.c_struct(), *(f.layout.c_struct() for f in FAMILIES)])


# The family handlers the stubs reach (by tail call): their index in the ``handlers`` program
# array, and how many arguments each takes after (ctx, result, event code).
HANDLERS: dict[str, int] = {}
ARITY: dict[str, int] = {}
for _t in EVENT_TYPES:
    if _t.syscall is not None:
        HANDLERS.setdefault(_t.syscall.handler, len(HANDLERS))
        n = len(_t.syscall.args)
        if ARITY.setdefault(_t.syscall.handler, n) != n:
            raise RuntimeError(f"{_t.name}: {_t.syscall.handler} takes {ARITY[_t.syscall.handler]}")
MAX_ARGS = max(ARITY.values())


def stub(t: EventType) -> str:
    """The tracepoint program of one syscall event type: it reads the syscall's arguments,
    leaves what its line of the table says for the handler in the per-CPU ``call_scratch``,
    and tail-calls the family's handler. Every stub is a few instructions; each handler is
    compiled and verified once, however many event types share it (start-up time)."""
    sc = t.syscall
    assert sc is not None
    values = sc.args
    sets = "".join(f"    c->v[{i}] = (u64)({v});\n" for i, v in enumerate(values))
    return (
        f"TRACEPOINT_PROBE(syscalls, {sc.tracepoint}) {{\n"
        "    if (is_self())\n"
        "        return 0;\n"
        "    struct sc_args a = {};\n"
        "    read_args(&a);\n"
        "    u64 a0 = a.a0, a1 = a.a1, a2 = a.a2, a3 = a.a3, a4 = a.a4, a5 = a.a5;\n"
        "    u32 zero = 0;\n"
        "    struct call_args *c = call_scratch.lookup(&zero);\n"
        "    if (!c)\n"
        "        return 0;\n"
        f"    c->ret = args->ret;\n    c->t = {evt_macro(t)};\n    c->hflags = 0;\n{sets}"
        f"    handlers.call(args, {HANDLERS[sc.handler]});  // {sc.handler}\n"
        "    return 0;\n"
        "}\n"
    )


def handler_program(name: str) -> str:
    """The tail-called program of one handler: the call's arguments from the scratch."""
    args = ", ".join(["ctx", "c->ret", "c->t", *(f"c->v[{i}]" for i in range(ARITY[name]))])
    return (
        f"int h_{name}(void *ctx) {{\n"
        "    u32 zero = 0;\n"
        "    struct call_args *c = call_scratch.lookup(&zero);\n"
        "    if (!c)\n"
        "        return 0;\n"
        f"    return {name}({args});\n"
        "}\n"
    )


def handler_calls(attach: Iterable[EventType]) -> list[TailCall]:
    """(program array, index, program, type) of the handlers these event types reach."""
    used = sorted({t.syscall.handler for t in attach if t.syscall is not None})
    return [("handlers", HANDLERS[h], f"h_{h}", "tracepoint") for h in used]


def defines() -> str:
    """The shared numbers as C macros (what bpf/prefilter/filter.h needs alone)."""
    lines = ["// Generated from sentinel/events (sentinel.events.cgen): do not edit."]
    lines += [f"#define {k} {v}" for k, v in constants().items()]
    return "\n".join(lines) + "\n" + BENCH_STAGE


# A benchmark build stops at stage BENCH_CUT (sentinel.events.stages); 0 (production): never.
BENCH_STAGE = """#ifndef BENCH_CUT
#define BENCH_CUT 0
#endif
#define BENCH_STAGE(s) do { if (BENCH_CUT == (s)) return 0; } while (0)
"""


CALL_ARGS = (
    "// A handler's arguments, from a stub (or the io_uring programs) to the handler it\n"
    "// tail-calls, per CPU (call_scratch, in bpf/sensor/task.h). hflags: header flags the\n"
    "// handler adds to the record; with FLAG_IO_URING the path arguments are kernel memory.\n"
    f"struct call_args {{\n    s64 ret;\n    u32 t;\n    u32 hflags;\n    u64 v[{MAX_ARGS}];\n}};"
)


def header() -> str:
    """The text placed before the sensor's sources: the macros, the record structs, the
    handlers' argument struct and each handler's index in the ``handlers`` program array."""
    index = "\n".join(f"#define HANDLER_{h.upper()} {i}" for h, i in HANDLERS.items())
    return defines() + "\n" + structs() + "\n" + CALL_ARGS + "\n" + index + "\n"


def stubs(attach: Iterable[EventType]) -> str:
    """The handler programs and the stubs of the syscall event types to attach (placed after
    the family sources)."""
    types = [t for t in attach if t.syscall is not None]
    handlers = sorted({t.syscall.handler for t in types if t.syscall is not None})
    parts = [
        f"BPF_PROG_ARRAY(handlers, {len(HANDLERS)});",
        *(f"#define ATTACHED_{evt_macro(t)} 1" for t in types),
        *(handler_program(h) for h in handlers),
        *(stub(t) for t in types),
    ]
    return "\n".join(parts) + "\n"
