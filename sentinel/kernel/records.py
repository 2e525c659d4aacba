"""Decoding of the sensor's ring-buffer records (layouts mirror ``bpf/sensor.bpf.c``).

Why this shape: user space must keep up with hundreds of thousands of events per second in
Python, so a record costs one ``struct.unpack_from`` for its 64-byte header when it arrives;
everything else (strings, argv, addresses) is sliced out of the raw bytes only when a rule or
the capture asks for it (see :class:`Record`'s lazy properties).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from functools import cached_property

EV_EXEC = 1
EV_FORK = 2
EV_EXIT = 3
EV_OPEN = 4
EV_CONNECT = 5

SC_OPEN = 1
SC_OPENAT = 2
SC_OPENAT2 = 3
SC_CREAT = 4
OPEN_SYSCALLS = {SC_OPEN: "open", SC_OPENAT: "openat", SC_OPENAT2: "openat2", SC_CREAT: "creat"}

FLAG_ARGS_TRUNC = 1
FLAG_PATH_TRUNC = 2
FLAG_CWD_TRUNC = 4
FLAG_EXE_TRUNC = 8
FLAG_THREAD = 16
FLAG_BASE_DIRFD = 32
FLAG_BASE_BAD = 64
FLAG_BASE_TRUNC = 128
FLAG_EXECVEAT = 256  # exec: made by execveat(2)

HDR = struct.Struct("<QIIIIIIIIQ16s")  # 64 bytes
EXEC_FIXED = struct.Struct("<IIIIIIIi")  # after the header
FNAME_SIZE = 256
ARGS_SIZE = 1024
WALK_SIZE = 768
EXE_END = 512  # the executable's path ends here in the exec record's exe field (right-aligned)
EXEC_FILENAME = HDR.size + EXEC_FIXED.size
EXEC_ARGS = EXEC_FILENAME + FNAME_SIZE
EXEC_EXE = EXEC_ARGS + ARGS_SIZE
EXEC_CWD = EXEC_EXE + WALK_SIZE
FORK_FIXED = struct.Struct("<II")
EXIT_FIXED = struct.Struct("<ii")
OPEN_FIXED = struct.Struct("<qIIiIII")  # ret oflags mode dirfd syscall path_len base_len
OPEN_PATH = HDR.size + OPEN_FIXED.size
PATH_SIZE = 256
OPEN_BASE = OPEN_PATH + PATH_SIZE
CONNECT_FIXED = struct.Struct("<qiIHHHH16s")
CONNECT_ADDR = HDR.size + CONNECT_FIXED.size
SOCKADDR_SIZE = 112


def _cstr(raw: bytes, start: int, size: int) -> str:
    end = raw.find(b"\0", start, start + size)
    if end < 0:
        end = start + size
    return raw[start:end].decode("utf-8", "surrogateescape")


def join_walk(raw: bytes, start: int, length: int) -> str:
    """A dentry walk (components leaf-first, NUL-terminated) as an absolute path."""
    if length <= 0:
        return "/"
    parts = raw[start : start + length].split(b"\0")
    names = [p.decode("utf-8", "surrogateescape") for p in reversed(parts) if p]
    return "/" + "/".join(names)


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


class Record:
    """One decoded record: header fields eagerly, the payload lazily."""

    __slots__ = (
        "__dict__",
        "cgroup_id",
        "comm",
        "flags",
        "gid",
        "loginuid",
        "pid",
        "ppid",
        "raw",
        "tid",
        "ts",
        "type",
        "uid",
    )

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        (
            self.ts,
            self.type,
            self.pid,
            self.tid,
            self.ppid,
            self.uid,
            self.gid,
            self.loginuid,
            self.flags,
            self.cgroup_id,
            comm,
        ) = HDR.unpack_from(raw)
        self.comm: str = comm.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")

    # -- exec -------------------------------------------------------------------------------

    @cached_property
    def exec_fixed(self) -> tuple[int, ...]:
        """(tty, sid, pgid, args_len, exe_len, cwd_len, old_pid, res)."""
        return EXEC_FIXED.unpack_from(self.raw, HDR.size)

    @property
    def exec_res(self) -> int:
        """0 for an exec that happened, -errno for a failed execve/execveat."""
        return int(self.exec_fixed[7])

    @cached_property
    def filename(self) -> str:
        return _cstr(self.raw, EXEC_FILENAME, FNAME_SIZE)

    @cached_property
    def argv(self) -> list[str]:
        n = self.exec_fixed[3]
        block = self.raw[EXEC_ARGS : EXEC_ARGS + n]
        if block.endswith(b"\0"):
            block = block[:-1]
        if not block:
            return []
        return [a.decode("utf-8", "surrogateescape") for a in block.split(b"\0")]

    @cached_property
    def exepath(self) -> str:
        """The executable (symlinks resolved); None-like '' when the walk was cut short.

        The kernel built it forward, right-aligned to ``EXE_END``, and its prefilter judged
        exactly these bytes (``proc.exepath`` as a kernel dimension relies on that)."""
        n = self.exec_fixed[4]
        if self.flags & FLAG_EXE_TRUNC:
            return ""
        if not n:
            return self.filename
        start = EXEC_EXE + EXE_END - min(n, EXE_END)
        return self.raw[start : EXEC_EXE + EXE_END].decode("utf-8", "surrogateescape")

    @cached_property
    def cwd(self) -> str:
        """The cwd at exec; '' when the walk was cut short (deeper than the BPF walk)."""
        if self.flags & FLAG_CWD_TRUNC:
            return ""
        return join_walk(self.raw, EXEC_CWD, self.exec_fixed[5])

    # -- fork / exit ------------------------------------------------------------------------

    @cached_property
    def child(self) -> tuple[int, int]:
        """(child pid, child tid) of a fork record."""
        pid, tid = FORK_FIXED.unpack_from(self.raw, HDR.size)
        return pid, tid

    @cached_property
    def exit_code(self) -> int:
        code: int = EXIT_FIXED.unpack_from(self.raw, HDR.size)[0]
        return code

    # -- open -------------------------------------------------------------------------------

    @cached_property
    def open_fixed(self) -> tuple[int, ...]:
        """(ret, oflags, mode, dirfd, syscall, path_len, base_len)."""
        return OPEN_FIXED.unpack_from(self.raw, HDR.size)

    @cached_property
    def open_path(self) -> str:
        """The path argument as passed (possibly relative)."""
        n = self.open_fixed[5]
        return self.raw[OPEN_PATH : OPEN_PATH + n].decode("utf-8", "surrogateescape")

    @cached_property
    def open_base(self) -> str | None:
        """The directory a relative path starts from (cwd or dirfd), or None."""
        n = self.open_fixed[6]
        if self.open_path.startswith("/"):
            return None
        if self.flags & (FLAG_BASE_BAD | FLAG_BASE_TRUNC):
            return None
        return join_walk(self.raw, OPEN_BASE, n)

    # -- connect ----------------------------------------------------------------------------

    @cached_property
    def connect_fixed(self) -> tuple[int, int, int, int, int, int, int, bytes]:
        """(ret, fd, addrlen, sock_type, protocol, lport, pad, laddr)."""
        v = CONNECT_FIXED.unpack_from(self.raw, HDR.size)
        return (v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7])

    @cached_property
    def sockaddr(self) -> SockAddr:
        n = min(self.connect_fixed[2], SOCKADDR_SIZE)
        return parse_sockaddr(self.raw[CONNECT_ADDR : CONNECT_ADDR + n])
