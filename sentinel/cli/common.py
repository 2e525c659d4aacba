"""Pieces several subcommands share: loading rules with readable errors, the alert sink."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from sentinel.compiler import CompiledRules, compile_rules
from sentinel.config import ConfigError, SentinelConfig, load_config
from sentinel.enrichment.event import filled_fields
from sentinel.loader import load_ruleset
from sentinel.outputs.sink import AlertSink, SinkError

__all__ = ["AlertSink", "SinkError", "config_or_exit", "load_compiled"]


def load_compiled(paths: list[Path], err: TextIO = sys.stderr) -> CompiledRules | None:
    """Load and compile; print every problem (errors and warnings) and return None on error."""
    rs = load_ruleset(paths)
    compiled = compile_rules(rs, strict=False, filled=filled_fields())
    for p in rs.diagnostics.errors:
        print(p.format(), file=err)
    if rs.diagnostics.errors:
        n = len(rs.diagnostics.errors)
        print(f"sentinel: {n} error{'s' if n != 1 else ''} in rules; not started", file=err)
        return None
    return compiled


def config_or_exit(path: Path | None) -> SentinelConfig | None:
    """Load the config and set up logging (to stderr: stdout carries alerts)."""
    from sentinel.logging import configure_logging

    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"sentinel: {exc}", file=sys.stderr)
        return None
    configure_logging(config.logging.format, config.logging.level)
    return config
