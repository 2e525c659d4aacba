"""The process, user and group fields: what the process table knows about an event's task.

Every event type fills these (the table follows every process through fork, exec and exit),
so they sit beside the process table rather than in a family module. Field meanings follow
Falco (``falco --list``): list-valued ancestor fields start at the parent, ``proc.aname[N]``
with N >= 1 is the N-th ancestor and ``[0]`` the process itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sentinel.enrichment.proctable import EXEC_TYPES, Proc
from sentinel.events.common import UNSET_LOGINUID, caps_text, group_name, user_entry, user_name
from sentinel.events.exec import EXE_MEMFD, EXE_OVERLAY, EXE_UPPER
from sentinel.events.schema import Getters

LOGIN_SHELLS = frozenset({"sh", "bash", "zsh", "dash", "ksh", "csh", "tcsh", "fish", "ash"})


PROCESS = Getters()
# Indexed fields (``name[arg]``): (event, arg) -> value.
INDEXED: dict[str, Callable[[Any, str], Any]] = {}


def _slash(path: str) -> str:
    return path if path.endswith("/") else path + "/"


def _read_nspid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except OSError:
        pass
    return pid


def _vpid_of(e: Any, pid: int) -> int:
    """The pid as seen in the process's own pid namespace (/proc NSpid; pid when gone),
    read once per process."""
    p = e.proc if pid == e.rec.pid else None
    if p is not None and p.vpid is not None:
        return int(p.vpid)
    vpid = _read_nspid(pid)
    if p is not None:
        p.vpid = vpid
    return vpid


PROCESS("proc.ppid")(lambda e: e.rec.ppid if e.rec.evt.name in EXEC_TYPES else e.proc.ppid)
PROCESS("proc.name")(lambda e: e.rec.comm)
PROCESS("proc.exe")(lambda e: e.proc.exe)
PROCESS("proc.exepath")(lambda e: e.proc.exepath)
PROCESS("proc.args")(lambda e: " ".join(e.proc.args))
PROCESS("proc.cmdline")(lambda e: " ".join([e.rec.comm, *e.proc.args]))
PROCESS("proc.cmdnargs")(lambda e: len(e.proc.args))
PROCESS("proc.cmdlenargs")(
    lambda e: sum(len(a) for a in e.proc.args) + max(len(e.proc.args) - 1, 0)
)
PROCESS("proc.cwd")(lambda e: _slash(e.proc.cwd))
PROCESS("proc.tty")(lambda e: e.proc.tty)
PROCESS("proc.sid")(lambda e: e.proc.sid)
PROCESS("proc.pgid")(lambda e: e.proc.pgid)
PROCESS("proc.vpgid")(lambda e: _vpid_of(e, e.proc.pgid))
PROCESS("proc.is_vpgid_leader")(lambda e: e.proc.pgid == e.rec.pid)
PROCESS("proc.is_sid_leader")(lambda e: e.proc.sid == e.rec.pid)
PROCESS("proc.start_ts")(lambda e: e.clock.epoch(e.proc.start_ns))
PROCESS("proc.duration")(lambda e: max(e.rec.ts - e.proc.start_ns, 0))
PROCESS("proc.vpid")(lambda e: _vpid_of(e, e.rec.pid))
PROCESS("thread.vtid")(
    lambda e: _vpid_of(e, e.rec.pid) if e.rec.tid == e.rec.pid else _read_nspid(e.rec.tid)
)


def _pfield(attr: Callable[[Proc], Any]) -> Callable[[Any], Any]:
    def get(e: Any) -> Any:
        p = e.parent()
        return None if p is None else attr(p)

    return get


PROCESS("proc.pname")(_pfield(lambda p: p.comm))
PROCESS("proc.pexe")(_pfield(lambda p: p.exe))
PROCESS("proc.pexepath")(_pfield(lambda p: p.exepath))
PROCESS("proc.pcmdline")(_pfield(lambda p: p.cmdline))

_ANCESTOR_ATTRS: dict[str, Callable[[Proc], Any]] = {
    "proc.aname": lambda p: p.comm,
    "proc.aexe": lambda p: p.exe,
    "proc.aexepath": lambda p: p.exepath,
    "proc.acmdline": lambda p: p.cmdline,
    "proc.apid": lambda p: p.pid,
}
_SELF_ATTRS: dict[str, Callable[[Any], Any]] = {
    "proc.aname": lambda e: e.rec.comm,
    "proc.aexe": lambda e: e.proc.exe,
    "proc.aexepath": lambda e: e.proc.exepath,
    "proc.acmdline": lambda e: " ".join([e.rec.comm, *e.proc.args]),
    "proc.apid": lambda e: e.rec.pid,
}


def _make_ancestor(attr: Callable[[Proc], Any]) -> Callable[[Any], Any]:
    return lambda e: [attr(p) for p in e.ancestors()]


def _make_indexed(name: str) -> Callable[[Any, str], Any]:
    attr = _ANCESTOR_ATTRS[name]
    self_attr = _SELF_ATTRS[name]

    def get(e: Any, arg: str) -> Any:
        if not arg.isdigit():
            return None
        n = int(arg)
        if n == 0:
            return self_attr(e)
        anc = e.ancestors()
        return attr(anc[n - 1]) if n - 1 < len(anc) else None

    return get


for _name, _attr in _ANCESTOR_ATTRS.items():
    PROCESS(_name)(_make_ancestor(_attr))
    INDEXED[_name] = _make_indexed(_name)


def _leader(e: Any, pid: int) -> Proc | None:
    p: Proc | None = e.proc if pid == e.rec.pid else e.table.get(pid)
    return p


PROCESS("proc.sname")(lambda e: (p := _leader(e, e.proc.sid)) and p.comm)
PROCESS("proc.sid.exe")(lambda e: (p := _leader(e, e.proc.sid)) and p.exe)
PROCESS("proc.sid.exepath")(lambda e: (p := _leader(e, e.proc.sid)) and p.exepath)
PROCESS("proc.vpgid.name")(lambda e: (p := _leader(e, e.proc.pgid)) and p.comm)
PROCESS("proc.vpgid.exe")(lambda e: (p := _leader(e, e.proc.pgid)) and p.exe)
PROCESS("proc.vpgid.exepath")(lambda e: (p := _leader(e, e.proc.pgid)) and p.exepath)


@PROCESS("proc.loginshellid")
def _loginshellid(e: Any) -> int | None:
    found: int | None = e.rec.pid if e.rec.comm in LOGIN_SHELLS else None
    for p in e.ancestors():
        if p.comm in LOGIN_SHELLS:
            found = p.pid
    return found


PROCESS("user.name")(lambda e: user_name(e.rec.uid))
PROCESS("user.homedir")(lambda e: (u := user_entry(e.rec.uid)) and u[0])
PROCESS("user.shell")(lambda e: (u := user_entry(e.rec.uid)) and u[1])
PROCESS("user.loginname")(
    lambda e: None if e.rec.loginuid == UNSET_LOGINUID else user_name(e.rec.loginuid)
)
PROCESS("group.name")(lambda e: group_name(e.rec.gid))

# ---- credentials, environment and the executable (exec records; /proc when seeded) ----------


def _caps(i: int) -> Callable[[Any], Any]:
    return lambda e: None if e.proc.caps is None else caps_text(e.proc.caps[i])


# Falco's thread.cap_* are per thread; the table keeps one set per process, the last one a
# record of any of its threads reported (README, limits).
PROCESS("thread.cap_inheritable")(_caps(0))
PROCESS("thread.cap_permitted")(_caps(1))
PROCESS("thread.cap_effective")(_caps(2))
PROCESS("proc.env")(lambda e: " ".join(e.proc.env))


def _env(e: Any, name: str) -> str | None:
    prefix = name + "="
    for entry in e.proc.env:
        if entry.startswith(prefix):
            return str(entry[len(prefix) :])
    return None


INDEXED["proc.env"] = _env


def _exe(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda e: None if e.proc.exe_facts is None else fn(e.proc.exe_facts)


PROCESS("proc.is_exe_writable")(_exe(lambda x: x.writable))
PROCESS("proc.is_exe_from_memfd")(_exe(lambda x: bool(x.flags & EXE_MEMFD)))
PROCESS("proc.is_exe_upper_layer")(_exe(lambda x: bool(x.flags & EXE_UPPER)))
PROCESS("proc.is_exe_lower_layer")(
    _exe(lambda x: x.flags & (EXE_OVERLAY | EXE_UPPER) == EXE_OVERLAY)
)
PROCESS("proc.exe_ino")(_exe(lambda x: x.ino))
PROCESS("proc.exe_ino.ctime")(_exe(lambda x: x.ctime_ns))
PROCESS("proc.exe_ino.mtime")(_exe(lambda x: x.mtime_ns))
PROCESS("proc.exe_ino.ctime_duration_proc_start")(
    lambda e: (
        None
        if e.proc.exe_facts is None or not e.proc.exe_facts.ctime_ns
        else max(e.clock.epoch(e.proc.start_ns) - e.proc.exe_facts.ctime_ns, 0)
    )
)

# Fields that depend on more than the process entry and the table (the record itself):
# recomputed per event; the others are memoised per process by LiveEvent.to_dict.
RECORD_DEPENDENT = frozenset(
    {"proc.ppid", "proc.name", "proc.cmdline", "proc.duration", "proc.loginshellid"}
)
