"""AST -> Python source for the user-space predicate.

Each check becomes one short-circuiting expression over ``g`` (the event's ``get``) with its
constants (sets, regexes, networks) bound by name in the function's globals. A missing value is
``None`` and every check guards on it first, so "a check on a missing field is false" holds
without exceptions on the hot path. Values were typed at compile time (:mod:`.values`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from sentinel.compiler import merge, runtime
from sentinel.compiler.values import convert, glob_to_regex
from sentinel.fields import FIELDS, FieldType, Kind
from sentinel.language import ast

_IPISH = (FieldType.IPADDR, FieldType.IPNET)
_UNSET = object()  # "not fetched yet" for memoised fields (None means "no value")

RUNTIME_NAMES: dict[str, Any] = {
    "_field_arg": runtime.field_arg,
    "_t_tolower": runtime.t_tolower,
    "_t_toupper": runtime.t_toupper,
    "_t_basename": runtime.t_basename,
    "_t_b64": runtime.t_b64,
    "_t_len": runtime.t_len,
    "_t_join": runtime.t_join,
    "_t_concat": runtime.t_concat,
    "_pmatch": runtime.pmatch,
    "_flags": runtime.flags,
    "_ip_eq": runtime.ip_eq,
    "_ip_in": runtime.ip_in,
    "_as_bytes": runtime.as_bytes,
    "_as_list": runtime.as_list,
}


def operand_type(o: ast.Operand) -> tuple[FieldType, Kind]:
    """The type and kind of the value an operand produces."""
    if isinstance(o, ast.FieldRef):
        info = FIELDS.get(o.name)
        if info is None:
            return FieldType.STRING, Kind.SCALAR
        if o.arg is not None:
            return info.type, Kind.SCALAR
        return info.type, info.kind
    if isinstance(o, ast.Literal):
        return FieldType.STRING, Kind.SCALAR
    if o.name == "len":
        return FieldType.INT, Kind.SCALAR
    if o.name == "val":
        return operand_type(o.args[0])
    if o.name in ("join", "concat"):
        return FieldType.STRING, Kind.SCALAR
    _t, kind = operand_type(o.args[0])
    return FieldType.STRING, kind


class CodeGen:
    """Accumulates constants while turning checks into expressions."""

    def __init__(
        self,
        memo_fields: bool = False,
        merge_checks: bool = True,
        direct: Mapping[str, Callable[[Any], Any]] | None = None,
    ) -> None:
        self.consts: dict[str, Any] = dict(RUNTIME_NAMES)
        # direct: field -> the function that computes it from the event (a live event's
        # getters for its type). A check then calls that function itself instead of going
        # through ``e.get`` (the event's cache and getter lookup: ~0.3 us a field, most of a
        # cheap check's cost). Only with memo_fields, so each is still computed once a call.
        self.direct = direct if memo_fields and direct is not None else {}
        # merge_checks: sibling checks on one field become one test (:mod:`.merge`); off only
        # for the reference evaluation the tests compare the engine with
        self.merge_checks = merge_checks
        self._by_key: dict[Any, str] = {}
        self._n = 0
        # With memo_fields, each field is fetched at most once per call: the first use stores
        # it in a local (``_fN``), later uses read the local. Lazy events compute nothing that
        # no check reaches; dict events save repeated lookups across rules.
        self.memo_fields = memo_fields
        self.field_vars: dict[str, str] = {}

    def prologue(self) -> list[str]:
        """Lines that must start the function body (memo locals)."""
        if not self.field_vars:
            return []
        return [" = ".join(self.field_vars.values()) + " = _U"]

    def const(self, value: Any) -> str:
        try:
            key: Any = (type(value), value)
            hash(key)
        except TypeError:
            key = id(value)
        name = self._by_key.get(key)
        if name is None:
            name = f"_c{len(self._by_key)}"
            self._by_key[key] = name
            self.consts[name] = value
        return name

    def tmp(self) -> str:
        self._n += 1
        return f"_v{self._n}"

    # -- boolean structure -----------------------------------------------------------------
    def expr(self, e: ast.Expr) -> str:
        if isinstance(e, ast.And):
            parts = self._parts(e.children, negated=True)
            return "(" + " and ".join(self._part(p, negated=True) for p in parts) + ")"
        if isinstance(e, ast.Or):
            parts = self._parts(e.children, negated=False)
            return "(" + " or ".join(self._part(p, negated=False) for p in parts) + ")"
        if isinstance(e, ast.Not):
            return f"(not {self.expr(e.child)})"
        if isinstance(e, ast.Const):
            return "True" if e.value else "False"
        if isinstance(e, ast.Check):
            return self.check(e)
        raise TypeError(f"unexpanded node {e!r}")

    def _parts(self, children: tuple[ast.Expr, ...], negated: bool) -> list[ast.Expr | merge.Group]:
        if not self.merge_checks:
            return list(children)
        return merge.group(children, negated)

    def _part(self, p: ast.Expr | merge.Group, negated: bool) -> str:
        if not isinstance(p, merge.Group):
            return self.expr(p)
        test = self._group(p)
        return f"(not {test})" if negated else test

    def _group(self, g: merge.Group) -> str:
        """One test for several checks of a field (:mod:`.merge`): any of them holds."""
        ltype, _kind = operand_type(g.field)
        v = self.tmp()
        lhs = self.operand(g.field)
        if g.kind == "eq":
            values: set[Any] = set()
            for c in g.checks:
                if isinstance(c.rhs, ast.ListValue):
                    values.update(convert(i.text, ltype, c.op) for i in c.rhs.items)
                elif isinstance(c.rhs, ast.Value):
                    values.add(convert(c.rhs.text, ltype, c.op))
            return f"(({v} := {lhs}) is not None and {v} in {self.const(frozenset(values))})"
        texts = [c.rhs.text for c in g.checks if isinstance(c.rhs, ast.Value)]
        affixes = tuple(dict.fromkeys(convert(t, ltype, g.kind) for t in texts))
        return f"(({v} := {lhs}) is not None and {v}.{g.kind}({self.const(affixes)}))"

    # -- operands --------------------------------------------------------------------------
    def operand(self, o: ast.Operand) -> str:
        if isinstance(o, ast.FieldRef):
            if o.arg is None:
                fn = self.direct.get(o.name)
                fetch = f"g({o.name!r})" if fn is None else f"{self.const(fn)}(e)"
            else:
                fetch = f"_field_arg(e, {o.name!r}, {o.arg!r}, {o.key!r})"
            if not self.memo_fields:
                return fetch
            # proc.aname[2] & co are memoised too: a call to a helper is dearer than a get
            var = self.field_vars.get(o.key)
            if var is None:
                var = self.field_vars[o.key] = f"_f{len(self.field_vars)}"
            return f"({var} if {var} is not _U else ({var} := {fetch}))"
        if isinstance(o, ast.Literal):
            return repr(o.value)
        if o.name == "val":
            return self.operand(o.args[0])
        args = ", ".join(self.operand(a) for a in o.args)
        return f"_t_{o.name}({args})"

    # -- checks ----------------------------------------------------------------------------
    def check(self, c: ast.Check) -> str:
        lhs = self.operand(c.lhs)
        ltype, lkind = operand_type(c.lhs)
        v = self.tmp()
        if c.op == "exists":
            return f"({lhs} is not None)"
        if lkind is Kind.SCALAR:
            test = self._scalar_test(c, ltype, v)
        else:
            test = self._multi_test(c, ltype, lkind, v)
        return f"(({v} := {lhs}) is not None and {test})"

    def _multi_test(self, c: ast.Check, ltype: FieldType, lkind: Kind, v: str) -> str:
        if isinstance(c.rhs, ast.ListValue) and c.op in ("in", "intersects") and not c.modifier:
            items = frozenset(convert(i.text, ltype, c.op) for i in c.rhs.items)
            k = self.const(items)
            if c.op == "in" and lkind is Kind.LIST:
                return f"{k}.issuperset({v})"
            return f"(not {k}.isdisjoint({v}))"
        x = self.tmp()
        inner = self._scalar_test(c, ltype, x)
        if lkind is Kind.EITHER and c.op == "!=":
            return f"all({inner} for {x} in {v})"  # differs from both ends (libsinsp)
        return f"any({inner} for {x} in {v})"

    def _scalar_test(self, c: ast.Check, ltype: FieldType, v: str) -> str:
        rhs = c.rhs
        op = c.op
        if isinstance(rhs, ast.Transform):
            w = self.tmp()
            return f"(({w} := {self.operand(rhs)}) is not None and {self._dyn(op, v, w)})"
        if isinstance(rhs, ast.ListValue):
            if c.modifier:
                tests = [self._value_test(op, ltype, v, i.text) for i in rhs.items]
                if not tests:
                    return "False" if c.modifier != "allof" else "True"
                joiner = " and " if c.modifier == "allof" else " or "
                return "(" + joiner.join(tests) + ")"
            return self._list_test(op, ltype, v, rhs)
        if isinstance(rhs, ast.Value):
            return self._value_test(op, ltype, v, rhs.text)
        raise TypeError(f"unresolved right-hand side {rhs!r}")

    def _list_test(self, op: str, ltype: FieldType, v: str, rhs: ast.ListValue) -> str:
        if op == "pmatch":
            # runtime.pmatch unrolled at compile time: the path is a prefix or under one
            prefixes = [i.text for i in rhs.items]
            exact = self.const(frozenset(prefixes))
            under = self.const(
                tuple(dict.fromkeys(p if p.endswith("/") else p + "/" for p in prefixes))
            )
            return f"({v} in {exact} or {v}.startswith({under}))"
        items = [convert(i.text, ltype, op) for i in rhs.items]
        if ltype in _IPISH:
            return f"_ip_in({v}, {self.const(tuple(items))})"
        return f"({v} in {self.const(frozenset(items))})"

    def _value_test(self, op: str, ltype: FieldType, v: str, text: str) -> str:
        value = convert(text, ltype, op)
        if op in ("=", "==", "!="):
            if ltype in _IPISH:
                t = f"_ip_eq({v}, {self.const(value)})"
            else:
                t = f"({v} == {self.const(value)})"
            return f"(not {t})" if op == "!=" else t
        if op in ("<", "<=", ">", ">="):
            return f"({v} {op} {self.const(value)})"
        if op == "contains":
            if ltype is FieldType.FLAGS:
                return f"({self.const(value)} in _flags({v}))"
            return f"({self.const(value)} in {v})"
        if op == "icontains":
            return f"({self.const(str(value).lower())} in {v}.lower())"
        if op == "bcontains":
            return f"({self.const(value)} in _as_bytes({v}))"
        if op == "bstartswith":
            return f"_as_bytes({v}).startswith({self.const(value)})"
        if op == "startswith":
            return f"{v}.startswith({self.const(value)})"
        if op == "endswith":
            return f"{v}.endswith({self.const(value)})"
        if op in ("glob", "iglob"):
            k = self.const(glob_to_regex(value, ignore_case=op == "iglob"))
            return f"({k}.match({v}) is not None)"
        if op == "regex":
            return f"({self.const(re.compile(value))}.fullmatch({v}) is not None)"
        if op in ("in", "intersects"):
            if ltype in _IPISH:
                return f"_ip_eq({v}, {self.const(value)})"
            return f"({v} == {self.const(value)})"
        if op == "pmatch":
            return f"_pmatch({v}, {self.const((value,))})"
        raise ValueError(f"unknown operator {op!r}")

    def _dyn(self, op: str, v: str, w: str) -> str:
        """A check whose right side is computed per event (val(), transformers)."""
        if op in ("=", "==", "in", "intersects"):
            return f"({v} == {w} or (isinstance({w}, (list, tuple)) and {v} in {w}))"
        if op == "!=":
            return f"({v} != {w})"
        if op in ("<", "<=", ">", ">="):
            return f"({v} {op} {w})"
        if op == "contains":
            return f"(str({w}) in {v})"
        if op == "icontains":
            return f"(str({w}).lower() in {v}.lower())"
        if op == "startswith":
            return f"{v}.startswith(str({w}))"
        if op == "endswith":
            return f"{v}.endswith(str({w}))"
        if op == "pmatch":
            return f"_pmatch({v}, tuple(_as_list({w})))"
        if op in ("bcontains",):
            return f"(_as_bytes({w}) in _as_bytes({v}))"
        if op in ("bstartswith",):
            return f"_as_bytes({v}).startswith(_as_bytes({w}))"
        if op in ("glob", "iglob", "regex"):
            raise ValueError(f"operator {op!r} needs a constant pattern, not a field")
        raise ValueError(f"unknown operator {op!r}")


def compile_function(name: str, body: list[str], gen: CodeGen) -> Callable[..., Any]:
    """Exec ``def name(e): <body>`` with the generator's constants as globals."""
    lines = gen.prologue() + body
    # _U as a default argument: a local (LOAD_FAST) rather than a global on every memo test
    src = f"def {name}(e, _U=_U):\n    g = e.get\n" + "".join(f"    {line}\n" for line in lines)
    namespace: dict[str, Any] = dict(gen.consts)
    namespace["_U"] = _UNSET
    exec(compile(src, f"<sentinel:{name}>", "exec"), namespace)
    fn: Callable[..., Any] = namespace[name]
    fn.__sentinel_source__ = src  # type: ignore[attr-defined]  # for `explain` and debugging
    return fn
