"""The file family: operations on one path (open, openat, openat2, creat, unlink, unlinkat).

One record layout and one BPF handler (``emit_path`` in bpf/sensor/file.h) serve them all:
the result, the directory fd, flags and mode, the path argument as passed, and, for a relative
path, the kernel's dentry walk of the directory it starts from (the cwd or the dirfd's file).
User space joins them into the absolute path (``fd.name`` for opens, ``fs.path.name`` for
every file operation), normalised lexically as Falco does; the prefilter composes and judges
the very same string in the kernel (see bpf/prefilter/filter.h).

Adding a one-path file operation (mkdir, rmdir, chmod...) is one :class:`EventType` below:
its tracepoint, the registers its arguments are in, its Falco parameters.
"""

from __future__ import annotations

import os
from typing import Any

from sentinel.events.common import (
    AT_FDCWD,
    FLAG_BASE_BAD,
    FLAG_BASE_TRUNC,
    HDR,
    WALK_SIZE,
)
from sentinel.events.dims import Bind
from sentinel.events.record import Record, join_walk, walk
from sentinel.events.schema import (
    Category,
    EventType,
    Family,
    Getters,
    Layout,
    Member,
    Param,
    ParamType,
    Syscall,
    scalars,
)

PATH_SIZE = 256  # the path argument (with its NUL)

LAYOUT = Layout(
    "file_ev",
    [
        *scalars("s64 res, s32 dirfd, u32 flags, u32 mode, u32 path_len, u32 base_len, u32 pad"),
        Member("path", "char", PATH_SIZE),
        Member("base", "char", WALK_SIZE),
    ],
    base=HDR,
)
_RES, _DIRFD, _FLAGS, _MODE, _PATH_LEN, _BASE_LEN = (
    LAYOUT.index[n] for n in ("res", "dirfd", "flags", "mode", "path_len", "base_len")
)

O_ACCMODE, O_WRONLY, O_RDWR = 0o3, 0o1, 0o2
O_CREAT, O_TRUNC = 0o100, 0o1000
O_DIRECTORY = 0o200000
O_TMPFILE = 0o20000000 | O_DIRECTORY
AT_REMOVEDIR = 0x200
# Rendered after the access mode, in this order (Falco prints flags as "A|B|C").
OPEN_FLAG_NAMES = [
    (0o100, "O_CREAT"),
    (0o200, "O_EXCL"),
    (0o400, "O_NOCTTY"),
    (0o1000, "O_TRUNC"),
    (0o2000, "O_APPEND"),
    (0o4000, "O_NONBLOCK"),
    (0o4010000, "O_SYNC"),
    (0o10000, "O_DSYNC"),
    (0o20000, "O_ASYNC"),
    (0o40000, "O_DIRECT"),
    (0o100000, "O_LARGEFILE"),
    (0o200000, "O_DIRECTORY"),
    (0o400000, "O_NOFOLLOW"),
    (0o1000000, "O_NOATIME"),
    (0o2000000, "O_CLOEXEC"),
    (0o10000000, "O_PATH"),
    (0o20000000, "O_TMPFILE"),
]
UNLINKAT_FLAG_NAMES = [(AT_REMOVEDIR, "AT_REMOVEDIR")]


def open_flags_text(flags: int) -> str:
    """Open flags as Falco prints them: the access mode, then every other flag set."""
    acc = flags & O_ACCMODE
    parts = ["O_RDWR" if acc == O_RDWR else "O_WRONLY" if acc == O_WRONLY else "O_RDONLY"]
    for bit, name in OPEN_FLAG_NAMES:
        if name == "O_SYNC":
            if flags & bit == bit:
                parts.append(name)
            continue
        if name == "O_DSYNC" and flags & 0o4010000 == 0o4010000:
            continue
        if flags & bit:
            parts.append(name)
    return "|".join(parts)


def normalize(path: str) -> str:
    """Lexical normalisation, as Falco does for fd.name ('a/./b/../c' -> 'a/c')."""
    norm = os.path.normpath(path)
    return "/" + norm.lstrip("/") if norm.startswith("//") else norm


# ---- decoding ----------------------------------------------------------------------------------


