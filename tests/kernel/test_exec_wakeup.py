"""Exec records wake the reader at once, but at most once per WAKE_GAP_NS (a wakeup is an
interrupt inside the exec's BPF time): in an exec storm the real sensor delivers every exec
record while the kernel's ``woken`` counter stays within one per gap of the storm's length.
Without the gap every exec would wake the reader (woken == execs, far above that bound).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sentinel.events import decode
from sentinel.events.exec import WAKE_GAP_NS
from tests.kernel.conftest import require_root

pytestmark = pytest.mark.kernel

DIR = Path("/tmp/sntl-wake")
BINARY = DIR / "sntl-waketrue"  # a copy of /bin/true: its execs are told apart by comm
LOOPS, PER_LOOP = 8, 100  # shells running it back to back, on both cores


@pytest.fixture(scope="module")
def sensor() -> Iterator[tuple[Any, list[str]]]:
    require_root()
    from sentinel.kernel.sensor import Sensor

    DIR.mkdir(exist_ok=True)
    shutil.copy("/bin/true", BINARY)
    comms: list[str] = []

    def on_raw(raw: bytes) -> None:
        rec = decode(raw)
        if rec.evt.name == "execve":
            comms.append(rec.comm)

    s = Sensor(frozenset({"openat"}))  # execs and process records are always traced
    s.start(on_raw)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            s.poll()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield s, comms
    finally:
        stop.set()
        t.join(5)
        s.close()
        shutil.rmtree(DIR, ignore_errors=True)


def test_an_exec_storm_wakes_the_reader_at_most_once_per_gap(
    sensor: tuple[Any, list[str]],
) -> None:
    s, comms = sensor
    before = s.counts()["execve"]
    script = f"i=0; while [ $i -lt {PER_LOOP} ]; do {BINARY}; i=$((i+1)); done"
    t0 = time.monotonic()
    loops = [subprocess.Popen(["sh", "-c", script]) for _ in range(LOOPS)]
    for p in loops:
        assert p.wait(60) == 0
    elapsed_ms = (time.monotonic() - t0) * 1e3
    execs = LOOPS * PER_LOOP
    deadline = time.monotonic() + 10
    while comms.count(BINARY.name) < execs and time.monotonic() < deadline:
        time.sleep(0.05)
    after = s.counts()["execve"]
    woken = after["woken"] - before["woken"]
    # every exec delivered, none lost, although most of them did not wake the reader
    assert comms.count(BINARY.name) == execs
    assert after["lost"] == before["lost"]
    assert woken >= 1
    # at most one wakeup per gap of the storm (+ a few for CPUs racing on the timestamp)
    bound = elapsed_ms / (WAKE_GAP_NS / 1e6) + 5
    print(f"{execs} execs in {elapsed_ms:.0f} ms woke the reader {woken} times")
    assert woken <= bound, (woken, bound)
    assert bound < execs, "the storm was too slow to tell a gap from none"
