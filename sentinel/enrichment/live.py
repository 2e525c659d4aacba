"""Turn the sensor's raw records into :class:`LiveEvent` mappings, keeping the process table.

The order matters and is the kernel's: each record first updates the process table (fork adds
the child, exec replaces the image, exit marks the process gone but keeps it for a while), then
becomes an event whose fields are read lazily against the table's state at that moment.
"""

from __future__ import annotations

from typing import Any

from sentinel.enrichment.containers import ContainerInfo, ContainerResolver
from sentinel.enrichment.event import Clock, LiveEvent
from sentinel.enrichment.proctable import PROCESS_TYPES, ProcessTable
from sentinel.events import EVENT_TYPES, decode
from sentinel.events import file as file_records
from sentinel.events import system as system_records

_HOST = {"container.id": "host", "container.full_id": "host", "container.name": "host"}

# What a record does to the state before it becomes an event, per event code (one tuple index
# per record instead of a set test and two family comparisons).
_PROCESS, _CREDS, _CWD, _NOTHING = range(4)
_STATE_STEP: tuple[int, ...] = tuple(
    _PROCESS
    if t.name in PROCESS_TYPES
    else _CREDS
    if t.family is system_records.FAMILY
    else _CWD
    if t.family is file_records.FAMILY
    else _NOTHING
    for t in EVENT_TYPES
)


class ContainerFields:
    """cgroup id -> container fields, via the containers helper's resolver (cached per id;
    the info object is cached, not its fields, so metadata that arrives later shows up)."""

    def __init__(self, resolver: ContainerResolver | None) -> None:
        self.resolver = resolver
        self._infos: dict[int, ContainerInfo] = {}

    def info(self, cgroup_id: int, pid: int) -> ContainerInfo | None:
        """The container (or host) of a cgroup id; None when it cannot be told."""
        if self.resolver is None:
            return None
        info = self._infos.get(cgroup_id)
        if info is None:
            info = self.resolver.resolve_cgroup_id(cgroup_id) or self.resolver.resolve_pid(pid)
            if info is None:
                return None
            if len(self._infos) > 65536:
                self._infos.clear()
            self._infos[cgroup_id] = info
        return info

    def __call__(self, cgroup_id: int, pid: int) -> dict[str, Any]:
        info = self.info(cgroup_id, pid)
        return dict(_HOST) if info is None else info.fields()


class Enricher:
    def __init__(
        self,
        table: ProcessTable | None = None,
        resolver: ContainerResolver | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.table = table if table is not None else ProcessTable()
        self.clock = clock if clock is not None else Clock()
        self.containers = ContainerFields(resolver)
        self.count = 0

    def seed(self) -> int:
        """Read /proc into the table. Call after the sensor is attached, before polling."""
        return self.table.seed()

    def event(self, raw: bytes) -> LiveEvent:
        rec = decode(raw)
        step = _STATE_STEP[rec.type]
        if step == _PROCESS:
            self.table.apply(rec)
        elif step == _CREDS:
            # the capability sets after the call: credential changes (setuid, capset...); after
            # unshare/setns of a user namespace, every capability in it (libsinsp's
            # parse_unshare_setns_exit sets them to all before the rules see the event)
            self.table.set_caps(rec.pid, system_records.caps(rec))
        elif step == _CWD:
            # A relative path from AT_FDCWD carries the kernel's walk of the current
            # directory: the freshest cwd we can know without tracing chdir(), so proc.cwd
            # follows `cd`.
            cwd = file_records.cwd_walk(rec)
            if cwd is not None:
                self.table.set_cwd(rec.pid, cwd)
        self.count += 1
        return LiveEvent(rec, self.table, self.clock, self.containers, self.count)
