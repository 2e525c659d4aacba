"""Syslog output: RFC 5424 messages over UDP (RFC 5426), TCP (RFC 6587 octet counting) or TLS
(RFC 5425).

Acknowledgement: for TCP/TLS, the write of the whole batch completed (``sendall`` returned) on
a connection that was still open when we started writing. Before each batch the socket is
polled: a receiver that went away has sent FIN/RST, which shows as readable-with-EOF, and we
reconnect instead of writing into a dead connection (the kernel would accept the first write
and lose it). UDP has no acknowledgement at all; ``sendto`` returning is the best there is.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
from datetime import UTC, datetime

from sentinel.alerts import Alert
from sentinel.outputs.base import OK, Outcome, TransientError
from sentinel.outputs.config import SyslogOutput, TlsConfig
from sentinel.outputs.formats import render, syslog_severity

NILVALUE = "-"
BOM = b"\xef\xbb\xbf"
UDP_MAX = 65507


def sd_escape(value: str) -> str:
    """RFC 5424 6.3.3: in a PARAM-VALUE, '"', '\\' and ']' are escaped with a backslash."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _ascii_token(value: str, limit: int) -> str:
    """HOSTNAME/APP-NAME/PROCID/MSGID are PRINTUSASCII (33..126) or '-'."""
    token = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return token or NILVALUE


def timestamp(ns: int) -> str:
    """RFC 5424 TIMESTAMP: at most 6 fractional digits, so microseconds, UTC ``Z``."""
    secs, frac = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(secs, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{frac // 1000:06d}Z"


def format_message(alert: Alert, cfg: SyslogOutput, hostname: str, procid: str) -> bytes:
    """One RFC 5424 SYSLOG-MSG (without transport framing)."""
    pri = cfg.facility_code * 8 + syslog_severity(alert.priority)
    msgid = cfg.msgid or _ascii_token(alert.action, 32)
    params = {
        "id": alert.id,
        "rule": alert.rule,
        "priority": alert.priority,
        "source": alert.source,
        "action": alert.action,
        "tags": ",".join(alert.tags),
    }
    sd = "[" + cfg.sd_id + "".join(f' {k}="{sd_escape(v)}"' for k, v in params.items()) + "]"
    host = _ascii_token(alert.hostname or hostname, 255)
    head = f"<{pri}>1 {timestamp(alert.time_ns)} {host} {_ascii_token(cfg.app_name, 48)} "
    head += f"{procid} {msgid} {sd} "
    body = render(alert, cfg.format, cfg.ocsf_class).encode()
    return head.encode() + (BOM if cfg.bom else b"") + body


def frame(msg: bytes, framing: str) -> bytes:
    if framing == "octet_counting":
        return str(len(msg)).encode() + b" " + msg
    # Non-transparent framing ends a message at LF, so a LF inside it must not survive.
    return msg.replace(b"\n", b" ") + b"\n"


def client_context(tls: TlsConfig) -> ssl.SSLContext:
    """A client context that verifies the server (against ``ca_file``, else the system store)
    and its name. File problems are raised naming the file and the setting."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if tls.ca_file:
            what = f"tls.ca_file {tls.ca_file}"
            ctx.load_verify_locations(cafile=tls.ca_file)
        else:
            what = "the system CA store"
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if tls.cert_file:
            what = f"tls.cert_file {tls.cert_file} / tls.key_file {tls.key_file}"
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load {what}: {exc.strerror or exc}") from exc
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class SyslogSink:
    linger = 0.0
    max_bytes = 1024 * 1024

    def __init__(self, cfg: SyslogOutput) -> None:
        self.cfg = cfg
        self.max_count = cfg.batch_max_count
        self.hostname = socket.gethostname()
        self.procid = str(os.getpid())
        self._sock: socket.socket | None = None
        self._ctx = client_context(cfg.tls) if cfg.transport == "tls" else None

    def _connect(self) -> socket.socket:
        cfg = self.cfg
        addr = (cfg.host, cfg.effective_port)
        if cfg.transport == "udp":
            family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.connect(addr)
            return sock
        raw = socket.create_connection(addr, timeout=cfg.timeout)
        if self._ctx is None:
            return raw
        try:
            return self._ctx.wrap_socket(raw, server_hostname=cfg.tls.server_name or cfg.host)
        except BaseException:
            raw.close()
            raise

    def _alive(self, sock: socket.socket) -> bool:
        """False if the peer closed (EOF/RST). A syslog receiver never sends application data,
        so anything readable is either EOF, an error, or TLS housekeeping (session tickets)."""
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return True
            sock.setblocking(False)
            try:
                data = (
                    sock.recv(1)
                    if isinstance(sock, ssl.SSLSocket)
                    else sock.recv(1, socket.MSG_PEEK)
                )
            except (ssl.SSLWantReadError, BlockingIOError):
                return True
            finally:
                sock.settimeout(self.cfg.timeout)
            return bool(data)
        except (OSError, ValueError):
            return False

    def send(self, alerts: list[Alert]) -> list[Outcome]:
        cfg = self.cfg
        msgs = [format_message(a, cfg, self.hostname, self.procid) for a in alerts]
        if cfg.transport == "udp":
            return self._send_udp(msgs)
        if self._sock is not None and not self._alive(self._sock):
            self._drop()
        try:
            if self._sock is None:
                self._sock = self._connect()
            self._sock.sendall(b"".join(frame(m, cfg.framing) for m in msgs))
        except ssl.SSLCertVerificationError as exc:
            self._drop()
            raise TransientError(f"TLS certificate rejected: {exc.verify_message}") from exc
        except (OSError, ssl.SSLError) as exc:
            self._drop()
            raise TransientError(f"syslog {cfg.transport} {cfg.host}: {exc}") from exc
        return [OK] * len(alerts)

    def _send_udp(self, msgs: list[bytes]) -> list[Outcome]:
        out: list[Outcome] = []
        try:
            if self._sock is None:
                self._sock = self._connect()
            for m in msgs:
                if len(m) > UDP_MAX:
                    out.append(Outcome("dead", f"{len(m)} bytes exceed one UDP datagram"))
                    continue
                self._sock.send(m)
                out.append(OK)
        except OSError as exc:
            self._drop()
            # Those already sent stay sent; the rest are retried.
            out += [Outcome("retry", str(exc))] * (len(msgs) - len(out))
        return out

    def _drop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def close(self) -> None:
        if isinstance(self._sock, ssl.SSLSocket):
            # close_notify, so the receiver logs a clean end rather than a truncation.
            with contextlib.suppress(OSError, ValueError):
                self._sock.settimeout(1.0)
                self._sock.unwrap()
        self._drop()
