"""``/metrics`` (Prometheus text) and ``/healthz`` over HTTP, from a daemon thread.

stdlib ``http.server``: a scrape every few seconds needs no framework. Bound to 127.0.0.1 by
default (the config's ``metrics_address``): a security agent must not open a port to the
network unless the operator asks for it. ``/healthz`` answers 200 ``ok`` while the health
callback says so, else 503 with the reason (for a DaemonSet liveness/readiness probe).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sentinel.metrics.registry import Metrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Health = Callable[[], tuple[bool, str]]


def _always_ok() -> tuple[bool, str]:
    return True, "ok"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            try:
                body = self.server.metrics.render().encode()
                self._send(200, body, CONTENT_TYPE)
            except Exception as exc:  # report, do not kill the server thread
                self._send(500, f"error: {exc!r}\n".encode(), "text/plain")
        elif path in ("/healthz", "/health"):
            try:
                ok, why = self.server.health()
            except Exception as exc:
                ok, why = False, f"health check raised {exc!r}"
            self._send(200 if ok else 503, (why + "\n").encode(), "text/plain")
        else:
            self._send(404, b"not found: try /metrics or /healthz\n", "text/plain")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], metrics: Metrics, health: Health) -> None:
        if ":" in addr[0]:
            import socket

            self.address_family = socket.AF_INET6
        super().__init__(addr, _Handler)
        self.metrics = metrics
        self.health = health


class MetricsServer:
    """Serve ``metrics`` on ``host:port`` (port 0: pick a free one, see :attr:`port`)."""

    def __init__(
        self,
        metrics: Metrics,
        host: str = "127.0.0.1",
        port: int = 9376,
        health: Health = _always_ok,
    ) -> None:
        self._httpd = _Server((host, port), metrics, health)
        self.host = host
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="metrics-http", daemon=True
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
