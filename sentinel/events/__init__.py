"""The event table: every Falco event type the sensor produces, declared once.

Families (one module each) declare their record layout, their event types (tracepoint, handler
call, Falco parameters, deny shape) and the fields they fill; this module assembles them in a
fixed order, which gives every event type its code (``hdr.type`` in records, the ``EVT_*``
constants in C, the counter index). Everything else is derived from here:

- C: :func:`sentinel.events.cgen.header` (constants, record structs, tracepoint stubs);
- records: :class:`sentinel.events.record.Record` (decoding through the layouts);
- fields: :func:`getters_for` (per event type, the fields it fills and how);
- prefilter: :attr:`Family.kernel_fields` and :data:`PREFILTER_FAMILIES`;
- enforcement: :attr:`EventType.deny`.

To add an event type, see docs/design.md ("Adding an event type").
"""

from __future__ import annotations

from sentinel.events import exec as _exec
from sentinel.events import fd as _fd
from sentinel.events import file as _file
from sentinel.events import link as _link
from sentinel.events import net as _net
from sentinel.events import process as _process
from sentinel.events import system as _system
from sentinel.events.args import arg_getters
from sentinel.events.common import COMMON
from sentinel.events.record import Record
from sentinel.events.schema import EventType, Family, Getter

# Order is ABI: it numbers the event types (append new families and types at the end of their
# family; codes may change between builds, both sides are generated from this table).
FAMILIES: tuple[Family, ...] = (
    _exec.FAMILY,
    _process.FAMILY,
    _file.FAMILY,
    _link.FAMILY,
    _net.FAMILY,
    _fd.FAMILY,
    _system.FAMILY,
)
EVENT_TYPES: tuple[EventType, ...] = tuple(t for f in FAMILIES for t in f.event_types)
for _code, _t in enumerate(EVENT_TYPES):
    _t.code = _code
BY_NAME: dict[str, EventType] = {t.name: t for t in EVENT_TYPES}
BY_FAMILY: dict[str, Family] = {f.name: f for f in FAMILIES}
# Families the prefilter judges; it judges each of their event types on its own terms (a rule
# the kernel cannot constrain on unlink must not leave openat unfiltered), keyed by event code.
PREFILTER_FAMILIES: tuple[Family, ...] = tuple(f for f in FAMILIES if f.prefilter)
PREFILTER_CODES: dict[str, int] = {
    t.name: t.code for f in PREFILTER_FAMILIES for t in f.event_types
}

if len(BY_NAME) != len(EVENT_TYPES):
    raise RuntimeError("an event type is declared twice in the event table")


def decode(raw: bytes) -> Record:
    """A ring-buffer record, decoded through the table."""
    return Record(raw, EVENT_TYPES)


def getters_for(t: EventType) -> dict[str, Getter]:
    """The fields an event type fills from its record alone: the header's, its parameters'
    (``evt.arg.*``, ``evt.res``...) and its family's. Process and container fields are added
    by enrichment (sentinel.enrichment.event)."""
    assert t.family is not None
    out = dict(COMMON.for_type(t.name))
    out.update(arg_getters(t).fns)
    out.update(t.family.getters.for_type(t.name))
    return out


def family_types(name: str) -> tuple[str, ...]:
    return BY_FAMILY[name].type_names


__all__ = [
    "BY_FAMILY",
    "BY_NAME",
    "EVENT_TYPES",
    "FAMILIES",
    "PREFILTER_CODES",
    "PREFILTER_FAMILIES",
    "EventType",
    "Family",
    "Record",
    "decode",
    "family_types",
    "getters_for",
]
