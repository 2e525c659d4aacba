"""The prefilter on the new families, in the real sensor, with Falco's three files loaded.

High-rate calls that no rule wants must stay in the kernel: a shell-like dup2 of a file (Falco's
dup rule wants sockets), sockets of an ordinary domain (the packet-socket rule wants AF_PACKET),
sends on a connected UDP socket (the outbound macro wants unconnected ones). The near misses
must arrive: a dup2 of a TCP socket, an AF_PACKET socket.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sentinel.compiler import compile_rules
from sentinel.engine import Engine
from sentinel.events import decode
from sentinel.events.record import Record
from sentinel.loader import load_rules
from tests.helpers import CORPUS

pytestmark = pytest.mark.kernel

if os.geteuid() != 0:
    pytest.skip("loading BPF programs needs root (CI runs as root)", allow_module_level=True)

STORM = 5000
FILES = ["falco_rules.yaml", "falco-incubating_rules.yaml", "falco-sandbox_rules.yaml"]


@pytest.fixture(scope="module")
def sensor() -> Iterator[tuple[Any, list[bytes]]]:
    from sentinel.app.sensor import FilteredSensor

    engine = Engine(compile_rules(load_rules([CORPUS / f for f in FILES])))
    got: list[bytes] = []
    s = FilteredSensor([(r.name, r.expr) for r in engine.rules], event_types=engine.event_types())
    s.start(got.append)
    try:
        yield s, got
    finally:
        s.close()


def _in_child(fn: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            fn()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return pid


def _run(sensor: tuple[Any, list[bytes]], evt_type: str, fn: Callable[[], None]) -> tuple[
    list[Record], int]:  # fmt: skip
    """Records of ``evt_type`` the child caused, and how many the kernel dropped meanwhile."""
    s, got = sensor
    s.drain()
    got.clear()
    before = s.counts()[evt_type]["filtered"]
    pid = _in_child(fn)
    s.drain()
    dropped = s.counts()[evt_type]["filtered"] - before
    recs = [decode(r) for r in got]
    return [r for r in recs if r.pid == pid and r.evt.name == evt_type], dropped


def test_dup2_of_a_file_stays_in_the_kernel_and_of_a_socket_arrives(
    sensor: tuple[Any, list[bytes]],
) -> None:
    def files() -> None:
        fd = os.open("/etc/hostname", os.O_RDONLY)
        for _ in range(STORM):
            os.dup2(fd, 9)

    recs, dropped = _run(sensor, "dup2", files)
    assert recs == [] and dropped >= STORM

    def sock() -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        os.dup2(s.fileno(), 1)

    recs, _ = _run(sensor, "dup2", sock)
    assert len(recs) == 1


def test_ordinary_sockets_stay_in_the_kernel_and_a_packet_socket_arrives(
    sensor: tuple[Any, list[bytes]],
) -> None:
    def inet() -> None:
        for _ in range(STORM):
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()

    recs, dropped = _run(sensor, "socket", inet)
    assert recs == [] and dropped >= STORM

    def packet() -> None:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()

    recs, _ = _run(sensor, "socket", packet)
    assert len(recs) == 1


def test_sends_on_a_connected_udp_socket_stay_in_the_kernel(
    sensor: tuple[Any, list[bytes]],
) -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    port = rx.getsockname()[1]

    def sends() -> None:
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.connect(("127.0.0.1", port))
        for _ in range(STORM):
            tx.sendto(b"x", ("127.0.0.1", port))

    try:
        recs, dropped = _run(sensor, "sendto", sends)
    finally:
        rx.close()
    assert recs == [] and dropped >= STORM


def test_reads_below_dev_stay_in_the_kernel_and_creating_a_file_there_arrives(
    sensor: tuple[Any, list[bytes]],
) -> None:
    """Falco's incubating 'Create files below dev' wants opens with O_CREAT below /dev: the
    kernel judges the flag (it used to keep every open below /dev, /dev/null's included)."""

    def reads() -> None:
        for _ in range(STORM):
            os.close(os.open("/dev/null", os.O_RDONLY))

    recs, dropped = _run(sensor, "openat", reads)
    assert recs == [] and dropped >= STORM
    path = f"/dev/sentinel-test-{os.getpid()}"
    try:
        recs, _ = _run(sensor, "openat", lambda: os.close(os.open(path, os.O_CREAT | os.O_WRONLY)))
        assert os.path.exists(path)  # the open really created the file
        assert [r.evt.name for r in recs] == ["openat"]
    finally:
        if os.path.exists(path):
            os.unlink(path)
