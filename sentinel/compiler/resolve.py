"""Conditions -> complete, checked ASTs: parse, resolve lists, type-check, expand macros, and
append exceptions the way Falco does (``cond and not (exc1 or exc2 ...)``).

Every problem is reported at its place in the rules file: a bad field inside a macro points at
the macro's text, an undefined macro at the reference, a loop at the macro that closes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sentinel.compiler.codegen import operand_type
from sentinel.compiler.values import convert, glob_to_regex
from sentinel.fields import FIELDS, Arg, FieldType, Kind
from sentinel.fields.registry import NUMERIC
from sentinel.language import ConditionSyntaxError, ast, parse, unescape
from sentinel.loader import CondText, Diagnostics, ExceptionDef, RuleDef, RuleSet
from sentinel.loader.errors import Location

_STRINGY = (FieldType.STRING, FieldType.CHAR, FieldType.FLAGS, FieldType.BYTES)
_STRING_OPS = {"contains", "icontains", "startswith", "endswith", "glob", "iglob", "regex"}
_ALL_OPS = ast.ALL_OPS


class CompileError(Exception):
    """One problem at one place; collected into Diagnostics by the caller."""

    def __init__(self, message: str, pos: ast.Pos | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos


@dataclass
class _Ctx:
    cond: CondText | None
    label: str
    fallback: Location

    def locate(self, pos: ast.Pos | None) -> Location:
        if self.cond is not None and pos and pos[0] > 0:
            loc = self.cond.locate(pos[0], pos[1])
            if loc is not None:
                return loc
        return self.fallback


class Resolver:
    def __init__(self, rs: RuleSet, diag: Diagnostics) -> None:
        self.rs = rs
        self.diag = diag
        self._macro_cache: dict[str, ast.Expr | None] = {}

    # -- parsing and checking one condition text -----------------------------------------
    def _parse(self, cond: CondText, ctx: _Ctx) -> ast.Expr | None:
        try:
            return parse(cond.text)
        except ConditionSyntaxError as exc:
            self.diag.error(exc.message, ctx.locate((exc.line, exc.column)), ctx.label)
            return None

    def _list_items(self, name: str) -> list[ast.Value] | None:
        lst = self.rs.lists.get(name)
        if lst is None:
            return None
        out = []
        for item in lst.items:
            text = item
            if len(item) >= 2 and item[0] == item[-1] and item[0] in ('"', "'"):
                try:
                    text = unescape(item)
                except ValueError:
                    text = item
            out.append(ast.Value(text, True))
        return out

    def _resolve_rhs(self, rhs: ast.Rhs | None) -> ast.Rhs | None:
        if isinstance(rhs, ast.ListRef):
            items = self._list_items(rhs.name)
            if items is None:
                raise CompileError(f"undefined list '{rhs.name}'", rhs.pos)
            return ast.ListValue(tuple(items), rhs.pos)
        if isinstance(rhs, ast.ListValue):
            out: list[ast.Value] = []
            for it in rhs.items:
                expanded = self._list_items(it.text)
                if expanded is not None:
                    out.extend(expanded)
                else:
                    out.append(it)
            return ast.ListValue(tuple(out), rhs.pos)
        return rhs

    def _check_field(self, f: ast.FieldRef) -> None:
        info = FIELDS.get(f.name)
        if info is None:
            raise CompileError(f"unknown field '{f.name}'", f.pos)
        if f.arg is None:
            if info.arg is Arg.REQUIRED:
                raise CompileError(f"field '{f.name}' requires an argument", f.pos)
            return
        if info.kind is Kind.ANCESTORS or info.arg is Arg.INDEX:
            if not f.arg.isdigit():
                raise CompileError(f"field '{f.name}' takes a numeric index, not {f.arg!r}", f.pos)
        elif info.arg is Arg.NONE:
            raise CompileError(f"field '{f.name}' does not take an argument", f.pos)

    def _check_operand(self, o: ast.Operand, rhs: bool) -> None:
        if isinstance(o, ast.FieldRef):
            self._check_field(o)
            return
        if isinstance(o, ast.Literal):
            return
        if o.name == "val":
            if not rhs:
                raise CompileError("val() can only be used on the right side", o.pos)
            if len(o.args) != 1 or not isinstance(o.args[0], ast.FieldRef):
                raise CompileError("val() takes exactly one field", o.pos)
        elif o.name == "join":
            if len(o.args) != 2 or not isinstance(o.args[0], ast.Literal):
                raise CompileError(
                    'join() takes a quoted separator and a field: join(",", f)', o.pos
                )
        elif o.name == "concat":
            if len(o.args) < 2:
                raise CompileError("concat() takes two or more arguments", o.pos)
        else:
            if len(o.args) != 1 or isinstance(o.args[0], ast.Literal):
                raise CompileError(f"{o.name}() takes exactly one field or transformer", o.pos)
        for a in o.args:
            self._check_operand(a, rhs=False)

    def _check_check(self, c: ast.Check) -> None:
        self._check_operand(c.lhs, rhs=False)
        if isinstance(c.rhs, ast.Transform):
            self._check_operand(c.rhs, rhs=True)
        ltype, _kind = operand_type(c.lhs)
        op = c.op
        if op in ast.NUM_OPS and ltype not in NUMERIC:
            raise CompileError(
                f"operator '{op}' needs a numeric field, '{_name(c.lhs)}' is {ltype.value}",
                c.pos,
            )
        if op in _STRING_OPS and ltype not in _STRINGY:
            raise CompileError(
                f"operator '{op}' is not supported on '{_name(c.lhs)}' of type {ltype.value}",
                c.pos,
            )
        if isinstance(c.rhs, ast.Transform):
            if op in ("glob", "iglob", "regex"):
                raise CompileError(f"operator '{op}' needs a constant pattern", c.pos)
            return
        values: list[ast.Value] = []
        if isinstance(c.rhs, ast.Value):
            values = [c.rhs]
        elif isinstance(c.rhs, ast.ListValue):
            values = list(c.rhs.items)
        for v in values:
            try:
                converted = convert(v.text, ltype, op)
                if op in ("glob", "iglob"):
                    glob_to_regex(converted)
                elif op == "regex":
                    import re

                    re.compile(converted)
            except (ValueError, Exception) as exc:  # re.error is an Exception
                raise CompileError(
                    f"invalid value for '{_name(c.lhs)}' {op}: {exc}", v.pos or c.pos
                ) from None

    def _resolve(self, e: ast.Expr) -> ast.Expr:
        """Resolve lists and type-check every check of one parsed condition."""
        if isinstance(e, ast.Check):
            rhs = self._resolve_rhs(e.rhs)
            c = ast.Check(e.lhs, e.op, rhs, e.modifier, e.pos)
            if e.modifier and not isinstance(rhs, ast.ListValue):
                raise CompileError(f"'{e.modifier}' needs a list of values", e.pos)
            self._check_check(c)
            return c
        if isinstance(e, ast.Not):
            return ast.Not(self._resolve(e.child), e.pos)
        if isinstance(e, ast.And):
            return ast.And(tuple(self._resolve(c) for c in e.children), e.pos)
        if isinstance(e, ast.Or):
            return ast.Or(tuple(self._resolve(c) for c in e.children), e.pos)
        return e

    def checked(self, cond: CondText, ctx: _Ctx, skip_unknown: bool = False) -> ast.Expr | None:
        tree = self._parse(cond, ctx)
        if tree is None:
            return None
        try:
            return self._resolve(tree)
        except CompileError as exc:
            if skip_unknown and exc.message.startswith("unknown field"):
                raise
            self.diag.error(exc.message, ctx.locate(exc.pos), ctx.label)
            return None

    # -- macros ----------------------------------------------------------------------------
    def macro(self, name: str) -> ast.Expr | None:
        if name not in self._macro_cache:
            m = self.rs.macros[name]
            ctx = _Ctx(m.condition, f"macro '{name}'", m.location)
            self._macro_cache[name] = self.checked(m.condition, ctx)
        return self._macro_cache[name]

    def expand(self, e: ast.Expr, ctx: _Ctx, stack: tuple[str, ...]) -> ast.Expr | None:
        if isinstance(e, ast.MacroRef):
            if e.name not in self.rs.macros:
                self.diag.error(f"undefined macro '{e.name}'", ctx.locate(e.pos), ctx.label)
                return None
            if e.name in stack:
                cycle = " -> ".join((*stack[stack.index(e.name) :], e.name))
                self.diag.error(f"macro loop: {cycle}", ctx.locate(e.pos), ctx.label)
                return None
            body = self.macro(e.name)
            if body is None:
                return None
            m = self.rs.macros[e.name]
            inner = _Ctx(m.condition, f"macro '{e.name}'", m.location)
            return self.expand(body, inner, (*stack, e.name))
        if isinstance(e, ast.Not):
            child = self.expand(e.child, ctx, stack)
            return None if child is None else ast.Not(child, e.pos)
        if isinstance(e, ast.And | ast.Or):
            kids = [self.expand(c, ctx, stack) for c in e.children]
            if any(k is None for k in kids):
                return None
            return type(e)(tuple(k for k in kids if k is not None), e.pos)
        return e

    # -- exceptions ------------------------------------------------------------------------
    def _exc_field(self, text: str, ex: ExceptionDef) -> ast.FieldRef:
        try:
            tree = parse(f"{text} exists")
        except ConditionSyntaxError:
            raise CompileError(f"exception '{ex.name}': invalid field {text!r}") from None
        assert isinstance(tree, ast.Check) and isinstance(tree.lhs, ast.FieldRef)
        return tree.lhs

    def _exc_rhs(self, comp: str, value: object, ex: ExceptionDef) -> ast.Rhs:
        if comp in ast.LIST_OPS:
            if isinstance(value, list):
                items: list[ast.Value] = []
                for v in value:
                    expanded = self._list_items(str(v))
                    items.extend(expanded if expanded is not None else [ast.Value(str(v), True)])
                return ast.ListValue(tuple(items))
            expanded = self._list_items(str(value))
            if expanded is not None:
                return ast.ListValue(tuple(expanded))
            return ast.ListValue((ast.Value(str(value), True),))
        if isinstance(value, list):
            raise CompileError(
                f"exception '{ex.name}': a list value needs a list operator, not '{comp}'"
            )
        return ast.Value(str(value), True)

    def exception_expr(self, ex: ExceptionDef) -> ast.Expr | None:
        if not ex.values:
            return None
        if ex.fields is None:
            raise CompileError(f"exception '{ex.name}' has values but no fields")
        single = isinstance(ex.fields, str)
        fields = [ex.fields] if isinstance(ex.fields, str) else list(ex.fields)
        if single:
            comp = ex.comps if isinstance(ex.comps, str) else "in"
            comps = [comp]
        else:
            if ex.comps is None:
                comps = ["="] * len(fields)
            elif isinstance(ex.comps, str):
                raise CompileError(f"exception '{ex.name}': comps must be a list like fields")
            else:
                comps = [str(c) for c in ex.comps]
            if len(comps) != len(fields):
                raise CompileError(
                    f"exception '{ex.name}': fields and comps lists must have the same length"
                )
        for comp in comps:
            if comp not in _ALL_OPS or comp == "exists":
                raise CompileError(f"exception '{ex.name}': invalid comparison operator {comp!r}")
        refs = [self._exc_field(f, ex) for f in fields]
        alternatives: list[ast.Expr] = []
        if single:
            comp = comps[0]
            if comp in ast.LIST_OPS:
                alternatives.append(ast.Check(refs[0], comp, self._exc_rhs(comp, ex.values, ex)))
            else:
                for v in ex.values:
                    alternatives.append(ast.Check(refs[0], comp, self._exc_rhs(comp, v, ex)))
        else:
            for tup in ex.values:
                if not isinstance(tup, list) or len(tup) != len(fields):
                    raise CompileError(
                        f"exception '{ex.name}': each value must be a list of {len(fields)} "
                        f"items (one per field), got {tup!r}"
                    )
                checks = tuple(
                    ast.Check(r, c, self._exc_rhs(c, v, ex))
                    for r, c, v in zip(refs, comps, tup, strict=True)
                )
                alternatives.append(checks[0] if len(checks) == 1 else ast.And(checks))
        for alt in alternatives:
            for node in ast.walk(alt):
                if isinstance(node, ast.Check):
                    self._check_check(node)
        return alternatives[0] if len(alternatives) == 1 else ast.Or(tuple(alternatives))

    # -- rules -----------------------------------------------------------------------------
    def rule(self, r: RuleDef) -> ast.Expr | None:
        """The rule's full condition, or None after reporting (or skipping) it."""
        ctx = _Ctx(r.condition, f"rule '{r.name}'", r.location)
        try:
            tree = self.checked(r.condition, ctx, skip_unknown=r.skip_if_unknown_filter)
        except CompileError as exc:
            self.diag.warn(
                f"{exc.message}; rule skipped (skip-if-unknown-filter)",
                ctx.locate(exc.pos),
                ctx.label,
                code="skipped",
            )
            return None
        if tree is None:
            return None
        full = self.expand(tree, ctx, ())
        if full is None:
            return None
        excs: list[ast.Expr] = []
        for ex in r.exceptions:
            try:
                e = self.exception_expr(ex)
            except CompileError as exc:
                self.diag.error(exc.message, ex.location, ctx.label)
                return None
            if e is not None:
                excs.append(e)
        if excs:
            either = excs[0] if len(excs) == 1 else ast.Or(tuple(excs))
            full = ast.And((full, ast.Not(either)))
        return full


def _name(o: ast.Operand) -> str:
    if isinstance(o, ast.FieldRef):
        return o.key
    if isinstance(o, ast.Literal):
        return repr(o.value)
    return f"{o.name}(...)"
