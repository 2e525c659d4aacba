"""The decoding world of tests/events (a known process tree, built records)."""

from tests.events.conftest import event, world

__all__ = ["event", "world"]
