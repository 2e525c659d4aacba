"""Live events: a sensor record plus the process table, as a lazy Falco-field Mapping.

Why lazy: at hundreds of thousands of events per second, computing the ~80 fields a record
can carry would dominate. The engine reads fields only through ``event.get(name)``, so each
field is computed on first request (and cached); a rule that looks at ``evt.type`` and
``fd.name`` costs two small lookups. :meth:`LiveEvent.to_dict` materialises everything, for
``sentinel capture`` (the replay format).

Which fields an event has, and how each is computed, comes from the event table
(:func:`sentinel.events.getters_for`: the header's, the parameters', the family's) plus the
process table's fields (:mod:`.process_fields`) and the container resolver's, assembled once
per event type. So "does the sensor fill field F" is a fact of the code, not a declaration
(:func:`sensor_fields`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from sentinel.enrichment.containers import CONTAINER_FIELDS
from sentinel.enrichment.dns import name_getters
from sentinel.enrichment.process_fields import INDEXED, PROCESS, RECORD_DEPENDENT
from sentinel.enrichment.proctable import Proc, ProcessTable
from sentinel.events import BY_NAME, EVENT_TYPES, EventType, getters_for
from sentinel.events.args import indexed_arg
from sentinel.events.record import Record
from sentinel.events.schema import Getter


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


def _getters(t: EventType) -> dict[str, Getter]:
    out = dict(PROCESS.fns)
    out.update(getters_for(t))  # the event's own fields win over the process table's
    out.update(name_getters(out))  # fd.sip.name... where the event type has the addresses
    return out


# Per event code: field -> getter; the fields memoised per process; the others.
GETTERS: tuple[dict[str, Getter], ...] = tuple(_getters(t) for t in EVENT_TYPES)
_PROC_FIELDS = tuple(n for n in PROCESS.fns if n.startswith("proc.") and n not in RECORD_DEPENDENT)
_EVENT_FIELDS: tuple[tuple[str, ...], ...] = tuple(
    tuple(n for n in g if n not in _PROC_FIELDS) for g in GETTERS
)


def live_getters(evt_type: str) -> dict[str, Getter] | None:
    """The field functions live events of this type bring (``LiveEvent.getters``), for the
    engine to build their matchers before the first one arrives."""
    t = BY_NAME.get(evt_type)
    return None if t is None else GETTERS[t.code]


def sensor_fields(event_types: set[str] | frozenset[str] | None = None) -> dict[str, set[str]]:
    """Field -> the event types (of ``event_types``, default all) that fill it on live
    events: derived from the getters, never declared."""
    out: dict[str, set[str]] = {}
    for t, g in zip(EVENT_TYPES, GETTERS, strict=True):
        if event_types is not None and t.name not in event_types:
            continue
        for name in [*g, *INDEXED, "evt.arg", *CONTAINER_FIELDS]:
            out.setdefault(name, set()).add(t.name)
    return out


def filled_fields() -> frozenset[str]:
    """Every field some traced event type fills (what ``sentinel validate`` checks rules
    against)."""
    return _FILLED


_FILLED = frozenset(sensor_fields())


class LiveEvent(Mapping[str, Any]):
    """A live event. ``get(name)`` computes a Falco field on demand; unknown fields are None."""

    __slots__ = ("_cache", "_containers", "_proc", "clock", "getters", "num", "rec", "table")

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
        # evt.type is asked of every event (the engine's dispatch), so it starts cached
        self._cache: dict[str, Any] = {"evt.type": rec.evt.name}
        self._proc: Proc | None = None
        # field -> its function for this event type: ``get`` uses it, and the engine calls
        # them directly (sentinel.engine: one matcher per type, no lookup per field)
        self.getters = GETTERS[rec.type]

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
        fn = self.getters.get(name)
        if fn is not None:
            value = fn(self)
        elif name.endswith("]") and "[" in name and not name.startswith(("container.", "k8s.")):
            base, _, arg = name[:-1].partition("[")
            if base == "evt.arg":
                value = indexed_arg(self.rec.evt, self, arg)
            else:
                ifn = INDEXED.get(base)
                if ifn is None:
                    return default
                value = ifn(self, arg)
        elif name.startswith(("container.", "k8s.")):  # incl. the flat k8s.pod.label[KEY] keys
            value = self._container_fields().get(name)
        else:
            return default
        cache[name] = value
        return value

    def memo(self, key: str, fn: Callable[[], Any]) -> Any:
        """A value several getters share, computed once per event."""
        cache = self._cache
        if key not in cache:
            cache[key] = fn()
        return cache[key]

    def memo_call(self, key: str, fn: Callable[[LiveEvent], Any]) -> Any:
        """:meth:`memo` of ``fn(self)``: the hot paths' form (no closure made per call)."""
        cache = self._cache
        try:
            return cache[key]
        except KeyError:
            value = cache[key] = fn(self)
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
            getters = self.getters
            for name in _PROC_FIELDS:
                value = getters[name](self)
                if value is not None:
                    memo[name] = value
            proc.memo = memo
            proc.memo_version = version
        out: dict[str, Any] = {}
        get = self.get
        for name in _EVENT_FIELDS[self.rec.type]:
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
