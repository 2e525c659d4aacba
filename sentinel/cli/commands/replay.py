"""``sentinel replay --rules FILE... EVENTS.jsonl``: evaluate recorded events offline.

EVENTS is the capture format (JSON Lines, field -> value); ``-`` reads stdin as it streams, so
``replay`` also serves as a long-running pipe stage. Alerts go to stdout as JSON Lines, or to
the outputs of ``--config``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sentinel.cli.common import AlertSink, SinkError, config_or_exit, load_compiled
from sentinel.engine import Engine, EventLineError, read_events


def register(sub: Any) -> None:
    p = sub.add_parser("replay", help="evaluate recorded events (JSON Lines) against rules")
    p.add_argument(
        "--rules",
        action="append",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="rules files or directories (repeatable); default: the config's rules",
    )
    p.add_argument("events", nargs="?", help="events file (JSON Lines), or - for stdin")
    p.add_argument("--config", type=Path, help="Sentinel config file (outputs, matching, ...)")
    p.add_argument("--matching", choices=["first", "all"], help="default: first")
    p.add_argument("--min-priority", help="drop alerts below this priority")
    p.add_argument("--strict", action="store_true", help="stop at the first bad event line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rules: list[Path] = [p for group in (args.rules or []) for p in group]
    events = args.events
    if events is None:
        if not rules:
            print("sentinel replay: give an events file (or - for stdin)", file=sys.stderr)
            return 2
        events = str(rules.pop())  # `--rules A B EVENTS`: the last path is the events file
    if args.config:
        config = config_or_exit(args.config)
        if config is None:
            return 2
    else:
        from sentinel.logging import configure_logging

        config = None
        configure_logging()  # logs to stderr; stdout is the alert stream
    if not rules:
        rules = list(config.rules) if config else []
    if not rules:
        print("sentinel replay: no rules given (--rules FILE)", file=sys.stderr)
        return 2
    compiled = load_compiled(rules)
    if compiled is None:
        return 1
    engine = Engine(
        compiled,
        matching=args.matching or (config.matching if config else "first"),
        hostname=config.hostname if config else None,
        min_priority=args.min_priority or (config.minimum_priority if config else "Debug"),
        # unset: the engine's default (the replaying host's runtimes say nothing of the events)
        **(
            {"append_output": config.append_output}
            if config and config.append_output is not None
            else {}
        ),
    )
    try:
        sink = AlertSink(config)
    except SinkError as exc:
        print(f"sentinel replay: cannot start outputs: {exc}", file=sys.stderr)
        return 2
    name = "<stdin>" if events == "-" else events
    bad = 0
    try:
        stream = sys.stdin if events == "-" else open(events, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        print(f"sentinel replay: {events}: {exc.strerror}", file=sys.stderr)
        return 2

    def report(err: EventLineError) -> None:
        nonlocal bad
        bad += 1
        print(f"{name}:{err.lineno}: bad event: {err.message}", file=sys.stderr)

    try:
        with stream:
            for event in read_events(stream, None if args.strict else report):
                for alert in engine.process(event):
                    sink.emit(alert)
    except EventLineError as err:  # --strict: the first bad line ends the replay
        report(err)
        return 1
    finally:
        sink.close()
    if bad:
        print(f"sentinel replay: skipped {bad} bad event line(s)", file=sys.stderr)
    return 0
