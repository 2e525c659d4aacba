"""A small world for decoding records without a kernel: a process table with a known process
tree, and records built as the BPF side would emit them (sentinel.events.builder).

The table reads no real /proc (its root is an empty directory), so what the fields say comes
from the records and this tree alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sentinel.enrichment.event import LiveEvent
from sentinel.enrichment.live import Enricher
from sentinel.enrichment.proctable import Proc, ProcessTable
from sentinel.events.builder import build

PID, PARENT, SHELL = 4242, 4200, 4100  # the process, its parent, the session's login shell
TREE = [
    Proc(pid=1, ppid=0, comm="systemd", exe="/sbin/init", exepath="/usr/lib/systemd/systemd"),
    Proc(
        pid=SHELL,
        ppid=1,
        comm="bash",
        exe="-bash",
        exepath="/usr/bin/bash",
        sid=SHELL,
        pgid=SHELL,
        cwd="/root",
        tty=34816,
    ),
    Proc(
        pid=PARENT,
        ppid=SHELL,
        comm="make",
        exe="make",
        exepath="/usr/bin/make",
        args=["all"],
        sid=SHELL,
        pgid=PARENT,
        cwd="/src",
    ),
    Proc(
        pid=PID,
        ppid=PARENT,
        comm="tester",
        exe="./tester",
        exepath="/opt/t/tester",
        args=["-v", "x"],
        sid=SHELL,
        pgid=PARENT,
        cwd="/src",
        tty=34816,
        start_ns=5,
    ),
]

# One record per event type whose every field has a value (the fields test walks them all).
SAMPLES: dict[str, dict[str, Any]] = {
    "execve": {
        "comm": "sh",
        "ppid": PARENT,
        "args": ["/bin/sh", "-c", "id"],
        "filename": "/bin/sh",
        "exe": "/usr/bin/dash",
        "cwd": "/root",
        "tty": 34817,
        "sid": SHELL,
        "pgid": PARENT,
    },
    "execveat": {
        "comm": "tool",
        "ppid": PARENT,
        "args": ["tool"],
        "filename": "/dev/fd/3",
        "exe": "/memfd:x (deleted)",
        "cwd": "/",
        "sid": SHELL,
        "pgid": PARENT,
    },
    "clone": {"child_pid": 5000, "child_tid": 5000, "ppid": PARENT},
    "procexit": {"exit_code": 256},
    "open": {"path": "/etc/passwd", "flags": 0o2000000, "mode": 0, "res": 3},
    "openat": {"path": "shadow", "base": "/etc", "dirfd": 5, "flags": 0o2, "res": 4},
    "openat2": {"path": "/tmp/x", "flags": 0o101, "mode": 0o644, "res": 5},
    "creat": {"path": "out.txt", "base": "/src", "flags": 0o1101, "mode": 0o755, "res": 6},
    "unlink": {"path": "old.log", "base": "/var/log", "res": 0},
    "unlinkat": {"path": "sub/x", "base": "/var/tmp", "dirfd": 7, "flags": 0x200, "res": 0},
    "connect": {
        "fd": 4,
        "res": 0,
        "addr": ("198.51.100.7", 443),
        "laddr": "10.0.0.2",
        "lport": 40000,
        "sock_type": 1,
        "protocol": 6,
    },
}


@pytest.fixture
def world(tmp_path: Path) -> Enricher:
    """An enricher over a table that holds TREE (and reads nothing from the real /proc)."""
    table = ProcessTable(proc_root=str(tmp_path))
    for p in TREE:
        table.insert(replace(p, args=list(p.args)))
    return Enricher(table=table)


@pytest.fixture
def event(world: Enricher) -> Callable[..., LiveEvent]:
    """``event("openat", path=...)``: the live event of one built record (pid PID unless
    given); process records update the table, as in ``sentinel run``."""

    def make(evt_type: str, **values: Any) -> LiveEvent:
        values.setdefault("pid", PID)
        values.setdefault("tid", values["pid"])
        values.setdefault("ppid", PARENT)
        return world.event(build(evt_type, **values))

    return make
