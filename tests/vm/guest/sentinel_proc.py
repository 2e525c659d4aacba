"""Start ``sentinel run`` inside the VM and wait until it is armed, or fail fast.

A run that cannot start (a program the verifier refuses, a bad config) exits within seconds;
waiting the full arming timeout for it hung the guest until the VM's own timeout killed every
VM test (main's CI, Debian 6.1). So the wait also watches the process and fails with its
stderr as soon as it exits.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


def start_sentinel(
    cfg: Path,
    alerts: queue.Queue[dict[str, Any]],
    stderr: list[str],
    lock: threading.Lock | None = None,
    timeout: float = 600.0,  # bcc compiles twice (sensor, LSM) under emulation
) -> subprocess.Popen[str]:
    """``sentinel run --config cfg`` with stdout's JSON alerts put on ``alerts`` and stderr's
    lines appended to ``stderr``; returns once the structlog ``armed`` record arrived."""
    lock = lock or threading.Lock()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sentinel", "run", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    armed = threading.Event()

    def read_out() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                alerts.put(json.loads(line))

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with lock:
                stderr.append(line)
            if '"armed"' in line:  # the structlog JSON record {"event": "armed", ...}
                armed.set()

    threading.Thread(target=read_out, daemon=True).start()
    err_reader = threading.Thread(target=read_err, daemon=True)
    err_reader.start()
    deadline = time.monotonic() + timeout
    while not armed.wait(0.5):
        if proc.poll() is not None:
            err_reader.join(timeout=5)
            with lock:
                tail = "".join(stderr[-40:])
            raise AssertionError(f"sentinel run exited ({proc.returncode}) unarmed:\n{tail}")
        if time.monotonic() > deadline:
            proc.kill()
            with lock:
                tail = "".join(stderr[-40:])
            raise AssertionError(f"sentinel run not armed after {timeout:.0f} s:\n{tail}")
    return proc
