"""Live events: a sensor record plus the process table, as a lazy Falco-field Mapping.

Why lazy: at hundreds of thousands of events per second, computing the ~80 fields a record
can carry would dominate. The engine reads fields only through ``event.get(name)``, so each
field is computed on first request (and cached); a rule that looks at ``evt.type`` and
``fd.name`` costs two small lookups. :meth:`LiveEvent.to_dict` materialises everything, for
``sentinel capture`` (the replay format).

Field meanings follow Falco (``falco --list``): list-valued ancestor fields start at the parent,
``proc.aname[N]`` with N >= 1 is the N-th ancestor and ``[0]`` the process itself.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import time
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from typing import Any, Protocol

from sentinel.enrichment.proctable import Proc, ProcessTable
from sentinel.kernel.records import (
    EV_CONNECT,
    EV_EXEC,
    EV_EXIT,
    EV_FORK,
    EV_OPEN,
    FLAG_EXECVEAT,
    OPEN_SYSCALLS,
    Record,
)

O_ACCMODE = 0o3
O_WRONLY = 0o1
O_RDWR = 0o2
O_CREAT = 0o100
O_DIRECTORY = 0o200000
O_TMPFILE = 0o20000000 | O_DIRECTORY
# Rendered after the access mode, in this order (Falco prints flags as "A|B|C").
_OPEN_FLAG_NAMES = [
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

L4 = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW = 1, 2, 3

UNSET_LOGINUID = 0xFFFFFFFF
AT_FDCWD = -100


def open_flags_text(flags: int) -> str:
    acc = flags & O_ACCMODE
    parts = ["O_RDWR" if acc == O_RDWR else "O_WRONLY" if acc == O_WRONLY else "O_RDONLY"]
    for bit, name in _OPEN_FLAG_NAMES:
        if name == "O_SYNC":
            if flags & bit == bit:
                parts.append(name)
            continue
        if name == "O_DSYNC" and flags & 0o4010000 == 0o4010000:
            continue
        if flags & bit:
            parts.append(name)
    return "|".join(parts)


def res_text(ret: int) -> str:
    if ret >= 0:
        return "SUCCESS"
    return errno.errorcode.get(-ret, str(ret))


@lru_cache(maxsize=4096)
def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


@lru_cache(maxsize=4096)
def user_entry(uid: int) -> tuple[str, str] | None:
    try:
        e = pwd.getpwuid(uid)
    except KeyError:
        return None
    return e.pw_dir, e.pw_shell


@lru_cache(maxsize=4096)
def group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def normalize(path: str) -> str:
    """Lexical normalisation, as Falco does for fd.name ('a/./b/../c' -> 'a/c')."""
    norm = os.path.normpath(path)
    return "/" + norm.lstrip("/") if norm.startswith("//") else norm


class ContainerLookup(Protocol):
    """What the event needs from the container resolver."""

    def __call__(self, cgroup_id: int, pid: int) -> dict[str, Any]: ...


class Clock:
    """Converts the sensor's CLOCK_BOOTTIME stamps to ns since the epoch."""

    def __init__(self) -> None:
        self.offset = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)

    def epoch(self, boot_ns: int) -> int:
        return boot_ns + self.offset

    def now_boot(self) -> int:
        return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


Getter = Callable[["LiveEvent"], Any]
_GETTERS: dict[str, Getter] = {}
_INDEXED: dict[str, Callable[[LiveEvent, int], Any]] = {}


def field(name: str) -> Callable[[Getter], Getter]:
    def deco(fn: Getter) -> Getter:
        _GETTERS[name] = fn
        return fn

    return deco


