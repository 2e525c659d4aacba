"""HTTP delivery to a real local server: Splunk HEC, Elasticsearch _bulk, generic webhook."""

from __future__ import annotations

import base64
import json
import socket
import ssl
from pathlib import Path
from typing import Any

from sentinel.alerts import Alert
from sentinel.outputs import Dispatcher, OutputsConfig
from sentinel.outputs.formats import to_ecs

from .conftest import (
    FAST_RETRY,
    Certs,
    HttpReceiver,
    Request,
    bulk_ok,
    make_alert,
    serve_http,
    spool_cfg,
    wait_until,
)


def _start(tmp_path: Path, out: dict[str, Any], alerts: list[Alert]) -> Dispatcher:
    cfg = OutputsConfig.model_validate({"outputs": [out], "spool": spool_cfg(tmp_path)})
    d = Dispatcher(cfg)
    d.start()
    for a in alerts:
        d.emit(a)
    return d


def _concatenated(body: bytes) -> list[dict[str, Any]]:
    """Split HEC's concatenated JSON objects, requiring that nothing separates them."""
    text, dec, objs, i = body.decode(), json.JSONDecoder(), [], 0
    while i < len(text):
        assert text[i] == "{", f"unexpected separator {text[i]!r} at {i}"
        obj, i = dec.raw_decode(text, i)
        objs.append(obj)
    return objs


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def test_splunk_hec_payload(tmp_path: Path, http_receiver: HttpReceiver) -> None:
    http_receiver.respond = lambda req: (200, b'{"text":"Success","code":0}')
    alerts = [make_alert(i, time_ns=1_700_000_000_123_456_789 + i) for i in range(7)]
    out = {
        "type": "http",
        "flavor": "splunk_hec",
        "url": http_receiver.url,
        "token": "0000-abcd",
        "index": "security",
        "batch": {"max_wait": 0.3},
    }
    d = _start(tmp_path, out, alerts)
    wait_until(lambda: d.metrics()["http"]["sent"] == 7, what="HEC delivery")
    d.close()
    events = []
    for req in http_receiver.requests:
        assert req.path == "/services/collector/event"
        assert req.headers["authorization"] == "Splunk 0000-abcd"
        assert req.headers["content-type"] == "application/json"
        objs = _concatenated(req.body)
        assert req.body == b"".join(_compact(o) for o in objs)  # compact, no separators
        events += objs
    assert [e["event"] for e in events] == [a.to_dict() for a in alerts]
    for e, a in zip(events, alerts, strict=True):
        assert set(e) == {"time", "host", "source", "sourcetype", "index", "event"}
        assert e["time"] == round(a.time_ns / 1e9, 3) and e["host"] == "host-1"
        assert e["sourcetype"] == "sentinel:alert" and e["index"] == "security"


def test_elasticsearch_bulk_payload(tmp_path: Path, http_receiver: HttpReceiver) -> None:
    http_receiver.respond = bulk_ok
    alerts = [make_alert(i) for i in range(12)]
    out = {
        "type": "http",
        "flavor": "elasticsearch",
        "format": "ecs",
        "url": http_receiver.url,
        "api_key": "k3y",
        "batch": {"max_count": 5, "max_wait": 0.3},
    }
    d = _start(tmp_path, out, alerts)
    wait_until(lambda: d.metrics()["http"]["sent"] == 12, what="bulk delivery")
    d.close()
    docs = []
    for req in http_receiver.requests:
        assert req.path == "/_bulk"
        assert req.headers["content-type"] == "application/x-ndjson"
        assert req.headers["authorization"] == "ApiKey k3y"
        assert req.body.endswith(b"\n") and not req.body.endswith(b"\n\n")
        lines = req.body.split(b"\n")[:-1]
        assert 2 <= len(lines) <= 10 and len(lines) % 2 == 0  # batches of at most 5
        for action, doc in zip(lines[0::2], lines[1::2], strict=True):
            meta = json.loads(action)
            assert list(meta) == ["create"]
            docs.append((meta["create"], json.loads(doc)))
    assert len(docs) == 12
    for (meta, doc), a in zip(docs, alerts, strict=True):
        assert meta == {"_id": a.id, "_index": "sentinel-alerts"}
        assert doc == json.loads(_compact(to_ecs(a)))
        assert doc["event"]["kind"] == "alert" and doc["event"]["id"] == a.id


