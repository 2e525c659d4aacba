"""Sentinel's own log: structlog, JSON for collectors, readable lines for people.

Why one function: every long-running command (``run``, the DaemonSet) must log the same way,
and a fleet's log pipeline parses JSON, while a person at a terminal wants plain lines. With
``fmt="auto"`` the choice follows whether stderr is a TTY, so ``podman logs`` and journald get
JSON and an interactive ``sentinel run`` gets colour-free console output. Logs go to stderr:
stdout belongs to alerts.

Usage::

    configure_logging("auto", "info")
    log = structlog.get_logger("sentinel")
    log.info("armed", rules=12, programs=["execve"], kernel={"btf": True})
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import IO, Any, Literal, TextIO, cast

import structlog

LogFormat = Literal["auto", "json", "console"]
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def configure_logging(
    fmt: LogFormat | str = "auto", level: str = "info", stream: IO[str] | None = None
) -> str:
    """Configure structlog globally; returns the format chosen ("json" or "console").

    ``stream`` defaults to stderr at call time (tests pass a buffer). Raises ValueError for an
    unknown format or level, so a config mistake is caught at start-up, not at the first log.
    """
    if fmt not in ("auto", "json", "console"):
        raise ValueError(f"unknown log format {fmt!r}; expected auto, json or console")
    lvl = _LEVELS.get(level.lower())
    if lvl is None:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(_LEVELS)}")
    out = stream if stream is not None else sys.stderr
    chosen = fmt if fmt != "auto" else ("console" if _is_tty(out) else "json")
    renderer: Any
    if chosen == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _name_logger,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.processors.UnicodeDecoder(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, out)),
        cache_logger_on_first_use=False,
    )
    return chosen


def get_logger(name: str = "sentinel") -> Any:
    """A logger carrying ``logger=name``. It is a lazy proxy: it follows a later
    ``configure_logging`` (e.g. a reloaded config), so modules may create it at import time."""
    return structlog.get_logger(_logger_name=name)


def _name_logger(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """``_logger_name`` (set by :func:`get_logger`; ``logger`` is taken by structlog's own
    arguments) becomes the ``logger`` key of the output."""
    name = event.pop("_logger_name", None)
    if name is not None:
        event["logger"] = name
    return event


__all__ = ["LogFormat", "configure_logging", "get_logger"]
