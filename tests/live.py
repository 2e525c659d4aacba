"""``sentinel run`` as a subprocess for live tests: alerts (stdout JSON) and log lines (stderr)
collected by threads, armed-wait, and waiting for alerts by predicate."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.helpers import log_event, sentinel_env, wait_armed

REPO = Path(__file__).resolve().parents[1]


class LiveRun:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.alerts: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self.armed = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._out, daemon=True).start()
        threading.Thread(target=self._err, daemon=True).start()

    def _out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.alerts.append(json.loads(line))

    def _err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            if log_event(line, "armed"):
                self.armed.set()

    def matching(self, pred: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        with self._lock:
            return [a for a in self.alerts if pred(a)]

    def wait(
        self, pred: Callable[[dict[str, Any]], bool], count: int = 1, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """The alerts matching ``pred`` once ``count`` exist (or at the timeout: what there
        is, so the assertion that follows shows it)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.matching(pred)
            if len(got) >= count or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def log_tail(self, n: int = 30) -> str:
        return "".join(self.stderr[-n:])


@contextmanager
def sentinel_run(*args: str, armed_timeout: float = 120.0) -> Iterator[LiveRun]:
    """A ``sentinel run ARGS`` that is armed when the block starts and stopped after it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sentinel", "run", *args],
        cwd=REPO,
        env=sentinel_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = LiveRun(proc)
    try:
        wait_armed(proc, run.armed, armed_timeout, run.stderr)
        yield run
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
