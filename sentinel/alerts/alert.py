"""The alert record.

Falco's JSON keys (``time rule priority source tags hostname output output_fields``) so that
existing Falco consumers (falcosidekick, SIEM parsers) read Sentinel's alerts unchanged, plus
``id`` (unique per alert, so an at-least-once pipeline can be de-duplicated downstream) and
``action`` (``alert``, ``deny`` or ``deny-unenforced``).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def format_time(ns: int) -> str:
    """RFC 3339 with nanoseconds and ``Z``, as Falco prints ``time``."""
    secs, frac = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(secs, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{frac:09d}Z"


def new_id(ns: int) -> str:
    """A unique, roughly time-ordered id: the time in hex then 16 random hex digits."""
    return f"{ns:016x}-{uuid.uuid4().hex[:16]}"


@dataclass(slots=True)
class Alert:
    """One rule match. ``to_dict`` gives the wire format; keep the keys stable."""

    rule: str
    priority: str
    output: str
    output_fields: dict[str, Any]
    tags: list[str] = field(default_factory=list)
    source: str = "syscall"
    hostname: str = ""
    action: str = "alert"
    time_ns: int = field(default_factory=time.time_ns)
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = new_id(self.time_ns)
        self.tags = sorted(self.tags)

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": format_time(self.time_ns),
            "rule": self.rule,
            "priority": self.priority,
            "source": self.source,
            "tags": self.tags,
            "hostname": self.hostname,
            "output": self.output,
            "output_fields": self.output_fields,
            "id": self.id,
            "action": self.action,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"), default=str)
