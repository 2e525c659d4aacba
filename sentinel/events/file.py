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

from sentinel.events import schema
from sentinel.events.common import (
    AT_FDCWD,
    FLAG_BASE_AFTER,
    FLAG_BASE_BAD,
    FLAG_BASE_TRUNC,
    FLAG_KPATH,
    HDR,
    WALK_SIZE,
)
from sentinel.events.dims import Bind
from sentinel.events.record import Record, join_walk, walk_buffer

PATH_SIZE = 256  # the path argument (with its NUL)

LAYOUT = schema.Layout(
    "file_ev",
    "s64 res, s32 dirfd, u32 flags, u32 mode, u32 path_len, u32 base_len, u32 pad,"
    f"char path[{PATH_SIZE}], char base[{WALK_SIZE}]",
    base=HDR,
)
_BASE_OFF = LAYOUT.offsets["base"]
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


def kernel_path(rec: Record) -> str | None:
    """A successful open's file as the kernel has it (walked forward from the task's root at
    the call's exit: symlinks and magic links resolved), or None (not an open, or the walk
    was cut short)."""
    if not rec.flags & FLAG_KPATH or rec.flags & FLAG_BASE_TRUNC:
        return None
    n = int(rec.fixed[_BASE_LEN])
    if n == 0:
        return "/"
    raw: bytes = rec.raw[_BASE_OFF : _BASE_OFF + min(n, WALK_SIZE)]  # rec.buf("base", n)
    return raw.decode("utf-8", "surrogateescape")


def base_dir(rec: Record) -> str | None:
    """The directory a relative path starts from, as the kernel walked it, or None."""
    if rec.flags & FLAG_KPATH:
        return None  # the record has the file itself, not the path's base
    if raw_path(rec).startswith("/") or rec.flags & (FLAG_BASE_BAD | FLAG_BASE_TRUNC):
        return None
    if rec.flags & FLAG_BASE_AFTER and rec.fixed[_RES] == 0:
        return None  # the cwd after a successful chdir, not the path's base
    return join_walk(rec.raw, LAYOUT.offsets["base"], rec.fixed[_BASE_LEN])


def cwd_walk(rec: Record) -> str | None:
    """The cwd, when this record carries the kernel's walk of it (a relative path from
    AT_FDCWD, or any chdir/fchdir: the cwd after the call)."""
    # cheapest test first: every successful open carries its file, not a walk (FLAG_KPATH)
    if rec.flags & FLAG_KPATH or rec.fixed[_DIRFD] != AT_FDCWD or len(rec.raw) <= _BASE_OFF:
        return None
    if rec.flags & FLAG_BASE_AFTER:
        if rec.flags & FLAG_BASE_TRUNC:
            return None
        return join_walk(rec.raw, LAYOUT.offsets["base"], rec.fixed[_BASE_LEN])
    return base_dir(rec)


def _resolve(e: Any) -> str:
    rec = e.rec
    if rec.flags & FLAG_KPATH:
        # A successful open: the file the kernel installed, whatever string named it.
        known = kernel_path(rec)
        if known is not None:
            return known
        try:  # deeper than the BPF walk: ask /proc while the descriptor is open
            return os.readlink(f"/proc/{rec.pid}/fd/{int(rec.fixed[_RES])}")
        except OSError:
            pass
    if rec.flags & FLAG_BASE_AFTER and rec.fixed[_RES] == 0:
        # chdir/fchdir: the kernel's walk of the new cwd (symlinks resolved) when it is whole
        walked = join_walk(rec.raw, LAYOUT.offsets["base"], rec.fixed[_BASE_LEN])
        if not rec.flags & FLAG_BASE_TRUNC:
            return walked
    path = raw_path(rec)
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
    ``fd.name``); computed once per event (fd.name, fd.filename, fd.directory share it)."""
    path: str = e.memo_call("file.path", _resolve)
    return path


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

P = schema.ParamType
FD = schema.Param("fd", P.FD, _res)
RES = schema.Param("res", P.ERRNO, _res)
DIRFD = schema.Param("dirfd", P.FD, _dirfd)
FLAGS = schema.Param("flags", P.FLAGS, _flags, text=open_flags_text)
MODE = schema.Param("mode", P.OCTAL, _mode)
UNLINK_FLAGS = schema.Param("flags", P.FLAGS, _flags, names=UNLINKAT_FLAG_NAMES)
PERMS = schema.Param("mode", P.MODE, _mode)  # chmod's: S_I* names
HEXMODE = schema.Param("mode", P.HEX, _mode)  # mkdir's (Falco prints it in hex)
UMOUNT_FLAGS = schema.Param(
    "flags", P.FLAGS, _flags, names=[(1, "MNT_FORCE"), (2, "MNT_DETACH"), (4, "MNT_EXPIRE")]
)


def path(name: str, relative_to_dirfd: bool = False) -> schema.Param:
    """A path argument: as passed, resolved (relative ones) to what fs.path.name says."""
    kind = P.RELPATH if relative_to_dirfd else P.PATH
    return schema.Param(name, kind, _raw, resolve=path_name)


def op(
    name: str,
    params: list[schema.Param],
    call: str,
    deny: str | None = None,
    handler: str = "emit_path",
    kernel_name: str = "",
) -> schema.EventType:
    """One file operation: its Falco parameters, and the handler's (dirfd, path, flags, mode)
    as C over the syscall's argument registers a0-a3 (see emit_path in bpf/sensor/file.h)."""
    sc = schema.Syscall(name, handler, call, kernel_name=kernel_name)
    return schema.EventType(name, schema.Category.FILE, params, syscall=sc, deny=deny)


