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
    p.add_argument("--matching", choices=("first", "all"), default="first")
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
    from sentinel.cli.common import load_compiled
    from sentinel.engine import Engine
    from sentinel.enrichment.containers import ContainerResolver, MetadataWaiter
    from sentinel.enrichment.live import Enricher
    from sentinel.kernel.sensor import ALL_FAMILIES, Sensor, families_for

    paths: list[Path] = args.rules or [RULES_DIR]
    compiled = load_compiled(paths)
    if compiled is None:
        return 2
    engine = Engine(compiled, matching=args.matching)
    families = set(ALL_FAMILIES) if args.all_syscalls else families_for(engine.event_types())

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
        for alert in engine.process(event):
            stats["alerts"] += 1
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

    sensor = Sensor(families)
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
        resolver.start()
        seeded = enricher.seed()
        armed = time.monotonic() - t0
        engine.warm(engine.event_types() & {"execve", "clone", "procexit", "openat", "connect"})
        log(
            "armed",
            rules=len(engine.rules),
            syscalls=",".join(sorted(families)) or "none",
            processes=seeded,
            seconds=f"{armed:.2f}",
        )
        deadline = None if args.duration is None else time.monotonic() + args.duration
        last_report = time.monotonic()
        reported: dict[str, int] = {}
        while not stopping:
            sensor.poll()
            waiter.run_due()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if now - last_report >= LOSS_REPORT_SECS:
                last_report = now
                lost = sensor.lost()
                if lost != reported and any(lost.values()):
                    log("lost events", **{k: v for k, v in lost.items() if v})
                    reported = lost
        sensor.drain()
        waiter.run_due(flush=True)
        lost = sensor.lost()
        log(
            "stopped",
            events=stats["events"],
            alerts=stats["alerts"],
            errors=stats["errors"],
            lost=sum(lost.values()),
            **{f"lost_{k}": v for k, v in lost.items() if v},
        )
        return 0
    finally:
        sensor.close()
        resolver.close()
        if capture is not None:
            capture.flush()
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
