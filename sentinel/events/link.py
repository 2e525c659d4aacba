"""The link family: operations on two paths (rename, renameat, renameat2, link, linkat,
symlink, symlinkat).

One record and one BPF handler (``emit_path2`` in bpf/sensor/link.h): the result, both
directory fds, the flags, both paths as passed and, for each relative one, the kernel's walk
of the directory it starts from. User space joins them as the file family does. Falco's
``fs.path.source``/``fs.path.target`` follow libsinsp's choice per call: a rename moves
``oldpath`` (source) to ``newpath`` (target); a link makes ``newpath`` (source) point at
``oldpath`` (target); a symlink makes ``linkpath`` (source) point at ``target`` (a plain
string, never resolved).
"""

from __future__ import annotations

import os
from typing import Any

from sentinel.events import schema
from sentinel.events.common import (
    AT_FDCWD,
    FLAG_BASE1_BAD,
    FLAG_BASE1_TRUNC,
    FLAG_BASE_BAD,
    FLAG_BASE_TRUNC,
    HDR,
    WALK_SIZE,
)
from sentinel.events.dims import Bind
from sentinel.events.file import PATH_SIZE, normalize
from sentinel.events.record import Record, join_walk, walk_buffer

LAYOUT = schema.Layout(
    "link_ev",
    "s64 res, s32 dirfd0, s32 dirfd1, u32 flags, u32 len0, u32 len1, u32 base0_len,"
    f"u32 base1_len, u32 pad, char path0[{PATH_SIZE}], char path1[{PATH_SIZE}],"
    f"char base0[{WALK_SIZE}], char base1[{WALK_SIZE}]",
    base=HDR,
)
_I = LAYOUT.index
_BAD = (FLAG_BASE_BAD | FLAG_BASE_TRUNC, FLAG_BASE1_BAD | FLAG_BASE1_TRUNC)


def raw(rec: Record, i: int) -> str:
    """Path i (0 or 1) as passed."""
    data: bytes = rec.buf(f"path{i}", rec.fixed[_I[f"len{i}"]])
    return data.decode("utf-8", "surrogateescape")


def resolve(e: Any, i: int) -> str:
    """Path i, absolute and normalised: joined to its base (the kernel's walk; /proc, then the
    process's cwd, when the walk is unusable)."""

    def compute() -> str:
        rec = e.rec
        path = raw(rec, i)
        if path.startswith("/"):
            return normalize(path)
        if not rec.flags & _BAD[i]:
            base = join_walk(rec.raw, LAYOUT.offsets[f"base{i}"], rec.fixed[_I[f"base{i}_len"]])
        else:
            dirfd = int(rec.fixed[_I[f"dirfd{i}"]])
            link = f"/proc/{rec.pid}/" + ("cwd" if dirfd == AT_FDCWD else f"fd/{dirfd}")
            try:
                base = os.readlink(link)
            except OSError:
                base = e.proc.cwd or "/"
        return normalize(os.path.join(base, path))

    return str(e.memo(f"link.path{i}", compute))


# ---- the table ---------------------------------------------------------------------------------

P = schema.ParamType
RES = schema.Param("res", P.ERRNO, lambda e: e.rec.fixed[_I["res"]])


def path(i: int, name: str, relative_to_dirfd: bool = False) -> schema.Param:
    kind = P.RELPATH if relative_to_dirfd else P.PATH
    return schema.Param(name, kind, lambda e: raw(e.rec, i), resolve=lambda e: resolve(e, i))


def dirfd(i: int, name: str) -> schema.Param:
    return schema.Param(name, P.FD, lambda e: e.rec.fixed[_I[f"dirfd{i}"]])


FLAGS = schema.Param("flags", P.FLAGS, lambda e: e.rec.fixed[_I["flags"]], names=[
    (1, "RENAME_NOREPLACE"), (2, "RENAME_EXCHANGE"), (4, "RENAME_WHITEOUT"),
])  # fmt: skip
LINKAT_FLAGS = schema.Param("flags", P.FLAGS, lambda e: e.rec.fixed[_I["flags"]], names=[
    (0x400, "AT_SYMLINK_FOLLOW"), (0x1000, "AT_EMPTY_PATH"),
])  # fmt: skip
TARGET = schema.Param("target", P.CHARBUF, lambda e: raw(e.rec, 0))