# creat(2) is open(O_CREAT | O_WRONLY | O_TRUNC); Falco's creat has no flags, ours adds them so
# that write rules on evt.arg.flags cover it as an open. openat2's flags and mode are the first
# two u64 of the struct open_how its third argument points to.
CREAT, HOW = O_CREAT | O_WRONLY | O_TRUNC, "how_u64(a2, 0), how_u64(a2, 8)"
OPEN = "emit_open"  # a successful open reports the file it installed (bpf/sensor/file.h)
REL = path("name", relative_to_dirfd=True)
EVENT_TYPES = [
    op("open", [FD, path("name"), FLAGS, MODE], "AT_FDCWD_VAL, a0, a1, a2", "file", OPEN),
    op("openat", [FD, DIRFD, REL, FLAGS, MODE], "a0, a1, a2, a3", "file", OPEN),
    op("openat2", [FD, DIRFD, REL, FLAGS, MODE], f"a0, a1, {HOW}", "file", OPEN),
    op("creat", [FD, path("name"), MODE, FLAGS], f"AT_FDCWD_VAL, a0, {CREAT}, a1", "file", OPEN),
    op("unlink", [RES, path("path")], "AT_FDCWD_VAL, a0, 0, 0"),
    op("unlinkat", [RES, DIRFD, REL, UNLINK_FLAGS], "a0, a1, a2, 0"),
    op("mkdir", [RES, path("path"), HEXMODE], "AT_FDCWD_VAL, a0, 0, a1"),
    op("mkdirat", [RES, DIRFD, path("path", True), HEXMODE], "a0, a1, 0, a2"),
    op("rmdir", [RES, path("path")], "AT_FDCWD_VAL, a0, 0, 0"),
    op("chmod", [RES, path("filename"), PERMS], "AT_FDCWD_VAL, a0, 0, a1"),
    op("fchmodat", [RES, DIRFD, path("filename", True), PERMS], "a0, a1, 0, a2"),
    # the kernel defines it as umount (x86-64's umount2 entry): tracepoint sys_exit_umount
    op(
        "umount2",
        [RES, path("name"), UMOUNT_FLAGS],
        "AT_FDCWD_VAL, a0, a1, 0",
        kernel_name="umount",
    ),
    # chdir's path is a plain string in Falco (not resolved); the record walks the new cwd
    op("chdir", [RES, schema.Param("path", P.CHARBUF, _raw)], "a0, 0", handler="emit_chdir"),
    op("fchdir", [RES, schema.Param("fd", P.FD, _mode)], "0, a0", handler="emit_chdir"),
]
OPENS = ("open", "openat", "openat2", "creat")

# ---- fields ------------------------------------------------------------------------------------

