"""Shared fixtures for the kernel tests: ONE live sensor per module (a bcc compile costs ~1-3 s).

Everything here is real: the BPF programs are compiled and attached to the running kernel,
and the actions are performed by real subprocesses. The sensor ignores its own process (it
would otherwise observe its own reads forever), so every action runs in a child process.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sentinel.enrichment.event import LiveEvent
from sentinel.enrichment.live import Enricher
from sentinel.events.process import child


def require_root() -> None:
    if os.geteuid() != 0:
        msg = "kernel tests load BPF programs and need root"
        print(f"SKIP: {msg}")
        pytest.skip(msg)


class LiveSensor:
    """A running sensor whose events (materialised dicts) are collected by a poll thread."""

    def __init__(
        self, families: frozenset[str] | None = None, disable_features: tuple[str, ...] = ()
    ) -> None:
        from sentinel.enrichment.containers import ContainerResolver
        from sentinel.kernel.sensor import ALL_SYSCALLS, Sensor

        self.sensor = Sensor(
            families if families is not None else ALL_SYSCALLS, disable_features=disable_features
        )
        self.resolver = ContainerResolver(fetch_metadata=False)
        self.enricher = Enricher(resolver=self.resolver)
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.watch: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _on_raw(self, raw: bytes) -> None:
        ev: LiveEvent = self.enricher.event(raw)
        # Keep only events of processes the tests started (their pid or parent is watched):
        # materialising every event of the machine would be slow and pointless.
        pid, ppid = ev.rec.pid, ev.rec.ppid
        if pid in self.watch or ppid in self.watch:
            if ev.rec.evt.name == "clone":  # follow the watched processes' descendants
                self.watch.add(child(ev.rec)[0])
            d = ev.to_dict()
            with self.lock:
                self.events.append(d)

    def start(self) -> None:
        self.sensor.start(self._on_raw)
        self.resolver.start()
        self.enricher.seed()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sensor.poll(20)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.sensor.close()
        self.resolver.close()

    def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 5.0, count: int = 1
    ) -> list[dict[str, Any]]:
        """Events matching ``pred``; waits until ``count`` exist (or timeout, then returns
        what there is, so the assertion that follows shows what was seen)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                got = [e for e in self.events if pred(e)]
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                lost = self.sensor.lost()
                if any(lost.values()):
                    # Say so plainly: an expected event may be among the lost ones.
                    print(f"NOTE: the sensor lost events meanwhile: {lost}")
                return got
            time.sleep(0.02)


@pytest.fixture
def cache(seeded: Path, tmp_path: Path) -> Path:
    """A private copy of the program cache the requesting module's ``seeded`` fixture filled
    (one compile per module; each test may corrupt or extend its own copy)."""
    d = tmp_path / "cache"
    shutil.copytree(seeded, d)
    return d


@pytest.fixture(scope="module")
def live() -> Iterator[LiveSensor]:
    require_root()
    s = LiveSensor()
    s.watch.add(os.getpid())
    s.start()
    try:
        yield s
    finally:
        s.close()
