"""Shared fixtures for the operations tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """configure_logging is global; leave structlog as other suites expect it."""
    yield
    structlog.reset_defaults()
