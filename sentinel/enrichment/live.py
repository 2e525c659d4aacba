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
from sentinel.events import decode
from sentinel.events import file as file_records
from sentinel.events import system as system_records

_HOST = {"container.id": "host", "container.full_id": "host", "container.name": "host"}


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
        name = rec.evt.name
        if name in PROCESS_TYPES:
            self.table.apply(rec)
        elif rec.evt.family is system_records.FAMILY:
            # the capability sets after the call: credential changes (setuid, capset...); after
            # unshare/setns of a user namespace, every capability in it (libsinsp's
            # parse_unshare_setns_exit sets them to all before the rules see the event)
            self.table.set_caps(rec.pid, system_records.caps(rec))
        self.count += 1
        ev = LiveEvent(rec, self.table, self.clock, self.containers, self.count)
        fam = rec.evt.family
        if fam is file_records.FAMILY:
            # A relative path from AT_FDCWD carries the kernel's walk of the current
            # directory: the freshest cwd we can know without tracing chdir(), so proc.cwd
            # follows `cd`.
            cwd = file_records.cwd_walk(rec)
            if cwd is not None:
                self.table.set_cwd(rec.pid, cwd)
        return ev
