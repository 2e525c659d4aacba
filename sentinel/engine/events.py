"""Recorded events (the replay/capture format): JSON Lines, one flat object per event,
Falco field name -> value. Values are checked and normalised to their field's type here, so
the matcher can compare without conversions, and a bad line is reported by its number.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sentinel.fields import FIELDS, FieldType, Kind
from sentinel.fields.registry import NUMERIC


class EventLineError(ValueError):
    def __init__(self, lineno: int, message: str) -> None:
        super().__init__(f"line {lineno}: {message}")
        self.lineno = lineno
        self.message = message


def _norm(name: str, value: Any) -> Any:
    base = name.split("[", 1)[0]
    info = FIELDS.get(base)
    if info is None or value is None:
        return value
    indexed = "[" in name
    if info.kind is not Kind.SCALAR and not indexed:
        items = value if isinstance(value, list) else [value]
        return [_scalar(info.type, name, v) for v in items]
    return _scalar(info.type, name, value)


def _scalar(t: FieldType, name: str, v: Any) -> Any:
    if t in NUMERIC:
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise ValueError(f"field {name!r} needs a number, got {v!r}")
        if isinstance(v, str):
            try:
                return int(v, 0)
            except ValueError:
                try:
                    return float(v)
                except ValueError:
                    raise ValueError(f"field {name!r} needs a number, got {v!r}") from None
        return v
    if t is FieldType.BOOL:
        if isinstance(v, bool):
            return v
        if v in (0, 1):
            return bool(v)
        if isinstance(v, str) and v.lower() in ("true", "false"):
            return v.lower() == "true"
        raise ValueError(f"field {name!r} needs true or false, got {v!r}")
    if t is FieldType.BYTES:
        return v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogateescape")
    if isinstance(v, dict | list):
        raise ValueError(f"field {name!r} needs a single value, got {type(v).__name__}")
    return v if isinstance(v, str) else str(v)


def normalize_event(obj: Any) -> dict[str, Any]:
    """A decoded JSON value -> an event dict. Raises ValueError with a clear message."""
    if not isinstance(obj, dict):
        raise ValueError(f"an event must be a JSON object, got {type(obj).__name__}")
    ev = {str(k): _norm(str(k), v) for k, v in obj.items()}
    ev.setdefault("evt.dir", "<")  # Sentinel's events are syscall exits
    return ev


def read_events(
    lines: Iterable[str], on_error: Callable[[EventLineError], None] | None = None
) -> Iterator[dict[str, Any]]:
    """Yield events as the lines arrive; a bad line raises, or goes to ``on_error`` and is
    skipped."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield normalize_event(json.loads(line))
        except (ValueError, RecursionError) as exc:
            err = EventLineError(lineno, str(exc))
            if on_error is None:
                raise err from None
            on_error(err)
