"""The live run (``sentinel run``, ``sentinel capture``) as a list of named steps.

Falco's ``app/actions`` is the model: each step does one thing to a shared :class:`Run` and
returns whether the run proceeds (``False`` stops it with ``run.rc``); resources are closed in
reverse order whatever happens. Read :data:`STEPS` top to bottom to see what a run does.

Every line on stderr goes through structlog (sentinel.logging); stdout carries alerts only.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from sentinel.events.common import FLAG_TABLE_ONLY
from sentinel.logging import configure_logging, get_logger

LOSS_REPORT_SECS = 10.0
COUNTS_REPORT_SECS = 60.0
METADATA_WAIT_S = 1.0  # longest an alert waits for its container's name and image
WARM_TYPES = frozenset({"execve", "clone", "procexit", "openat", "connect"})


@dataclass
class RunOptions:
    """What the command line asked for (None: the config's, or the default)."""

    rules: list[Path] | None = None
    config: Path | None = None
    matching: str | None = None
    prefilter: bool = True
    duration: float | None = None
    all_syscalls: bool = False
    capture: IO[str] | None = None  # also write every event evaluated, in the replay format
    sink: Callable[[Any], None] | None = None  # where alerts go (default: the configured outputs)


def kernel_counts(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    """The sensor's per-type counters as flat log fields (``passed_openat=12``...), nonzero
    ones only: what the kernel filtered, passed and lost per Falco event type."""
    return {
        f"{key}_{evt_type}": n
        for evt_type, values in counts.items()
        for key, n in values.items()
        if n
    }


def stdout_sink(alert: Any) -> None:
    """The default sink without a config file: one JSON object per line, flushed."""
    import sys

    sys.stdout.write(alert.to_json() + "\n")
    sys.stdout.flush()


@dataclass
class Run:
    """The state the steps share."""

    opts: RunOptions
    log: Any = field(default_factory=lambda: get_logger("sentinel"))
    rc: int = 0
    config: Any = None
    ops: Any = None
    enforcement: Any = None
    engine: Any = None
    sink: Callable[[Any], None] = stdout_sink
    sensor: Any = None
    enricher: Any = None
    resolver: Any = None
    waiter: Any = None
    bpf_stats: bool = False  # kernel bpf_stats held on (sentinel.kernel.bpfstats)
    kernel_summary: Any = None  # a Future: the started line's kernel features (see start_sensor)
    stats: dict[str, int] = field(default_factory=lambda: {"events": 0, "alerts": 0, "errors": 0})
    t0: float = field(default_factory=time.monotonic)
    step_seconds: dict[str, float] = field(default_factory=dict)  # each step's time, so far
    stopping: bool = False
    cleanup: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def fail(self, rc: int, event: str, **fields: Any) -> bool:
        self.log.error(event, **fields)
        self.rc = rc
        return False


Step = Callable[[Run], bool]

# ---- the steps ------------------------------------------------------------------------------


def check_privileges(run: Run) -> bool:
    """Root, before anything is compiled or opened."""
    from sentinel.kernel.sensor import SensorError, check_root

    try:
        check_root()
    except SensorError as exc:
        return run.fail(1, str(exc))
    return True


def load_config(run: Run) -> bool:
    """The config file, or the defaults (with the documented SENTINEL_* overrides either
    way); command-line options win. Logging follows a config file's settings."""
    from sentinel.config import ConfigError
    from sentinel.config import load_config as read_config

    opts = run.opts
    try:
        config = read_config(opts.config)
    except ConfigError as exc:
        return run.fail(2, "config_invalid", error=str(exc))
    if opts.config is not None:
        try:
            configure_logging(config.logging.format, config.logging.level)
        except ValueError as exc:
            return run.fail(2, "config_invalid", error=str(exc))
    overrides: dict[str, Any] = {}
    if opts.rules:
        overrides["rules"] = list(opts.rules)
    if opts.matching:
        overrides["matching"] = opts.matching
    run.config = config.model_copy(update=overrides) if overrides else config
    return True


def load_rules(run: Run) -> bool:
    """Compile the rules; deny rules go to enforcement (which may refuse them)."""
    from sentinel.compiler import domain_names
    from sentinel.enforcement.runtime import Enforcement
    from sentinel.enrichment.dns import NAMES
    from sentinel.loader import RulesError
    from sentinel.ops import Operations, default_engine

    run.enforcement = Enforcement(run.config, default_engine, run.log)

    def make_engine(compiled: Any, config: Any) -> Any:
        engine = run.enforcement.make_engine(compiled, config)
        NAMES.watch(domain_names(engine.rules))  # resolved in the background from now on
        if run.sensor is not None and run.engine is not None:
            # A reload: before the new rules replace the old ones, the kernel keeps what either
            # set can match (the union of both), so no event of either is dropped in between;
            # the event loop then narrows it to the new rules (see event_loop).
            both = [*run.ops.engine.rules, *engine.rules]
            run.sensor.reload([(r.name, r.expr) for r in both])
        return engine

    run.ops = Operations(run.config, run.opts.config, make_engine=make_engine, configure_logs=False)
    run.cleanup.callback(run.ops.close)
    NAMES.start()
    run.cleanup.callback(NAMES.close)
    try:
        run.engine = run.ops.initial_engine()
    except RulesError as exc:
        problems = [p.to_dict() for p in exc.problems]
        return run.fail(2, "rules_invalid", errors=len(problems), problems=problems)
    if not run.enforcement.ok:
        run.rc = 1
        return False
    return True


def open_outputs(run: Run) -> bool:
    """The alert sink: the caller's, the configured outputs (with a config file), or stdout."""
    from sentinel.outputs.sink import AlertSink, SinkError

    if run.opts.sink is not None:
        run.sink = run.opts.sink
    elif run.opts.config is not None:
        try:
            alert_sink = AlertSink(run.config)
        except SinkError as exc:
            return run.fail(2, "outputs_failed", error=str(exc))
        run.cleanup.callback(alert_sink.close)
        run.sink = alert_sink.emit
        run.ops.watch(dispatcher=alert_sink.dispatcher)
    return True


def start_sensor(run: Run) -> bool:
    """Compile, load and attach the sensor for the rules' event types, with the prefilter."""
    from sentinel.app.sensor import FilteredSensor
    from sentinel.doctor import kernel_features
    from sentinel.enrichment.containers import ContainerResolver, MetadataWaiter
    from sentinel.enrichment.live import Enricher
    from sentinel.kernel.sensor import ALL_SYSCALLS, SensorError

    engine = run.engine
    run.resolver = ContainerResolver()
    run.cleanup.callback(run.resolver.close)
    run.waiter = MetadataWaiter(max_wait=METADATA_WAIT_S)
    run.enricher = Enricher(resolver=run.resolver)
    run.sensor = FilteredSensor(
        [(r.name, r.expr) for r in engine.rules],
        event_types=engine.event_types(),
        syscalls=ALL_SYSCALLS if run.opts.all_syscalls else None,
        prefilter=run.opts.prefilter,
        ringbuf_pages=run.config.ringbuf_pages,
        copy_env=_copy_env(run, engine.rules),
    )
    run.cleanup.callback(run.sensor.close)
    # The started line's kernel features parse the kernel's BTF (~0.3 s): in a thread, while
    # the kernel verifies the programs (its calls release the GIL), not after.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kernel-features")
    run.cleanup.callback(pool.shutdown, wait=False)
    run.kernel_summary = pool.submit(kernel_features)
    try:
        run.sensor.start(lambda raw: on_record(run, raw))
    except SensorError as exc:
        return run.fail(1, "sensor_failed", error=str(exc))
    for note in run.sensor.sensor.notes:  # the program cache's problems (it compiled instead)
        run.log.warning("BPF program cache", problem=note)
    if run.sensor.sensor.missing:
        run.log.warning(
            "syscalls this kernel has no tracepoint for are not traced",
            missing=",".join(sorted(run.sensor.sensor.missing)),
        )
    if run.sensor.prefilter is not None:
        _log_prefilter(run)
    run.ops.watch(sensor=run.sensor.sensor, process_table=run.enricher.table)
    return True


def _copy_env(run: Run, rules: Any) -> bool:
    """Execs copy their environment while a rule reads proc.env, and for a capture (the
    replay format keeps every field)."""
    from sentinel.app.sensor import reads_env

    return run.opts.capture is not None or reads_env(rules)


def start_enforcement(run: Run) -> bool:
    """Attach the BPF LSM programs when deny rules are enforced."""

    def emit_deny(alert: Any) -> None:
        run.ops.alert(alert)
        run.sink(alert)

    run.cleanup.callback(run.enforcement.close)
    if not run.enforcement.start(emit_deny):
        run.rc = 1
        return False
    return True


def watch_bpf_programs(run: Run) -> bool:
    """Hold kernel bpf_stats on (config ``bpf_stats``, when /metrics is served) and export each
    program's runs and run time there: what Sentinel costs the machine's CPUs, without a
    benchmark. The switch is an fd, released when Sentinel exits however it exits."""
    from sentinel.kernel import bpfstats

    switch = None
    if run.config.bpf_stats and run.config.metrics_address:  # nobody reads them otherwise
        switch = bpfstats.StatsSwitch()
        run.cleanup.callback(switch.close)
        if not switch.on:
            run.log.warning("BPF program statistics are off", reason=switch.why)

    def programs() -> dict[tuple[str, str], int]:
        progs = bpfstats.labelled("sensor", run.sensor.sensor.programs())
        return progs | bpfstats.labelled("enforcement", run.enforcement.programs())

    run.bpf_stats = switch is not None and switch.on
    run.ops.metrics.collect_from(bpfstats.collector(programs, switch))
    return True


def arm(run: Run) -> bool:
    """Container metadata lookups, the process table from /proc (after the attach, so nothing
    falls in between), metrics and reload; then say we are armed."""
    from sentinel.enrichment.event import live_getters

    t_arm = time.monotonic()
    run.resolver.start()
    seeded = run.enricher.seed()
    armed = time.monotonic() - run.t0
    run.engine.warm(run.engine.event_types() & WARM_TYPES, getters=live_getters)
    syscalls = sorted(run.sensor.syscalls)
    run.ops.start(
        programs=syscalls,
        prefilter=run.opts.prefilter,
        bpf_stats=run.bpf_stats,
        kernel=run.kernel_summary.result(),
        **run.enforcement.summary(),
    )
    # where the start-up went, step by step (Falco prints the same): arm's own share is the
    # process table's seeding and the metadata resolver
    steps = {**run.step_seconds, "arm": round(time.monotonic() - t_arm, 3)}
    run.log.info(
        "armed",
        rules=len(run.engine.rules),
        syscalls=",".join(syscalls) or "none",
        processes=seeded,
        seconds=round(armed, 2),
        bpf_cached=run.sensor.sensor.cached,
        bpf_reused=run.sensor.sensor.reused,
        step_seconds=steps,
    )
    return True


def event_loop(run: Run) -> bool:
    """Poll the ring buffer until a signal or ``--duration``; follow reloads; report losses
    periodically."""
    from sentinel.kernel.sensor import syscalls_for

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        run.stopping = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        old = signal.signal(sig, on_signal)
        run.cleanup.callback(signal.signal, sig, old)
    sensor = run.sensor
    deadline = None if run.opts.duration is None else time.monotonic() + run.opts.duration
    last_report = last_counts = time.monotonic()
    reported: dict[str, int] = {}
    reported_counts: dict[str, int] = {}
    while not run.stopping:
        sensor.poll()
        run.waiter.run_due()
        if run.ops.step():
            # reloaded rules: the prefilter follows; new syscalls need a restart
            rules = run.ops.engine.rules
            sensor.reload([(r.name, r.expr) for r in rules], copy_env=_copy_env(run, rules))
            _log_prefilter(run)
            wanted = syscalls_for(run.ops.engine.event_types())
            if not wanted <= sensor.syscalls:
                run.log.warning(
                    "rules need syscalls not attached; restart to attach",
                    missing=",".join(sorted(wanted - sensor.syscalls)),
                )
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            break
        if now - last_report >= LOSS_REPORT_SECS:
            last_report = now
            lost = sensor.lost()
            if lost != reported and any(lost.values()):
                run.log.warning("lost events", **{k: v for k, v in lost.items() if v})
                reported = lost
        if now - last_counts >= COUNTS_REPORT_SECS:
            last_counts = now
            counts = kernel_counts(sensor.counts())
            if counts != reported_counts:
                run.log.info("kernel events", **counts)
                reported_counts = counts
    return True


def drain_and_report(run: Run) -> bool:
    """Deliver what is still in the ring and the metadata waiter, and log the totals."""
    run.sensor.drain()
    run.waiter.run_due(flush=True)
    lost = run.sensor.lost()
    run.log.info(
        "stopped",
        events=run.stats["events"],
        alerts=run.stats["alerts"],
        errors=run.stats["errors"],
        lost=sum(lost.values()),
        **kernel_counts(run.sensor.counts()),
    )
    return True


STEPS: tuple[Step, ...] = (
    check_privileges,
    load_config,
    load_rules,
    open_outputs,
    start_sensor,
    start_enforcement,
    watch_bpf_programs,
    arm,
    event_loop,
    drain_and_report,
)

# ---- per record -----------------------------------------------------------------------------


def evaluate(run: Run, event: Any) -> None:
    capture = run.opts.capture
    if capture is not None:
        if not isinstance(event, dict):
            # The engine sees exactly what is written, so a replay gives the same alerts
            # (to_dict's values are already what replay's normalisation produces; a test
            # checks normalize_event() is the identity on live events).
            event = event.to_dict()
        capture.write(json.dumps(event, separators=(",", ":"), default=str) + "\n")
    run.ops.event(event.get("evt.type"))
    for alert in run.ops.engine.process(event):
        run.stats["alerts"] += 1
        run.ops.alert(alert)
        run.sink(alert)


def on_record(run: Run, raw: bytes) -> None:
    try:
        ev = run.enricher.event(raw)
        rec = ev.rec
        if rec.flags & FLAG_TABLE_ONLY:
            return  # an exec no rule wants: it updated the process table, nothing more
        run.stats["events"] += 1
        info = run.enricher.containers.info(rec.cgroup_id, rec.pid)
        if run.waiter.needs_wait(info):
            # A new container's first events can precede the runtime's answer about it:
            # freeze the event now, evaluate it when its name/image are known (bounded).
            assert info is not None
            frozen = ev.to_dict()
            run.waiter.defer(info, lambda: evaluate(run, {**frozen, **info.fields()}))
        else:
            evaluate(run, ev)
    except BrokenPipeError:
        raise
    except Exception as exc:  # one bad record must not stop the sensor; count and say so
        run.stats["errors"] += 1
        if run.stats["errors"] <= 10:
            run.log.error("record_failed", error=repr(exc))


# ---- helpers --------------------------------------------------------------------------------


def _log_prefilter(run: Run) -> None:
    prefilter = run.sensor.prefilter
    run.log.info(
        "prefilter loaded",
        generation=prefilter.gen,
        **run.sensor.loaded,
        unfiltered=",".join(run.sensor.unfiltered()) or "none",
    )


def execute(opts: RunOptions, steps: tuple[Step, ...] = STEPS) -> int:
    """Run the steps in order; close everything they opened, in reverse, whatever happens."""
    # stdout carries alerts only: every log line goes to stderr, through structlog.
    configure_logging("auto", "info")
    run = Run(opts)
    with run.cleanup:
        for step in steps:
            t = time.monotonic()
            ok = step(run)
            run.step_seconds[step.__name__] = round(time.monotonic() - t, 3)
            if not ok:
                break
    if opts.capture is not None:
        opts.capture.flush()
    return run.rc
