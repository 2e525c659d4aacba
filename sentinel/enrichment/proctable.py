"""The process table: what Sentinel knows about every process, kept exact by kernel events.

Why: rules ask about a process's parent, ancestors and session leader (``proc.pname``,
``proc.aname[3]``, ``proc.sname``), often after those processes exited, and reading ``/proc`` per
event would be both slow and racy. The table is seeded once from ``/proc`` when the sensor is
armed (attach first, then scan, so nothing falls in between) and then follows the sensor's
fork, exec and exit records. Exited processes stay, marked, in a bounded FIFO so that events
still in flight and descendants' ancestor chains resolve.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sentinel.events import exec as exec_records
from sentinel.events import process as process_records
from sentinel.events.record import Record

CLK_TCK = os.sysconf("SC_CLK_TCK")
EXEC_TYPES = frozenset(exec_records.FAMILY.type_names)
# The event types whose records change the table (the enricher applies only these).
PROCESS_TYPES = EXEC_TYPES | frozenset(process_records.FAMILY.type_names)


@dataclass(slots=True)
class Proc:
    pid: int
    ppid: int
    comm: str
    exe: str = ""  # argv[0]
    exepath: str = ""
    args: list[str] = field(default_factory=list)  # argv[1:]
    cwd: str = ""
    tty: int = 0
    uid: int = 0
    gid: int = 0
    loginuid: int = 0xFFFFFFFF
    sid: int = 0
    pgid: int = 0
    start_ns: int = 0  # CLOCK_BOOTTIME ns (the sensor's clock)
    cgroup_id: int = 0
    exited: bool = False
    args_truncated: bool = False
    env: list[str] = field(default_factory=list)  # KEY=VALUE, as the image started with
    env_truncated: bool = False
    # (inheritable, permitted, effective), kept current by exec and the system family's
    # records; None: not known (a process seen only in an event header)
    caps: tuple[int, int, int] | None = None
    exe_facts: exec_records.ExeFacts | None = None  # None: not known
    # Memo of the fields derived from this entry and the table (see LiveEvent.to_dict), valid
    # while the table's version is ``memo_version``; and the pid-namespace pid, read once.
    memo: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    memo_version: int = field(default=-1, compare=False, repr=False)
    vpid: int | None = field(default=None, compare=False, repr=False)

    @property
    def cmdline(self) -> str:
        return " ".join([self.comm, *self.args]) if self.args else self.comm


def _exe_facts(
    exe: Path, exepath: str, uid: int, gid: int, cap_eff: int
) -> exec_records.ExeFacts | None:
    """A running process's executable, from /proc (seeding): the inode's facts through the
    exe link; a memfd from the link's name. Whether it lies in an overlayfs upper layer is not
    told by /proc: such a process, started before Sentinel, reads false."""
    try:
        st = os.stat(exe)
    except OSError:
        return None
    memfd = exepath.startswith("/memfd:") and exepath.endswith(" (deleted)")
    return exec_records.ExeFacts(
        ino=st.st_ino,
        ctime_ns=st.st_ctime_ns,
        mtime_ns=st.st_mtime_ns,
        mode=st.st_mode,
        uid=st.st_uid,
        gid=st.st_gid,
        flags=exec_records.EXE_MEMFD if memfd else 0,
        writable=exec_records.writable_by(st.st_mode, st.st_uid, st.st_gid, uid, gid, cap_eff),
    )


def _readlink(path: str) -> str:
    """Fallback for paths deeper than the BPF dentry walk: /proc, while the process lives."""
    try:
        return os.readlink(path)
    except OSError:
        return ""


class ProcessTable:
    """pid -> :class:`Proc`; updated by :meth:`apply` with the sensor's records, in order."""

    def __init__(self, max_exited: int = 8192, proc_root: str = "/proc") -> None:
        self._procs: dict[int, Proc] = {}
        self._exited: OrderedDict[int, None] = OrderedDict()
        self._max_exited = max_exited
        self._proc_root = Path(proc_root)
        # Bumped by every change, so memoised per-process fields know when to recompute.
        self.version = 0

    def __len__(self) -> int:
        return len(self._procs)

    def __contains__(self, pid: object) -> bool:
        return pid in self._procs

    # -- seeding ----------------------------------------------------------------------------

    def seed(self) -> int:
        """Read every process from /proc (threads are skipped). Returns the number read."""
        n = 0
        for entry in os.scandir(self._proc_root):
            if entry.name.isdigit():
                p = self.read_proc(int(entry.name))
                if p is not None:
                    self._procs[p.pid] = p
                    n += 1
        return n

    def read_proc(self, pid: int) -> Proc | None:
        """One process from /proc, or None if it is gone."""
        base = self._proc_root / str(pid)
        try:
            stat = (base / "stat").read_bytes()
            cmdline = (base / "cmdline").read_bytes()
            status = (base / "status").read_text()
        except OSError:
            return None
        lpar, rpar = stat.find(b"("), stat.rfind(b")")
        comm = stat[lpar + 1 : rpar].decode("utf-8", "surrogateescape")
        rest = stat[rpar + 2 :].split()
        # rest[0] = state, [1] ppid, [2] pgrp, [3] session, [4] tty_nr, ... [19] starttime
        ppid, pgid, sid, tty = int(rest[1]), int(rest[2]), int(rest[3]), int(rest[4])
        start_ns = int(rest[19]) * 1_000_000_000 // CLK_TCK
        argv = [a.decode("utf-8", "surrogateescape") for a in cmdline.split(b"\0")[:-1]]
        uid = gid = 0
        capset = {"CapInh:": 0, "CapPrm:": 0, "CapEff:": 0}
        for line in status.splitlines():
            if line.startswith("Uid:"):
                uid = int(line.split()[1])  # real, as bpf_get_current_uid_gid() gives
            elif line.startswith("Gid:"):
                gid = int(line.split()[1])
            elif line[:7] in capset:
                capset[line[:7]] = int(line.split()[1], 16)
        caps = (capset["CapInh:"], capset["CapPrm:"], capset["CapEff:"])
        environ = b""
        with contextlib.suppress(OSError):
            environ = (base / "environ").read_bytes()
        loginuid = 0xFFFFFFFF
        with contextlib.suppress(OSError, ValueError):
            loginuid = int((base / "loginuid").read_text())
        exepath = cwd = ""
        with contextlib.suppress(OSError):
            exepath = os.readlink(base / "exe")
        facts = _exe_facts(base / "exe", exepath, uid, gid, caps[2])
        with contextlib.suppress(OSError):
            cwd = os.readlink(base / "cwd")
        return Proc(
            pid=pid,
            ppid=ppid,
            comm=comm,
            exe=argv[0] if argv else comm,
            exepath=exepath,
            args=argv[1:],
            cwd=cwd,
            tty=tty,
            uid=uid,
            gid=gid,
            loginuid=loginuid,
            sid=sid,
            pgid=pgid,
            start_ns=start_ns,
            env=[x.decode("utf-8", "surrogateescape") for x in environ.split(b"\0") if x],
            caps=caps,
            exe_facts=facts,
        )

    # -- updates from records ---------------------------------------------------------------

    def apply(self, rec: Record) -> None:
        """Fold one process record (clone, exec, procexit) into the table; others are
        ignored."""
        name = rec.evt.name
        if name == "clone":
            self.version += 1
            if process_records.is_thread(rec):
                return
            child_pid, _tid = process_records.child(rec)
            parent = self._procs.get(rec.pid)
            if parent is None:
                parent = self._from_header(rec)
                self._procs[rec.pid] = parent
            self._procs[child_pid] = replace(
                parent,
                memo=None,
                memo_version=-1,
                vpid=None,
                pid=child_pid,
                ppid=rec.pid,
                args=list(parent.args),
                start_ns=rec.ts,
                exited=False,
                cgroup_id=rec.cgroup_id,
            )
            self._exited.pop(child_pid, None)
        elif name in EXEC_TYPES and exec_records.res(rec) == 0:  # a failed exec changes nothing
            self.version += 1
            tty, sid, pgid = exec_records.tty_sid_pgid(rec)
            argv = exec_records.argv(rec)
            filename = exec_records.filename(rec)
            old = self._procs.get(rec.pid)
            self._procs[rec.pid] = Proc(
                pid=rec.pid,
                ppid=rec.ppid,
                comm=rec.comm,
                exe=argv[0] if argv else filename,
                exepath=exec_records.exepath(rec) or _readlink(f"/proc/{rec.pid}/exe") or filename,
                args=argv[1:],
                cwd=exec_records.cwd(rec) or _readlink(f"/proc/{rec.pid}/cwd"),
                tty=tty,
                uid=rec.uid,
                gid=rec.gid,
                loginuid=rec.loginuid,
                sid=sid,
                pgid=pgid,
                start_ns=old.start_ns if old is not None and not old.exited else rec.ts,
                cgroup_id=rec.cgroup_id,
                args_truncated=exec_records.args_truncated(rec),
                env=exec_records.env(rec),
                env_truncated=exec_records.env_truncated(rec),
                caps=exec_records.caps(rec),
                exe_facts=exec_records.exe_facts(rec),
            )
        elif name == "procexit":
            self.version += 1
            p = self._procs.get(rec.pid)
            if p is None:
                return
            p.exited = True
            self._exited[rec.pid] = None
            while len(self._exited) > self._max_exited:
                old_pid, _ = self._exited.popitem(last=False)
                q = self._procs.get(old_pid)
                if q is not None and q.exited:
                    del self._procs[old_pid]

    def _from_header(self, rec: Record) -> Proc:
        """An entry for a process we never saw: /proc if it is still there, else the header."""
        p = self.read_proc(rec.pid)
        if p is not None:
            return p
        return Proc(
            pid=rec.pid,
            ppid=rec.ppid,
            comm=rec.comm,
            exe=rec.comm,
            uid=rec.uid,
            gid=rec.gid,
            loginuid=rec.loginuid,
            cgroup_id=rec.cgroup_id,
        )

    def insert(self, proc: Proc) -> None:
        """Add or replace one entry (what seeding does per process; tests build trees)."""
        self._procs[proc.pid] = proc
        self.version += 1

    def set_caps(self, pid: int, caps: tuple[int, int, int]) -> None:
        """The task's capability sets changed (setuid, capset...: the record says after)."""
        p = self._procs.get(pid)
        if p is not None and p.caps != caps:
            p.caps = caps
            self.version += 1

    def set_cwd(self, pid: int, cwd: str) -> None:
        p = self._procs.get(pid)
        if p is not None and p.cwd != cwd:
            p.cwd = cwd
            self.version += 1

    # -- queries ----------------------------------------------------------------------------

    def get(self, pid: int) -> Proc | None:
        return self._procs.get(pid)

    def lookup(self, rec: Record) -> Proc:
        """The entry of the process a record is about, created on first sight."""
        p = self._procs.get(rec.pid)
        if p is None:
            p = self._from_header(rec)
            self._procs[rec.pid] = p
            self.version += 1
        return p

    def ancestors(self, pid: int, limit: int = 64) -> Iterator[Proc]:
        """Parent, grandparent, ... as far as the table knows (stops at pid 0 or a loop)."""
        p = self._procs.get(pid)
        seen = {pid}
        while p is not None and limit > 0:
            ppid = p.ppid
            if ppid <= 0 or ppid in seen:
                return
            seen.add(ppid)
            p = self._procs.get(ppid)
            if p is None:
                return
            yield p
            limit -= 1