def op(name: str, params: list[schema.Param], call: str) -> schema.EventType:
    """A two-path operation: Falco's parameters and the handler's (dirfd0, path0, dirfd1,
    path1, flags) over the syscall's registers a0-a3 (AT_FDCWD_VAL: from the cwd; -1: no
    base, a plain string)."""
    sc = schema.Syscall(name, "emit_path2", call)
    return schema.EventType(name, schema.Category.FILE, params, syscall=sc)


CWD = "AT_FDCWD_VAL"
OLD, NEW = path(0, "oldpath"), path(1, "newpath")
OLD_AT, NEW_AT = path(0, "oldpath", True), path(1, "newpath", True)
RENAMEAT = [dirfd(0, "olddirfd"), OLD_AT, dirfd(1, "newdirfd"), NEW_AT]
LINKAT = [dirfd(0, "olddir"), OLD_AT, dirfd(1, "newdir"), NEW_AT, LINKAT_FLAGS]
SYMLINKAT = [TARGET, dirfd(1, "linkdirfd"), path(1, "linkpath", True)]
EVENT_TYPES = [
    op("rename", [RES, OLD, NEW], f"{CWD}, a0, {CWD}, a1, 0"),
    op("renameat", [RES, *RENAMEAT], "a0, a1, a2, a3, 0"),
    op("renameat2", [RES, *RENAMEAT, FLAGS], "a0, a1, a2, a3, a4"),
    op("link", [RES, OLD, NEW], f"{CWD}, a0, {CWD}, a1, 0"),
    op("linkat", [RES, *LINKAT], "a0, a1, a2, a3, a4"),
    op("symlink", [RES, TARGET, path(1, "linkpath")], f"-1, a0, {CWD}, a1, 0"),
    op("symlinkat", [RES, *SYMLINKAT], "-1, a0, a1, a2, 0"),
]

# ---- fields ------------------------------------------------------------------------------------

FIELDS = schema.Getters()
RENAMES = ("rename", "renameat", "renameat2")
LINKS = ("link", "linkat")
SYMLINKS = ("symlink", "symlinkat")
# libsinsp's fs.path checks: rename: source old, target new; link: source new, target old;
# symlink: source linkpath, target the string as given.
FIELDS("fs.path.source", only=RENAMES)(lambda e: resolve(e, 0))
FIELDS("fs.path.target", only=RENAMES)(lambda e: resolve(e, 1))
FIELDS("fs.path.sourceraw", only=RENAMES)(lambda e: raw(e.rec, 0))
FIELDS("fs.path.targetraw", only=RENAMES)(lambda e: raw(e.rec, 1))
FIELDS("fs.path.source", only=(*LINKS, *SYMLINKS))(lambda e: resolve(e, 1))
FIELDS("fs.path.sourceraw", only=(*LINKS, *SYMLINKS))(lambda e: raw(e.rec, 1))
FIELDS("fs.path.target", only=LINKS)(lambda e: resolve(e, 0))
FIELDS("fs.path.targetraw", only=(*LINKS, *SYMLINKS))(lambda e: raw(e.rec, 0))
FIELDS("fs.path.target", only=SYMLINKS)(lambda e: raw(e.rec, 0))

# Record builder: path0/path1 as passed, base0/base1 the walked directories (absolute).
ENCODE = schema.buffers(
    {
        "path0": ("len0", schema.utf8),
        "path1": ("len1", schema.utf8),
        "base0": ("base0_len", walk_buffer),
        "base1": ("base1_len", walk_buffer),
    },
    dirfd0=AT_FDCWD,
    dirfd1=AT_FDCWD,
)
KERNEL_FIELDS = {"proc.name": Bind.COMM, "user.uid": Bind.UID, "evt.res": Bind.RESULT}
FAMILY = schema.Family(
    "link",
    LAYOUT,
    "link.h",
    EVENT_TYPES,
    FIELDS,
    KERNEL_FIELDS,
    encode=ENCODE,
    truth={
        "*": "the caller's two path strings, read at the syscall's exit (io_uring: the "
        "kernel's copies), each joined to the base directory the kernel walked"
    },
)
