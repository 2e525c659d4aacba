"""Sibling checks on one field, merged into one test.

Why: Falco's macros and exception lists expand into long chains on a single field:
``fd.name startswith /etc/ or fd.name startswith /usr/ or ...`` (35 prefixes in one upstream
rule), ``proc.name = a or proc.name in (b, c)``, and each exception as its own ``and not
(...)``. Generated one by one, every link fetches the field, tests it for None and makes a
call. ``str.startswith`` takes a tuple and a frozenset answers membership in one step, so a
chain costs one C call instead of dozens of bytecode-level tests.

Reordering inside an ``or`` (or an ``and`` of negations) is sound: a check has no side
effects (field getters are pure and memoised), so which link is tested first changes only the
cost, never the truth value. Only scalar fields of plain value types take part: IP fields have
their own comparison (networks), flags test bits, bytes compare bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from sentinel.fields import FIELDS, FieldType, Kind
from sentinel.language import ast

MergeKind: TypeAlias = Literal["startswith", "endswith", "eq"]

# value types whose checks compare with == / str methods and nothing else
_PLAIN = frozenset(FieldType) - {
    FieldType.IPADDR,
    FieldType.IPNET,
    FieldType.FLAGS,
    FieldType.BYTES,
}


@dataclass(frozen=True)
class Group:
    """Checks ``field <kind> value`` for several values: true when any of them is."""

    field: ast.FieldRef
    kind: MergeKind
    checks: tuple[ast.Check, ...]


def merge_key(c: ast.Expr) -> tuple[ast.FieldRef, MergeKind] | None:
    """The (field, kind) ``c`` can be merged under, or None when it must stay alone."""
    if not isinstance(c, ast.Check) or c.modifier or not isinstance(c.lhs, ast.FieldRef):
        return None
    info = FIELDS.get(c.lhs.name)
    if info is None or info.type not in _PLAIN:
        return None
    if info.kind is not Kind.SCALAR and c.lhs.arg is None:
        return None
    if c.op in ("startswith", "endswith") and isinstance(c.rhs, ast.Value):
        return c.lhs, c.op  # type: ignore[return-value]  # narrowed by the test above
    if c.op in ("=", "==", "in") and isinstance(c.rhs, ast.Value):
        return c.lhs, "eq"
    if c.op == "in" and isinstance(c.rhs, ast.ListValue) and c.rhs.items:
        return c.lhs, "eq"
    return None


def group(children: Sequence[ast.Expr], negated: bool) -> list[ast.Expr | Group]:
    """``children`` of an ``or`` (``negated`` False) or of an ``and`` (``negated`` True: only
    ``not check`` children merge, as ``not (a or b)``), with each set of two or more mergeable
    checks replaced by one :class:`Group` at the place of its first member."""
    keyed: list[tuple[ast.Expr, tuple[ast.FieldRef, MergeKind] | None]] = []
    for child in children:
        inner = child.child if negated and isinstance(child, ast.Not) else None
        target = inner if negated else child
        keyed.append((child, merge_key(target) if target is not None else None))
    members: dict[tuple[ast.FieldRef, MergeKind], list[ast.Check]] = {}
    for child, key in keyed:
        if key is not None:
            check = child.child if negated else child  # type: ignore[union-attr]
            assert isinstance(check, ast.Check)
            members.setdefault(key, []).append(check)
    out: list[ast.Expr | Group] = []
    placed: set[tuple[ast.FieldRef, MergeKind]] = set()
    for child, key in keyed:
        if key is None or len(members[key]) < 2:
            out.append(child)
        elif key not in placed:
            placed.add(key)
            out.append(Group(key[0], key[1], tuple(members[key])))
    return out
