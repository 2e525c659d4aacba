"""AST -> condition text, in a canonical form that parses back to the same tree.

Used by ``sentinel explain`` and by the round-trip property test. Every And/Or/Not is
parenthesised so precedence never depends on the reader.
"""

from __future__ import annotations

import re

from sentinel.language import ast

_BARE_OK = re.compile(r"""[^ \t\r\n\x08(),="']+""")
_KEYWORDS = {"and", "or", "not"}


def quote(s: str) -> str:
    """Double-quote ``s`` with the escapes libsinsp's unescape understands."""
    out = (
        s.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
        .replace("\b", "\\b")
        .replace("\f", "\\f")
    )
    return f'"{out}"'


def value_text(v: ast.Value) -> str:
    text = v.text
    if _BARE_OK.fullmatch(text) and text not in _KEYWORDS and not text.startswith("not("):
        # a bare value that also looks like a number/oneof stays bare: it is read back as-is
        return text
    return quote(text)


def operand_text(o: ast.Operand) -> str:
    if isinstance(o, ast.FieldRef):
        if o.arg is None:
            return o.name
        if re.fullmatch(r"""[^ \t\r\n\x08\[\]"']+""", o.arg):
            return f"{o.name}[{o.arg}]"
        return f"{o.name}[{quote(o.arg)}]"
    if isinstance(o, ast.Literal):
        return quote(o.value)
    return f"{o.name}(" + ", ".join(operand_text(a) for a in o.args) + ")"


def rhs_text(r: ast.Rhs) -> str:
    if isinstance(r, ast.Value):
        return value_text(r)
    if isinstance(r, ast.ListValue):
        return "(" + ", ".join(value_text(i) for i in r.items) + ")"
    if isinstance(r, ast.ListRef):
        return r.name
    return operand_text(r)


def to_text(e: ast.Expr) -> str:
    if isinstance(e, ast.And):
        return "(" + " and ".join(to_text(c) for c in e.children) + ")"
    if isinstance(e, ast.Or):
        return "(" + " or ".join(to_text(c) for c in e.children) + ")"
    if isinstance(e, ast.Not):
        return f"not {to_text(e.child)}"
    if isinstance(e, ast.MacroRef):
        return e.name
    if isinstance(e, ast.Const):
        # no literal booleans in Falco's language: spell them with a check that folds
        return "(evt.num >= 0)" if e.value else "(evt.num < 0)"
    lhs = operand_text(e.lhs)
    if e.rhs is None:
        return f"{lhs} {e.op}"
    mod = f" {e.modifier}" if e.modifier else ""
    return f"{lhs} {e.op}{mod} {rhs_text(e.rhs)}"
