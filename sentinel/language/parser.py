"""Condition text -> AST, with lark (LALR, contextual lexer) and the grammar in ``grammar/``.

The parser is built once per process (lark caches the LALR tables). Errors come out as
:class:`ConditionSyntaxError` with a 1-based (line, column) inside the condition string and a
message in Falco's words where it has one; the loader maps the position into the YAML file.
"""

from __future__ import annotations

import functools
from typing import Any

import lark
from lark import Token, Transformer, v_args

from sentinel.language import ast
from sentinel.paths import GRAMMAR_DIR

MAX_DEPTH = 100  # libsinsp's limit on nesting


class ConditionSyntaxError(ValueError):
    """A condition that does not parse. ``line``/``column`` are 1-based, in the condition."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "\\": "\\", "/": "/", " ": "\\"}


def unescape(quoted: str) -> str:
    """libsinsp's ``unescape_str``: strip the quotes, resolve backslash escapes.

    ``\\"`` is only valid in a double-quoted string and ``\\'`` in a single-quoted one; ``\\ ``
    yields a backslash (a libsinsp quirk kept for old rules).
    """
    delim = quoted[0]
    body = quoted[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        if i + 1 >= len(body):
            raise ValueError("unterminated escape sequence at end of string")
        e = body[i + 1]
        if e in ('"', "'"):
            if e != delim:
                other = "'" if delim == "'" else '"'
                raise ValueError(f"invalid \\{e} escape in {other}-quoted string")
            out.append(e)
        elif e in _ESCAPES:
            out.append(_ESCAPES[e])
        else:
            raise ValueError(f"unsupported string escape sequence: \\{e}")
        i += 2
    return "".join(out)


def _pos(tok: Token) -> ast.Pos:
    return (tok.line or 0, tok.column or 0)


def _unescape_tok(tok: Token) -> str:
    try:
        return unescape(str(tok))
    except ValueError as exc:
        raise ConditionSyntaxError(str(exc), tok.line or 1, tok.column or 1) from None


def _split_field(tok: Token) -> ast.FieldRef:
    text = str(tok)
    if text.endswith("]") and "[" in text:
        name, _, arg = text[:-1].partition("[")
        if arg[:1] in ('"', "'"):
            arg = _unescape_tok(Token("QUOTED", arg, line=tok.line, column=tok.column))
        return ast.FieldRef(name, arg, _pos(tok))
    return ast.FieldRef(text, None, _pos(tok))


class _ToAst(Transformer[Token, ast.Expr]):
    """lark parse tree -> :mod:`sentinel.language.ast` nodes."""

    @v_args(inline=True)
    def macro_ref(self, tok: Token) -> ast.MacroRef:
        return ast.MacroRef(str(tok), _pos(tok))

    def or_expr(self, items: list[Any]) -> ast.Expr:
        kids = tuple(i for i in items if not isinstance(i, Token))
        return ast.Or(kids, _node_pos(kids[0]))

    def and_expr(self, items: list[Any]) -> ast.Expr:
        kids = tuple(i for i in items if not isinstance(i, Token))
        return ast.And(kids, _node_pos(kids[0]))

    @v_args(inline=True)
    def not_(self, tok: Token, child: ast.Expr) -> ast.Not:
        return ast.Not(child, _pos(tok))

    @v_args(inline=True)
    def not_paren(self, tok: Token, child: ast.Expr) -> ast.Not:
        return ast.Not(child, _pos(tok))

    @v_args(inline=True)
    def field(self, tok: Token) -> ast.FieldRef:
        return _split_field(tok)

    def transformer(self, items: list[Any]) -> ast.Transform:
        head: Token = items[0]
        name = str(head)[:-1]
        args = tuple(items[1:])
        return ast.Transform(name, args, _pos(head))

    @v_args(inline=True)
    def quoted_arg(self, tok: Token) -> ast.Literal:
        return ast.Literal(_unescape_tok(tok), _pos(tok))

    @v_args(inline=True)
    def value(self, tok: Token) -> ast.Value:
        return ast.Value(str(tok), False, _pos(tok))

    @v_args(inline=True)
    def quoted_value(self, tok: Token) -> ast.Value:
        return ast.Value(_unescape_tok(tok), True, _pos(tok))

    @v_args(inline=True)
    def list_ref(self, tok: Token) -> ast.ListRef:
        return ast.ListRef(str(tok), _pos(tok))

    def list_value(self, items: list[Any]) -> ast.ListValue:
        return ast.ListValue(tuple(i for i in items if i is not None))

    @v_args(inline=True)
    def unary_check(self, lhs: ast.FieldRef | ast.Transform, op: Token) -> ast.Check:
        return ast.Check(lhs, str(op), None, None, _node_pos(lhs))

    @v_args(inline=True)
    def binary_check(self, lhs: ast.FieldRef | ast.Transform, op: Token, rhs: Any) -> ast.Check:
        return ast.Check(lhs, str(op), rhs, None, _node_pos(lhs))

    @v_args(inline=True)
    def modifier_check(
        self, lhs: ast.FieldRef | ast.Transform, op: Token, mod: Token, rhs: ast.ListValue
    ) -> ast.Check:
        return ast.Check(lhs, str(op), rhs, str(mod), _node_pos(lhs))


def _node_pos(node: Any) -> ast.Pos:
    return getattr(node, "pos", (0, 0))


@functools.cache
def _lark() -> lark.Lark:
    return lark.Lark(
        (GRAMMAR_DIR / "condition.lark").read_text(),
        parser="lalr",
        lexer="contextual",
        propagate_positions=False,
        maybe_placeholders=False,
    )


_EXPECT_NAMES = {
    "NOT": "'not'",
    "NOT_PAREN": "'not('",
    "AND": "'and'",
    "OR": "'or'",
    "LPAR": "'('",
    "RPAR": "')'",
    "COMMA": "','",
    "FIELD": "a field",
    "IDENTIFIER": "a macro name",
    "LISTNAME": "a list name",
    "TRANSFORMER_OPEN": "a transformer",
    "UNARY_OP": "'exists'",
    "NUM_OP": "a numeric operator",
    "STR_OP": "a string operator",
    "LIST_OP": "a list operator",
    "MODIFIER": "oneof/anyof/allof",
    "NUMBER": "a number",
    "HEXNUMBER": "a hex number",
    "QUOTED": "a quoted string",
    "BARESTR": "a string value",
    "$END": "end of condition",
}


def _expected(names: set[str] | frozenset[str]) -> str:
    shown = sorted({_EXPECT_NAMES.get(n, n) for n in names})
    return ", ".join(shown)


def _depth(text: str) -> int:
    depth = best = 0
    for c in text:
        if c == "(":
            depth += 1
            best = max(best, depth)
        elif c == ")":
            depth -= 1
    return best


def parse(text: str) -> ast.Expr:
    """Parse one condition. Raises :class:`ConditionSyntaxError`."""
    if not text.strip():
        raise ConditionSyntaxError("filter input string is empty", 1, 1)
    if _depth(text) >= MAX_DEPTH:
        raise ConditionSyntaxError(f"exceeded max depth limit of {MAX_DEPTH}", 1, 1)
    try:
        tree = _lark().parse(text)
        result = _ToAst().transform(tree)
    except lark.exceptions.UnexpectedCharacters as exc:
        raise ConditionSyntaxError(
            f"unexpected character {text[exc.pos_in_stream or 0]!r}"
            + (f", expecting {_expected(exc.allowed)}" if exc.allowed else ""),
            exc.line,
            exc.column,
        ) from None
    except lark.exceptions.UnexpectedToken as exc:
        tok = exc.token
        if tok.type == "$END":
            line, col = _end_pos(text)
            what = "unexpected end of condition"
        else:
            line, col = tok.line or 1, tok.column or 1
            what = f"unexpected token {str(tok)!r}"
        raise ConditionSyntaxError(
            f"{what}, expecting {_expected(exc.expected)}", line, col
        ) from None
    except lark.exceptions.UnexpectedEOF as exc:
        line, col = _end_pos(text)
        raise ConditionSyntaxError(
            f"unexpected end of condition, expecting {_expected(set(exc.expected))}", line, col
        ) from None
    except lark.exceptions.VisitError as exc:
        if isinstance(exc.orig_exc, ConditionSyntaxError):
            raise exc.orig_exc from None
        raise
    if not isinstance(result, ast.And | ast.Or | ast.Not | ast.Check | ast.MacroRef):
        raise ConditionSyntaxError("expected a condition", 1, 1)
    return result


def _end_pos(text: str) -> tuple[int, int]:
    lines = text.rstrip().split("\n")
    return len(lines), len(lines[-1]) + 1
