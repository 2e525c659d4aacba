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
from sentinel.events.dims import DIM_CODES
from sentinel.events.schema import EventType

# Sizes the BPF sources use, by the name they use.
SIZES = {
    "WALK_SIZE": WALK_SIZE,
    "WALK_DEPTH": WALK_DEPTH,
    "FWD_END": FWD_END,
    "PATH_SIZE": file_family.PATH_SIZE,
    "FNAME_SIZE": exec_family.FNAME_SIZE,
    "ARGS_SIZE": exec_family.ARGS_SIZE,
    "FAILED_EXEC_ARGS": exec_family.FAILED_EXEC_ARGS,
    "SOCKADDR_SIZE": net_family.SOCKADDR_SIZE,
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
    out["F_NFAM"] = len(EVENT_TYPES)  # the prefilter's maps are keyed by event code
    out.update({f"D_{d.name}": code for d, code in DIM_CODES.items()})
    out["F_NDIM"] = len(DIM_CODES)
    return out


def structs() -> str:
    """The record structs, header first."""
    return "\n\n".join([HDR.c_struct(), *(f.layout.c_struct() for f in FAMILIES)])


def stub(t: EventType) -> str:
    """The tracepoint program of one syscall event type."""
    sc = t.syscall
    assert sc is not None
    call = ", ".join(["args", "args->ret", evt_macro(t), *([sc.call] if sc.call else [])])
    return (
        f"TRACEPOINT_PROBE(syscalls, sys_exit_{sc.name}) {{\n"
        "    struct sc_args a = {};\n"
        "    read_args(&a);\n"
        "    u64 a0 = a.a0, a1 = a.a1, a2 = a.a2, a3 = a.a3;\n"
        f"    return {sc.handler}({call});\n"
        "}\n"
    )


def defines() -> str:
    """The shared numbers as C macros (what bpf/prefilter/filter.h needs alone)."""
    lines = ["// Generated from sentinel/events (sentinel.events.cgen): do not edit."]
    lines += [f"#define {k} {v}" for k, v in constants().items()]
    return "\n".join(lines) + "\n"


def header() -> str:
    """The text placed before the sensor's sources: the macros and the record structs."""
    return defines() + "\n" + structs() + "\n"


def stubs(attach: Iterable[EventType]) -> str:
    """The stubs of the syscall event types to attach (placed after the family sources)."""
    return "\n".join(stub(t) for t in attach if t.syscall is not None)