def raw_path(rec: Record) -> str:
    """The path argument as passed (possibly relative)."""
    raw: bytes = rec.buf("path", rec.fixed[_PATH_LEN])
    return raw.decode("utf-8", "surrogateescape")


def base_dir(rec: Record) -> str | None:
    """The directory a relative path starts from, as the kernel walked it, or None."""
    if raw_path(rec).startswith("/") or rec.flags & (FLAG_BASE_BAD | FLAG_BASE_TRUNC):
        return None
    return join_walk(rec.raw, LAYOUT.offsets["base"], rec.fixed[_BASE_LEN])


def cwd_walk(rec: Record) -> str | None:
    """The cwd, when this record carries the kernel's walk of it (a relative path from
    AT_FDCWD): the freshest cwd user space can know without tracing chdir()."""
    if rec.fixed[_DIRFD] != AT_FDCWD or len(rec.raw) <= LAYOUT.offsets["base"]:
        return None
    return base_dir(rec)


def _resolve(e: Any) -> str:
    path = raw_path(e.rec)
    if path.startswith("/"):
        return normalize(path)
    base = base_dir(e.rec)
    if base is None:
        # No walk (bad dirfd) or deeper than the BPF walk: ask /proc while the process lives.
        dirfd = e.rec.fixed[_DIRFD]
        link = f"/proc/{e.rec.pid}/cwd" if dirfd == AT_FDCWD else f"/proc/{e.rec.pid}/fd/{dirfd}"
        try:
            base = os.readlink(link)
        except OSError:
            base = e.proc.cwd or "/"
    return normalize(os.path.join(base, path))


def path_name(e: Any) -> str:
    """The absolute, normalised path the operation names (``fs.path.name``, an open's
    ``fd.name``)."""
    return str(e.memo("file.path", lambda: _resolve(e)))


def _raw(e: Any) -> str:
    return raw_path(e.rec)


def _res(e: Any) -> int:
    return int(e.rec.fixed[_RES])


def _flags(e: Any) -> int:
    return int(e.rec.fixed[_FLAGS])


def _mode(e: Any) -> int:
    return int(e.rec.fixed[_MODE])


def _dirfd(e: Any) -> int:
    return int(e.rec.fixed[_DIRFD])


# ---- the table ---------------------------------------------------------------------------------

_FD = Param("fd", ParamType.FD, _res)
_RES_P = Param("res", ParamType.ERRNO, _res)
_DIRFD_P = Param("dirfd", ParamType.FD, _dirfd)
_OFLAGS = Param("flags", ParamType.FLAGS, _flags, text=open_flags_text)
_MODE_P = Param("mode", ParamType.MODE, _mode)


def _path_param(name: str, relative_to_dirfd: bool) -> Param:
    kind = ParamType.RELPATH if relative_to_dirfd else ParamType.PATH
    return Param(name, kind, _raw, resolve=path_name)


def _sys(name: str, *call: str) -> Syscall:
    return Syscall(name, "emit_path", call)


# Handler arguments: (dirfd, path, flags, mode), as C over the argument registers a.a0-a.a3.
CWD = "AT_FDCWD_VAL"
EVENT_TYPES = [
    EventType(
        "open",
        Category.FILE,
        [_FD, _path_param("name", False), _OFLAGS, _MODE_P],
        syscall=_sys("open", CWD, "a.a0", "a.a1", "a.a2"),
        deny="file",
    ),
    EventType(
        "openat",
        Category.FILE,
        [_FD, _DIRFD_P, _path_param("name", True), _OFLAGS, _MODE_P],
        syscall=_sys("openat", "a.a0", "a.a1", "a.a2", "a.a3"),
        deny="file",
    ),
    EventType(
        "openat2",
        Category.FILE,
        [_FD, _DIRFD_P, _path_param("name", True), _OFLAGS, _MODE_P],
        # flags and mode are the first two u64 of the struct open_how a2 points to
        syscall=_sys("openat2", "a.a0", "a.a1", "how_u64(a.a2, 0)", "how_u64(a.a2, 8)"),
        deny="file",
    ),
    EventType(
        "creat",
        Category.FILE,
        # Falco's creat has no flags; ours adds them (what creat(2) means), so that write rules
        # on evt.arg.flags cover it as an open
        [_FD, _path_param("name", False), _MODE_P, _OFLAGS],
        # creat(2) is open(O_CREAT | O_WRONLY | O_TRUNC)
        syscall=_sys("creat", CWD, "a.a0", str(O_CREAT | O_WRONLY | O_TRUNC), "a.a1"),
        deny="file",
    ),
    EventType(
        "unlink",
        Category.FILE,
        [_RES_P, _path_param("path", False)],
        syscall=_sys("unlink", CWD, "a.a0", "0", "0"),
    ),
    EventType(
        "unlinkat",
        Category.FILE,
        [
            _RES_P,
            _DIRFD_P,
            _path_param("name", True),
            Param("flags", ParamType.FLAGS, _flags, names=UNLINKAT_FLAG_NAMES),
        ],
        syscall=_sys("unlinkat", "a.a0", "a.a1", "a.a2", "0"),
    ),
]
OPENS = ("open", "openat", "openat2", "creat")