FIELDS = schema.Getters()
FIELDS("fs.path.name")(path_name)
FIELDS("fs.path.nameraw")(_raw)
FIELDS("fd.name", only=OPENS)(path_name)
FIELDS("fd.nameraw", only=OPENS)(_raw)
FIELDS("fd.directory", only=OPENS)(lambda e: os.path.dirname(path_name(e)) or "/")
FIELDS("fd.filename", only=OPENS)(lambda e: path_name(e).rpartition("/")[2])  # basename
# The hot fields (every open that reaches a rule asks for several) index the record's members
# themselves rather than through _flags/_res: one call per field, not two or three.
FIELDS("fd.num", only=OPENS)(lambda e: r if (r := e.rec.fixed[_RES]) >= 0 else -1)
FIELDS("evt.is_open_write", only=OPENS)(
    lambda e: (e.rec.fixed[_FLAGS] & O_ACCMODE) in (O_WRONLY, O_RDWR)
)
FIELDS("evt.is_open_read", only=OPENS)(lambda e: (e.rec.fixed[_FLAGS] & O_ACCMODE) in (0, O_RDWR))
FIELDS("evt.is_open_create", only=OPENS)(lambda e: bool(e.rec.fixed[_FLAGS] & O_CREAT))
FIELDS("evt.is_open_exec", only=OPENS)(
    lambda e: bool(_flags(e) & O_CREAT) and bool(_mode(e) & 0o111)
)


def _is_dir(flags: int) -> bool:
    """Opened as a directory (O_DIRECTORY, but not O_TMPFILE, which contains its bit)."""
    return bool(flags & O_DIRECTORY) and flags & O_TMPFILE != O_TMPFILE


FIELDS("fd.type", only=OPENS)(lambda e: "directory" if _is_dir(e.rec.fixed[_FLAGS]) else "file")
FIELDS("fd.typechar", only=OPENS)(lambda e: "d" if _is_dir(e.rec.fixed[_FLAGS]) else "f")


KERNEL_FIELDS = {
    "proc.name": Bind.COMM,
    "user.uid": Bind.UID,
    "fd.name": Bind.PATH,
    "fs.path.name": Bind.PATH,
    "fd.directory": Bind.PATH_DIR,
    "fd.filename": Bind.PATH_BASE,
    "evt.is_open_write": Bind.OPEN_WRITE,
    "evt.is_open_read": Bind.OPEN_READ,
    "evt.is_open_create": Bind.OPEN_CREAT,
    "evt.arg.flags": Bind.OPEN_FLAGS,  # the handler's flags: an open's, 0 or AT_*/MNT_* bits
    "evt.res": Bind.RESULT,
    "evt.rawres": Bind.RESULT,
    "fd.num": Bind.RESULT_FD,
    "fd.nameraw": Bind.RAW_DOTDOT,
}
# Record builder: ``path`` as passed, ``base`` the walked directory (absolute); ``kpath`` a
# successful open's kernel path (with ``hdr_flags=FLAG_KPATH``: it takes the base's place).
_BUFFERS = schema.buffers(
    {"path": ("path_len", schema.utf8), "base": ("base_len", walk_buffer)}, dirfd=AT_FDCWD
)


def encode(values: dict[str, Any]) -> dict[str, Any]:
    kpath = values.pop("kpath", None)
    out = _BUFFERS(values)
    if kpath is not None:
        out["base"], out["base_len"] = schema.utf8(kpath)
    return out


# open_done reports a successful open with the file it installed (bpf/sensor/file.h).
TAILS = (
    ("open_tail", 0, "open_judge", "tracepoint"),
    ("open_done_tail", 0, "open_done", "tracepoint"),
)
FAMILY = schema.Family(
    "file",
    LAYOUT,
    "file.h",
    EVENT_TYPES,
    FIELDS,
    KERNEL_FIELDS,
    encode=encode,
    tail_calls=TAILS,
    truth={
        **dict.fromkeys(
            OPENS,
            "kernel, when it succeeds: fd.name is the file installed (walked from the task's "
            "root); fd.nameraw and a failed open's path: the caller's string, read once at the "
            "syscall's exit (io_uring: the kernel's copy)",
        ),
        **dict.fromkeys(
            ("chdir", "fchdir"),
            "kernel: the cwd after the call (walked); the path passed: "
            "the caller's string at the exit",
        ),
        "*": "the caller's path string, read once at the syscall's exit (a thread racing the "
        "call can change it after the kernel read it; io_uring: the kernel's copy), joined to "
        "the base directory the kernel walked",
    },
)
