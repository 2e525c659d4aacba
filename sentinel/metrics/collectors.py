"""The metrics ``sentinel run`` exposes, and scrape-time collectors for the parts that count.

The parts are duck-typed (Protocols), so this package imports no pipeline stage: ``run`` hands
in its sensor, engine, Dispatcher and process table. Names follow Prometheus conventions
(``_total`` for counters). What each one answers for an operator:

- ``sentinel_events_total{evt_type}``: events evaluated in user space, per Falco event type.
- ``sentinel_kernel_filtered_events_total{evt_type}``: dropped in the kernel by the prefilter.
- ``sentinel_kernel_passed_events_total{evt_type}``: passed by the prefilter towards user space
  (filtered + passed = every event of that type the kernel saw).
- ``sentinel_kernel_lost_events_total{evt_type}``: passed, but the ring buffer was full: lost.
  (The three kernel counters need a sensor with ``counts()``; one with only ``lost()`` exports
  just the last.)
- ``sentinel_alerts_total{rule,priority,action}``: alerts raised.
- ``sentinel_output_queue_depth{output}`` / ``sentinel_output_events_total{output,result}``:
  the outputs' backlog and sent/retried/dropped/dead-lettered counts.
- ``sentinel_process_table_size``: entries in the process table.
- ``sentinel_rules_loaded``, ``sentinel_rules_reloads_total{result}``: hot reload.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

from sentinel.metrics.registry import Collector, Family, Metrics

T = TypeVar("T")


def _stable(read: Callable[[], T], attempts: int = 5) -> T:
    """Read a dict another thread is mutating: a rare 'changed size during iteration' is retried."""
    for _ in range(attempts - 1):
        try:
            return read()
        except RuntimeError:
            continue
    return read()


class EngineLike(Protocol):
    events: int
    alerts_by_rule: dict[str, int]


class SensorLike(Protocol):
    def lost(self) -> dict[str, int]: ...


class DispatcherLike(Protocol):
    def metrics(self) -> dict[str, dict[str, int]]: ...


class EventCounts:
    """Events per type, counted by the event loop with one dict update (no lock: one writer;
    the scraper copies the dict)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def seen(self, evt_type: str | None) -> None:
        key = evt_type or "unknown"
        self.counts[key] = self.counts.get(key, 0) + 1

    def collect(self) -> Iterable[Family]:
        counts = _stable(lambda: dict(self.counts))
        fam = Family(
            "sentinel_events_total",
            "events evaluated by the engine, by Falco event type",
            "counter",
            ["evt_type"],
        )
        for t, n in sorted(counts.items()):
            fam.add(n, t)
        return [fam]


class EngineCollector:
    """Reads the live engine's counters. On a rules reload the engine object changes and its
    counters start at zero; :meth:`swap` folds the old totals in so the exported counters
    never go down."""

    def __init__(self, engine: EngineLike) -> None:
        self._engine = engine
        self._base_events = 0
        self._base_rules: dict[str, int] = {}

    def swap(self, engine: EngineLike) -> None:
        old = self._engine
        self._base_events += old.events
        for rule, n in _stable(lambda: dict(old.alerts_by_rule)).items():
            self._base_rules[rule] = self._base_rules.get(rule, 0) + n
        self._engine = engine

    def collect(self) -> Iterable[Family]:
        eng = self._engine
        ev = Family("sentinel_engine_events_total", "events the engine matched", "counter")
        ev.add(self._base_events + eng.events)
        by_rule = dict(self._base_rules)
        for rule, n in _stable(lambda: dict(eng.alerts_by_rule)).items():
            by_rule[rule] = by_rule.get(rule, 0) + n
        fam = Family(
            "sentinel_engine_rule_matches_total", "events matched, by rule", "counter", ["rule"]
        )
        for rule, n in sorted(by_rule.items()):
            fam.add(n, rule)
        return [ev, fam]


KERNEL_COUNTERS = (
    ("filtered", "events dropped in the kernel by the rules' prefilter, by Falco event type"),
    ("passed", "events the kernel's prefilter passed towards user space, by Falco event type"),
    ("lost", "events lost in the kernel (ring buffer full), by Falco event type"),
    # an interrupt each: how often execs woke the reader at once (at most one per gap)
    ("woken", "records that woke the reader at once (execs), by Falco event type"),
)


def sensor_collector(sensor: SensorLike) -> Collector:
    def collect() -> Iterable[Family]:
        read = getattr(sensor, "counts", None)
        if callable(read):
            counts: Mapping[str, Mapping[str, int]] = read()
        else:
            counts = {t: {"lost": n} for t, n in sensor.lost().items()}
        out = []
        for key, help in KERNEL_COUNTERS:
            fam = Family(f"sentinel_kernel_{key}_events_total", help, "counter", ["evt_type"])
            for t, values in sorted(counts.items()):
                if key in values:
                    fam.add(values[key], t)
            if fam.samples or key == "lost":
                out.append(fam)
        return out

    return collect


def dispatcher_collector(dispatcher: DispatcherLike) -> Collector:
    def collect() -> Iterable[Family]:
        depth = Family(
            "sentinel_output_queue_depth", "alerts waiting for an output", "gauge", ["output"]
        )
        events = Family(
            "sentinel_output_events_total",
            "alerts per output by result (sent, retried, spooled, dead_lettered, dropped)",
            "counter",
            ["output", "result"],
        )
        for name, values in sorted(dispatcher.metrics().items()):
            for key, n in sorted(values.items()):
                if key == "queue_depth":
                    depth.add(n, name)
                else:
                    events.add(n, name, key)
        return [depth, events]

    return collect


def size_collector(name: str, help: str, obj: Any) -> Collector:
    """A gauge of ``len(obj)`` (e.g. the process table)."""

    def collect() -> Iterable[Family]:
        return [Family(name, help, "gauge").add(len(obj))]

    return collect


class RunMetrics:
    """The owned metrics of ``sentinel run`` in one object, so the wiring is a few lines."""

    def __init__(self, metrics: Metrics) -> None:
        self.registry = metrics
        self.event_counts = EventCounts()
        # per event (the loop's hot path): the counter's own update, bound once, not a method
        # that calls it
        self.event: Callable[[str | None], None] = self.event_counts.seen
        metrics.collect_from(self.event_counts.collect)
        self.alerts = metrics.counter(
            "sentinel_alerts_total", "alerts raised", ["rule", "priority", "action"]
        )
        self.rules_loaded = metrics.gauge("sentinel_rules_loaded", "enabled rules in use")
        self.reloads = metrics.counter(
            "sentinel_rules_reloads_total", "rules reloads by result", ["result"]
        )
        self.started = metrics.gauge("sentinel_start_time_seconds", "start time, Unix epoch")
        self.started.set(time.time())

    def alert(self, alert: Any) -> None:
        self.alerts.labels(alert.rule, alert.priority, alert.action).inc()


__all__ = [
    "EngineCollector",
    "EventCounts",
    "RunMetrics",
    "dispatcher_collector",
    "sensor_collector",
    "size_collector",
]