class LiveEvent(Mapping[str, Any]):
    """A live event. ``get(name)`` computes a Falco field on demand; unknown fields are None."""

    __slots__ = ("_cache", "_containers", "_proc", "clock", "num", "rec", "table")

    def __init__(
        self,
        rec: Record,
        table: ProcessTable,
        clock: Clock,
        containers: ContainerLookup | None = None,
        num: int = 0,
    ) -> None:
        self.rec = rec
        self.table = table
        self.clock = clock
        self.num = num
        self._containers = containers
        self._cache: dict[str, Any] = {}
        self._proc: Proc | None = None

    # -- Mapping ----------------------------------------------------------------------------

    def __getitem__(self, name: str) -> Any:
        value = self.get(name, _MISSING)
        if value is _MISSING:
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def get(self, name: str, default: Any = None) -> Any:
        cache = self._cache
        if name in cache:
            return cache[name]
        fn = _GETTERS.get(name)
        if fn is not None:
            value = fn(self)
        elif name.endswith("]") and "[" in name and not name.startswith(("container.", "k8s.")):
            base, _, arg = name[:-1].partition("[")
            ifn = _INDEXED.get(base)
            if ifn is None or not arg.isdigit():
                return default
            value = ifn(self, int(arg))
        elif name.startswith(("container.", "k8s.")):  # incl. the flat k8s.pod.label[KEY] keys
            value = self._container_fields().get(name)
        else:
            return default
        cache[name] = value
        return value

    def to_dict(self) -> dict[str, Any]:
        """Every field this event carries (those that do not apply are left out): the replay
        format that ``sentinel capture`` writes.

        Fields that depend only on the process and the table (ancestors, session leader,
        command line...) are memoised on the process entry while the table is unchanged, so
        a storm of events from one process pays for them once."""
        proc = self.proc
        version = self.table.version
        if proc.memo is None or proc.memo_version != version:
            memo: dict[str, Any] = {}
            for name in _PROC_FIELDS:
                value = _GETTERS[name](self)
                if value is not None:
                    memo[name] = value
            proc.memo = memo
            proc.memo_version = version
        out: dict[str, Any] = {}
        get = self.get
        for name in _EVENT_FIELDS_BY_TYPE.get(self.rec.type, _EVENT_FIELDS):
            value = get(name)
            if value is not None:
                out[name] = value
        out.update(proc.memo)
        out.update(self._container_fields())
        return out

    # -- helpers ----------------------------------------------------------------------------

    @property
    def proc(self) -> Proc:
        if self._proc is None:
            self._proc = self.table.lookup(self.rec)
        return self._proc

    def parent(self) -> Proc | None:
        return self.table.get(self.proc.ppid)

    def ancestors(self) -> list[Proc]:
        key = "_ancestors"
        got = self._cache.get(key)
        if got is None:
            got = list(self.table.ancestors(self.rec.pid))
            self._cache[key] = got
        return list(got)

    def _container_fields(self) -> dict[str, Any]:
        got = self._cache.get("_container")
        if got is None:
            if self._containers is None:
                got = {"container.id": "host"}
            else:
                got = self._containers(self.rec.cgroup_id, self.rec.pid)
            self._cache["_container"] = got
        return dict(got)


_MISSING = object()


def _is(t: int) -> Callable[[LiveEvent], bool]:
    return lambda e: e.rec.type == t


# ---- evt --------------------------------------------------------------------------------------


@field("evt.type")
def _evt_type(e: LiveEvent) -> str:
    t = e.rec.type
    if t == EV_OPEN:
        return OPEN_SYSCALLS.get(e.rec.open_fixed[4], "open")
    if t == EV_EXEC and e.rec.flags & FLAG_EXECVEAT:
        return "execveat"
    return {EV_EXEC: "execve", EV_FORK: "clone", EV_EXIT: "procexit", EV_CONNECT: "connect"}[t]


field("evt.dir")(lambda e: "<")
field("evt.num")(lambda e: e.num)
field("evt.source")(lambda e: "syscall")
field("evt.time")(lambda e: e.clock.epoch(e.rec.ts))
field("evt.rawtime")(lambda e: e.clock.epoch(e.rec.ts))
field("evt.category")(lambda e: {EV_OPEN: "file", EV_CONNECT: "net"}.get(e.rec.type, "process"))


def _rawres(e: LiveEvent) -> int | None:
    t = e.rec.type
    if t == EV_OPEN:
        return int(e.rec.open_fixed[0])
    if t == EV_CONNECT:
        return e.rec.connect_fixed[0]
    if t == EV_EXEC:
        return e.rec.exec_res
    if t == EV_FORK:
        return e.rec.child[0]
    return None


field("evt.rawres")(_rawres)


@field("evt.res")
def _res(e: LiveEvent) -> str | None:
    r = _rawres(e)
    return None if r is None else res_text(r)


@field("evt.failed")
def _failed(e: LiveEvent) -> bool | None:
    r = _rawres(e)
    return None if r is None else r < 0


