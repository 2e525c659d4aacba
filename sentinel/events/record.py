"""One ring-buffer record, decoded through the event table.

Why this shape: user space must keep up with hundreds of thousands of events per second in
Python, so a record costs two ``struct.unpack_from`` when it arrives (its 64-byte header, its
family's scalar members: :attr:`Record.fixed`); the comm strings are decoded on first use,
and paths, argv and walks are sliced out of the raw bytes only when a field asks for them.
"""

from __future__ import annotations

from typing import Any

from sentinel.events.common import HDR
from sentinel.events.schema import EventType, Layout

_HDR_UNPACK = HDR.fixed.unpack_from


class UnknownEvent(ValueError):
    """A record whose event code is not in the table (a sensor built from other sources)."""


def cstr(raw: bytes, start: int, size: int) -> str:
    """A NUL-terminated string in a fixed-size buffer."""
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


def walk(path: str) -> bytes:
    """The inverse of :func:`join_walk`: an absolute path as the sensor's dentry walk writes it
    (components leaf first, each NUL-terminated; the root is an empty walk)."""
    parts = [p for p in path.split("/") if p]
    return b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in reversed(parts))


def walk_buffer(path: str) -> tuple[bytes, int]:
    """A walk as a record buffer and its length (for the record builder)."""
    w = walk(path)
    return w, len(w)


class Record:
    """Header fields eagerly; the family's members and buffers lazily (``__dict__`` caches
    what the family modules' accessors compute)."""

    __slots__ = (
        "__dict__",
        "_comm",
        "_comm_raw",
        "_tcomm",
        "_tcomm_raw",
        "cgroup_id",
        "evt",
        "fixed",
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

    def __init__(self, raw: bytes, by_code: tuple[EventType, ...]) -> None:
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
            self._comm_raw,
            self._tcomm_raw,
        ) = _HDR_UNPACK(raw)
        self._comm: str | None = None
        self._tcomm: str | None = None
        try:
            evt = by_code[self.type]
        except IndexError:
            raise UnknownEvent(f"record with unknown event code {self.type}") from None
        self.evt: EventType = evt
        # The family's scalar members, in layout order (index with ``Layout.index``): unpacked
        # now, in one call, because nearly every record that reaches a rule reads one (a lazy
        # property cost more in its accesses than the unpack it saved).
        fam = evt.family
        assert fam is not None
        layout = fam.layout
        self.fixed: tuple[Any, ...] = layout.fixed.unpack_from(raw, layout.fixed_offset)

    # comm: the process's name at its last exec (proc.name); tcomm: the thread's current name
    # (thread.comm), which prctl(PR_SET_NAME) changes. Decoded on first use: most events that
    # reach user space are judged without them.
    @property
    def comm(self) -> str:
        if self._comm is None:
            self._comm = self._comm_raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        return self._comm

    @property
    def tcomm(self) -> str:
        if self._tcomm is None:
            self._tcomm = self._tcomm_raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        return self._tcomm

    @property
    def layout(self) -> Layout:
        fam = self.evt.family
        assert fam is not None
        return fam.layout

    def buf(self, name: str, length: int) -> bytes:
        """``length`` bytes of the buffer member ``name`` (clipped to the record)."""
        layout = self.layout
        start = layout.offsets[name]
        size = layout.sizes[name]
        return self.raw[start : start + max(0, min(length, size))]
