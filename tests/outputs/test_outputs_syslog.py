"""Syslog delivery to a real rsyslogd: TCP (octet counting), TLS (RFC 5425), UDP."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from sentinel.alerts import Alert
from sentinel.outputs import Dispatcher, OutputsConfig
from sentinel.outputs.syslog import format_message, frame, sd_escape, timestamp

from .conftest import (
    FAST_RETRY,
    Certs,
    Rsyslog,
    free_port,
    make_alert,
    spool_cfg,
    wait_until,
)

N = 60


def _tls(certs: Certs, **over: Any) -> dict[str, Any]:
    return {
        "ca_file": str(certs.ca_pem),
        "cert_file": str(certs.client_pem),
        "key_file": str(certs.client_key),
        "server_name": "localhost",
        **over,
    }


def _run(
    tmp_path: Path, outputs: list[dict[str, Any]], n: int = N
) -> tuple[Dispatcher, list[Alert]]:
    cfg = OutputsConfig.model_validate({"outputs": outputs, "spool": spool_cfg(tmp_path)})
    d = Dispatcher(cfg)
    d.start()
    alerts = [make_alert(i) for i in range(n)]
    for a in alerts:
        d.emit(a)
    return d, alerts


def _check_intact(rsyslog: Rsyslog, alerts: list[Alert], facility: int = 16) -> None:
    msgs = rsyslog.messages()
    by_id = {}
    for m in msgs:
        assert m["raw_msg"].startswith("\ufeff"), "RFC 5424 UTF-8 MSG starts with a BOM"
        body = json.loads(m["msg"])
        assert body["id"] not in by_id, "every alert arrives once"
        by_id[body["id"]] = (m, body)
    assert set(by_id) == {a.id for a in alerts}
    for a in alerts:
        m, body = by_id[a.id]
        assert body == a.to_dict()  # non-ASCII, newlines, quotes survive byte for byte
        assert m["pri"] == facility * 8 + 4  # Warning = severity 4
        assert m["app"] == "sentinel"
        assert m["msgid"] == "alert"
        assert m["hostname"] == "host-1"
        assert f'id="{a.id}"' in m["sd"]
        assert f'rule="{sd_escape(a.rule)}"' in m["sd"]
        assert 'tags="mitre_execution,process"' in m["sd"]


def test_tcp_octet_counting_every_alert_once_intact(tmp_path: Path, rsyslog: Rsyslog) -> None:
    d, alerts = _run(tmp_path, [{"type": "syslog", "transport": "tcp", "port": rsyslog.tcp_port}])
    wait_until(lambda: len(rsyslog.lines()) >= N, what="rsyslog to write all alerts")
    d.close()
    _check_intact(rsyslog, alerts)
    m = d.metrics()["syslog"]
    assert m["sent"] == N and m["queue_depth"] == 0 and m["dead_lettered"] == 0


def test_tls_with_client_cert_every_alert_once_intact(
    tmp_path: Path, rsyslog: Rsyslog, certs: Certs
) -> None:
    out = {
        "type": "syslog",
        "transport": "tls",
        "port": rsyslog.tls_port,
        "facility": "authpriv",
        "tls": _tls(certs),
    }
    d, alerts = _run(tmp_path, [out])
    wait_until(lambda: len(rsyslog.lines()) >= N, what="rsyslog to write all TLS alerts")
    d.close()
    _check_intact(rsyslog, alerts, facility=10)


def test_tls_untrusted_server_is_never_sent_to(
    tmp_path: Path, rsyslog: Rsyslog, other_certs: Certs
) -> None:
    out = {
        "type": "syslog",
        "transport": "tls",
        "port": rsyslog.tls_port,
        "tls": _tls(other_certs),  # our CA did not sign rsyslog's certificate
        "retry": FAST_RETRY,
    }
    d, _ = _run(tmp_path, [out], n=3)
    wait_until(lambda: d.metrics()["syslog"]["retried"] >= 3, what="retries")
    d.close(timeout=0.2)
    assert rsyslog.lines() == []
    m = d.metrics()["syslog"]
    assert m["sent"] == 0 and m["queue_depth"] == 3  # kept for later, not lost


def test_tls_server_name_is_checked(tmp_path: Path, rsyslog: Rsyslog, certs: Certs) -> None:
    out = {
        "type": "syslog",
        "transport": "tls",
        "port": rsyslog.tls_port,
        "tls": _tls(certs, server_name="siem.example.org"),  # cert is for localhost
        "retry": FAST_RETRY,
    }
    d, _ = _run(tmp_path, [out], n=2)
    wait_until(lambda: d.metrics()["syslog"]["retried"] >= 2, what="retries")
    d.close(timeout=0.2)
    assert rsyslog.lines() == []
    assert d.metrics()["syslog"]["sent"] == 0


def test_udp(tmp_path: Path, rsyslog: Rsyslog) -> None:
    d, alerts = _run(
        tmp_path, [{"type": "syslog", "transport": "udp", "port": rsyslog.udp_port}], n=10
    )
    wait_until(lambda: len(rsyslog.lines()) >= 10, what="UDP alerts")
    d.close()
    _check_intact(rsyslog, alerts)


def test_cef_over_tcp(tmp_path: Path, rsyslog: Rsyslog) -> None:
    out = {"type": "syslog", "port": rsyslog.tcp_port, "format": "cef", "bom": False}
    d, alerts = _run(tmp_path, [out], n=5)
    wait_until(lambda: len(rsyslog.lines()) >= 5, what="CEF alerts")
    d.close()
    msgs = rsyslog.messages()
    for m, a in zip(msgs, alerts, strict=True):
        assert m["msg"].startswith("CEF:0|Sentinel|Sentinel|")
        assert f"externalId={a.id}" in m["msg"]
        assert f"msg=exec bash (n\\={alerts.index(a)}) é\\nnext " in m["msg"]  # '=' and LF escaped


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_receiver_restart_loses_nothing(
    tmp_path: Path, rsyslog: Rsyslog, certs: Certs, transport: str
) -> None:
    """The receiver goes away with a connection open: the next batch must not vanish into
    the dead connection."""
    out: dict[str, Any] = {"type": "syslog", "transport": transport, "retry": FAST_RETRY}
    if transport == "tls":
        out.update(port=rsyslog.tls_port, tls=_tls(certs))
    else:
        out.update(port=rsyslog.tcp_port)
    d, first = _run(tmp_path, [out], n=5)
    wait_until(lambda: len(rsyslog.lines()) >= 5, what="first alerts")
    rsyslog.stop()
    second = [make_alert(100 + i) for i in range(20)]
    for a in second:
        d.emit(a)
    wait_until(lambda: d.metrics()["syslog"]["retried"] > 0, what="a retry while down")
    rsyslog.start()
    wait_until(
        lambda: (
            {a.id for a in first + second}
            <= {json.loads(m["msg"])["id"] for m in rsyslog.messages()}
        ),
        what="all alerts after the restart",
    )
    d.close()


def test_one_dead_output_does_not_stall_another(tmp_path: Path, rsyslog: Rsyslog) -> None:
    dead_port = free_port()  # nothing listens there
    outs = [
        {"type": "syslog", "name": "dead", "port": dead_port, "retry": FAST_RETRY},
        {"type": "syslog", "name": "live", "port": rsyslog.tcp_port},
    ]
    d, _ = _run(tmp_path, outs, n=30)
    wait_until(lambda: len(rsyslog.lines()) >= 30, what="the live output")
    m = d.metrics()
    assert m["live"]["sent"] == 30 and m["live"]["queue_depth"] == 0
    assert m["dead"]["sent"] == 0 and m["dead"]["queue_depth"] == 30
    assert m["dead"]["retried"] > 0
    d.close(timeout=0.2)


def test_message_format_rfc5424() -> None:
    from sentinel.outputs.config import SyslogOutput

    cfg = SyslogOutput(type="syslog", facility="local3", app_name="snt", msgid="ALERT")
    a = make_alert(1, priority="Critical", time_ns=1_700_000_000_123_456_789)
    msg = format_message(a, cfg, "fallback", "42")
    head, _, body = msg.partition(b"\xef\xbb\xbf")
    # <PRI>VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP SD SP
    pat = rb'^<154>1 2023-11-14T22:13:20\.123456Z host-1 snt 42 ALERT \[sentinel@32473 id="[^"]+" '
    assert re.match(pat, head), head
    assert b'rule="Any exec \\"1\\" \\]"' in head
    assert json.loads(body) == a.to_dict()
    framed = frame(msg, "octet_counting")
    count, _, rest = framed.partition(b" ")
    assert int(count) == len(rest) == len(msg)
    assert frame(b"a\nb", "non_transparent") == b"a b\n"
    assert timestamp(5_000) == "1970-01-01T00:00:00.000005Z"


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_octet_counting_keeps_a_raw_newline_inside_one_message(
    tmp_path: Path, rsyslog: Rsyslog, certs: Certs, transport: str
) -> None:
    """A rule name with a line break goes raw into the SD-PARAM (legal in RFC 5424): with
    octet counting rsyslog still sees one message per alert (LF framing would split it)."""
    out: dict[str, Any] = {"type": "syslog", "transport": transport}
    if transport == "tls":
        out.update(port=rsyslog.tls_port, tls=_tls(certs))
    else:
        out.update(port=rsyslog.tcp_port)
    cfg = OutputsConfig.model_validate({"outputs": [out], "spool": spool_cfg(tmp_path)})
    d = Dispatcher(cfg)
    d.start()
    alerts = [make_alert(i, rule=f"line one\nline two {i}") for i in range(5)]
    for a in alerts:
        d.emit(a)
    wait_until(lambda: len(rsyslog.lines()) >= 5, what="5 messages")
    d.close()
    msgs = rsyslog.messages()
    assert len(msgs) == 5
    for m, a in zip(msgs, alerts, strict=True):
        # rsyslog escapes the control character it received (LF -> #012) when writing.
        assert f'rule="line one#012line two {alerts.index(a)}"' in m["sd"]
        assert json.loads(m["msg"])["rule"] == a.rule
