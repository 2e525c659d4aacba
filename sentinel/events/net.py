"""The network family: connect.

The record carries the address the caller passed (as passed: the kernel has already copied it
when the syscall returns; see the kernel-truth limits in the README), and what the kernel
knows of the socket behind the descriptor after the call: its type, protocol and the local
address and port the connect bound. User space builds the connection tuple and Falco's
``fd.*`` endpoint fields from them. ``fd.ip``, ``fd.net`` and ``fd.port`` hold both endpoints:
a check on them holds when it holds for either (for ``!=``: for neither), as libsinsp does.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Any

from sentinel.events import schema
from sentinel.events.common import HDR
from sentinel.events.dims import Bind
from sentinel.events.record import Record

SOCKADDR_SIZE = 112
# laddr: the local address after the call (4 or 16 bytes); addr: the sockaddr as passed.
LAYOUT = schema.Layout(
    "connect_ev",
    "s64 res, s32 fd, u32 addrlen, u16 sock_type, u16 protocol, u16 lport, u16 pad,"
    f"char laddr[16], char addr[{SOCKADDR_SIZE}]",
    base=HDR,
)
_RES, _FD, _ADDRLEN, _STYPE, _PROTO, _LPORT, _LADDR = (
    LAYOUT.index[n] for n in ("res", "fd", "addrlen", "sock_type", "protocol", "lport", "laddr")
)

L4 = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW = 1, 2, 3


@dataclass(frozen=True, slots=True)
class SockAddr:
    family: str  # "ipv4" | "ipv6" | "unix" | "other"
    ip: str | None
    port: int | None
    path: str | None


def parse_sockaddr(raw: bytes) -> SockAddr:
    if len(raw) < 2:
        return SockAddr("other", None, None, None)
    family = int.from_bytes(raw[0:2], "little")
    if family == socket.AF_INET and len(raw) >= 8:
        port = int.from_bytes(raw[2:4], "big")
        return SockAddr("ipv4", socket.inet_ntop(socket.AF_INET, raw[4:8]), port, None)
    if family == socket.AF_INET6 and len(raw) >= 24:
        port = int.from_bytes(raw[2:4], "big")
        addr = ipaddress.IPv6Address(raw[8:24])
        ip = str(addr.ipv4_mapped) if addr.ipv4_mapped else str(addr)
        return SockAddr("ipv6", ip, port, None)
    if family == socket.AF_UNIX:
        body = raw[2:]
        if body[:1] == b"\0":  # abstract socket: Falco shows a leading '@'
            path = "@" + body[1:].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        else:
            path = body.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        return SockAddr("unix", None, None, path)
    return SockAddr("other", None, None, None)


# ---- decoding ----------------------------------------------------------------------------------


def peer(rec: Record) -> SockAddr:
    """The peer address the caller passed (decoded once per record)."""
    got = rec.__dict__.get("peer")
    if got is None:
        got = parse_sockaddr(rec.buf("addr", min(rec.fixed[_ADDRLEN], SOCKADDR_SIZE)))
        rec.__dict__["peer"] = got
    return got


def sockaddr(e: Any) -> SockAddr:
    return peer(e.rec)


def _is_ip(e: Any) -> bool:
    return sockaddr(e).ip is not None


def local_ip(e: Any) -> str | None:
    if not _is_ip(e):
        return None
    laddr = e.rec.fixed[_LADDR]
    if sockaddr(e).family == "ipv6":
        a = ipaddress.IPv6Address(laddr)
        return str(a.ipv4_mapped) if a.ipv4_mapped else str(a)
    return socket.inet_ntop(socket.AF_INET, laddr[:4])


def remote_ip(e: Any) -> str | None:
    return sockaddr(e).ip


def remote_port(e: Any) -> int | None:
    return sockaddr(e).port if _is_ip(e) else None


def local_port(e: Any) -> int | None:
    return int(e.rec.fixed[_LPORT]) if _is_ip(e) else None


def tuple_text(e: Any) -> str | None:
    """fd.name of a socket: "lip:lport->rip:rport" ([...] around IPv6), or a unix path."""
    sa = sockaddr(e)
    if sa.family == "unix":
        return sa.path
    if sa.ip is None:
        return None
    lip, lport = local_ip(e), local_port(e)
    if sa.family == "ipv6" and ":" in sa.ip:
        return f"[{lip}]:{lport}->[{sa.ip}]:{sa.port}"
    return f"{lip}:{lport}->{sa.ip}:{sa.port}"


def l4proto(e: Any) -> str | None:
    if sockaddr(e).family not in ("ipv4", "ipv6"):
        return None
    stype, proto = e.rec.fixed[_STYPE], e.rec.fixed[_PROTO]
    if stype == SOCK_RAW:
        return "raw"
    if proto in L4:
        return L4[proto]
    return {SOCK_STREAM: "tcp", SOCK_DGRAM: "udp"}.get(stype, "unknown")


def _fd_kind(e: Any) -> tuple[str, str]:
    kinds = {"ipv4": ("ipv4", "4"), "ipv6": ("ipv6", "6"), "unix": ("unix", "u")}
    return kinds.get(sockaddr(e).family, ("unknown", "o"))


def _addr_text(e: Any) -> str:
    sa = sockaddr(e)
    return str(sa.path) if sa.family == "unix" else f"{sa.ip}:{sa.port}"


def _both(a: Any, b: Any) -> list[Any] | None:
    vals = [v for v in (a, b) if v is not None]
    return vals or None


# ---- the table ---------------------------------------------------------------------------------

P = schema.ParamType
CONNECT = [
    schema.Param("res", P.ERRNO, lambda e: e.rec.fixed[_RES]),
    schema.Param("tuple", P.SOCKTUPLE, tuple_text),
    schema.Param("fd", P.FD, lambda e: e.rec.fixed[_FD]),
    schema.Param("addr", P.SOCKADDR, _addr_text),
]
EVENT_TYPES = [
    schema.EventType(
        "connect",
        schema.Category.NET,
        CONNECT,
        # the handler's (fd, sockaddr pointer, addrlen)
        syscall=schema.Syscall("connect", "emit_connect", "a0, a1, a2"),
        deny="connect",
    ),
]

# ---- fields ------------------------------------------------------------------------------------

FIELDS = schema.Getters()
FIELDS("fd.name")(tuple_text)
FIELDS("fd.num")(lambda e: int(e.rec.fixed[_FD]))
FIELDS("fd.type")(lambda e: _fd_kind(e)[0])
FIELDS("fd.typechar")(lambda e: _fd_kind(e)[1])
FIELDS("fd.l4proto")(l4proto)
FIELDS("fd.sockfamily")(lambda e: "ip" if (f := sockaddr(e).family) in ("ipv4", "ipv6") else f)
FIELDS("fd.is_server")(lambda e: False)
FIELDS("fd.connected")(lambda e: e.rec.fixed[_RES] == 0)
# A connect's process is the client: the remote end is the server.
for _name in ("fd.sip", "fd.rip", "fd.dip", "fd.snet", "fd.rnet"):
    FIELDS(_name)(remote_ip)
for _name in ("fd.cip", "fd.lip", "fd.cnet", "fd.lnet"):
    FIELDS(_name)(local_ip)
for _name in ("fd.sport", "fd.rport", "fd.dport"):
    FIELDS(_name)(remote_port)
for _name in ("fd.cport", "fd.lport"):
    FIELDS(_name)(local_port)
for _name in ("fd.ip", "fd.net"):
    FIELDS(_name)(lambda e: _both(local_ip(e), remote_ip(e)))
FIELDS("fd.port")(lambda e: _both(local_port(e), remote_port(e)))


def encode_sockaddr(addr: tuple[str, int] | str) -> bytes:
    """A sockaddr as a caller passes it: (ip, port) for IPv4/IPv6, a path for AF_UNIX."""
    if isinstance(addr, str):
        return struct.pack("<H", socket.AF_UNIX) + addr.encode() + b"\0"
    ip, port = addr
    a = ipaddress.ip_address(ip)
    if a.version == 4:
        return struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + a.packed + bytes(8)
    head = struct.pack("<H", socket.AF_INET6) + struct.pack(">H", port) + bytes(4)
    return head + a.packed + bytes(4)


def _sockaddr(addr: tuple[str, int] | str) -> tuple[bytes, int]:
    raw = encode_sockaddr(addr)
    return raw, len(raw)


def _ip(ip: str) -> tuple[bytes, int]:
    return ipaddress.ip_address(ip).packed, 0


# Record builder: ``addr`` ((ip, port) or a unix path), ``laddr`` (the local ip).
ENCODE = schema.buffers({"addr": ("addrlen", _sockaddr), "laddr": (None, _ip)})
KERNEL_FIELDS = {
    "proc.name": Bind.COMM,
    "user.uid": Bind.UID,
    "fd.sport": Bind.PORT,
    "fd.rport": Bind.PORT,
    "fd.dport": Bind.PORT,
    "fd.sip": Bind.ADDR,
    "fd.rip": Bind.ADDR,
    "fd.dip": Bind.ADDR,
    "fd.snet": Bind.ADDR,
    "fd.rnet": Bind.ADDR,
    "fd.typechar": Bind.TYPECHAR,
    "fd.sockfamily": Bind.SOCKFAMILY,
    "fd.type": Bind.FDTYPE,
    "evt.res": Bind.RESULT,
    "evt.rawres": Bind.RESULT,
}
FAMILY = schema.Family(
    "connect", LAYOUT, "net.h", EVENT_TYPES, FIELDS, KERNEL_FIELDS, encode=ENCODE
)
