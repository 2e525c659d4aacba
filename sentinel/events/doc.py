"""The README's tables about events, generated from the event table and the getters (the same
sources the sensor, ``sentinel fields --sensor`` and ``sentinel explain`` use, so the README
cannot drift from the code). ``python -m sentinel.readme`` writes them into README.md;
tests/test_readme.py fails when the README's copy is stale."""

from __future__ import annotations

from collections.abc import Iterable

from sentinel.events import EVENT_TYPES, FAMILIES


def truth_table() -> str:
    """Per family (and the event types with their own sources): where what rules judge comes
    from, the kernel's objects or the caller's memory."""
    rows = ["| event types | what rules judge comes from |", "|---|---|"]
    for fam in FAMILIES:
        groups: dict[str, list[str]] = {}
        for t in fam.event_types:
            groups.setdefault(t.truth, []).append(t.name)
        for text, names in groups.items():
            rows.append(f"| {', '.join(names)} | {text} |")
    return "\n".join(rows)


def _code(names: Iterable[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def event_types_table() -> list[str]:
    lines = [
        "| family | event type | category | tracepoint | parameters (`evt.arg.<name>`: type) |",
        "|---|---|---|---|---|",
    ]
    for fam in FAMILIES:
        for t in fam.event_types:
            params = ", ".join(f"`{p.name}`: {p.type.value}" for p in t.params) or "—"
            tps = ", ".join(f"`{tp}`" for tp in t.tracepoints)
            lines.append(f"| {fam.name} | `{t.name}` | {t.category.value} | {tps} | {params} |")
    return lines


def _scope(types: set[str]) -> str:
    """The event types a field is filled on, as short as it is exact: "every event type",
    whole families by name, then single types."""
    if types >= {t.name for t in EVENT_TYPES}:
        return "every event type"
    parts, rest = [], set(types)
    for fam in FAMILIES:
        names = set(fam.type_names)
        if names <= rest:
            parts.append(f"{fam.name} family")
            rest -= names
    order = [t.name for t in EVENT_TYPES]
    parts += [f"`{t}`" for t in sorted(rest, key=order.index)]
    return ", ".join(parts)


def fields_table() -> list[str]:
    from sentinel.enrichment.event import sensor_fields
    from sentinel.fields import FIELDS

    filled = sensor_fields()
    rows: dict[str, list[str]] = {}
    for name in FIELDS:  # registry order: evt, proc, thread, user, group, fd, fs, container...
        if name in filled and not name.startswith("evt.arg."):
            rows.setdefault(_scope(filled[name]), []).append(name)
    lines = ["| filled on | fields |", "|---|---|"]
    lines += [f"| {scope} | {_code(names)} |" for scope, names in rows.items()]
    return lines


def types_and_fields() -> str:
    """The traced event types with their parameters, then the fields the sensor fills."""
    out = [
        "### Traced event types",
        "",
        f"{len(EVENT_TYPES)} event types in {len(FAMILIES)} families, from the event table",
        "(`sentinel/events/`, [docs/design.md](docs/design.md)). Parameter types render as",
        "libsinsp renders them (`evt.arg.<name>`, `evt.args`); a syscall this kernel has no",
        "tracepoint for is left out at start and reported (`sentinel explain --live` says which",
        "rules that affects).",
        "",
        *event_types_table(),
        "",
        "### Fields the sensor fills",
        "",
        "Per set of event types whose live events carry them (`sentinel fields --sensor`; the",
        "`evt.arg.<name>` fields are each event type's parameters above). A check on a field an",
        "event does not carry is false, as in Falco.",
        "",
        *fields_table(),
    ]
    return "\n".join(out)
