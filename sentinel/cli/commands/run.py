"""``sentinel run``: watch the live kernel and print alerts as JSON Lines on stdout.

Loads the rules, attaches only the sensor programs the rules need (``engine.event_types()``),
seeds the process table from /proc, then evaluates every record. SIGINT/SIGTERM stop the loop;
everything is detached and the ring buffer drained before exit. Lost records (ring-buffer
reserve failures, per event type) are reported on stderr periodically and at exit.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, Any

from sentinel.paths import RULES_DIR

LOSS_REPORT_SECS = 10.0
COUNTS_REPORT_SECS = 60.0


def kernel_counts(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    """The sensor's per-type counters as flat log fields (``passed_openat=12``...), nonzero
    ones only: what the kernel filtered, passed and lost per Falco event type."""
    return {
        f"{key}_{evt_type}": n
        for evt_type, values in counts.items()
        for key, n in values.items()
        if n
    }


METADATA_WAIT_S = 1.0  # longest an alert waits for its container's name and image


def emit_alert(alert: Any, stream: IO[str] | None = None) -> None:
    """The alert sink: one JSON object per line, flushed (so a pipe reader sees it at once).
    Kept a single function so the configured outputs can replace it."""
    out = stream if stream is not None else sys.stdout
    out.write(alert.to_json() + "\n")
    out.flush()


def log(msg: str, **fields: Any) -> None:
    """One line on stderr: the message, then key=value pairs."""
    extra = " ".join(f"{k}={v}" for k, v in fields.items())
    sys.stderr.write(f"sentinel: {msg}{' ' + extra if extra else ''}\n")
    sys.stderr.flush()


def add_common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rules",
        action="append",
        type=Path,
        metavar="PATH",
        help=f"rules file or directory (repeatable; default {RULES_DIR})",
    )
    p.add_argument("--config", type=Path, metavar="FILE", help="Sentinel config file (YAML)")
    p.add_argument(
        "--matching", choices=("first", "all"), default=None, help="default: the config's, first"
    )
    p.add_argument(
        "--no-prefilter",
        action="store_true",
        help="send every event to user space (no in-kernel filtering; for comparison)",
    )
    p.add_argument(
        "--duration", type=float, default=None, metavar="SECS", help="stop after SECS seconds"
    )
    p.add_argument(
        "--all-syscalls",
        action="store_true",
        help="attach every syscall family even if no rule needs it",
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="watch the live kernel and print alerts (root)")
    add_common_options(p)
    p.set_defaults(func=lambda args: run_live(args))


def run_live(
    args: argparse.Namespace,
    capture: IO[str] | None = None,
    sink: Callable[[Any], None] = emit_alert,
) -> int:
    """The live loop shared by ``run`` and ``capture`` (which also writes every event)."""
    from sentinel.kernel.sensor import SensorError, check_root
    from sentinel.logging import configure_logging

    # stdout carries alerts only: every library log (structlog) goes to stderr.
    configure_logging("auto", "info")
    try:
        check_root()
    except SensorError as exc:
        log(f"error: {exc}")
        return 1
    from sentinel.cli.common import AlertSink, SinkError, config_or_exit
    from sentinel.compiler.kernelmaps import build_tables
    from sentinel.config import SentinelConfig
    from sentinel.enrichment.containers import ContainerResolver, MetadataWaiter
    from sentinel.enrichment.live import Enricher
    from sentinel.kernel.prefilter import (
        MAP_NAMES,
        Prefilter,
        cflags,
        nwords_for,
        sensor_prelude,
    )
    from sentinel.kernel.sensor import ALL_FAMILIES, Sensor, families_for
    from sentinel.loader import RulesError
    from sentinel.ops import Operations

    config = config_or_exit(args.config) if args.config else SentinelConfig()
    if config is None:
        return 2
    overrides: dict[str, Any] = {}
    if args.rules:
        overrides["rules"] = list(args.rules)
    if args.matching:
        overrides["matching"] = args.matching
    if overrides:
        config = config.model_copy(update=overrides)
    enforcement = Enforcement(config, log)
    ops = Operations(
        config, args.config, make_engine=enforcement.make_engine, configure_logs=bool(args.config)
    )
    try:
        engine = ops.initial_engine()
    except RulesError as exc:
        sys.stderr.write(f"{exc}\n")
        log("error: rules did not load; not started")
        return 2
    if not enforcement.ok:
        return 1
    families = set(ALL_FAMILIES) if args.all_syscalls else families_for(engine.event_types())
    if sink is emit_alert and args.config:
        try:
            alert_sink = AlertSink(config)
        except SinkError as exc:
            log(f"error: cannot start outputs: {exc}")
            return 2
        sink = alert_sink.emit
    else:
        alert_sink = None

    t0 = time.monotonic()
    resolver = ContainerResolver()
    waiter = MetadataWaiter(max_wait=METADATA_WAIT_S)
    enricher = Enricher(resolver=resolver)
    stats = {"events": 0, "alerts": 0, "errors": 0}

    def evaluate(event: Any) -> None:
        if capture is not None and not isinstance(event, dict):
            # The engine sees exactly what is written, so a replay gives the same alerts
            # (to_dict's values are already what replay's normalisation produces; a test
            # checks normalize_event() is the identity on live events).
            event = event.to_dict()
        if capture is not None:
            capture.write(json.dumps(event, separators=(",", ":"), default=str) + "\n")
        ops.event(event.get("evt.type"))
        for alert in ops.engine.process(event):
            stats["alerts"] += 1
            ops.alert(alert)
            sink(alert)

    def on_raw(raw: bytes) -> None:
        try:
            ev = enricher.event(raw)
            stats["events"] += 1
            info = enricher.containers.info(ev.rec.cgroup_id, ev.rec.pid)
            if waiter.needs_wait(info):
                # A new container's first events can precede the runtime's answer about it:
                # freeze the event now, evaluate it when its name/image are known (bounded).
                assert info is not None
                frozen = ev.to_dict()
                waiter.defer(info, lambda: evaluate({**frozen, **info.fields()}))
            else:
                evaluate(ev)
        except BrokenPipeError:
            raise
        except Exception as exc:  # one bad record must not stop the sensor; count and say so
            stats["errors"] += 1
            if stats["errors"] <= 10:
                log(f"error processing a record: {exc!r}")

    prefilter_on = not args.no_prefilter
    # built once here: sizes the programs' masks, then fills the maps at start
    first_tables = build_tables([(r.name, r.expr) for r in engine.rules])
    nwords = nwords_for(first_tables)
    sensor = Sensor(
        families,
        ringbuf_pages=config.ringbuf_pages,
        prelude=sensor_prelude() if prefilter_on else "",
        maps=list(MAP_NAMES) if prefilter_on else [],
        extra_cflags=cflags(nwords) if prefilter_on else [],
    )
    prefilter: Prefilter | None = None

    def load_prefilter(tables: Any = None) -> None:
        if prefilter is not None:
            if tables is None:
                tables = build_tables([(r.name, r.expr) for r in ops.engine.rules])
            counts = prefilter.load(tables)
            unfiltered = [f for f, t in tables.families.items() if t.pass_all]
            log(
                "prefilter loaded",
                generation=prefilter.gen,
                **counts,
                unfiltered=",".join(unfiltered + prefilter.overflow) or "none",
            )

    stopping = False

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    old_int = signal.signal(signal.SIGINT, on_signal)
    old_term = signal.signal(signal.SIGTERM, on_signal)
    try:
        try:
            sensor.start(on_raw)
        except SensorError as exc:
            log(f"error: {exc}")
            return 1
        if prefilter_on:
            prefilter = Prefilter({m: sensor.map_fd(m) for m in MAP_NAMES}, nwords)
            load_prefilter(first_tables)

        def emit_deny(alert: Any) -> None:
            ops.alert(alert)
            sink(alert)

        if not enforcement.start(emit_deny):
            return 1
        ops.watch(
            sensor=sensor,
            dispatcher=getattr(alert_sink, "dispatcher", None),
            process_table=enricher.table,
        )
        resolver.start()
        seeded = enricher.seed()
        armed = time.monotonic() - t0
        engine.warm(engine.event_types() & {"execve", "clone", "procexit", "openat", "connect"})
        ops.start(programs=sorted(families), prefilter=prefilter_on, **enforcement.summary())
        log(
            "armed",
            rules=len(engine.rules),
            syscalls=",".join(sorted(families)) or "none",
            processes=seeded,
            seconds=f"{armed:.2f}",
        )
        deadline = None if args.duration is None else time.monotonic() + args.duration
        last_report = last_counts = time.monotonic()
        reported: dict[str, int] = {}
        reported_counts: dict[str, int] = {}
        while not stopping:
            sensor.poll()
            waiter.run_due()
            if ops.step():
                # reloaded rules: the prefilter follows; new syscall families need a restart
                load_prefilter()
                wanted = families_for(ops.engine.event_types())
                if not wanted <= families:
                    log(
                        "rules need syscalls not attached; restart to attach",
                        missing=",".join(sorted(wanted - families)),
                    )
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if now - last_report >= LOSS_REPORT_SECS:
                last_report = now
                lost = sensor.lost()
                if lost != reported and any(lost.values()):
                    log("lost events", **{k: v for k, v in lost.items() if v})
                    reported = lost
            if now - last_counts >= COUNTS_REPORT_SECS:
                last_counts = now
                counts = kernel_counts(sensor.counts())
                if counts != reported_counts:
                    log("kernel events", **counts)
                    reported_counts = counts
        sensor.drain()
        waiter.run_due(flush=True)
        lost = sensor.lost()
        log(
            "stopped",
            events=stats["events"],
            alerts=stats["alerts"],
            errors=stats["errors"],
            lost=sum(lost.values()),
            **kernel_counts(sensor.counts()),
        )
        return 0
    finally:
        enforcement.close()
        sensor.close()
        resolver.close()
        ops.close()
        if alert_sink is not None:
            alert_sink.close()
        if capture is not None:
            capture.flush()
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


class EnforcementError(Exception):
    """Deny rules that cannot be enforced as loaded (the message says why)."""


class Enforcement:
    """Deny rules: compiled to a BPF LSM policy and enforced, or, where BPF LSM is not
    available, refused or run as alerts (``enforcement.unavailable``).

    A reload goes through :meth:`make_engine` too, with the same rules as at start: new deny
    rules that cannot be compiled or resolved, or that BPF LSM cannot enforce under
    ``unavailable: refuse``, reject the whole reload (the old rules and the old policy keep
    running). Otherwise the kernel policy is replaced atomically (``LsmEnforcer.update``), or
    the programs are attached if this is the first reload with deny rules. Removing every deny
    rule leaves the programs attached with an empty policy: they then return at once, and a
    later reload can protect again without a new compile (which pauses the event loop).
    """

    def __init__(self, config: Any, log_fn: Callable[..., None]) -> None:
        self.config = config
        self.log = log_fn
        self.ok = True
        self.mode = "none"  # none | enforced | unenforced
        self.plan: Any = None  # the MapPlan to enforce (enforced mode)
        self.enforcer: Any = None
        self._emit: Callable[[Any], Any] | None = None
        # (engine, rules by name), newest first: a denial of an older generation may still be
        # in the ring buffer after a reload, and its alert needs that generation's rule.
        self._engines: list[tuple[Any, dict[str, Any]]] = []

    def make_engine(self, compiled: Any, config: Any) -> Any:
        """The engine without the deny rules the kernel enforces (each denial is reported
        once, by the LSM program), or with them marked deny-unenforced. On a reload, also
        installs the new deny policy (raising EnforcementError rejects the reload)."""
        import dataclasses

        from sentinel.ops import default_engine

        reloading = bool(self._engines)
        deny = [r for r in compiled.enabled if r.action == "deny"]
        try:
            mode, plan = self._prepare(deny)
        except EnforcementError as exc:
            if reloading:
                self.log(f"error: reload rejected, the old rules and deny policy stay: {exc}")
                raise
            self.log(f"error: {exc}")
            self.ok = False
            mode, plan = self.mode, None
        rules = []
        for r in compiled.rules:
            if r.action == "deny" and mode == "enforced":
                r = dataclasses.replace(r, enabled=False)
            elif r.action == "deny":
                r = dataclasses.replace(r, action="deny-unenforced")
            rules.append(r)
        engine = default_engine(dataclasses.replace(compiled, rules=rules), config)
        if reloading and mode == "enforced":
            self._apply(plan)
        self.mode, self.plan = mode, plan
        self._engines = [(engine, {r.name: r for r in engine.compiled.rules}), *self._engines][:3]
        return engine

    def _prepare(self, deny: list[Any]) -> tuple[str, Any]:
        """(mode, MapPlan or None) for these deny rules; EnforcementError if they cannot run."""
        from sentinel.compiler.deny import DenyCompileError, compile_deny
        from sentinel.kernel.lsm import LsmError
        from sentinel.kernel.lsm_policy import MapPlan, PolicyError, build_plan

        mode = self.mode
        if not deny:
            # Nothing to deny: an attached enforcer keeps running with an empty policy.
            return mode, (MapPlan() if mode == "enforced" else None)
        try:
            spec = compile_deny([(r.name, r.expr) for r in deny])
        except DenyCompileError as exc:
            raise EnforcementError(str(exc)) from None
        if mode == "none":
            mode = self._decide()
        if mode != "enforced":
            return mode, None
        try:
            return mode, build_plan(spec.to_policy())  # type: ignore[arg-type]
        except (PolicyError, LsmError) as exc:
            raise EnforcementError(str(exc)) from None

    def _decide(self) -> str:
        from sentinel.kernel.lsm_probe import lsm_available

        available, why = lsm_available()
        if available:
            return "enforced"
        if self.config.enforcement.unavailable == "refuse":
            raise EnforcementError(
                f"deny rules are loaded but BPF LSM is unavailable: {why}; "
                "set enforcement.unavailable: alert to run them as alerts"
            )
        self.log(
            f"WARNING: BPF LSM is unavailable ({why}): deny rules are NOT enforced, only "
            "alerted on (action deny-unenforced)"
        )
        return "unenforced"

    def _apply(self, plan: Any) -> None:
        """Install a reloaded policy: update the running enforcer, or attach one."""
        from sentinel.kernel.lsm import LsmError
        from sentinel.kernel.lsm_policy import PolicyError

        try:
            if self.enforcer is not None:
                self.enforcer.update(plan)
                self.log(
                    "deny policy reloaded" if plan.rules else "deny policy lifted (no deny rules)",
                    rules=len(plan.rules),
                    generation=self.enforcer.generation,
                )
            elif self._emit is not None:
                self.log("attaching BPF LSM programs for the reloaded deny rules")
                self._attach(plan)
        except (LsmError, PolicyError) as exc:
            self.log(f"error: reload rejected, the old rules and deny policy stay: {exc}")
            raise EnforcementError(str(exc)) from None

    def _on_deny(self, ev: Any) -> None:
        assert self._emit is not None
        for engine, by_name in self._engines:
            rule = by_name.get(ev.rule)
            if rule is not None:
                self._emit(engine.alert(rule, ev.fields(), action="deny"))
                return

    def _attach(self, plan: Any) -> None:
        from sentinel.kernel.lsm import LsmEnforcer

        self.enforcer = LsmEnforcer(plan, self._on_deny)
        self.log("enforcing", rules=len(plan.rules), hooks=len(self.enforcer.attached_hooks))

    def start(self, emit: Callable[[Any], Any]) -> bool:
        """Attach the programs if deny rules are enforced; False (logged) if that failed."""
        from sentinel.kernel.lsm import LsmError

        self._emit = emit
        if self.mode != "enforced" or self.plan is None or not self.plan.rules:
            return True
        try:
            self._attach(self.plan)
        except LsmError as exc:
            self.log(f"error: BPF LSM enforcement did not start: {exc}")
            return False
        return True

    def summary(self) -> dict[str, Any]:
        return {"deny_rules": self.mode}

    def close(self) -> None:
        if self.enforcer is not None:
            self.enforcer.close()
            self.enforcer = None
