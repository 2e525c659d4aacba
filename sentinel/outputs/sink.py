"""Where a command's alerts go: straight to stdout (no config), or the configured outputs
through the spool (the Dispatcher)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from sentinel.alerts import Alert
from sentinel.config import SentinelConfig


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
