"""structlog setup: JSON off a terminal, readable lines on one, level filtering."""

from __future__ import annotations

import io
import json
import os

import pytest

from sentinel.logging import configure_logging, get_logger


def test_json_when_not_a_tty() -> None:
    buf = io.StringIO()
    assert configure_logging("auto", "info", stream=buf) == "json"
    get_logger().info("armed", rules=3, programs=["execve", "openat"])
    get_logger().debug("hidden")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["event"] == "armed"
    assert doc["rules"] == 3
    assert doc["programs"] == ["execve", "openat"]
    assert doc["level"] == "info"
    assert doc["logger"] == "sentinel"
    assert doc["timestamp"].endswith("Z")


def test_console_on_a_real_tty() -> None:
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            assert configure_logging("auto", "debug", stream=tty) == "console"
            get_logger("sentinel.test").warning("lost events", openat=12)
            tty.flush()
            out = os.read(master, 4096).decode()
    finally:
        os.close(master)
        os.close(slave)
    assert "lost events" in out
    assert "openat=12" in out
    assert "warning" in out
    assert not out.lstrip().startswith("{")


def test_forced_formats_and_levels() -> None:
    buf = io.StringIO()
    assert configure_logging("console", "error", stream=buf) == "console"
    get_logger().warning("not shown")
    get_logger().error("shown", file="rules.yaml", line=3)
    text = buf.getvalue()
    assert "not shown" not in text
    assert "shown" in text and "line=3" in text


@pytest.mark.parametrize(("fmt", "level"), [("xml", "info"), ("json", "loud")])
def test_bad_settings_are_errors(fmt: str, level: str) -> None:
    with pytest.raises(ValueError):
        configure_logging(fmt, level, stream=io.StringIO())


def test_a_logger_made_earlier_follows_a_reconfiguration() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", "info", stream=first)
    log = get_logger("sentinel.early")
    log.info("one")
    configure_logging("json", "info", stream=second)
    log.info("two")
    assert json.loads(first.getvalue())["event"] == "one"
    doc = json.loads(second.getvalue())
    assert doc["event"] == "two" and doc["logger"] == "sentinel.early"
