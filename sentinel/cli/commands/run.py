"""``sentinel run``: watch the live kernel and print alerts as JSON Lines on stdout.

This module only parses arguments; the run itself is :mod:`sentinel.app.run` (a list of named
steps: load config and rules, open outputs, start the sensor and enforcement, arm, loop).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import IO, Any

from sentinel.paths import RULES_DIR


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
        help="attach every syscall event type even if no rule needs it",
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="watch the live kernel and print alerts (root)")
    add_common_options(p)
    p.set_defaults(func=lambda args: run_live(args))


def run_live(args: argparse.Namespace, capture: IO[str] | None = None) -> int:
    """The live run shared by ``run`` and ``capture`` (which also writes every event)."""
    from sentinel.app.run import RunOptions, execute

    opts: dict[str, Any] = {
        "rules": list(args.rules) if args.rules else None,
        "config": args.config,
        "matching": args.matching,
        "prefilter": not args.no_prefilter,
        "duration": args.duration,
        "all_syscalls": args.all_syscalls,
        "capture": capture,
    }
    return execute(RunOptions(**opts))