# ---- open -------------------------------------------------------------------------------------


def _oflags(e: LiveEvent) -> int | None:
    return e.rec.open_fixed[1] if e.rec.type == EV_OPEN else None


@field("evt.arg.flags")
def _arg_flags(e: LiveEvent) -> str | None:
    f = _oflags(e)
    return None if f is None else open_flags_text(f)


@field("evt.arg.mode")
def _arg_mode(e: LiveEvent) -> str | None:
    return f"{e.rec.open_fixed[2]:#o}" if e.rec.type == EV_OPEN else None


@field("evt.is_open_write")
def _open_write(e: LiveEvent) -> bool | None:
    f = _oflags(e)
    return None if f is None else (f & O_ACCMODE) in (O_WRONLY, O_RDWR)


@field("evt.is_open_read")
def _open_read(e: LiveEvent) -> bool | None:
    f = _oflags(e)
    return None if f is None else (f & O_ACCMODE) in (0, O_RDWR)


@field("evt.is_open_create")
def _open_create(e: LiveEvent) -> bool | None:
    f = _oflags(e)
    return None if f is None else bool(f & O_CREAT)


@field("evt.is_open_exec")
def _open_exec(e: LiveEvent) -> bool | None:
    f = _oflags(e)
    if f is None:
        return None
    return bool(f & O_CREAT) and bool(e.rec.open_fixed[2] & 0o111)


@field("fd.nameraw")
def _fd_nameraw(e: LiveEvent) -> str | None:
    return e.rec.open_path if e.rec.type == EV_OPEN else None


field("evt.arg.name")(_fd_nameraw)
field("evt.arg.path")(_fd_nameraw)


@field("evt.arg.dirfd")
def _arg_dirfd(e: LiveEvent) -> str | None:
    # evt.arg.* are text, as the replay format normalises them.
    if e.rec.type == EV_OPEN and e.rec.open_fixed[4] != 1:
        return str(e.rec.open_fixed[3])
    return None


def _open_name(e: LiveEvent) -> str:
    path = e.rec.open_path
    if path.startswith("/"):
        return normalize(path)
    base = e.rec.open_base
    if base is None:
        # No walk (bad dirfd) or deeper than the BPF walk: ask /proc while the process lives.
        dirfd = e.rec.open_fixed[3]
        link = f"/proc/{e.rec.pid}/cwd" if dirfd == AT_FDCWD else f"/proc/{e.rec.pid}/fd/{dirfd}"
        try:
            base = os.readlink(link)
        except OSError:
            base = e.proc.cwd or "/"
    return normalize(os.path.join(base, path))


def _connect_name(e: LiveEvent) -> str | None:
    sa = e.rec.sockaddr
    if sa.family == "unix":
        return sa.path
    if sa.ip is None:
        return None
    lip = _lip(e)
    lport = e.rec.connect_fixed[5]
    if sa.family == "ipv6" and ":" in sa.ip:
        return f"[{lip}]:{lport}->[{sa.ip}]:{sa.port}"
    return f"{lip}:{lport}->{sa.ip}:{sa.port}"


@field("fd.name")
def _fd_name(e: LiveEvent) -> str | None:
    t = e.rec.type
    if t == EV_OPEN:
        return _open_name(e)
    if t == EV_CONNECT:
        return _connect_name(e)
    return None


field("evt.arg.tuple")(lambda e: _connect_name(e) if e.rec.type == EV_CONNECT else None)


@field("fd.directory")
def _fd_directory(e: LiveEvent) -> str | None:
    if e.rec.type != EV_OPEN:
        return None
    return os.path.dirname(_open_name(e)) or "/"


@field("fd.filename")
def _fd_filename(e: LiveEvent) -> str | None:
    if e.rec.type != EV_OPEN:
        return None
    return os.path.basename(_open_name(e))


@field("fd.num")
def _fd_num(e: LiveEvent) -> int | None:
    t = e.rec.type
    if t == EV_OPEN:
        r = int(e.rec.open_fixed[0])
        return r if r >= 0 else -1
    if t == EV_CONNECT:
        return e.rec.connect_fixed[1]
    return None


field("evt.arg.fd")(lambda e: str(e.rec.connect_fixed[1]) if e.rec.type == EV_CONNECT else None)


