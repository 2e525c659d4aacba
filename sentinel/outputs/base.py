"""What every output (sink) implements, and the per-item results it reports.

A sink only *sends*; retries, backoff, dead letters and cursors live in the worker
(``dispatcher.py``), so that each transport states precisely what counts as a positive
acknowledgement and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from sentinel.alerts import Alert


class TransientError(Exception):
    """The whole batch failed in a way worth retrying (transport error, 408, 429, 5xx)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The fate of one alert of a batch: delivered, retry later, or rejected for good."""

    kind: Literal["ok", "retry", "dead"]
    reason: str = ""
    status: int | None = None


OK = Outcome("ok")


class Sink(Protocol):
    max_count: int
    max_bytes: int
    linger: float

    def send(self, alerts: list[Alert]) -> list[Outcome]:
        """Deliver ``alerts``; one Outcome each, in order. Raise TransientError/OSError to
        retry the whole batch."""
        ...

    def close(self) -> None: ...
