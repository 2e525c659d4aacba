"""Alerts per second delivered, per output type, against local receivers (one run).

    .venv/bin/python bench/bench_outputs.py [--alerts N]

For each output: start a Dispatcher with a fresh spool, emit N alerts as fast as possible,
and time until the receiver has all N (end to end: the rsyslog output file has N lines, the
HTTP server has N documents, the file has N lines). Also reports the emit() rate (the spool
append, which is all the event path pays) and each rate as a ratio to the file output's,
since absolute numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import structlog

from sentinel.alerts import Alert
from sentinel.outputs import Dispatcher, OutputsConfig


def _port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(cond: Callable[[], bool], timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError("receiver did not get every alert")
        time.sleep(0.005)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _certs(d: Path) -> None:
    def ossl(*a: str) -> None:
        subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)

    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
         "-days", "1", "-subj", "/CN=bench CA")  # fmt: skip
    (d / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
         "-subj", "/CN=localhost")  # fmt: skip
    ossl("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "srv.pem", "-days", "1", "-extfile", "ext")  # fmt: skip


class LineCounter:
    """Counts lines of a growing file incrementally (re-reading it on every poll would make
    the measurement itself quadratic)."""

    def __init__(self, path: Path) -> None:
        self.path, self.off, self.n = path, 0, 0

    def count(self) -> int:
        try:
            with self.path.open("rb") as f:
                f.seek(self.off)
                data = f.read()
        except FileNotFoundError:
            return self.n
        self.off += len(data)
        self.n += data.count(b"\n")
        return self.n


class Rsyslog:
    def __init__(self, d: Path) -> None:
        self.d, self.out = d, d / "rx.log"
        self.lines = LineCounter(self.out)
        self.tcp, self.tls, self.udp = _port(), _port(), _port(socket.SOCK_DGRAM)
        conf = d / "rsyslog.conf"
        conf.write_text(f"""
global(workDirectory="{d}" maxMessageSize="64k" defaultNetstreamDriverCAFile="{d}/ca.pem"
       defaultNetstreamDriverCertFile="{d}/srv.pem" defaultNetstreamDriverKeyFile="{d}/srv.key")
