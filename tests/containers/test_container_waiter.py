"""MetadataWaiter: alerts wait (off the event path) for a pending metadata lookup, bounded."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sentinel.enrichment.containers import HOST, ContainerResolver, MetadataWaiter

from .conftest import Podman

pytestmark = pytest.mark.container


@pytest.fixture
def hung_socket(tmp_path: Path) -> Iterator[str]:
    """A runtime socket that accepts connections and never answers: the real fault of a hung
    runtime, made with a real listening socket (the kernel queues the connections)."""
    path = str(tmp_path / "hung.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    yield path
    server.close()


def test_waits_for_a_pending_lookup_then_gives_up(containers: Podman, hung_socket: str) -> None:
    _name, cid, pid = containers.start_sleeper()
    resolver = ContainerResolver(hung_socket, follow_events=False, watch_cgroups=False)
    try:
        info = resolver.resolve_pid(pid)
        assert info is not None and info.metadata_state == "pending"
        waiter = MetadataWaiter(max_wait=0.3)
        ran: list[dict[str, Any]] = []
        waiter.submit(info, lambda: ran.append(info.fields()))
        assert ran == [] and len(waiter) == 1
        assert waiter.run_due() == 0
        time.sleep(0.35)
        assert waiter.run_due() == 1
        assert waiter.expired == 1
        assert ran == [
            {"container.id": cid[:12], "container.full_id": cid, "container.type": "podman"}
        ]
    finally:
        resolver.close()


def test_released_when_the_lookup_finishes(containers: Podman, api_socket: str) -> None:
    with ContainerResolver(api_socket, follow_events=False, watch_cgroups=False) as resolver:
        name, _cid, pid = containers.start_sleeper()
        info = resolver.resolve_pid(pid)
        assert info is not None
        waiter = MetadataWaiter(max_wait=30)
        ran: list[dict[str, Any]] = []
        waiter.submit(info, lambda: ran.append(info.fields()))
        deadline = time.monotonic() + 10
        while not ran and time.monotonic() < deadline:
            waiter.run_due()
            time.sleep(0.005)
        assert len(ran) == 1
        assert ran[0]["container.name"] == name
        assert waiter.expired == 0


def test_nothing_held_for_host_or_unreachable_runtime(containers: Podman, tmp_path: Path) -> None:
    waiter = MetadataWaiter(max_wait=30)
    ran: list[str] = []
    waiter.submit(HOST, lambda: ran.append("host"))
    waiter.submit(None, lambda: ran.append("unknown"))
    assert ran == ["host", "unknown"]
    _name, _cid, pid = containers.start_sleeper()
    resolver = ContainerResolver(str(tmp_path / "absent.sock"), follow_events=False)
    try:
        info = resolver.resolve_pid(pid)
        assert info is not None
        assert resolver.wait_metadata(info, 10) is False  # refused at once: "unavailable"
        waiter.submit(info, lambda: ran.append("unreachable"))
        assert ran == ["host", "unknown", "unreachable"]
    finally:
        resolver.close()


def test_flush_runs_everything_in_order(containers: Podman, hung_socket: str) -> None:
    _name, _cid, pid = containers.start_sleeper()
    resolver = ContainerResolver(hung_socket, follow_events=False, watch_cgroups=False)
    try:
        info = resolver.resolve_pid(pid)
        assert info is not None
        waiter = MetadataWaiter(max_wait=30)
        ran: list[int] = []
        for i in range(3):
            waiter.submit(info, lambda i=i: ran.append(i))  # type: ignore[misc]
        assert waiter.run_due() == 0
        assert waiter.run_due(flush=True) == 3
        assert ran == [0, 1, 2] and len(waiter) == 0
    finally:
        resolver.close()
