"""The fd family: calls on an open descriptor (dup, dup2, dup3, fchmod).

The record describes the descriptor as the kernel sees it at the call's exit (bpf/sensor/fd.h):
its inode's type and, for a file, its path (a forward dentry walk to the task's root: symlinks
and magic links resolved, never the string some caller once passed), for a socket its ends.
So ``fd.name`` of a dup'ed descriptor is the very file or connection it refers to.
"""

from __future__ import annotations

import stat
from typing import Any

from sentinel.events import net, schema
from sentinel.events.common import FLAG_PATH_TRUNC, FWD_END, HDR
from sentinel.events.dims import Bind
from sentinel.events.record import Record

LAYOUT = schema.Layout(
    "fd_ev",
    "s64 res, s32 fd, u32 v0, u32 v1, u16 i_mode, u16 sock_type, u16 protocol, u16 sk_family,"
    "u16 lport, u16 rport, u16 state, u16 pad, u32 path_len, char laddr[16], char raddr[16],"
    f"char path[{FWD_END}]",
    base=HDR,
)
_I = LAYOUT.index


def file_path(rec: Record) -> str | None:
    """The descriptor's file, as the kernel walked it (None: a socket, or the walk was cut
    short)."""
    n = int(rec.fixed[_I["path_len"]])
    if not n or rec.flags & FLAG_PATH_TRUNC:
        return None
    end = LAYOUT.offsets["path"] + FWD_END
    return rec.raw[end - n : end].decode("utf-8", "surrogateescape")


def kind(rec: Record) -> tuple[str, str]:
    """(fd.type, fd.typechar) from the inode (a socket's from its family)."""
    mode = int(rec.fixed[_I["i_mode"]])
    if stat.S_ISSOCK(mode):
        return {"ipv4": ("ipv4", "4"), "ipv6": ("ipv6", "6"), "unix": ("unix", "u")}.get(
            net.family(rec), ("unknown", "o")
        )
    if stat.S_ISDIR(mode):
        return "directory", "d"
    if stat.S_ISFIFO(mode):
        return "pipe", "p"
    if stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "file", "f"
    return "unknown", "o"


def fd_name(rec: Record) -> str | None:
    if stat.S_ISSOCK(int(rec.fixed[_I["i_mode"]])):
        return net.tuple_text(rec)
    return file_path(rec)


# ---- the table ---------------------------------------------------------------------------------

P = schema.ParamType


def _res(e: Any) -> int:
    return int(e.rec.fixed[_I["res"]])


def _v(i: int) -> Any:
    return lambda e: int(e.rec.fixed[_I[f"v{i}"]])


FD_RES = schema.Param("res", P.FD, _res)
OLDFD = schema.Param("oldfd", P.FD, lambda e: int(e.rec.fixed[_I["fd"]]))
NEWFD = schema.Param("newfd", P.FD, _v(0))
DUP3_FLAGS = schema.Param("flags", P.FLAGS, _v(1), names=[(0o2000000, "O_CLOEXEC")])


def call(name: str, params: list[schema.Param], args: str) -> schema.EventType:
    """A call on a descriptor: the handler's (fd, v0, v1) over the registers a0-a3."""
    sc = schema.Syscall(name, "emit_fd", args)
    return schema.EventType(name, schema.Category.FILE, params, syscall=sc)


FD = schema.Param("fd", P.FD, lambda e: int(e.rec.fixed[_I["fd"]]))
FCHMOD = [schema.Param("res", P.ERRNO, _res), FD, schema.Param("mode", P.MODE, _v(0))]
EVENT_TYPES = [
    call("dup", [FD_RES, OLDFD], "a0, 0, 0"),
    call("dup2", [FD_RES, OLDFD, NEWFD], "a0, a1, 0"),
    call("dup3", [FD_RES, OLDFD, NEWFD, DUP3_FLAGS], "a0, a1, a2"),
    call("fchmod", FCHMOD, "a0, a1, 0"),
]
DUPS = ("dup", "dup2", "dup3")

# ---- fields ------------------------------------------------------------------------------------

FIELDS = schema.Getters()
FIELDS("fd.name")(lambda e: fd_name(e.rec))
FIELDS("fd.type")(lambda e: kind(e.rec)[0])
FIELDS("fd.typechar")(lambda e: kind(e.rec)[1])
# dup*: the new descriptor (the result); fchmod: the one it acts on
FIELDS("fd.num", only=DUPS)(lambda e: r if (r := _res(e)) >= 0 else -1)
FIELDS("fd.num", only=("fchmod",))(lambda e: int(e.rec.fixed[_I["fd"]]))
FIELDS("fs.path.name", only=("fchmod",))(lambda e: file_path(e.rec))
FIELDS("fd.directory")(lambda e: (p := file_path(e.rec)) and (p.rsplit("/", 1)[0] or "/"))
FIELDS("fd.filename")(lambda e: (p := file_path(e.rec)) and p.rsplit("/", 1)[1])


def is_socket(rec: Record) -> bool:
    return stat.S_ISSOCK(int(rec.fixed[_I["i_mode"]]))


def _socket_field(getter: Any) -> Any:
    """A net-family getter on a dup'ed socket (None for any other descriptor). The dup'ed
    socket's ends are the kernel's; its role is the client's, the side a reverse shell's
    connect makes (the record cannot tell that an accepted socket was the server's)."""
    return lambda e: getter(e) if is_socket(e.rec) else None


# The endpoint fields of a dup'ed socket, as the net family computes them from the same members
# (libsinsp copies the old descriptor's socket info to the new one).
SOCKET_FIELDS = (
    "fd.sip", "fd.snet", "fd.cip", "fd.cnet", "fd.sport", "fd.cport", "fd.lip", "fd.lnet",
    "fd.rip", "fd.rnet", "fd.lport", "fd.rport", "fd.ip", "fd.net", "fd.port", "fd.l4proto",
    "fd.sockfamily", "fd.connected",
)  # fmt: skip
for _name in SOCKET_FIELDS:
    FIELDS(_name, only=DUPS)(_socket_field(net.FIELDS.fns[_name]))


def _path_buffer(path: str) -> tuple[bytes, int]:
    raw = path.encode("utf-8", "surrogateescape")
    return b"\0" * (FWD_END - len(raw)) + raw, len(raw)


# Record builder: ``path`` (the file, absolute), ``laddr``/``raddr`` (a socket's ends).
ENCODE = schema.buffers(
    {
        "path": ("path_len", _path_buffer),
        "laddr": (None, net.ip_buffer),
        "raddr": (None, net.ip_buffer),
    }
)
KERNEL_FIELDS = {
    "proc.name": Bind.COMM,
    "user.uid": Bind.UID,
    "evt.res": Bind.RESULT,
    "evt.rawres": Bind.RESULT,
    "fd.type": Bind.FDTYPE,  # from the inode, as fd.h's fd_typechar
    "fd.typechar": Bind.TYPECHAR,
}
FAMILY = schema.Family(
    "fd",
    LAYOUT,
    "fd.h",
    EVENT_TYPES,
    FIELDS,
    KERNEL_FIELDS,
    encode=ENCODE,
    truth={"*": "kernel: the descriptor's file (walked) or socket at the exit"},
)
