"""Prometheus metrics: a small registry, scrape-time collectors and the HTTP endpoint.

Wiring in ``sentinel run`` (see docs/operations.md)::

    metrics = Metrics()
    run_metrics = RunMetrics(metrics)
    engine_stats = EngineCollector(engine)
    metrics.collect_from(engine_stats.collect)
    metrics.collect_from(sensor_collector(sensor))
    metrics.collect_from(dispatcher_collector(dispatcher))
    metrics.collect_from(size_collector("sentinel_process_table_size", "...", table))
    server = MetricsServer(metrics, *parse_address(cfg.metrics_address), health=...).start()
"""

from sentinel.metrics.collectors import (
    EngineCollector,
    EventCounts,
    RunMetrics,
    dispatcher_collector,
    sensor_collector,
    size_collector,
)
from sentinel.metrics.registry import Collector, Family, Metric, Metrics
from sentinel.metrics.server import MetricsServer

__all__ = [
    "Collector",
    "EngineCollector",
    "EventCounts",
    "Family",
    "Metric",
    "Metrics",
    "MetricsServer",
    "RunMetrics",
    "dispatcher_collector",
    "sensor_collector",
    "size_collector",
]
