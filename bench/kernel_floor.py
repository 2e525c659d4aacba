"""The floor of the kernel benchmark: EMPTY BPF programs on exactly the tracepoints that
``sentinel run`` attaches for a rule set. Whatever this costs is the price of attaching at
all (every syscall takes the slow path); the sensor's own work is measured against it.

Run as ``python -m bench.kernel_floor FAMILY...``: prints ``ready`` once attached, detaches
when stdin closes.
"""

from __future__ import annotations

import sys

from sentinel.kernel.sensor import FAMILY_TRACEPOINTS, SCHED_TRACEPOINTS


def syscalls(families: list[str]) -> list[str]:
    """The syscalls whose sys_exit tracepoint the sensor attaches for these families."""
    return [c for f in families for c in FAMILY_TRACEPOINTS.get(f, (f,))]


def source(families: list[str]) -> str:
    parts = [f"RAW_TRACEPOINT_PROBE({tp}) {{ return 0; }}" for tp in SCHED_TRACEPOINTS]
    parts += [
        f"TRACEPOINT_PROBE(syscalls, sys_exit_{c}) {{ return 0; }}" for c in syscalls(families)
    ]
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
