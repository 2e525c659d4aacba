"""The README's generated tables match the event table (run ``python -m sentinel.events.doc
--write`` after changing a family)."""

from __future__ import annotations

from sentinel.events.doc import README, TRUTH_BEGIN, TRUTH_END, block, truth_table


def test_the_readme_truth_table_is_current() -> None:
    assert block(TRUTH_BEGIN, truth_table(), TRUTH_END) in README.read_text()


def test_every_event_type_says_where_its_values_come_from() -> None:
    from sentinel.events import EVENT_TYPES

    assert [t.name for t in EVENT_TYPES if not t.truth] == []
