"""Which rules can fire on the live sensor: every event type traced, every field filled.

A rule loads and compiles whether or not the live sensor produces what it tests: a check on a
field no live event carries is simply false. So "loads without an error" says little about
what a user gets at run time. This module answers the question per rule, from the same sources
the sensor uses (the event table and the getters, never a hand-kept list):

- each event type the rule can match is in the event table (the sensor traces it);
- for each of those types, every field the rule's condition reads *on that type* (the
  condition specialised to it, so a branch about opens does not count against unlink) is
  filled on that type's live events, unless libsinsp has no value for it there either: an
  ``evt.arg.<name>`` the type has no parameter of that name for (Falco's rules test
  ``evt.arg.name or evt.arg.path or evt.arg.oldpath`` to cover unlink, rmdir and rename at
  once), or an ``fd.*`` field on a type that neither acts on nor returns a descriptor (libsinsp
  extracts fd fields only for events flagged EF_USES_FD/EF_CREATES_FD; a directory fd of an
  ``*at`` call does not count);
- optionally, whether this kernel has the tracepoint at all (a syscall configured out, such as
  init_module without CONFIG_MODULES, cannot be traced whatever the table says).

``sentinel explain --live`` prints the result.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from sentinel.compiler import OTHER, CompiledRule, specialize
from sentinel.events import BY_NAME, EventType
from sentinel.events.schema import ParamType
from sentinel.fields import FIELDS
from sentinel.language import ast

SYSCALL_EVENTS = Path("/sys/kernel/tracing/events/syscalls")


@dataclass(slots=True)
class RuleLiveness:
    rule: str
    event_types: list[str]
    untraced: list[str] = field(default_factory=list)  # not in the event table
    no_tracepoint: list[str] = field(default_factory=list)  # this kernel lacks it
    unfilled: dict[str, list[str]] = field(default_factory=dict)  # field -> its event types

    @property
    def live(self) -> bool:
        """Every event type traced and every field filled (the kernel aside)."""
        return not self.untraced and not self.unfilled and bool(self.event_types)

    @property
    def live_here(self) -> bool:
        return self.live and not self.no_tracepoint


def condition_fields(expr: ast.Expr) -> set[str]:
    """The registry names of the fields a (macro-expanded) condition reads."""
    out: set[str] = set()
    for node in ast.walk(expr):
        if isinstance(node, ast.Check):
            for f in ast.operand_fields(node.lhs) + ast.operand_fields(node.rhs):
                if f.name in FIELDS:
                    out.add(f.name)
    return out


def applies(name: str, t: EventType) -> bool:
    """Whether libsinsp could give field ``name`` a value on event type ``t`` at all."""
    if name.startswith("evt.arg."):
        return any(p.name == name.removeprefix("evt.arg.") for p in t.params)
    if name.startswith("fd."):
        return any(p.type is ParamType.FD and not p.name.endswith("dirfd") for p in t.params)
    return True


def kernel_tracepoints() -> Callable[[str], bool] | None:
    """A test "does this kernel have the exit tracepoint of syscall event type T", or None
    when tracefs is not readable here (not mounted, not root): then nothing is claimed."""
    if not SYSCALL_EVENTS.is_dir():
        return None

    def has(evt_type: str) -> bool:
        t = BY_NAME[evt_type]
        if t.syscall is None:
            return True
        return (SYSCALL_EVENTS / f"sys_exit_{t.syscall.name}").is_dir()

    return has


def rule_liveness(
    rules: Collection[CompiledRule],
    filled: dict[str, set[str]],
    has_tracepoint: Callable[[str], bool] | None = None,
) -> list[RuleLiveness]:
    """Per rule: what keeps it from firing live. ``filled``: field -> the event types whose
    live events carry it (sentinel.enrichment.event.sensor_fields)."""
    out = []
    for r in rules:
        types = sorted(t for t in r.event_types if t != OTHER)
        row = RuleLiveness(r.name, types)
        if OTHER in r.event_types:
            row.untraced.append("<any other>")
        for t in types:
            if t not in BY_NAME:
                row.untraced.append(t)
                continue
            if has_tracepoint is not None and not has_tracepoint(t):
                row.no_tracepoint.append(t)
            evt = BY_NAME[t]
            for name in sorted(condition_fields(specialize(r.expr, t))):
                if t not in filled.get(name, ()) and applies(name, evt):
                    row.unfilled.setdefault(name, []).append(t)
        out.append(row)
    return out