def _fd_kind(e: LiveEvent) -> tuple[str, str] | None:
    t = e.rec.type
    if t == EV_OPEN:
        f = e.rec.open_fixed[1]
        if f & O_DIRECTORY and f & O_TMPFILE != O_TMPFILE:
            return "directory", "d"
        return "file", "f"
    if t == EV_CONNECT:
        fam = e.rec.sockaddr.family
        return {"ipv4": ("ipv4", "4"), "ipv6": ("ipv6", "6"), "unix": ("unix", "u")}.get(
            fam, ("unknown", "o")
        )
    return None


field("fd.type")(lambda e: (k := _fd_kind(e)) and k[0])
field("fd.typechar")(lambda e: (k := _fd_kind(e)) and k[1])


# ---- connect ----------------------------------------------------------------------------------


def _net(e: LiveEvent) -> bool:
    return e.rec.type == EV_CONNECT and e.rec.sockaddr.ip is not None


def _lip(e: LiveEvent) -> str | None:
    if not _net(e):
        return None
    import socket

    laddr = e.rec.connect_fixed[7]
    if e.rec.sockaddr.family == "ipv6":
        import ipaddress

        a = ipaddress.IPv6Address(laddr)
        return str(a.ipv4_mapped) if a.ipv4_mapped else str(a)
    return socket.inet_ntop(socket.AF_INET, laddr[:4])


def _rip(e: LiveEvent) -> str | None:
    return e.rec.sockaddr.ip if _net(e) else None


def _rport(e: LiveEvent) -> int | None:
    return e.rec.sockaddr.port if _net(e) else None


def _lport(e: LiveEvent) -> int | None:
    return e.rec.connect_fixed[5] if _net(e) else None


for _name in ("fd.sip", "fd.rip", "fd.dip", "fd.snet", "fd.rnet"):
    field(_name)(_rip)
for _name in ("fd.cip", "fd.lip", "fd.cnet", "fd.lnet"):
    field(_name)(_lip)
for _name in ("fd.sport", "fd.rport", "fd.dport"):
    field(_name)(_rport)
for _name in ("fd.cport", "fd.lport"):
    field(_name)(_lport)
field("fd.is_server")(lambda e: False if e.rec.type == EV_CONNECT else None)
field("fd.connected")(lambda e: (e.rec.connect_fixed[0] == 0) if e.rec.type == EV_CONNECT else None)


@field("fd.l4proto")
def _l4proto(e: LiveEvent) -> str | None:
    if e.rec.type != EV_CONNECT or e.rec.sockaddr.family not in ("ipv4", "ipv6"):
        return None
    _ret, _fd, _alen, stype, proto, *_ = e.rec.connect_fixed
    if stype == SOCK_RAW:
        return "raw"
    if proto in L4:
        return L4[proto]
    return {SOCK_STREAM: "tcp", SOCK_DGRAM: "udp"}.get(stype, "unknown")


@field("fd.sockfamily")
def _sockfamily(e: LiveEvent) -> str | None:
    if e.rec.type != EV_CONNECT:
        return None
    fam = e.rec.sockaddr.family
    return "ip" if fam in ("ipv4", "ipv6") else fam


@field("evt.arg.addr")
def _arg_addr(e: LiveEvent) -> str | None:
    if e.rec.type != EV_CONNECT:
        return None
    sa = e.rec.sockaddr
    return sa.path if sa.family == "unix" else f"{sa.ip}:{sa.port}"


# ---- proc -------------------------------------------------------------------------------------

