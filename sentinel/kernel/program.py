"""The sensor's BPF program text, assembled from the event table and the family sources.

bcc rewrites map calls (``events.ringbuf_reserve()``...) only in the main source text, not in
``#include``d files, so the program is one text, in this order:

1. the event table's header (sentinel.events.cgen: constants and record structs);
2. ``bpf/sensor/task.h`` (the exec-time process name, which the prefilter judges too);
3. the prelude, if any (the prefilter: bpf/prefilter/filter.h and its hooks);
4. ``bpf/sensor/common.h``, then each family's source (``bpf/sensor/<family>.h``);
5. the generated tracepoint stubs of the syscall event types to attach;
6. ``bpf/sensor/uring.h`` when io_uring's requests are traced too.
"""

from __future__ import annotations

from collections.abc import Iterable

from sentinel.events import EVENT_TYPES, FAMILIES, EventType
from sentinel.events.cgen import handler_calls, header, stubs
from sentinel.events.schema import TailCall
from sentinel.paths import BPF_DIR

SENSOR_DIR = BPF_DIR / "sensor"


def syscall_types(event_types: Iterable[str]) -> frozenset[str]:
    """The event types whose syscall exits to attach for rules on ``event_types`` (unknown
    names are ignored).

    A piggyback exit (failed execs) is added only when some other syscall tracepoint is
    attached anyway (the expensive part is being attached at all, KERNEL.md), so rules about
    execs alone keep the nearly free sched-only sensor."""
    wanted = set(event_types)
    own = {
        t.name
        for t in EVENT_TYPES
        if t.name in wanted and t.syscall is not None and not t.syscall.piggyback
    }
    if own:
        own |= {
            t.name
            for t in EVENT_TYPES
            if t.name in wanted and t.syscall is not None and t.syscall.piggyback
        }
    return frozenset(own)


ALL_SYSCALL_TYPES = syscall_types(t.name for t in EVENT_TYPES)


def tracepoints(names: Iterable[str]) -> list[tuple[str, str]]:
    """(category, name) of every tracepoint the sensor attaches for these syscall event
    types, the sched ones included."""
    chosen = set(names)
    out = sorted({("sched", t.sched) for t in EVENT_TYPES if t.sched})
    out += [
        ("syscalls", t.syscall.tracepoint)
        for t in EVENT_TYPES
        if t.name in chosen and t.syscall is not None
    ]
    return out


def syscall_names(names: Iterable[str]) -> list[str]:
    """The syscalls (``sys_exit_<name>``) attached for these syscall event types."""
    chosen = set(names)
    return [t.syscall.name for t in EVENT_TYPES if t.name in chosen and t.syscall is not None]


# The event types io_uring requests are reported as (bpf/sensor/uring.h).
URING_TYPES = frozenset(
    {"openat", "openat2", "unlinkat", "mkdirat", "renameat2", "linkat", "symlinkat"}
    | {"connect", "accept4"}
)
URING_TRACEPOINTS = [("io_uring", "io_uring_submit_req"), ("io_uring", "io_uring_complete")]


def text(attach: Iterable[str], prelude: str = "", uring: bool = False) -> str:
    """The whole program for these syscall event types (and io_uring's requests of them)."""
    chosen = set(attach)
    types: list[EventType] = [t for t in EVENT_TYPES if t.name in chosen]
    parts = [header(), (SENSOR_DIR / "task.h").read_text(), prelude]
    parts.append((SENSOR_DIR / "common.h").read_text())
    parts += [(SENSOR_DIR / f.source).read_text() for f in FAMILIES]
    parts.append(stubs(types))
    if uring:
        parts.append((SENSOR_DIR / "uring.h").read_text())
    return "\n".join(parts)


def tail_calls(attach: Iterable[str] = ()) -> list[TailCall]:
    """(program array, index, function) of the tail-called programs: the handlers the stubs
    of these syscall event types reach, and the families' own."""
    chosen = set(attach)
    types = [t for t in EVENT_TYPES if t.name in chosen]
    return [*handler_calls(types), *(tc for f in FAMILIES for tc in f.tail_calls)]
