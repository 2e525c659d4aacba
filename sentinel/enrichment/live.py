"""Turn the sensor's raw records into :class:`LiveEvent` mappings, keeping the process table.

The order matters and is the kernel's: each record first updates the process table (fork adds
the child, exec replaces the image, exit marks the process gone but keeps it for a while), then
becomes an event whose fields are read lazily against the table's state at that moment.
"""

from __future__ import annotations

from typing import Any

from sentinel.enrichment.containers import ContainerInfo, ContainerResolver
from sentinel.enrichment.event import Clock, LiveEvent
from sentinel.enrichment.proctable import ProcessTable
from sentinel.kernel.records import EV_EXEC, EV_EXIT, EV_FORK, EV_OPEN, OPEN_BASE, Record

_PROCESS_RECORDS = (EV_EXEC, EV_FORK, EV_EXIT)
_SHORT_OPEN = OPEN_BASE  # open records longer than this carry a directory walk
AT_FDCWD = -100
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
        rec = Record(raw)
        if rec.type in _PROCESS_RECORDS:
            self.table.apply(rec)
        elif rec.type == EV_OPEN and len(raw) > _SHORT_OPEN and rec.open_fixed[3] == AT_FDCWD:
            # A relative open carries the kernel's walk of the current directory: the freshest
            # cwd we can know without tracing chdir(), so proc.cwd follows `cd`.
            base = rec.open_base
            if base is not None:
                self.table.set_cwd(rec.pid, base)
        self.count += 1
        return LiveEvent(rec, self.table, self.clock, self.containers, self.count)