module(load="imptcp")
module(load="imudp")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
template(name="m" type="string" string="%msg%\\n")
ruleset(name="r") {{ action(type="omfile" file="{self.out}" template="m") }}
input(type="imptcp" address="127.0.0.1" port="{self.tcp}" ruleset="r")
input(type="imtcp" address="127.0.0.1" port="{self.tls}" ruleset="r")
input(type="imudp" address="127.0.0.1" port="{self.udp}" ruleset="r")
""")
        self.proc = subprocess.Popen(
            ["rsyslogd", "-n", "-f", str(conf), "-i", str(d / "pid")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in (self.tcp, self.tls):
            _wait(lambda p=port: _listening(p), 10)  # type: ignore[misc]

    def count(self) -> int:
        return self.lines.count()

    def reset(self) -> None:
        self.out.unlink(missing_ok=True)
        self.lines = LineCounter(self.out)
        self.proc.send_signal(signal.SIGHUP)  # reopen the output file

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class HttpSink:
    """A minimal receiver that answers as the target (webhook, HEC, _bulk) would."""

    def __init__(self) -> None:
        self.docs = 0
        self.lock = threading.Lock()
        sink = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # http.server writes headers and body separately: without NODELAY, Nagle and
                # the client's delayed ACK add 40 ms per response (a receiver artefact).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path.endswith("_bulk"):
                    n = body.count(b"\n") // 2
                    reply = json.dumps(
                        {"errors": False, "items": [{"create": {"status": 201}}] * n}
                    ).encode()
                elif "collector" in self.path:
                    n = body.count(b'{"time":')
                    reply = b'{"text":"Success","code":0}'
                else:
                    n = len(json.loads(body))
                    reply = b"{}"
                with sink.lock:
                    sink.docs += n
                self.send_response(200)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _alerts(n: int) -> list[Alert]:
    return [
        Alert(
            rule="Terminal shell in container",
            priority="Notice",
            output=f"A shell was spawned in a container (user=root shell=bash n={i} ü)",
            output_fields={
                "evt.type": "execve",
                "proc.name": "bash",
                "proc.cmdline": f"bash -c 'id; echo {i}'",
                "proc.pid": 1000 + i,
                "container.id": "3f2a1b4c5d6e",
                "user.name": "root",
            },
            tags=["container", "shell", "mitre_execution"],
            hostname="bench",
        )
        for i in range(n)
    ]


def _minus(received: Callable[[], int], base: int) -> Callable[[], int]:
    return lambda: received() - base


def run_one(
    spool: Path, out: dict[str, Any], alerts: list[Alert], received: Callable[[], int] | None
) -> tuple[float, float]:
    """(emit rate, end-to-end delivery rate) in alerts/s. ``received`` None: count what the
    output acknowledged (UDP, where the receiver may lose datagrams)."""
    shutil.rmtree(spool, ignore_errors=True)
    cfg = OutputsConfig.model_validate(
        {"outputs": [out], "spool": {"dir": str(spool), "max_bytes": 1 << 30}}
    )
    d = Dispatcher(cfg)
    d.start()
    t0 = time.perf_counter()
    for a in alerts:
        d.emit(a)
    t1 = time.perf_counter()
    if received is None:
        name = d.names[0]
        _wait(lambda: d.metrics()[name]["sent"] >= len(alerts))
    else:
        _wait(lambda: received() >= len(alerts))
    t2 = time.perf_counter()
    d.close()
    return len(alerts) / (t1 - t0), len(alerts) / (t2 - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alerts", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3, help="median of this many runs per case")
    args = ap.parse_args(argv if argv is not None else [])
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    alerts = _alerts(args.alerts)
    tmp = Path(tempfile.mkdtemp(prefix="bench-outputs-"))
    spool = tmp / "spool"
    _certs(tmp)
    rs = Rsyslog(tmp)
    http = HttpSink()
    results: list[tuple[str, float, float]] = []

    def lines(path: Path) -> Callable[[], int]:
        return LineCounter(path).count

    def http_docs() -> int:
        with http.lock:
            return http.docs

    tls = {"ca_file": str(tmp / "ca.pem"), "server_name": "localhost"}
    cases: list[tuple[str, dict[str, Any], Callable[[], int] | None]] = [
        ("file json (fsync per batch)", {"type": "file", "path": str(tmp / "f1")},
         lines(tmp / "f1")),
        ("file ecs (fsync per batch)", {"type": "file", "path": str(tmp / "f2"), "format": "ecs"},
         lines(tmp / "f2")),
        ("file ocsf (fsync per batch)", {"type": "file", "path": str(tmp / "f3"),
                                          "format": "ocsf"}, lines(tmp / "f3")),
        ("file cef (fsync per batch)", {"type": "file", "path": str(tmp / "f4"), "format": "cef"},
         lines(tmp / "f4")),
        ("stdout json (to /dev/null)", {"type": "stdout"}, None),
        ("syslog udp -> rsyslog", {"type": "syslog", "transport": "udp", "port": rs.udp}, rs.count),
        ("syslog tcp -> rsyslog", {"type": "syslog", "port": rs.tcp}, rs.count),
        ("syslog tls -> rsyslog", {"type": "syslog", "transport": "tls", "port": rs.tls,
                                    "tls": tls}, rs.count),
        ("http webhook", {"type": "http", "url": http.url, "batch": {"max_wait": 0.05}}, http_docs),
        ("http splunk_hec", {"type": "http", "flavor": "splunk_hec", "token": "t", "url": http.url,
                             "batch": {"max_wait": 0.05}}, http_docs),
        ("http elasticsearch _bulk (ecs)", {"type": "http", "flavor": "elasticsearch",
                                            "format": "ecs", "url": http.url,
                                            "batch": {"max_wait": 0.05}}, http_docs),
    ]  # fmt: skip
    try:
        for name, out, received in cases:
            udp = "udp" in name
            emits, rates = [], []
            for _ in range(args.repeat):
                if name.startswith("syslog"):
                    rs.reset()
                base = http_docs() if name.startswith("http") else 0
                if received is not None and not name.startswith(("syslog", "http")):
                    base = received()
                count = None if received is None or udp else _minus(received, base)
                real_stdout = sys.stdout
                if out["type"] == "stdout":
                    sys.stdout = open(os.devnull, "w")  # noqa: SIM115
                try:
                    emit_rate, rate = run_one(spool, out, alerts, count)
                finally:
                    if sys.stdout is not real_stdout:
                        sys.stdout.close()
                        sys.stdout = real_stdout
                emits.append(emit_rate)
                rates.append(rate)
            if udp:
                time.sleep(1.0)
                name += f" (sent; rsyslog got {rs.count() / len(alerts):.0%})"
            results.append((name, statistics.median(emits), statistics.median(rates)))
            print(f"{name}: {results[-1][2]:,.0f} alerts/s", file=sys.stderr, flush=True)
    finally:
        rs.stop()
        http.server.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    ref = results[0][2]
    print(
        f"\nOutputs: {args.alerts} alerts, median of {args.repeat}, end to end to a local "
        "receiver, all in one run\n"
    )
    print("| output | delivered alerts/s | ratio to file json | emit() alerts/s |")
    print("|---|---:|---:|---:|")
    for name, emit_rate, rate in results:
        print(f"| {name} | {rate:,.0f} | {rate / ref:.2f} | {emit_rate:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
