"""A tiny Prometheus registry: counters and gauges with labels, rendered as text format 0.0.4.

Why not ``prometheus_client``: we need a dozen metric families, one thread-safe dict each, and
scrape-time collectors; that is ~150 lines, with no dependency to keep patched in a security
agent. Components that already count (the engine, the sensor's lost-records map, the outputs
Dispatcher) are not made to push into this registry per event: they register a *collector*,
a callable run at scrape time that reads their counters, so the hot path pays nothing.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["counter", "gauge"]
LabelValues = tuple[str, ...]


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if float(v).is_integer() and abs(v) < 2**53 else repr(float(v))


def _valid_name(name: str) -> bool:
    ok = name[:1].isalpha() or name[:1] in "_:"
    return ok and all(c.isalnum() or c in "_:" for c in name)


@dataclass
class Family:
    """One metric family as collected: what a collector returns, and what is rendered."""

    name: str
    help: str
    kind: Kind
    labels: Sequence[str] = ()
    samples: list[tuple[LabelValues, float]] = field(default_factory=list)

    def add(self, value: float, *label_values: str) -> Family:
        if len(label_values) != len(self.labels):
            raise ValueError(f"{self.name}: expected labels {list(self.labels)}")
        self.samples.append((tuple(str(x) for x in label_values), float(value)))
        return self

    def render(self) -> str:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for values, v in self.samples:
            if self.labels:
                pairs = ",".join(
                    f'{k}="{_escape_label(x)}"' for k, x in zip(self.labels, values, strict=True)
                )
                lines.append(f"{self.name}{{{pairs}}} {_fmt(v)}")
            else:
                lines.append(f"{self.name} {_fmt(v)}")
        return "\n".join(lines) + "\n"


class _Bound:
    """A metric with its label values fixed (``metric.labels(...)``)."""

    def __init__(self, metric: Metric, key: LabelValues) -> None:
        self._m = metric
        self._key = key

    def inc(self, amount: float = 1.0) -> None:
        self._m._inc(self._key, amount)

    def set(self, value: float) -> None:
        self._m._set(self._key, value)


class Metric:
    """A counter or gauge owned by the registry. Thread-safe; labels by keyword or position."""

    def __init__(self, name: str, help: str, kind: Kind, labels: Sequence[str]) -> None:
        self.name = name
        self.help = help
        self.kind: Kind = kind
        self.label_names = tuple(labels)
        self._values: dict[LabelValues, float] = {}
        self._lock = threading.Lock()
        if not labels:
            self._values[()] = 0.0

    def _key(self, args: Sequence[str], kw: Mapping[str, str]) -> LabelValues:
        if kw:
            if args or set(kw) != set(self.label_names):
                raise ValueError(f"{self.name}: labels are {list(self.label_names)}")
            return tuple(str(kw[n]) for n in self.label_names)
        if len(args) != len(self.label_names):
            raise ValueError(f"{self.name}: labels are {list(self.label_names)}")
        return tuple(str(a) for a in args)

    def labels(self, *args: str, **kw: str) -> _Bound:
        return _Bound(self, self._key(args, kw))

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._inc(self._key((), labels), amount)

    def set(self, value: float, **labels: str) -> None:
        self._set(self._key((), labels), value)

    def get(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key((), labels), 0.0)

    def _inc(self, key: LabelValues, amount: float) -> None:
        if self.kind == "counter" and amount < 0:
            raise ValueError(f"{self.name}: a counter only goes up")
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def _set(self, key: LabelValues, value: float) -> None:
        if self.kind == "counter":
            raise ValueError(f"{self.name}: set() is for gauges")
        with self._lock:
            self._values[key] = float(value)

    def collect(self) -> Family:
        with self._lock:
            samples = sorted(self._values.items())
        return Family(self.name, self.help, self.kind, self.label_names, list(samples))


Collector = Callable[[], Iterable[Family]]


class Metrics:
    """The registry: owned metrics plus scrape-time collectors, rendered by :meth:`render`."""

    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}
        self._collectors: list[Collector] = []
        self._lock = threading.Lock()
        self.collector_errors = 0

    def _add(self, name: str, help: str, kind: Kind, labels: Sequence[str]) -> Metric:
        if not _valid_name(name) or not all(_valid_name(x) for x in labels):
            raise ValueError(f"invalid metric or label name in {name}{list(labels)}")
        with self._lock:
            old = self._metrics.get(name)
            if old is not None:
                if old.kind != kind or old.label_names != tuple(labels):
                    raise ValueError(f"metric {name} already registered differently")
                return old
            m = self._metrics[name] = Metric(name, help, kind, labels)
            return m

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Metric:
        return self._add(name, help, "counter", labels)

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Metric:
        return self._add(name, help, "gauge", labels)

    def collect_from(self, collector: Collector) -> Collector:
        """Run ``collector`` at every scrape; returns it (usable as a decorator)."""
        with self._lock:
            self._collectors.append(collector)
        return collector

    def remove_collector(self, collector: Collector) -> None:
        with self._lock:
            self._collectors.remove(collector)

    def families(self) -> list[Family]:
        with self._lock:
            owned = list(self._metrics.values())
            collectors = list(self._collectors)
        out = [m.collect() for m in owned]
        for c in collectors:
            try:
                out.extend(c())
            except Exception:
                # A broken collector must not take /metrics down; it shows as a counter.
                self.collector_errors += 1
        merged: dict[str, Family] = {}
        for f in out:
            have = merged.get(f.name)
            if have is None:
                merged[f.name] = Family(f.name, f.help, f.kind, f.labels, list(f.samples))
            else:
                have.samples.extend(f.samples)
        err = Family("sentinel_metrics_collector_errors_total", "collectors that raised", "counter")
        merged[err.name] = err.add(self.collector_errors)
        return list(merged.values())

    def render(self) -> str:
        return "".join(f.render() for f in self.families())


__all__ = ["Collector", "Family", "Metric", "Metrics"]