def test_bulk_partial_failure_retries_only_failed_items(
    tmp_path: Path, http_receiver: HttpReceiver
) -> None:
    alerts = [make_alert(i) for i in range(6)]
    ids = [a.id for a in alerts]
    status_first = {ids[1]: 429, ids[3]: 429, ids[4]: 400}
    seen: set[str] = set()

    def respond(req: Request) -> tuple[int, bytes]:
        items = []
        for line in req.body.decode().splitlines()[0::2]:
            _id = json.loads(line)["create"]["_id"]
            status = 201 if _id in seen else status_first.get(_id, 201)
            seen.add(_id)
            item: dict[str, Any] = {"_id": _id, "status": status}
            if status == 400:
                item["error"] = {"type": "mapper_parsing_exception", "reason": "bad field"}
            if status == 429:
                item["error"] = {"type": "es_rejected_execution_exception"}
            items.append({"create": item})
        errors = any(i["create"]["status"] >= 300 for i in items)
        return 200, json.dumps({"errors": errors, "items": items}).encode()

    http_receiver.respond = respond
    out = {
        "type": "http",
        "flavor": "elasticsearch",
        "url": http_receiver.url + "/alerts-idx",
        "batch": {"max_count": 6, "max_wait": 5.0},
        "retry": FAST_RETRY,
    }
    d = _start(tmp_path, out, alerts)
    wait_until(
        lambda: d.metrics()["http"]["sent"] == 5 and d.metrics()["http"]["queue_depth"] == 0,
        what="bulk retry",
    )
    d.close()
    reqs = http_receiver.requests
    assert reqs[0].path == "/alerts-idx/_bulk"
    first_ids = [json.loads(x)["create"]["_id"] for x in reqs[0].body.decode().splitlines()[0::2]]
    assert first_ids == ids
    assert "_index" not in json.loads(reqs[0].body.decode().splitlines()[0])["create"]
    # The retry carries exactly the two 429 items, nothing already indexed or rejected.
    retried = [json.loads(x)["create"]["_id"] for x in reqs[1].body.decode().splitlines()[0::2]]
    assert retried == [ids[1], ids[3]]
    assert len(reqs) == 2
    m = d.metrics()["http"]
    assert m == {
        "sent": 5,
        "retried": 2,
        "spooled": 6,
        "dead_lettered": 1,
        "dropped": 0,
        "blocked": 0,
        "queue_depth": 0,
    }
    dead = [json.loads(x) for x in (tmp_path / "spool" / "http.dead").read_text().splitlines()]
    assert len(dead) == 1 and dead[0]["alert"]["id"] == ids[4] and dead[0]["status"] == 400
    assert "mapper_parsing_exception" in dead[0]["reason"]


def test_bulk_conflict_409_counts_as_delivered(tmp_path: Path, http_receiver: HttpReceiver) -> None:
    def respond(req: Request) -> tuple[int, bytes]:
        n = len(req.body.decode().splitlines()) // 2
        items = [{"create": {"status": 409}} for _ in range(n)]
        return 200, json.dumps({"errors": True, "items": items}).encode()

    http_receiver.respond = respond
    out = {"type": "http", "flavor": "elasticsearch", "url": http_receiver.url}
    d = _start(tmp_path, out, [make_alert(i) for i in range(3)])
    wait_until(lambda: d.metrics()["http"]["sent"] == 3, what="409 as ack")
    d.close()
    assert d.metrics()["http"]["dead_lettered"] == 0 and len(http_receiver.requests) == 1


def test_webhook_retries_5xx_429_408_and_dead_letters_4xx(
    tmp_path: Path, http_receiver: HttpReceiver
) -> None:
    script = iter([503, 429, 408, 200, 400])
    http_receiver.respond = lambda req: (next(script, 200), b"{}")
    out = {
        "type": "http",
        "url": http_receiver.url + "/hook?x=1",
        "headers": {"X-Tenant": "t1"},
        "batch": {"max_count": 4, "max_wait": 2.0},
        "retry": FAST_RETRY,
    }
    alerts = [make_alert(i) for i in range(4)]
    d = _start(tmp_path, out, alerts)
    wait_until(lambda: d.metrics()["http"]["sent"] == 4, what="webhook after retries")
    late = make_alert(99)
    d.emit(late)  # answered 400: rejected data, not retried
    wait_until(lambda: d.metrics()["http"]["dead_lettered"] == 1, what="dead letter")
    d.close()
    reqs = http_receiver.requests
    assert len(reqs) == 5
    assert all(r.path == "/hook?x=1" and r.headers["x-tenant"] == "t1" for r in reqs)
    assert json.loads(reqs[3].body) == [a.to_dict() for a in alerts]  # a JSON array
    assert reqs[0].body == reqs[3].body  # the same batch, retried as is
    assert json.loads(reqs[4].body) == [late.to_dict()]
    m = d.metrics()["http"]
    assert m["retried"] == 12 and m["queue_depth"] == 0
    dead = (tmp_path / "spool" / "http.dead").read_text().splitlines()
    assert [json.loads(x)["alert"]["id"] for x in dead] == [late.id]


