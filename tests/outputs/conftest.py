"""Real receivers for the output tests: rsyslog (Debian's) and an HTTP server on loopback.

rsyslog runs as a private instance (own config, pid file and work dir under a tmp dir, on free
unprivileged ports); the system rsyslog is never touched. Certificates (CA, server cert for
localhost/127.0.0.1, client cert) are generated with openssl for each test session.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sentinel.alerts import Alert


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def make_alert(i: int = 0, **over: Any) -> Alert:
    """An alert whose fields carry non-ASCII text, newlines, quotes and syslog SD specials."""
    fields: dict[str, Any] = {
        "evt.type": "execve",
        "proc.name": "bash",
        "proc.cmdline": f'bash -c "echo {i}"\nsecond line ü 日本 ]\\',
        "proc.pid": 1000 + i,
        "container.id": None,
    }
    kwargs: dict[str, Any] = {
        "rule": f'Any exec "{i}" ]',
        "priority": "Warning",
        "output": f"exec bash (n={i}) é\nnext",
        "output_fields": fields,
        "tags": ["process", "mitre_execution"],
        "hostname": "host-1",
    }
    kwargs.update(over)
    return Alert(**kwargs)


# -- certificates ------------------------------------------------------------------------------


@dataclass
class Certs:
    dir: Path

    def __getattr__(self, name: str) -> Path:
        return self.dir / name.replace("_", ".")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(d: Path, cn: str = "localhost") -> Certs:
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.pem", "-days", "2", "-subj", "/CN=Sentinel Test CA", cwd=d)  # fmt: skip
    (d / "server.ext").write_text(
        f"subjectAltName=DNS:{cn},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    )
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for who, subj in (("server", f"/CN={cn}"), ("client", "/CN=sentinel-client")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{who}.key", "-out",
                 f"{who}.csr", "-subj", subj, cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{who}.pem", "-days", "2", "-extfile",
                 f"{who}.ext", cwd=d)  # fmt: skip
    return Certs(d)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A second, unrelated CA (for "wrong CA" tests)."""
    return make_certs(tmp_path_factory.mktemp("other-certs"))


# -- rsyslog -----------------------------------------------------------------------------------

RSYSLOG_TEMPLATE = (
    "%pri%|%timereported:::date-rfc3339%|%hostname%|%app-name%|%procid%|%msgid%|"
    "%structured-data%~MSG~%msg%\\n"
)


class Rsyslog:
    """A private rsyslogd: imptcp (plain TCP, octet counting), imtcp+gtls (TLS, client certs
    required) and imudp, all writing one line per message to ``out``."""

    def __init__(self, workdir: Path, certs: Certs) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.out = self.dir / "received.log"
        self.pidfile = self.dir / "rsyslogd.pid"
        self.conf = self.dir / "rsyslog.conf"
        self.tcp_port = free_port()
        self.tls_port = free_port()
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf.write_text(
            f"""
global(workDirectory="{self.dir}" maxMessageSize="256k"
       defaultNetstreamDriverCAFile="{certs.ca_pem}"
       defaultNetstreamDriverCertFile="{certs.server_pem}"
       defaultNetstreamDriverKeyFile="{certs.server_key}")
module(load="imptcp")
module(load="imudp")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1"
       streamDriver.authMode="x509/certvalid")
template(name="line" type="string" string="{RSYSLOG_TEMPLATE}")
ruleset(name="in") {{
  action(type="omfile" file="{self.out}" template="line" flushOnTXEnd="on")
}}
input(type="imptcp" address="127.0.0.1" port="{self.tcp_port}" ruleset="in"
      supportOctetCountedFraming="on")
input(type="imtcp" address="127.0.0.1" port="{self.tls_port}" ruleset="in")
input(type="imudp" address="127.0.0.1" port="{self.udp_port}" ruleset="in")
"""
        )

    def start(self) -> None:
        assert self.proc is None
        self.pidfile.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            ["rsyslogd", "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
            stdout=open(self.dir / "rsyslogd.stdout", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: self._listening(self.tcp_port) and self._listening(self.tls_port),
                   10, "rsyslogd to listen")  # fmt: skip

    def _listening(self, port: int) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = (self.dir / "rsyslogd.stdout").read_text()
            raise RuntimeError(f"rsyslogd exited {self.proc.returncode}: {log}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def lines(self) -> list[str]:
        if not self.out.exists():
            return []
        return self.out.read_text(encoding="utf-8").splitlines()

    def messages(self) -> list[dict[str, Any]]:
        """Received messages: template fields and the JSON body (BOM stripped)."""
        out = []
        for line in self.lines():
            pri, ts, host, app, procid, msgid, rest = line.split("|", 6)
            sd, _, msg = rest.partition("~MSG~")
            out.append(
                {
                    "pri": int(pri),
                    "timestamp": ts,
                    "hostname": host,
                    "app": app,
                    "procid": procid,
                    "msgid": msgid,
                    "sd": sd,
                    "raw_msg": msg,
                    "msg": msg.removeprefix("\ufeff"),
                }
            )
        return out


@pytest.fixture
def rsyslog(tmp_path: Path, certs: Certs) -> Iterator[Rsyslog]:
    if shutil.which("rsyslogd") is None:
        pytest.skip("rsyslogd is not installed (scripts/setup.sh installs it)")
    server = Rsyslog(tmp_path / "rsyslog", certs)
    server.start()
    yield server
    server.stop()


# -- HTTP --------------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpReceiver:
    """Records every request; ``respond`` decides the answer (status, body)."""

    requests: list[Request] = field(default_factory=list)
    respond: Callable[[Request], tuple[int, bytes]] = lambda req: (200, b"{}")
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    conns: list[socket.socket] = field(default_factory=list)  # server side of each connection

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def serve_http(
    receiver: HttpReceiver, port: int = 0, tls: ssl.SSLContext | None = None
) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body are written separately: avoid Nagle + delayed-ACK stalls.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            req = Request("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            with receiver.lock:
                if self.connection not in receiver.conns:
                    receiver.conns.append(self.connection)
                receiver.requests.append(req)
                status, reply = receiver.respond(req)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    receiver.port = int(server.server_address[1])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    server = serve_http(receiver)
    yield receiver
    server.shutdown()
    server.server_close()


def bulk_ok(req: Request) -> tuple[int, bytes]:
    """An Elasticsearch-like _bulk answer: 201 for every create."""
    lines = req.body.decode().splitlines()
    items = [
        {"create": {"_id": json.loads(a)["create"]["_id"], "status": 201}} for a in lines[0::2]
    ]
    return 200, json.dumps({"errors": False, "items": items}).encode()


def spool_cfg(tmp_path: Path, **over: Any) -> dict[str, Any]:
    return {"dir": str(tmp_path / "spool"), **over}


FAST_RETRY = {"initial_backoff": 0.05, "max_backoff": 0.3}
