"""``sentinel run`` as a subprocess for live tests: alerts (stdout JSON) and log lines (stderr)
collected by threads, armed-wait, and waiting for alerts by predicate.

The one runner of the live tests (kernel truth, Falco's rules live, the default rules): a module
usually starts one run (arming compiles and attaches every tracepoint its rules use, seconds to
tens of seconds under load) and its tests find their alerts by a value only their action has.
Network actions run in a namespace of the test's own (``netns_with``), never to a real address.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.helpers import log_event, log_records, sentinel_env, wait_armed

REPO = Path(__file__).resolve().parents[1]

Alert = dict[str, Any]


def record_armed(rec: dict[str, Any]) -> None:
    """In a VM suite, keep every ``armed`` log line (start-up seconds, rules, whether the BPF
    program cache served it) for the kernel's report: tests/vm/test_vm.py reads them back for
    the README's start-up column."""
    out = os.environ.get("SENTINEL_VM_OUT")
    if out:
        with open(Path(out) / "armed.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")


class LiveRun:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.alerts: list[Alert] = []
        self.stderr: list[str] = []
        self.armed = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._out, daemon=True),
            threading.Thread(target=self._err, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                alert = json.loads(line)
            except ValueError:
                self.stderr.append(f"non-JSON on stdout: {line!r}")
                continue
            with self._lock:
                self.alerts.append(alert)

    def _err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip())
            rec = log_event(line, "armed")
            if rec is not None:
                record_armed(rec)
                self.armed.set()

    def matching(self, pred: Callable[[Alert], bool]) -> list[Alert]:
        with self._lock:
            return [a for a in self.alerts if pred(a)]

    def wait(
        self, pred: Callable[[Alert], bool], count: int = 1, timeout: float = 10.0
    ) -> list[Alert]:
        """The alerts matching ``pred`` once ``count`` exist (or at the timeout: what there
        is, so the assertion that follows shows it)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.matching(pred)
            if len(got) >= count or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def settle(self, quiet: float = 1.0) -> list[Alert]:
        """Every alert so far, once none arrived for ``quiet`` seconds (a near miss is judged
        after the stream has had time to carry its alert)."""
        while True:
            with self._lock:
                n = len(self.alerts)
            time.sleep(quiet)
            with self._lock:
                if len(self.alerts) == n:
                    return list(self.alerts)

    def log(self, event: str) -> dict[str, Any] | None:
        """The first log record with this event name, if any."""
        return next((r for r in log_records(self.stderr) if r.get("event") == event), None)

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.stderr[-n:])

    def stop(self) -> None:
        """Stop sentinel (SIGTERM: it drains and logs its totals) and read all it wrote."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for t in self._threads:
            t.join(10)


@contextmanager
def sentinel_run(
    *args: str, env: dict[str, str] | None = None, armed_timeout: float | None = None
) -> Iterator[LiveRun]:
    """A ``sentinel run ARGS`` (``env``: its environment, default ours) that is armed when the
    block starts and stopped after it. It must arm within ``armed_timeout`` s (default 120; 600
    in the VM suites, where compiling under software emulation takes minutes) and fails at once,
    with its stderr, if it exits before."""
    if armed_timeout is None:
        armed_timeout = 600.0 if os.environ.get("SENTINEL_IN_VM") == "1" else 120.0
    proc = subprocess.Popen(
        [sys.executable, "-m", "sentinel", "run", *args],
        cwd=REPO,
        env=sentinel_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = LiveRun(proc)
    try:
        wait_armed(proc, run.armed, armed_timeout, run.stderr)
        yield run
    finally:
        run.stop()


@contextmanager
def netns_with(*addrs: str) -> Iterator[str]:
    """A network namespace of its own whose loopback carries ``addrs`` (TEST-NET addresses, or
    an address a rule names literally): connections to them never leave the machine."""
    if shutil.which("ip") is None:
        raise AssertionError("iproute2 is missing: run scripts/setup.sh")
    ns = f"sntest{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        for a in addrs:
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{a}/32", "dev", "lo"], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
