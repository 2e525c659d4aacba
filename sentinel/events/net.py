"""The network family: socket calls (connect, accept, accept4, bind, listen, socket, sendto,
recvfrom, sendmsg, recvmsg).

One record and one BPF handler (``emit_sock`` in bpf/sensor/net.h): what the kernel's socket
behind the descriptor says at the call's exit (family, type, protocol, local and remote
address and port, state), the address the caller passed (or, for recvfrom/recvmsg, the
sender's, as the kernel wrote it), and up to three numbers (backlog, flags, size, socket()'s
domain/type/protocol).

Falco's endpoint fields name a *client* and a *server*: for connect, sends and receives the
process is the client and the remote end the server; for accept, bind and listen the process
is the server. ``fd.ip``, ``fd.net`` and ``fd.port`` hold both ends: a check on them holds when
it holds for either (for ``!=``: for neither), as libsinsp does. An unconnected socket has no
remote end in the kernel; its server is then the address passed (sendto's destination,
recvfrom's sender).
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
LAYOUT = schema.Layout(
    "sock_ev",
    "s64 res, s32 fd, u32 addrlen, u16 sock_type, u16 protocol, u16 sk_family, u16 lport,"
    "u16 rport, u16 state, u32 v0, u32 v1, u32 v2, u32 how, u32 pad, char laddr[16],"
    f"char raddr[16], char addr[{SOCKADDR_SIZE}]",
    base=HDR,
)
_I = LAYOUT.index
# emit_sock's ``how`` bits (bpf/sensor/net.h)
FD_IS_RESULT, SERVER_LOCAL, ADDR_IN = 1, 2, 4

L4 = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW = 1, 2, 3
TCP_ESTABLISHED = 1
FAMILIES: dict[int, str] = {
    int(socket.AF_INET): "ipv4",
    int(socket.AF_INET6): "ipv6",
    int(socket.AF_UNIX): "unix",
}


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
        return SockAddr("ipv6", _ip6(raw[8:24]), port, None)
    if family == socket.AF_UNIX:
        body = raw[2:]
        if body[:1] == b"\0":  # abstract socket: Falco shows a leading '@'
            path = "@" + body[1:].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        else:
            path = body.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        return SockAddr("unix", None, None, path)
    return SockAddr("other", None, None, None)


def _ip6(raw: bytes) -> str:
    a = ipaddress.IPv6Address(raw)
    return str(a.ipv4_mapped) if a.ipv4_mapped else str(a)


# ---- decoding ----------------------------------------------------------------------------------


def _memo(rec: Record, key: str, fn: Any) -> Any:
    d = rec.__dict__
    if key not in d:
        d[key] = fn()
    return d[key]


def _m(rec: Record, name: str) -> Any:
    """A member of the record's own layout (these functions serve the fd family's records
    too, which have the same socket members)."""
    return rec.fixed[rec.layout.index[name]]


def passed(rec: Record) -> SockAddr:
    """The address the caller passed (or the sender's, for recvfrom/recvmsg)."""
    if "addrlen" not in rec.layout.index:
        return SockAddr("other", None, None, None)
    n = min(int(_m(rec, "addrlen")), SOCKADDR_SIZE)
    got: SockAddr = _memo(rec, "passed", lambda: parse_sockaddr(rec.buf("addr", n)))
    return got


def family(rec: Record) -> str:
    """The socket's family from the kernel; without a socket, the passed address's."""
    fam = FAMILIES.get(int(_m(rec, "sk_family")))
    return fam if fam is not None else passed(rec).family


def _kernel_ip(rec: Record, name: str) -> str | None:
    raw = _m(rec, name)
    fam = int(_m(rec, "sk_family"))
    if fam == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if fam == socket.AF_INET6:
        return _ip6(raw)
    return None


def ends(rec: Record) -> tuple[tuple[str | None, int | None], tuple[str | None, int | None]]:
    """((local ip, port), (remote ip, port)): the kernel's, the remote one from the passed
    address when the socket has no peer (an unconnected sendto, a failed connect)."""

    def compute() -> Any:
        if family(rec) not in ("ipv4", "ipv6"):
            return (None, None), (None, None)
        local: tuple[str | None, int | None] = (_kernel_ip(rec, "laddr"), int(_m(rec, "lport")))
        remote: tuple[str | None, int | None] = (_kernel_ip(rec, "raddr"), int(_m(rec, "rport")))
        if not remote[1]:
            pa = passed(rec)
            same = pa.family == family(rec)
            remote = (pa.ip, pa.port) if pa.ip is not None and same else (None, None)
        if local[0] is None:
            local = (None, None)
        return local, remote

    got: tuple[tuple[str | None, int | None], tuple[str | None, int | None]]
    got = _memo(rec, "ends", compute)
    return got


def is_server(rec: Record) -> bool:
    return "how" in rec.layout.index and bool(int(_m(rec, "how")) & SERVER_LOCAL)


def client_server(
    rec: Record,
) -> tuple[tuple[str | None, int | None], tuple[str | None, int | None]]:
    """((client ip, port), (server ip, port)) by Falco's roles."""
    local, remote = ends(rec)
    return (remote, local) if is_server(rec) else (local, remote)


def connected(rec: Record) -> bool:
    return int(_m(rec, "state")) == TCP_ESTABLISHED


def tuple_text(rec: Record) -> str | None:
    """fd.name of a socket: "cip:cport->sip:sport" ([...] around IPv6), or a unix path."""
    fam = family(rec)
    if fam == "unix":
        return passed(rec).path
    (cip, cport), (sip, sport) = client_server(rec)
    if sip is None and cip is None:
        return None
    v6 = fam == "ipv6" and ":" in str(sip or cip)
    if sip is None or cip is None:
        # One end only: a listening or bound socket (libsinsp names it by its bound address,
        # "ip:port"), or a fresh socket with no address yet (libsinsp: the empty name).
        ip, port = (sip, sport) if sip is not None else (cip, cport)
        if not port:
            return ""
        return f"[{ip}]:{port}" if v6 else f"{ip}:{port}"
    if v6:
        return f"[{cip}]:{cport}->[{sip}]:{sport}"
    return f"{cip}:{cport}->{sip}:{sport}"


def l4proto(rec: Record) -> str | None:
    if family(rec) not in ("ipv4", "ipv6"):
        return None
    stype, proto = _m(rec, "sock_type"), _m(rec, "protocol")
    if stype == SOCK_RAW:
        return "raw"
    if proto in L4:
        return L4[proto]
    return {SOCK_STREAM: "tcp", SOCK_DGRAM: "udp"}.get(stype, "unknown")


def _fd_kind(rec: Record) -> tuple[str, str]:
    kinds = {"ipv4": ("ipv4", "4"), "ipv6": ("ipv6", "6"), "unix": ("unix", "u")}
    return kinds.get(family(rec), ("unknown", "o"))


def _both(a: Any, b: Any) -> list[Any] | None:
    vals = [v for v in (a, b) if v is not None]
    return vals or None


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


# ---- the table ---------------------------------------------------------------------------------

P = schema.ParamType
DOMAINS = [
    (0, "AF_UNSPEC"), (1, "AF_LOCAL"), (1, "AF_UNIX"), (2, "AF_INET"), (3, "AF_AX25"),
    (4, "AF_IPX"), (5, "AF_APPLETALK"), (6, "AF_NETROM"), (7, "AF_BRIDGE"), (8, "AF_ATMPVC"),
    (9, "AF_X25"), (10, "AF_INET6"), (16, "AF_NETLINK"), (17, "AF_PACKET"), (38, "AF_ALG"),
    (40, "AF_VSOCK"), (44, "AF_XDP"),
]  # fmt: skip


def _res(e: Any) -> int:
    return int(e.rec.fixed[_I["res"]])


def _v(i: int) -> Any:
    return lambda e: int(e.rec.fixed[_I[f"v{i}"]])


def _addr_text(e: Any) -> str | None:
    pa = passed(e.rec)
    if pa.family == "unix":
        return pa.path
    return None if pa.ip is None else f"{pa.ip}:{pa.port}"


RES = schema.Param("res", P.ERRNO, _res)
FD_RES = schema.Param("fd", P.FD, _res)
FD = schema.Param("fd", P.FD, lambda e: int(e.rec.fixed[_I["fd"]]))
TUPLE = schema.Param("tuple", P.SOCKTUPLE, lambda e: tuple_text(e.rec))
ADDR = schema.Param("addr", P.SOCKADDR, _addr_text)
SIZE = schema.Param("size", P.UINT, _v(0))


def call(
    name: str, params: list[schema.Param], args: str, how: int, key: str | None = None
) -> schema.EventType:
    """A socket call: Falco's parameters and the handler's (fd, sockaddr, addrlen, v0, v1, v2)
    over the syscall's registers a0-a5, with ``how`` it reads them (FD_IS_RESULT...).
    ``key``: the parameter (its value is v0, named by a table) the prefilter may judge."""
    sc = schema.Syscall(name, "emit_sock", f"{args}, {how}")
    binds: dict[str, Bind] = {f"evt.arg.{key}": Bind.ARG_ENUM} if key else {}
    if how & SERVER_LOCAL:
        binds.update(LOCAL_BINDS)
    elif name == "connect":
        binds.update(REMOTE_BINDS)
    deny = "connect" if name == "connect" else None  # the LSM's socket_connect hook
    return schema.EventType(name, schema.Category.NET, params, syscall=sc, binds=binds, deny=deny)


# The server end the kernel judges: the local one for accept/bind/listen, the remote one (the
# address passed when the kernel has none) for connect. Fields name it as the server's and as
# the local or remote end's, depending on the call.
def _binds(ports: tuple[str, ...], addrs: tuple[str, ...]) -> dict[str, Bind]:
    return {**dict.fromkeys(ports, Bind.PORT), **dict.fromkeys(addrs, Bind.ADDR)}


SERVER_BINDS = _binds(("fd.sport",), ("fd.sip", "fd.snet"))
REMOTE_BINDS = {**SERVER_BINDS, **_binds(("fd.rport", "fd.dport"), ("fd.rip", "fd.dip", "fd.rnet"))}
LOCAL_BINDS = {**SERVER_BINDS, **_binds(("fd.lport",), ("fd.lip", "fd.lnet"))}
MSG_NAME = "user_u64(a1, 0)"  # struct msghdr: msg_name at 0, msg_namelen at 8
QUEUE = [schema.Param(n, P.UINT, lambda e: None) for n in ("queuepct", "queuelen", "queuemax")]
ACCEPT4_FLAGS = schema.Param("flags", P.INT, _v(0))
SOCKET = [FD_RES, schema.Param("domain", P.ENUM, _v(0), names=DOMAINS)]
SOCKET += [schema.Param("type", P.UINT, _v(1)), schema.Param("proto", P.UINT, _v(2))]
ACCEPTED = FD_IS_RESULT | SERVER_LOCAL
LISTEN = [RES, FD, schema.Param("backlog", P.INT, _v(0))]
EVENT_TYPES = [
    call("connect", [RES, TUPLE, FD, ADDR], "a0, a1, a2, 0, 0, 0", ADDR_IN),
    call("accept", [FD_RES, TUPLE, *QUEUE], "a0, 0, 0, 0, 0, 0", ACCEPTED),
    call("accept4", [FD_RES, TUPLE, *QUEUE, ACCEPT4_FLAGS], "a0, 0, 0, a3, 0, 0", ACCEPTED),
    call("bind", [RES, ADDR, FD], "a0, a1, a2, 0, 0, 0", SERVER_LOCAL | ADDR_IN),
    call("listen", LISTEN, "a0, 0, 0, a1, 0, 0", SERVER_LOCAL),
    call("socket", SOCKET, "0, 0, 0, a0, a1, a2", FD_IS_RESULT, key="domain"),
    call("sendto", [RES, FD, SIZE, TUPLE], "a0, a4, a5, a2, a3, 0", ADDR_IN),
    call("recvfrom", [RES, TUPLE, FD, SIZE], "a0, a4, 128, a2, a3, 0", ADDR_IN),
    call("sendmsg", [RES, FD, SIZE, TUPLE], f"a0, {MSG_NAME}, user_u32(a1, 8), 0, a2, 0", ADDR_IN),
    call("recvmsg", [RES, SIZE, TUPLE, FD], f"a0, {MSG_NAME}, 128, 0, a2, 0", ADDR_IN),
]

# ---- fields ------------------------------------------------------------------------------------

FIELDS = schema.Getters()
FIELDS("fd.name")(lambda e: tuple_text(e.rec))
FIELDS("fd.num")(lambda e: int(e.rec.fixed[_I["fd"]]) if _res(e) >= 0 or not _fd_result(e) else -1)
FIELDS("fd.type")(lambda e: _fd_kind(e.rec)[0])
FIELDS("fd.typechar")(lambda e: _fd_kind(e.rec)[1])
FIELDS("fd.l4proto")(lambda e: l4proto(e.rec))
FIELDS("fd.sockfamily")(lambda e: "ip" if (f := family(e.rec)) in ("ipv4", "ipv6") else f)
FIELDS("fd.is_server")(lambda e: is_server(e.rec))
FIELDS("fd.connected")(lambda e: connected(e.rec))
# An unconnected socket given an address: libsinsp's fd.name_changed (the tuple changed).
FIELDS("fd.name_changed")(lambda e: not connected(e.rec) and passed(e.rec).family != "other")


def _fd_result(e: Any) -> bool:
    return bool(int(e.rec.fixed[_I["how"]]) & FD_IS_RESULT)


def _server_ip(e: Any) -> str | None:
    return client_server(e.rec)[1][0]


def _client_ip(e: Any) -> str | None:
    return client_server(e.rec)[0][0]


for _name in ("fd.sip", "fd.snet"):
    FIELDS(_name)(_server_ip)
for _name in ("fd.cip", "fd.cnet"):
    FIELDS(_name)(_client_ip)
FIELDS("fd.sport")(lambda e: client_server(e.rec)[1][1])
FIELDS("fd.cport")(lambda e: client_server(e.rec)[0][1])
for _name in ("fd.lip", "fd.lnet"):
    FIELDS(_name)(lambda e: ends(e.rec)[0][0])
for _name in ("fd.rip", "fd.rnet", "fd.dip"):
    FIELDS(_name)(lambda e: ends(e.rec)[1][0])
FIELDS("fd.lport")(lambda e: ends(e.rec)[0][1])
for _name in ("fd.rport", "fd.dport"):
    FIELDS(_name)(lambda e: ends(e.rec)[1][1])
for _name in ("fd.ip", "fd.net"):
    FIELDS(_name)(lambda e: _both(ends(e.rec)[0][0], ends(e.rec)[1][0]))
FIELDS("fd.port")(lambda e: _both(ends(e.rec)[0][1], ends(e.rec)[1][1]))


def _sockaddr(addr: tuple[str, int] | str) -> tuple[bytes, int]:
    raw = encode_sockaddr(addr)
    return raw, len(raw)


def ip_buffer(ip: str) -> tuple[bytes, int]:
    """An address as a record's laddr/raddr member (the record builder)."""
    return ipaddress.ip_address(ip).packed, 0


# Record builder: ``addr`` ((ip, port) or a unix path), ``laddr``/``raddr`` (the socket's ends).
ENCODE = schema.buffers(
    {"addr": ("addrlen", _sockaddr), "laddr": (None, ip_buffer), "raddr": (None, ip_buffer)},
    sk_family=socket.AF_INET,
)
KERNEL_FIELDS = {
    "proc.name": Bind.COMM,
    "user.uid": Bind.UID,
    "fd.typechar": Bind.TYPECHAR,
    "fd.sockfamily": Bind.SOCKFAMILY,
    "fd.type": Bind.FDTYPE,
    "fd.connected": Bind.CONNECTED,
    "evt.res": Bind.RESULT,
    "evt.rawres": Bind.RESULT,
}
FAMILY = schema.Family(
    "net",
    LAYOUT,
    "net.h",
    EVENT_TYPES,
    FIELDS,
    KERNEL_FIELDS,
    encode=ENCODE,
    truth={
        "*": "kernel: the socket behind the descriptor at the exit (family, type, protocol, "
        "both ends, state); the address the caller passed only where the socket has no peer "
        "(read at the exit)"
    },
)
