"""The floor of the kernel benchmark: EMPTY BPF programs on exactly the tracepoints that
``sentinel run`` attaches for a rule set. Whatever this costs is the price of attaching at
all (every syscall takes the slow path); the sensor's own work is measured against it.

Run as ``python -m bench.kernel_floor EVENT_TYPE...`` (the syscall event types attached):
prints ``ready`` once attached, detaches when stdin closes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sentinel.kernel.program import tracepoints

EVENTS = Path("/sys/kernel/tracing/events")


def source(syscalls: list[str]) -> str:
    """Empty programs on the tracepoints the sensor attaches for these syscall event types
    (those this kernel has: the sensor skips the others too)."""
    parts = []
    for category, name in tracepoints(syscalls):
        if category != "sched" and not (EVENTS / category / name).exists():
            continue
        if category == "sched":
            parts.append(f"RAW_TRACEPOINT_PROBE({name}) {{ return 0; }}")
        else:
            parts.append(f"TRACEPOINT_PROBE({category}, {name}) {{ return 0; }}")
    return "\n".join(parts) + "\n"


def main(argv: list[str]) -> int:
    from bcc import BPF

    b = BPF(text=source(argv).encode())
    print("ready", flush=True)
    sys.stdin.read()
    b.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
