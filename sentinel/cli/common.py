"""Pieces several subcommands share: loading rules with readable errors, the alert sink."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from sentinel.alerts import Alert
from sentinel.compiler import CompiledRules, compile_rules
from sentinel.config import ConfigError, SentinelConfig, load_config
from sentinel.loader import load_ruleset


def load_compiled(paths: list[Path], err: TextIO = sys.stderr) -> CompiledRules | None:
    """Load and compile; print every problem (errors and warnings) and return None on error."""
    rs = load_ruleset(paths)
    compiled = compile_rules(rs, strict=False)
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


class SinkError(Exception):
    """An output or the spool could not be set up (message says which, and why)."""


class AlertSink:
    """Where alerts go: straight to stdout (no config), or the outputs Dispatcher.

    Raises :class:`SinkError` when an output cannot start (a missing CA file, a spool another
    Sentinel holds), so commands print one clear line instead of a traceback.
    """

    def __init__(self, config: SentinelConfig | None) -> None:
        self._dispatcher = None
        self.emit: Callable[[Alert], None]
        if config is None:
            self.emit = self._stdout
            return
        from sentinel.outputs import Dispatcher, OutputsConfig, OutputSetupError
        from sentinel.outputs.spool import SpoolError

        try:
            self._dispatcher = Dispatcher(OutputsConfig(outputs=config.outputs, spool=config.spool))
            self._dispatcher.start()
        except (OutputSetupError, SpoolError, OSError) as exc:
            raise SinkError(str(exc)) from None
        self.emit = self._dispatcher.emit

    @property
    def dispatcher(self) -> object | None:
        return self._dispatcher

    @staticmethod
    def _stdout(alert: Alert) -> None:
        sys.stdout.write(alert.to_json() + "\n")
        sys.stdout.flush()

    def close(self, timeout: float = 5.0) -> None:
        if self._dispatcher is not None:
            self._dispatcher.close(timeout)
