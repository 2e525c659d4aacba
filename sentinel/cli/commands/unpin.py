"""``sentinel unpin``: drop the BPF programs and maps a stopped Sentinel left pinned in bpffs.

Sentinel pins the sensor's loaded programs and maps so that the next start reuses them instead
of having the kernel verify every program again (sentinel.kernel.pins). While Sentinel is
stopped they hold kernel memory (the ring buffer, the tables); this frees it. A set a running
Sentinel holds is left alone (and reported).
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("unpin", help="free the BPF programs and maps kept for a fast restart")
    p.set_defaults(func=main)


def main(_args: argparse.Namespace) -> int:
    from sentinel.kernel.pins import unpin_all

    removed, in_use = unpin_all()
    sys.stdout.write(f"unpinned {len(removed)} set(s)\n")
    for name in in_use:
        sys.stdout.write(f"in use by a running Sentinel, kept: {name}\n")
    return 0