def test_hec_invalid_event_number(tmp_path: Path, http_receiver: HttpReceiver) -> None:
    """HEC indexes the events before the bad one: those are acknowledged, the bad one is
    dead-lettered, the rest are sent again."""
    alerts = [make_alert(i) for i in range(5)]
    bodies: list[list[str]] = []

    def respond(req: Request) -> tuple[int, bytes]:
        got = [o["event"]["id"] for o in _concatenated(req.body)]
        bodies.append(got)
        if alerts[2].id in got:
            bad = got.index(alerts[2].id)
            return 400, json.dumps(
                {"text": "Invalid data format", "code": 6, "invalid-event-number": bad}
            ).encode()
        return 200, b'{"text":"Success","code":0}'

    http_receiver.respond = respond
    out = {
        "type": "http",
        "flavor": "splunk_hec",
        "url": http_receiver.url,
        "token": "t",
        "batch": {"max_count": 5, "max_wait": 5.0},
        "retry": FAST_RETRY,
    }
    d = _start(tmp_path, out, alerts)
    wait_until(lambda: d.metrics()["http"]["queue_depth"] == 0, what="HEC partial")
    d.close()
    ids = [a.id for a in alerts]
    assert bodies == [ids, ids[3:]]
    m = d.metrics()["http"]
    assert m["sent"] == 4 and m["dead_lettered"] == 1


def test_https_with_ca_and_client_cert(tmp_path: Path, certs: Certs) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs.ca_pem))
    ctx.load_cert_chain(certs.server_pem, certs.server_key)
    ctx.verify_mode = ssl.CERT_REQUIRED  # the server requires our client certificate
    receiver = HttpReceiver()
    server = serve_http(receiver, tls=ctx)
    try:
        out = {
            "type": "http",
            "url": f"https://localhost:{receiver.port}/in",
            "tls": {
                "ca_file": str(certs.ca_pem),
                "cert_file": str(certs.client_pem),
                "key_file": str(certs.client_key),
            },
            "batch": {"max_wait": 0.1},
        }
        alerts = [make_alert(i) for i in range(3)]
        d = _start(tmp_path, out, alerts)
        wait_until(lambda: d.metrics()["http"]["sent"] == 3, what="HTTPS delivery")
        d.close()
        assert [x["id"] for r in receiver.requests for x in json.loads(r.body)] == [
            a.id for a in alerts
        ]
    finally:
        server.shutdown()
        server.server_close()


def test_batches_bounded_by_bytes(tmp_path: Path, http_receiver: HttpReceiver) -> None:
    out = {
        "type": "http",
        "url": http_receiver.url,
        "batch": {"max_count": 1000, "max_bytes": 4096, "max_wait": 0.5},
    }
    alerts = [make_alert(i, output="x" * 600) for i in range(40)]
    d = _start(tmp_path, out, alerts)
    wait_until(lambda: d.metrics()["http"]["sent"] == 40, what="all batches")
    d.close()
    sizes = [len(json.loads(r.body)) for r in http_receiver.requests]
    assert sum(sizes) == 40 and len(sizes) >= 8 and max(sizes) <= 4


def test_idle_keepalive_closed_by_server_is_not_a_retry(
    tmp_path: Path, http_receiver: HttpReceiver
) -> None:
    """The server drops the kept-alive connection between two batches (as load balancers
    do): the next batch goes out on a new connection at once, without backoff."""
    out = {"type": "http", "url": http_receiver.url, "batch": {"max_wait": 0}}
    d = _start(tmp_path, out, [make_alert(0)])
    wait_until(lambda: d.metrics()["http"]["sent"] == 1, what="first batch")
    assert len(http_receiver.conns) == 1
    http_receiver.conns[0].shutdown(socket.SHUT_RDWR)  # an idle timeout on the server
    d.emit(make_alert(1))
    wait_until(lambda: d.metrics()["http"]["sent"] == 2, what="second batch")
    d.close()
    assert d.metrics()["http"]["retried"] == 0
    assert len(http_receiver.conns) == 2


def test_basic_auth_for_elasticsearch(tmp_path: Path, http_receiver: HttpReceiver) -> None:
    http_receiver.respond = bulk_ok
    out = {
        "type": "http",
        "flavor": "elasticsearch",
        "url": http_receiver.url,
        "username": "elastic",
        "password": "pä:ss",
        "index": "sec-alerts",
    }
    d = _start(tmp_path, out, [make_alert(0)])
    wait_until(lambda: d.metrics()["http"]["sent"] == 1, what="bulk")
    d.close()
    req = http_receiver.requests[0]
    assert (
        req.headers["authorization"]
        == "Basic " + base64.b64encode("elastic:pä:ss".encode()).decode()
    )
    assert json.loads(req.body.splitlines()[0])["create"]["_index"] == "sec-alerts"
