"""Operations wiring for a long-running ``sentinel run``: logs, metrics, health, hot reload.

One object so that the event loop's owner adds a handful of lines, not a subsystem::

    ops = Operations(cfg, config_path, make_engine=lambda compiled: Engine(compiled, ...))
    engine = ops.initial_engine()            # or pass your own and call ops.set_engine(engine)
    ops.watch(sensor=sensor, dispatcher=dispatcher, process_table=enricher.table)
    ops.start()                              # /metrics + /healthz, SIGHUP, start-up summary
    while running:
        sensor.poll(5)
        ops.step()                           # heartbeat; maybe swaps in reloaded rules
    ops.close()

and per event / alert: ``ops.event(evt_type)``, ``ops.alert(alert)``; the loop reads the
current engine from ``ops.engine`` (it changes on reload).

A reload re-reads the config file (if any) and the rules it names. Rules, ``matching``,
``minimum_priority``, ``hostname`` and logging take effect at once; settings that need new
kernel programs, sockets or outputs (``ringbuf_pages``, ``metrics_address``, ``outputs``,
``spool``) are reported as needing a restart, never half-applied.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sentinel.compiler import CompiledRules
from sentinel.config import ConfigError, SentinelConfig, load_config, parse_address
from sentinel.logging import configure_logging, get_logger
from sentinel.metrics import (
    EngineCollector,
    Metrics,
    MetricsServer,
    RunMetrics,
    dispatcher_collector,
    sensor_collector,
    size_collector,
)
from sentinel.reload import RulesReloader, load_compiled_rules

RESTART_KEYS = (
    "ringbuf_pages",
    "metrics_address",
    "outputs",
    "spool",
    "enforcement",
    "bpf_stats",
)
STALL_SECS = 10.0


@dataclass
class Reloaded:
    """What a reload produced: the config it read and the compiled rules."""

    config: SentinelConfig
    rules: CompiledRules


class Operations:
    def __init__(
        self,
        config: SentinelConfig,
        config_path: Path | None = None,
        make_engine: Callable[[CompiledRules, SentinelConfig], Any] | None = None,
        *,
        env: dict[str, str] | None = None,
        configure_logs: bool = True,
        stall_secs: float = STALL_SECS,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.env = env
        self.make_engine = make_engine or default_engine
        if configure_logs:
            configure_logging(config.logging.format, config.logging.level)
        self.log = get_logger("sentinel")
        self.metrics = Metrics()
        self.run = RunMetrics(self.metrics)
        self.event = self.run.event  # per event: the counter's update itself (RunMetrics)
        self.engine: Any = None
        self._engine_stats: EngineCollector | None = None
        self.server: MetricsServer | None = None
        self.stall_secs = stall_secs
        self.last_step = time.monotonic()
        self.reloader: RulesReloader[Reloaded] = RulesReloader(
            list(config.rules),
            self._swap,
            self._load,
            watch=config.reload.watch,
            interval=config.reload.interval,
            extra_watch=[config_path] if config_path is not None else [],
            logger=get_logger("sentinel.reload"),
            on_reject=self.run.reloads.labels("rejected").inc,
        )

    # -- engine ------------------------------------------------------------------------------
    def initial_engine(self) -> Any:
        """Load the configured rules (raises RulesError) and make the first engine."""
        self.set_engine(self.make_engine(load_compiled_rules(list(self.config.rules)), self.config))
        return self.engine

    def set_engine(self, engine: Any) -> None:
        if self._engine_stats is None:
            self._engine_stats = EngineCollector(engine)
            self.metrics.collect_from(self._engine_stats.collect)
        else:
            self._engine_stats.swap(engine)
        self.engine = engine
        rules = getattr(engine, "rules", None)
        if rules is not None:
            self.run.rules_loaded.set(len(rules))

    def _load(self, paths: list[Path]) -> Reloaded:
        cfg = self.config
        if self.config_path is not None:
            try:
                cfg = load_config(self.config_path, self.env)
            except ConfigError as exc:
                # Surfaced by the reloader like a rules error; the old config keeps running.
                raise ValueError(f"config rejected: {exc}") from None
        compiled = load_compiled_rules(list(cfg.rules))
        return Reloaded(cfg, compiled)

    def _swap(self, new: Reloaded) -> None:
        old = self.config
        restart = [k for k in RESTART_KEYS if getattr(old, k) != getattr(new.config, k)]
        if restart:
            self.log.warning(
                "config_needs_restart",
                keys=restart,
                reason="these settings are kept until sentinel restarts",
            )
            new.config = new.config.model_copy(update={k: getattr(old, k) for k in restart})
        if new.config.logging != old.logging:
            configure_logging(new.config.logging.format, new.config.logging.level)
        self.set_engine(self.make_engine(new.rules, new.config))
        self.config = new.config
        self.reloader.paths = list(new.config.rules)
        self.reloader.watch = new.config.reload.watch
        self.reloader.interval = new.config.reload.interval
        self.run.reloads.labels("ok").inc()

    # -- the parts that count ------------------------------------------------------------------
    def watch(self, sensor: Any = None, dispatcher: Any = None, process_table: Any = None) -> None:
        """Expose these parts' own counters at scrape time."""
        if sensor is not None:
            self.metrics.collect_from(sensor_collector(sensor))
        if dispatcher is not None:
            self.metrics.collect_from(dispatcher_collector(dispatcher))
        if process_table is not None:
            self.metrics.collect_from(
                size_collector(
                    "sentinel_process_table_size", "entries in the process table", process_table
                )
            )

    # -- lifecycle ---------------------------------------------------------------------------
    def health(self) -> tuple[bool, str]:
        age = time.monotonic() - self.last_step
        if age > self.stall_secs:
            return False, f"event loop stalled: last step {age:.1f}s ago"
        return True, "ok"

    def start(self, **summary: Any) -> None:
        """Serve metrics (unless ``metrics_address`` is empty), install SIGHUP, and log the
        start-up summary: rules, metrics URL, kernel features (BTF, ring buffer, BPF LSM) and
        whatever the caller adds in ``summary`` (e.g. ``programs=[...]`` attached)."""
        if self.config.metrics_address:
            host, port = parse_address(self.config.metrics_address)
            self.server = MetricsServer(self.metrics, host, port, health=self.health).start()
        self.reloader.install()
        self.last_step = time.monotonic()
        if "kernel" not in summary:
            from sentinel.doctor import kernel_features

            summary["kernel"] = kernel_features()
        self.log.info(
            "started",
            rules_paths=[str(p) for p in self.config.rules],
            rules_loaded=len(getattr(self.engine, "rules", []) or []),
            matching=self.config.matching,
            metrics=self.server.url if self.server else None,
            reload_watch=self.config.reload.watch,
            **summary,
        )

    def step(self) -> bool:
        """Call once per loop iteration. True when reloaded rules were swapped in."""
        self.last_step = time.monotonic()
        return self.reloader.poll()

    def alert(self, alert: Any) -> None:
        self.run.alert(alert)

    def close(self) -> None:
        self.reloader.close()
        if self.server is not None:
            self.server.close()
            self.server = None


def default_engine(compiled: CompiledRules, cfg: SentinelConfig) -> Any:
    """The engine a config asks for (matching, priority floor, hostname, append_output; an
    unset append_output is the default for this host: see ``default_append_output``)."""
    from sentinel.engine import Engine
    from sentinel.engine.engine import default_append_output
    from sentinel.enrichment.container_meta import cri_runtime_found

    append = cfg.append_output
    if append is None:
        append = list(default_append_output(cri_runtime_found()))
    return Engine(
        compiled,
        matching=cfg.matching,
        hostname=cfg.hostname,
        min_priority=cfg.minimum_priority,
        append_output=append,
    )


__all__ = ["Operations", "Reloaded"]
