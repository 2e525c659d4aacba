"""Event-type analysis and specialisation of expanded conditions.

Most Falco conditions start with an event-type test (``spawned_process``, ``open_write``...).
``maybe_true`` computes, for every event type, whether a condition can be true at all (two sets
per node: where it may be true, where it may be false; ``not`` swaps them), which is exact for
``evt.type`` checks and sound elsewhere. ``specialize`` then substitutes one event type into a
condition and folds constants, so the per-type predicate never re-tests ``evt.type``.
"""

from __future__ import annotations

import functools
from typing import Any

from sentinel.compiler.codegen import CodeGen, compile_function
from sentinel.fields import EVENT_TYPES
from sentinel.language import ast

OTHER = "\x00other"  # stands for every event type Sentinel has no name for
UNIVERSE: frozenset[str] = EVENT_TYPES | {OTHER}


def _only_evt_type(c: ast.Check) -> bool:
    fields = ast.operand_fields(c.lhs) + ast.operand_fields(c.rhs)
    return bool(fields) and all(f.name == "evt.type" and f.arg is None for f in fields)


@functools.lru_cache(maxsize=8192)
def _check_fn(c: ast.Check) -> Any:
    gen = CodeGen()
    return compile_function("_chk", [f"return bool({gen.check(c)})"], gen)


def eval_type_check(c: ast.Check, evt_type: str | None) -> bool:
    """The value of an ``evt.type``-only check for one event type (None: no type at all)."""
    if evt_type is None:
        return bool(_check_fn(c)({}))
    if evt_type == OTHER:
        evt_type = "\x00"  # matches no name a rule can spell
    return bool(_check_fn(c)({"evt.type": evt_type}))


def maybe_true(e: ast.Expr) -> frozenset[str]:
    """Event types (from :data:`UNIVERSE`) for which ``e`` can be true."""
    return _sets(e)[0]


def _sets(e: ast.Expr) -> tuple[frozenset[str], frozenset[str]]:
    if isinstance(e, ast.Const):
        return (UNIVERSE, frozenset()) if e.value else (frozenset(), UNIVERSE)
    if isinstance(e, ast.Check):
        if _only_evt_type(e):
            true = frozenset(t for t in UNIVERSE if eval_type_check(e, t))
            return true, UNIVERSE - true
        return UNIVERSE, UNIVERSE
    if isinstance(e, ast.Not):
        t, f = _sets(e.child)
        return f, t
    if isinstance(e, ast.And):
        ts, fs = zip(*(_sets(c) for c in e.children), strict=True)
        return frozenset.intersection(*ts), frozenset.union(*fs)
    if isinstance(e, ast.Or):
        ts, fs = zip(*(_sets(c) for c in e.children), strict=True)
        return frozenset.union(*ts), frozenset.intersection(*fs)
    raise TypeError(f"unexpanded node {e!r}")


def specialize(e: ast.Expr, evt_type: str | None) -> ast.Expr:
    """``e`` with ``evt.type`` fixed to ``evt_type``, constants folded, and/or flattened."""
    if isinstance(e, ast.Check):
        if _only_evt_type(e):
            return ast.Const(eval_type_check(e, evt_type))
        return e
    if isinstance(e, ast.Const):
        return e
    if isinstance(e, ast.Not):
        child = specialize(e.child, evt_type)
        if isinstance(child, ast.Const):
            return ast.Const(not child.value)
        if isinstance(child, ast.Not):
            return child.child
        return ast.Not(child, e.pos)
    if not isinstance(e, ast.And | ast.Or):
        raise TypeError(f"unexpanded node {e!r}")
    is_and = isinstance(e, ast.And)
    kids: list[ast.Expr] = []
    for c in e.children:
        s = specialize(c, evt_type)
        if isinstance(s, ast.Const):
            if s.value is is_and:
                continue  # neutral element
            return ast.Const(not is_and)  # absorbing element
        if isinstance(s, ast.And if is_and else ast.Or):
            kids.extend(s.children)
        else:
            kids.append(s)
    if not kids:
        return ast.Const(is_and)
    if len(kids) == 1:
        return kids[0]
    return ast.And(tuple(kids), e.pos) if is_and else ast.Or(tuple(kids), e.pos)
