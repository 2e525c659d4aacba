"""The README's generated blocks (sentinel/readme.py) match the code they are rendered from; a
change to the event table, a getter or a family's truth text without ``python -m
sentinel.readme`` fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sentinel.readme import README, blocks, stale


def test_every_block_is_current() -> None:
    assert stale() == []


def test_a_stale_block_is_caught(tmp_path: Path) -> None:
    """The check can fail: drop one event type's row from a copy and the CLI names the block."""
    text = README.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| system | `setns` |"))
    copy = tmp_path / "README.md"
    copy.write_text(text.replace(row + "\n", ""))
    assert stale(copy) == ["event types and fields"]
    res = subprocess.run(
        [sys.executable, "-m", "sentinel.readme", "--check", "--readme", str(copy)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1
    assert "event types and fields" in res.stdout


def test_every_block_has_its_markers_once() -> None:
    text = README.read_text()
    for b in blocks():
        assert text.count(b.begin) == 1 and text.count(b.end) == 1, b.name


def test_every_event_type_and_filled_field_is_listed() -> None:
    from sentinel.enrichment.event import sensor_fields
    from sentinel.events import EVENT_TYPES

    text = README.read_text()
    for t in EVENT_TYPES:
        assert f"| `{t.name}` |" in text, t.name
    for name in sensor_fields():
        if not name.startswith("evt.arg."):
            assert f"`{name}`" in text, name


def test_every_event_type_says_where_its_values_come_from() -> None:
    from sentinel.events import EVENT_TYPES

    assert [t.name for t in EVENT_TYPES if not t.truth] == []
