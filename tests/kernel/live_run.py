"""A ``sentinel run`` subprocess whose alerts (stdout) and log records (stderr) are collected.

The kernel tests that judge rules on live events start one of these per module (a compile and
attach costs seconds), perform real actions and wait for the alerts they must cause.
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers import log_records, sentinel_env

SENTINEL = [sys.executable, "-m", "sentinel"]
REPO = Path(__file__).resolve().parents[2]

Alert = dict[str, Any]


class SentinelRun:
    """``sentinel run ARGS...`` in a child (``env``: its environment, default ours); ``armed``
    is set when it says so."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*SENTINEL, "run", *args],
            cwd=REPO,
            env=sentinel_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.q: queue.Queue[Alert] = queue.Queue()
        self.seen: list[Alert] = []
        self.stderr: list[str] = []
        self.armed = threading.Event()
        threading.Thread(target=self._out, daemon=True).start()
        threading.Thread(target=self._err, daemon=True).start()

    def _out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.q.put(json.loads(line))
            except ValueError:
                self.stderr.append(f"non-JSON on stdout: {line!r}")

    def _err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip())
            if any(r.get("event") == "armed" for r in log_records(line)):
                self.armed.set()

    def log(self, event: str) -> dict[str, Any] | None:
        """The first log record with this event name, if any."""
        return next((r for r in log_records(self.stderr) if r.get("event") == event), None)

    def wait_armed(self, timeout: float) -> None:
        if not self.armed.wait(timeout):
            self.proc.kill()
            raise AssertionError("sentinel did not arm:\n" + "\n".join(self.stderr[-30:]))

    def wait_for(
        self, pred: Callable[[Alert], bool], timeout: float = 15.0, count: int = 1
    ) -> list[Alert]:
        """The alerts matching ``pred`` once ``count`` of them arrived (or at the timeout:
        what there is, so the assertion that follows shows it)."""
        deadline = time.monotonic() + timeout
        while sum(pred(a) for a in self.seen) < count and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                self.seen.append(self.q.get(timeout=0.05))
        return [a for a in self.seen if pred(a)]

    def settle(self, quiet: float = 1.0) -> list[Alert]:
        """Every alert so far, once none arrived for ``quiet`` seconds."""
        while True:
            try:
                self.seen.append(self.q.get(timeout=quiet))
            except queue.Empty:
                return list(self.seen)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
