"""HTTP(S) output in batches: a generic JSON webhook, Splunk HEC, Elasticsearch/OpenSearch _bulk.

Acknowledgement is a 2xx (and, for ``_bulk``, a per-item 201 or 409: 409 means the document
with that ``_id`` is already there from an earlier attempt, which is exactly what makes
at-least-once delivery idempotent). 408, 429 and 5xx are retried; any other 4xx is a
rejection of the data, which retrying cannot fix, so it goes to the dead-letter file.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from typing import Any
from urllib.parse import urlsplit

from sentinel.alerts import Alert
from sentinel.outputs.base import OK, Outcome, TransientError
from sentinel.outputs.config import HttpOutput
from sentinel.outputs.formats import document
from sentinel.outputs.syslog import client_context


def retryable(status: int) -> bool:
    """408, 429, 5xx; also 1xx/3xx, which mean a wrong URL or proxy: the operator can fix that,
    and dead-lettering every alert meanwhile would keep them from the SIEM for good."""
    return status in (408, 429) or status >= 500 or status < 200 or 300 <= status < 400


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str)


class HttpSink:
    def __init__(self, cfg: HttpOutput) -> None:
        self.cfg = cfg
        self.max_count = cfg.batch.max_count
        self.max_bytes = cfg.batch.max_bytes
        self.linger = cfg.batch.max_wait
        url = urlsplit(cfg.url)
        self.https = url.scheme == "https"
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (443 if self.https else 80)
        path = url.path or "/"
        if cfg.flavor == "splunk_hec" and path == "/":
            path = "/services/collector/event"
        elif cfg.flavor == "elasticsearch" and not path.rstrip("/").endswith("_bulk"):
            path = path.rstrip("/") + "/_bulk"
        self.path = path + (f"?{url.query}" if url.query else "")
        # _bulk with no index in the URL needs one per document.
        self.bulk_index = cfg.index or ("sentinel-alerts" if path == "/_bulk" else None)
        self._ctx: ssl.SSLContext | None = client_context(cfg.tls) if self.https else None
        self._conn: http.client.HTTPConnection | None = None
        self.headers = {"User-Agent": "sentinel", **self._auth(), **cfg.headers}

    def _auth(self) -> dict[str, str]:
        cfg = self.cfg
        if cfg.flavor == "splunk_hec":
            return {"Authorization": f"Splunk {cfg.token}"}
        if cfg.api_key:
            return {"Authorization": f"ApiKey {cfg.api_key}"}
        if cfg.username is not None:
            pair = f"{cfg.username}:{cfg.password or ''}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        if cfg.token:
            return {"Authorization": f"Bearer {cfg.token}"}
        return {}

    # -- bodies --------------------------------------------------------------------------------

    def body(self, alerts: list[Alert]) -> tuple[bytes, str]:
        cfg = self.cfg
        docs = [document(a, cfg.format, cfg.ocsf_class) for a in alerts]
        if cfg.flavor == "webhook":
            return _dumps(docs).encode(), "application/json"
        if cfg.flavor == "splunk_hec":
            parts = []
            for alert, doc in zip(alerts, docs, strict=True):
                env: dict[str, Any] = {
                    "time": round(alert.time_ns / 1e9, 3),
                    "host": alert.hostname or None,
                    "source": "sentinel",
                    "sourcetype": cfg.sourcetype,
                    "index": cfg.index,
                    "event": doc,
                }
                parts.append(_dumps({k: v for k, v in env.items() if v is not None}))
            # HEC takes events concatenated, with no separator and no enclosing array.
            return "".join(parts).encode(), "application/json"
        lines = []
        for alert, doc in zip(alerts, docs, strict=True):
            meta: dict[str, Any] = {"_id": alert.id}
            if self.bulk_index:
                meta["_index"] = self.bulk_index
            lines.append(_dumps({"create": meta}))
            lines.append(_dumps(doc))
        return ("\n".join(lines) + "\n").encode(), "application/x-ndjson"

    # -- transport -----------------------------------------------------------------------------

    def _connect(self) -> http.client.HTTPConnection:
        if self._ctx is not None:
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=self.cfg.timeout, context=self._ctx
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=self.cfg.timeout)

    def _post(self, body: bytes, ctype: str) -> tuple[int, bytes]:
        headers = {**self.headers, "Content-Type": ctype, "Content-Length": str(len(body))}
        for attempt in (1, 2):
            reused = self._conn is not None
            if self._conn is None:
                self._conn = self._connect()
            try:
                self._conn.request("POST", self.path, body=body, headers=headers)
                resp = self._conn.getresponse()
                data = resp.read()
            except (
                http.client.RemoteDisconnected,
                BrokenPipeError,
                ConnectionResetError,
            ) as exc:
                self._drop()
                # A kept-alive connection the server closed while idle: try a fresh one now
                # rather than count a retry and back off. (A resend at worst duplicates.)
                if reused and attempt == 1:
                    continue
                raise TransientError(f"POST {self.host}:{self.port}{self.path}: {exc!r}") from exc
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                raise TransientError(f"POST {self.host}:{self.port}{self.path}: {exc!r}") from exc
            if resp.will_close:
                self._drop()
            return resp.status, data
        raise AssertionError("unreachable")  # pragma: no cover

    def send(self, alerts: list[Alert]) -> list[Outcome]:
        body, ctype = self.body(alerts)
        status, data = self._post(body, ctype)
        if retryable(status):
            raise TransientError(f"HTTP {status}: {data[:200]!r}")
        if not 200 <= status < 300:
            if self.cfg.flavor == "splunk_hec" and status == 400:
                return self._hec_partial(alerts, data)
            return [Outcome("dead", f"HTTP {status}: {data[:500]!r}", status)] * len(alerts)
        if self.cfg.flavor == "elasticsearch":
            return self._bulk_items(alerts, data)
        return [OK] * len(alerts)

    def _hec_partial(self, alerts: list[Alert], data: bytes) -> list[Outcome]:
        """HEC stops at the first bad event and says which (``invalid-event-number``): the
        ones before it were indexed, the bad one is dead, the rest are sent again."""
        reason = f"HTTP 400: {data[:500]!r}"
        try:
            bad = int(json.loads(data)["invalid-event-number"])
        except (ValueError, KeyError, TypeError):
            return [Outcome("dead", reason, 400)] * len(alerts)
        if not 0 <= bad < len(alerts):
            return [Outcome("dead", reason, 400)] * len(alerts)
        after = [Outcome("retry", "after a rejected event")] * (len(alerts) - bad - 1)
        return [OK] * bad + [Outcome("dead", reason, 400), *after]

    def _bulk_items(self, alerts: list[Alert], data: bytes) -> list[Outcome]:
        try:
            reply = json.loads(data)
            items = reply["items"]
        except (ValueError, KeyError, TypeError) as exc:
            raise TransientError(f"unreadable _bulk response: {data[:200]!r}") from exc
        if not reply.get("errors") and len(items) == len(alerts):
            return [OK] * len(alerts)
        if len(items) != len(alerts):
            raise TransientError(f"_bulk answered {len(items)} items for {len(alerts)}")
        out: list[Outcome] = []
        for item in items:
            result = next(iter(item.values())) if isinstance(item, dict) and item else {}
            status = int(result.get("status", 0))
            if status in (200, 201, 409):
                out.append(OK)
            elif retryable(status) or status == 0:
                out.append(Outcome("retry", f"item {status}", status))
            else:
                out.append(Outcome("dead", f"item {status}: {_dumps(result.get('error'))}", status))
        return out

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self._drop()
