"""No event is lost below capacity: a fixed count of opens, every one delivered, the counters
agree (issue 16).

The sensor runs as ``sentinel run`` would, the ring at the configured default size, with a
prefilter that keeps only opens of the generator's file (so that another workload's open storm
on this shared machine cannot fill the ring: the loss counted here is the pipeline's own), and
every record goes through the same path: decode, process table, the engine with the default
rules. A C generator (a child process: the sensor ignores its own) makes exactly
``RATE * BURST_S * BURSTS`` opens at a paced rate far below the zero-loss rate the kernel
bench measures (``python -m bench kernel``), over several laps of the ring: the loss this test
guards against happened with the ring nearly empty, once the producer had wrapped around (see
sentinel/kernel/ringbuf.py). Not a timed test: the assertions are on counts.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from bench.kernel_storm import build, paced_run
from tests.kernel.conftest import require_root

pytestmark = pytest.mark.kernel

RATE = 40_000  # opens per second: well below capacity
# In bursts, each waiting for the reader to catch up: one burst (20,000 opens, ~2.4 MB of
# records) always fits in the ring, so a reader starved of CPU by other work on the machine
# cannot fill it; twelve (240,000 opens, ~28 MB) lap the default 8 MiB ring three times.
BURST_S = 0.5
BURSTS = 12


def test_fixed_count_of_opens_all_delivered(tmp_path: Path) -> None:
    require_root()
    from sentinel.app.sensor import FilteredSensor
    from sentinel.cli.common import load_compiled
    from sentinel.config import SentinelConfig
    from sentinel.engine import Engine
    from sentinel.enrichment.containers import ContainerResolver
    from sentinel.enrichment.live import Enricher
    from sentinel.paths import RULES_DIR

    binary = build(tmp_path)
    compiled = load_compiled([RULES_DIR])
    assert compiled is not None
    engine = Engine(compiled)
    resolver = ContainerResolver(fetch_metadata=False)
    enricher = Enricher(resolver=resolver)
    target = tmp_path.resolve() / "target"
    target.write_text("x")
    only = tmp_path / "only-target.yaml"
    only.write_text(
        "- rule: The generator's opens\n  desc: the prefilter keeps these only\n"
        f"  condition: evt.type = openat and fd.name = {target}\n"
        "  output: open %fd.name\n  priority: NOTICE\n"
    )
    kept = load_compiled([only])
    assert kept is not None
    marker = str(target).encode() + b"\0"
    seen = {"target": 0}

    def on_raw(raw: bytes) -> None:
        ev = enricher.event(raw)
        # only the generator opens it (an absolute path: in the record as is)
        if ev.rec.evt.name == "openat" and marker in raw:
            seen["target"] += 1
        engine.process(ev)

    sensor = FilteredSensor(
        [(r.name, r.expr) for r in Engine(kept).rules],
        event_types=["openat"],
        prefilter=True,
        ringbuf_pages=SentinelConfig().ringbuf_pages,
    )
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            sensor.poll()

    sensor.start(on_raw)
    resolver.start()
    enricher.seed()
    reader = threading.Thread(target=loop, daemon=True)
    reader.start()
    try:
        done = 0
        for _ in range(BURSTS):
            done += paced_run(binary, RATE, BURST_S, str(target)).done
            # let the reader catch up (bounded; the assertions below are on counts)
            deadline = time.monotonic() + 30
            while seen["target"] < done and time.monotonic() < deadline:
                time.sleep(0.05)
        assert done == int(RATE * BURST_S) * BURSTS
    finally:
        stop.set()
        reader.join(10)
        counts = sensor.counts()["openat"]
        sensor.close()
        resolver.close()
    assert counts["lost"] == 0, counts
    assert seen["target"] == done
    assert counts["passed"] >= done  # the generator's opens (and any the prefilter kept)
