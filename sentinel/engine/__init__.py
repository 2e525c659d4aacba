"""The engine: match events against compiled rules and build alerts."""

from sentinel.engine.engine import Engine, Matching
from sentinel.engine.events import EventLineError, normalize_event, read_events

__all__ = ["Engine", "EventLineError", "Matching", "normalize_event", "read_events"]