# ---- fields ------------------------------------------------------------------------------------

FIELDS = Getters()
FIELDS("fs.path.name")(path_name)
FIELDS("fs.path.nameraw")(_raw)
FIELDS("fd.name", only=OPENS)(path_name)
FIELDS("fd.nameraw", only=OPENS)(_raw)
FIELDS("fd.directory", only=OPENS)(lambda e: os.path.dirname(path_name(e)) or "/")
FIELDS("fd.filename", only=OPENS)(lambda e: os.path.basename(path_name(e)))
FIELDS("fd.num", only=OPENS)(lambda e: r if (r := _res(e)) >= 0 else -1)
FIELDS("evt.is_open_write", only=OPENS)(lambda e: (_flags(e) & O_ACCMODE) in (O_WRONLY, O_RDWR))
FIELDS("evt.is_open_read", only=OPENS)(lambda e: (_flags(e) & O_ACCMODE) in (0, O_RDWR))
FIELDS("evt.is_open_create", only=OPENS)(lambda e: bool(_flags(e) & O_CREAT))
FIELDS("evt.is_open_exec", only=OPENS)(
    lambda e: bool(_flags(e) & O_CREAT) and bool(_mode(e) & 0o111)
)


def _fd_kind(e: Any) -> tuple[str, str]:
    f = _flags(e)
    if f & O_DIRECTORY and f & O_TMPFILE != O_TMPFILE:
        return "directory", "d"
    return "file", "f"


FIELDS("fd.type", only=OPENS)(lambda e: _fd_kind(e)[0])
FIELDS("fd.typechar", only=OPENS)(lambda e: _fd_kind(e)[1])


def encode(values: dict[str, Any]) -> dict[str, Any]:
    """Builder values: ``path`` (as passed) and ``base`` (the walked directory, absolute)."""
    out = dict(values)
    out.setdefault("dirfd", AT_FDCWD)
    path = out.pop("path", None)
    if path is not None:
        out["path"] = raw = path.encode("utf-8", "surrogateescape")
        out.setdefault("path_len", len(raw))
    base = out.pop("base", None)
    if base is not None:
        out["base"] = w = walk(base)
        out.setdefault("base_len", len(w))
    return out


FAMILY = Family(
    "file",
    LAYOUT,
    source="file.h",
    event_types=EVENT_TYPES,
    getters=FIELDS,
    kernel_fields={
        "proc.name": Bind.COMM,
        "user.uid": Bind.UID,
        "fd.name": Bind.PATH,
        "fs.path.name": Bind.PATH,
        "fd.directory": Bind.PATH_DIR,
        "fd.filename": Bind.PATH_BASE,
        "evt.is_open_write": Bind.OPEN_WRITE,
        "evt.is_open_read": Bind.OPEN_READ,
        "evt.res": Bind.RESULT,
        "evt.rawres": Bind.RESULT,
        "fd.num": Bind.RESULT_FD,
        "fd.nameraw": Bind.RAW_DOTDOT,
    },
    tail_calls=(("open_tail", 0, "open_judge"),),
    encode=encode,
)