field("proc.pid")(lambda e: e.rec.pid)
field("thread.tid")(lambda e: e.rec.tid)
field("thread.ismain")(lambda e: e.rec.pid == e.rec.tid)
field("proc.ppid")(lambda e: e.proc.ppid if e.rec.type != EV_EXEC else e.rec.ppid)
field("proc.name")(lambda e: e.rec.comm)
field("proc.exe")(lambda e: e.proc.exe)
field("proc.exepath")(lambda e: e.proc.exepath)
field("proc.args")(lambda e: " ".join(e.proc.args))
field("proc.cmdline")(lambda e: " ".join([e.rec.comm, *e.proc.args]))
field("proc.cmdnargs")(lambda e: len(e.proc.args))
field("proc.cmdlenargs")(lambda e: sum(len(a) for a in e.proc.args) + max(len(e.proc.args) - 1, 0))
field("proc.cwd")(lambda e: _slash(e.proc.cwd))
field("proc.tty")(lambda e: e.proc.tty)
field("proc.sid")(lambda e: e.proc.sid)
field("proc.pgid")(lambda e: e.proc.pgid)
field("proc.vpgid")(lambda e: _vpid_of(e, e.proc.pgid))
field("proc.is_vpgid_leader")(lambda e: e.proc.pgid == e.rec.pid)
field("proc.is_sid_leader")(lambda e: e.proc.sid == e.rec.pid)
field("proc.start_ts")(lambda e: e.clock.epoch(e.proc.start_ns))
field("proc.duration")(lambda e: max(e.rec.ts - e.proc.start_ns, 0))
field("proc.vpid")(lambda e: _vpid_of(e, e.rec.pid))
field("thread.vtid")(
    lambda e: _vpid_of(e, e.rec.pid) if e.rec.tid == e.rec.pid else _read_nspid(e.rec.tid)
)


def _slash(path: str) -> str:
    return path if path.endswith("/") else path + "/"


def _vpid_of(e: LiveEvent, pid: int) -> int:
    """The pid as seen in the process's own pid namespace (/proc NSpid; pid when gone),
    read once per process."""
    p = e.proc if pid == e.rec.pid else None
    if p is not None and p.vpid is not None:
        return p.vpid
    vpid = _read_nspid(pid)
    if p is not None:
        p.vpid = vpid
    return vpid


def _read_nspid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except OSError:
        pass
    return pid


def _pfield(attr: Callable[[Proc], Any]) -> Callable[[LiveEvent], Any]:
    def get(e: LiveEvent) -> Any:
        p = e.parent()
        return None if p is None else attr(p)

    return get


field("proc.pname")(_pfield(lambda p: p.comm))
field("proc.pexe")(_pfield(lambda p: p.exe))
field("proc.pexepath")(_pfield(lambda p: p.exepath))
field("proc.pcmdline")(_pfield(lambda p: p.cmdline))

_ANCESTOR_ATTRS: dict[str, Callable[[Proc], Any]] = {
    "proc.aname": lambda p: p.comm,
    "proc.aexe": lambda p: p.exe,
    "proc.aexepath": lambda p: p.exepath,
    "proc.acmdline": lambda p: p.cmdline,
    "proc.apid": lambda p: p.pid,
}
_SELF_ATTRS: dict[str, Callable[[LiveEvent], Any]] = {
    "proc.aname": lambda e: e.rec.comm,
    "proc.aexe": lambda e: e.proc.exe,
    "proc.aexepath": lambda e: e.proc.exepath,
    "proc.acmdline": lambda e: " ".join([e.rec.comm, *e.proc.args]),
    "proc.apid": lambda e: e.rec.pid,
}


def _make_ancestor(attr: Callable[[Proc], Any]) -> Getter:
    return lambda e: [attr(p) for p in e.ancestors()]


def _make_indexed(name: str) -> Callable[[LiveEvent, int], Any]:
    attr = _ANCESTOR_ATTRS[name]
    self_attr = _SELF_ATTRS[name]

    def get(e: LiveEvent, n: int) -> Any:
        if n == 0:
            return self_attr(e)
        anc = e.ancestors()
        return attr(anc[n - 1]) if n - 1 < len(anc) else None

    return get


for _name, _attr in _ANCESTOR_ATTRS.items():
    field(_name)(_make_ancestor(_attr))
    _INDEXED[_name] = _make_indexed(_name)


def _leader(e: LiveEvent, pid: int) -> Proc | None:
    return e.proc if pid == e.rec.pid else e.table.get(pid)


field("proc.sname")(lambda e: (p := _leader(e, e.proc.sid)) and p.comm)
field("proc.sid.exe")(lambda e: (p := _leader(e, e.proc.sid)) and p.exe)
field("proc.sid.exepath")(lambda e: (p := _leader(e, e.proc.sid)) and p.exepath)
field("proc.vpgid.name")(lambda e: (p := _leader(e, e.proc.pgid)) and p.comm)
field("proc.vpgid.exe")(lambda e: (p := _leader(e, e.proc.pgid)) and p.exe)
field("proc.vpgid.exepath")(lambda e: (p := _leader(e, e.proc.pgid)) and p.exepath)


