"""The per-event-type matcher's shape: rules grouped under the conditions they share.

Why: after specialisation to one event type, most candidate rules (22 of Falco's for an
openat) still begin with the same few tests: every open-for-read rule with
``evt.is_open_read = true and fd.typechar = f and fd.num >= 0`` (Falco's ``open_read``),
every write rule with ``open_write``. Tested rule by
rule, a read event pays for the write test of each write rule and for the read test of each
read rule again. Grouped, a shared test is one ``if`` around the rules that need it, so a
read event skips all the write rules with one test, and the read rules' shared tests run once.
Falco's own ruleset does the first step of this (rules indexed by event type); this is the
next step inside one event type.

A rule's conjuncts are tested cheapest first (:func:`cost`): upstream rules often put an
ancestor scan (``proc.aname[2] in (...)``) before ``proc.name in shell_binaries``, which
decides most events for a fraction of the price.

Rules whose first tests compare one field with different values (``proc.name in
shell_binaries``, ``proc.name = sudo``...: 20 of the execve candidates) sit under one test
of the union of those values (one set lookup, :mod:`sentinel.compiler.merge`), so an exec
of a name none of them lists skips them all at once; each still tests its own values inside.

Grouping and ordering change evaluation, never the answer: conditions are pure (field getters
have no side effects), every rule is still tested exactly when its whole condition holds, and
the matcher reports its hits in rule order (the first of them under ``matching: first``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sentinel.compiler.merge import merge_key
from sentinel.fields import FIELDS, Kind
from sentinel.language import ast

# fields a live event computes from more than its record (the parent, the container)
_DEAR = ("container.", "k8s.", "proc.pname", "proc.pcmdline", "proc.pexe", "proc.sname")
# ops that run a pattern engine or scan a string rather than compare once
_SCANS = frozenset({"regex", "glob", "iglob", "pmatch", "contains", "icontains", "bcontains"})


@dataclass(frozen=True)
class Leaf:
    """Rule ``index`` matches when ``rest`` (its conjuncts not tested by an enclosing block)
    all hold; an empty ``rest`` means the enclosing blocks already decided it."""

    index: int
    rest: tuple[ast.Expr, ...]


@dataclass(frozen=True)
class Block:
    """The nodes of ``body`` are tested only when ``guard`` holds."""

    guard: ast.Expr
    body: tuple[Node, ...]


Node = Leaf | Block


def conjuncts(e: ast.Expr) -> tuple[ast.Expr, ...]:
    """The top-level ``and`` terms of a specialised condition (``true`` has none)."""
    if isinstance(e, ast.And):
        return e.children
    if isinstance(e, ast.Const) and e.value:
        return ()
    return (e,)


def plan(rules: Sequence[tuple[int, ast.Expr]]) -> tuple[Node, ...]:
    """Nodes testing each ``(index, condition)``. Each rule's conjuncts are put cheapest first
    (:func:`cost`, stable: equal prices keep the author's order); rules whose first conjunct
    is the same share one block testing it, and the rest of their conjuncts are planned alike.

    Only a rule's first (cheapest) conjunct can become a block: hoisting a dear test that many
    rules share (an ancestor scan in a package-manager exception) above the cheap test that
    decides most events (``evt.is_open_write``) would make every event pay for it."""
    return _plan([(i, tuple(sorted(conjuncts(c), key=cost))) for i, c in rules])


def _plan(rules: list[tuple[int, tuple[ast.Expr, ...]]]) -> tuple[Node, ...]:
    out: list[Node] = []
    by_first: dict[ast.Expr, list[tuple[int, tuple[ast.Expr, ...]]]] = {}
    for i, terms in rules:
        if terms:
            by_first.setdefault(terms[0], []).append((i, terms))
        else:
            out.append(Leaf(i, ()))
    # rules whose first tests compare one field with different values (proc.name in
    # shell_binaries, proc.name = sudo, ...) sit under one test of the union of those values
    by_field: dict[object, list[tuple[ast.Expr, Node]]] = {}
    for first, members in by_first.items():
        if len(members) < 2:
            node: Node = Leaf(*members[0])
        else:
            node = Block(first, _plan([(i, terms[1:]) for i, terms in members]))
        by_field.setdefault(merge_key(first) or first, []).append((first, node))
    for group in by_field.values():
        if len(group) < 2:
            out.append(group[0][1])
        else:
            out.append(Block(ast.Or(tuple(f for f, _n in group)), tuple(n for _f, n in group)))
    return tuple(out)


def cost(e: ast.Expr) -> int:
    """A rough price of testing ``e`` (relative units: one memoised field compared once is
    1), to test the cheap conjuncts of a rule first. Only the order depends on it."""
    if isinstance(e, ast.Const):
        return 0
    if isinstance(e, ast.Not):
        # an exception (``and not ...``) is nearly always true, so it rarely decides: after
        # every positive test, however dear
        return cost(e.child) + 100
    if isinstance(e, ast.And | ast.Or):
        return sum(cost(c) for c in e.children)
    if not isinstance(e, ast.Check):
        return 10
    if not isinstance(e.lhs, ast.FieldRef):
        return 8  # a transformer
    price = 1 if e.lhs.arg is None else 2
    info = FIELDS.get(e.lhs.name)
    if info is not None and info.kind is not Kind.SCALAR and e.lhs.arg is None:
        price += 4  # a loop over the values
    if (info is not None and info.kind is Kind.ANCESTORS) or e.lhs.name.startswith(_DEAR):
        price += 3  # live events: a walk of the process table, the container resolver
    if e.op in _SCANS or e.modifier:
        price += 2
    if isinstance(e.rhs, ast.Transform):
        price += 6
    return price


def rule_indexes(nodes: Sequence[Node]) -> list[int]:
    """Every rule index the plan tests (for checking that none was lost)."""
    out: list[int] = []
    for n in nodes:
        if isinstance(n, Leaf):
            out.append(n.index)
        else:
            out.extend(rule_indexes(n.body))
    return out
