"""stdout and file outputs, and the Dispatcher's own behaviour (close, restart, metrics)."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from sentinel.outputs import Dispatcher, OutputsConfig, SpoolError
from sentinel.outputs.config import RetryConfig
from sentinel.outputs.dispatcher import Backoff, decode_alert, encode_alert

from .conftest import FAST_RETRY, free_port, make_alert, spool_cfg, wait_until


def _dispatcher(tmp_path: Path, outputs: list[dict[str, Any]], **spool: Any) -> Dispatcher:
    cfg = OutputsConfig.model_validate({"outputs": outputs, "spool": spool_cfg(tmp_path, **spool)})
    d = Dispatcher(cfg)
    d.start()
    return d


def test_stdout_json_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _dispatcher(tmp_path, [{"type": "stdout"}])
    alerts = [make_alert(i) for i in range(5)]
    for a in alerts:
        d.emit(a)
    d.close()
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [json.loads(x) for x in lines] == [a.to_dict() for a in alerts]


@pytest.mark.parametrize("fsync", ["always", "batch", "never"])
def test_file_rotation_keeps_every_alert(tmp_path: Path, fsync: str) -> None:
    path = tmp_path / "out" / "alerts.jsonl"
    d = _dispatcher(
        tmp_path,
        [{"type": "file", "path": str(path), "max_bytes": 4000, "backups": 50, "fsync": fsync}],
    )
    alerts = [make_alert(i) for i in range(40)]
    for a in alerts:
        d.emit(a)
    d.close()
    files = sorted(
        path.parent.iterdir(), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0
    )
    assert len(files) >= 4  # rotated several times
    got = []
    for f in files:  # oldest (highest suffix) first
        assert f.stat().st_size <= 4000
        got += [json.loads(x) for x in f.read_text().splitlines()]
    assert got == [a.to_dict() for a in alerts]


def test_file_rotation_drops_beyond_backups(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    d = _dispatcher(
        tmp_path, [{"type": "file", "path": str(path), "max_bytes": 2000, "backups": 2}]
    )
    for i in range(30):
        d.emit(make_alert(i))
    d.close()
    assert sorted(p.name for p in tmp_path.glob("alerts.jsonl*")) == [
        "alerts.jsonl",
        "alerts.jsonl.1",
        "alerts.jsonl.2",
    ]
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["rule"] == make_alert(29).rule


def test_close_keeps_backlog_and_next_start_delivers_it(tmp_path: Path) -> None:
    port = free_port()
    outs: list[dict[str, Any]] = [
        {"type": "syslog", "name": "down", "port": port, "retry": FAST_RETRY},
        {"type": "file", "name": "f", "path": str(tmp_path / "a.jsonl")},
    ]
    d = _dispatcher(tmp_path, outs)
    for i in range(7):
        d.emit(make_alert(i))
    d.close(timeout=0.5)
    m = d.metrics()
    assert m["down"]["queue_depth"] == 7 and m["down"]["sent"] == 0
    assert m["f"] == {
        "sent": 7,
        "retried": 0,
        "spooled": 7,
        "dead_lettered": 0,
        "dropped": 0,
        "blocked": 0,
        "queue_depth": 0,
    }
    # Restart with a listener on the syslog output's port.

    srv = socket.socket()
    srv.bind(("127.0.0.1", port))
    srv.listen()
    try:
        d2 = _dispatcher(tmp_path, outs)
        conn, _ = srv.accept()
        conn.settimeout(10)
        data = b""
        while data.count(b'"id":') < 7:
            data += conn.recv(65536)
        d2.close()
        conn.close()
    finally:
        srv.close()
    assert d2.metrics()["down"]["sent"] == 7
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 7  # not re-sent to 'f'


def test_drop_oldest_is_counted_per_output(tmp_path: Path) -> None:
    outs: list[dict[str, Any]] = [
        {"type": "syslog", "name": "down", "port": free_port(), "retry": FAST_RETRY},
        {"type": "file", "name": "f", "path": str(tmp_path / "a.jsonl")},
    ]
    d = _dispatcher(tmp_path, outs, max_bytes=65536, segment_bytes=8192)
    for i in range(200):  # ~700 bytes each: ~140 KB through a 64 KB spool
        d.emit(make_alert(i, output="p" * 400))
        if i % 20 == 0:
            wait_until(lambda: d.metrics()["f"]["queue_depth"] == 0, what="file output")
    wait_until(lambda: d.metrics()["f"]["queue_depth"] == 0, what="file output")
    m = d.metrics()
    d.close(timeout=0.2)
    assert m["down"]["dropped"] > 0
    assert m["down"]["dropped"] + m["down"]["queue_depth"] == 200  # every alert accounted for
    assert m["f"]["dropped"] == 0 and m["f"]["sent"] == 200


def test_emit_before_start_is_an_error(tmp_path: Path) -> None:
    d = Dispatcher(OutputsConfig.model_validate({"spool": spool_cfg(tmp_path)}))
    with pytest.raises(SpoolError, match="before start"):
        d.emit(make_alert())


def test_spool_payload_round_trips_the_alert() -> None:
    a = make_alert(3, action="deny", tags=["b", "a"])
    b = decode_alert(encode_alert(a))
    assert b == a and b.id == a.id and b.time_ns == a.time_ns


def test_backoff_is_exponential_capped_and_jittered() -> None:
    b = Backoff(RetryConfig(initial_backoff=1.0, max_backoff=8.0, multiplier=2.0, jitter=0.25))
    delays = [b.next_delay() for _ in range(8)]
    bases = [1, 2, 4, 8, 8, 8, 8, 8]
    assert all(0.75 * base <= d <= base for d, base in zip(delays, bases, strict=True))
    many = {round(b.next_delay(), 6) for _ in range(20)}
    assert len(many) > 1  # jitter: not the same delay every time
    b.reset()
    assert 0.75 <= b.next_delay() <= 1.0


def test_dead_letter_file_is_private(tmp_path: Path) -> None:
    """Alerts carry sensitive command lines: spool, cursor and dead-letter files are 0600."""
    d = _dispatcher(tmp_path, [{"type": "file", "path": str(tmp_path / "x.jsonl")}])
    d.emit(make_alert())
    d.close()
    for p in (tmp_path / "spool").iterdir():
        assert os.stat(p).st_mode & 0o077 == 0, p


def test_an_unformattable_alert_is_dead_lettered_not_blocking(tmp_path: Path) -> None:
    """A time far out of range cannot be rendered as RFC 3339: that alert alone goes to the
    dead-letter file (with its raw fields), the ones around it are delivered."""
    path = tmp_path / "out.jsonl"
    d = _dispatcher(tmp_path, [{"type": "file", "name": "f", "path": str(path)}])
    bad = make_alert(1, time_ns=2**70)
    good = [make_alert(0), make_alert(2)]
    d.emit(good[0])
    d.emit(bad)
    d.emit(good[1])
    wait_until(lambda: d.metrics()["f"]["queue_depth"] == 0, what="delivery")
    d.close()
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == [a.id for a in good]
    dead = [json.loads(x) for x in (tmp_path / "spool" / "f.dead").read_text().splitlines()]
    assert len(dead) == 1 and json.loads(dead[0]["raw"])["id"] == bad.id
    assert "cannot format" in dead[0]["reason"]
    assert d.metrics()["f"]["sent"] == 2 and d.metrics()["f"]["dead_lettered"] == 1


def test_oversized_alert_is_dropped_counted_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    d = _dispatcher(
        tmp_path,
        [{"type": "file", "name": "f", "path": str(path)}],
        max_bytes=65536,
        segment_bytes=4096,
    )
    d.emit(make_alert(0, output="x" * 10_000))  # larger than a segment: cannot be spooled
    d.emit(make_alert(1))
    wait_until(lambda: d.metrics()["f"]["sent"] == 1, what="the normal alert")
    d.close()
    m = d.metrics()["f"]
    assert m["dropped"] == 1 and m["spooled"] == 1
    assert os.stat(tmp_path / "spool").st_mode & 0o077 == 0


def test_block_policy_blocks_emit_until_the_output_catches_up(tmp_path: Path) -> None:
    """A dead output under ``block``: emit waits (counted against that output) and resumes
    as soon as the output delivers; nothing is dropped."""

    port = free_port()
    outs: list[dict[str, Any]] = [
        {"type": "syslog", "name": "s", "port": port, "retry": FAST_RETRY},
    ]
    d = _dispatcher(tmp_path, outs, max_bytes=65536, segment_bytes=8192, full_policy="block")
    done = threading.Event()

    def producer() -> None:
        for i in range(150):  # ~100 KB of alerts through a 64 KB spool
            d.emit(make_alert(i, output="b" * 400))
        done.set()

    threading.Thread(target=producer, daemon=True).start()
    wait_until(lambda: d.metrics()["s"]["blocked"] >= 1, what="emit to block")
    assert not done.is_set()
    srv = socket.socket()
    srv.bind(("127.0.0.1", port))
    srv.listen()
    try:
        conn, _ = srv.accept()
        conn.settimeout(10)
        data = b""
        while data.count(b'"id":') < 150:
            data += conn.recv(1 << 16)
        assert done.wait(10)
        d.close()
        conn.close()
    finally:
        srv.close()
    m = d.metrics()["s"]
    assert m["dropped"] == 0 and m["sent"] == 150 and m["spooled"] == 150


def test_unreadable_ca_file_is_a_clear_setup_error(tmp_path: Path) -> None:
    from sentinel.outputs import OutputSetupError

    cfg = OutputsConfig.model_validate(
        {
            "outputs": [
                {"type": "syslog", "name": "siem", "transport": "tls",
                 "tls": {"ca_file": str(tmp_path / "missing-ca.pem")}},
            ],
            "spool": spool_cfg(tmp_path),
        }
    )  # fmt: skip
    d = Dispatcher(cfg)
    with pytest.raises(OutputSetupError, match=r"siem.*missing-ca\.pem"):
        d.start()
    d2 = Dispatcher(OutputsConfig.model_validate({"spool": spool_cfg(tmp_path)}))
    d2.start()  # the failed start released the spool
    d2.close()


def test_a_receiver_that_stops_reading_stalls_neither_emit_nor_other_outputs(
    tmp_path: Path,
) -> None:
    """A SIEM that accepts the connection and then never reads: the syslog worker blocks in
    sendall once the socket buffers are full, while emit() and the file output carry on."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    outs: list[dict[str, Any]] = [
        {"type": "syslog", "name": "stuck", "port": port, "timeout": 30},
        {"type": "file", "name": "f", "path": str(tmp_path / "a.jsonl")},
    ]
    d = _dispatcher(tmp_path, outs)
    try:
        d.emit(make_alert(0))
        conn, _ = srv.accept()
        n = 3000  # ~3 MB of alerts: far more than the loopback socket buffers hold
        for i in range(1, n):
            d.emit(make_alert(i, output="s" * 1000))
        wait_until(lambda: d.metrics()["f"]["sent"] == n, what="the file output")
        m = d.metrics()
        assert m["stuck"]["sent"] < n and m["stuck"]["queue_depth"] > 0
        assert m["stuck"]["spooled"] == n
        conn.close()
    finally:
        d.close(timeout=0.5)
        srv.close()