@field("proc.loginshellid")
def _loginshellid(e: LiveEvent) -> int | None:
    shells = {"sh", "bash", "zsh", "dash", "ksh", "csh", "tcsh", "fish", "ash"}
    found: int | None = e.rec.pid if e.rec.comm in shells else None
    for p in e.ancestors():
        if p.comm in shells:
            found = p.pid
    return found


# ---- exec / fork / exit specifics -------------------------------------------------------------


def _exec_argv(e: LiveEvent) -> list[str] | None:
    """argv as recorded by this exec (for a failed one, the attempted argv)."""
    return e.rec.argv if e.rec.type == EV_EXEC else None


@field("evt.arg.exe")
def _arg_exe(e: LiveEvent) -> str | None:
    argv = _exec_argv(e)
    return None if argv is None else (argv[0] if argv else e.rec.filename)


@field("evt.arg.args")
def _arg_args(e: LiveEvent) -> str | None:
    argv = _exec_argv(e)
    return None if argv is None else " ".join(argv[1:])


@field("evt.arg.filename")
def _arg_filename(e: LiveEvent) -> str | None:
    """The exec's path as passed, or an open's path argument."""
    return e.rec.filename if e.rec.type == EV_EXEC else _fd_nameraw(e)


field("proc.exitcode")(lambda e: e.rec.exit_code if e.rec.type == EV_EXIT else None)

# ---- user / group -----------------------------------------------------------------------------

field("user.uid")(lambda e: e.rec.uid)
field("user.name")(lambda e: user_name(e.rec.uid))
field("user.homedir")(lambda e: (u := user_entry(e.rec.uid)) and u[0])
field("user.shell")(lambda e: (u := user_entry(e.rec.uid)) and u[1])
field("user.loginuid")(lambda e: -1 if e.rec.loginuid == UNSET_LOGINUID else e.rec.loginuid)
field("user.loginname")(
    lambda e: None if e.rec.loginuid == UNSET_LOGINUID else user_name(e.rec.loginuid)
)
field("group.gid")(lambda e: e.rec.gid)
field("group.name")(lambda e: group_name(e.rec.gid))


# Fields that depend only on the process entry and the table (not on the record beyond its
# pid): memoised per process by LiveEvent.to_dict.
_RECORD_DEPENDENT = {
    "proc.pid",
    "proc.ppid",
    "proc.name",
    "proc.cmdline",
    "proc.duration",
    "proc.loginshellid",
    "proc.exitcode",
}
_PROC_FIELDS: tuple[str, ...] = tuple(
    n for n in _GETTERS if n.startswith("proc.") and n not in _RECORD_DEPENDENT
)
_EVENT_FIELDS: tuple[str, ...] = tuple(n for n in _GETTERS if n not in _PROC_FIELDS)

_OPEN_ONLY = {
    "evt.arg.flags",
    "evt.arg.mode",
    "evt.is_open_write",
    "evt.is_open_read",
    "evt.is_open_create",
    "evt.is_open_exec",
    "fd.nameraw",
    "evt.arg.name",
    "evt.arg.path",
    "evt.arg.dirfd",
    "fd.directory",
    "fd.filename",
}
_FD_FIELDS = {"fd.name", "fd.num", "fd.type", "fd.typechar"}


def _applies(name: str, t: int) -> bool:
    """Whether a field can have a value for a record type (a shortcut for to_dict only)."""
    if name in _OPEN_ONLY:
        return t == EV_OPEN
    if name in _FD_FIELDS:
        return t in (EV_OPEN, EV_CONNECT)
    if name.startswith("fd.") or name in ("evt.arg.addr", "evt.arg.tuple", "evt.arg.fd"):
        return t == EV_CONNECT
    if name in ("evt.arg.exe", "evt.arg.args"):
        return t == EV_EXEC
    if name == "evt.arg.filename":
        return t in (EV_EXEC, EV_OPEN)
    if name == "proc.exitcode":
        return t == EV_EXIT
    return True


_EVENT_FIELDS_BY_TYPE: dict[int, tuple[str, ...]] = {
    t: tuple(n for n in _EVENT_FIELDS if _applies(n, t))
    for t in (EV_EXEC, EV_FORK, EV_EXIT, EV_OPEN, EV_CONNECT)
}
