"""The condition AST: an immutable tree the loader, compiler and printer all share.

Nodes are frozen dataclasses so that a macro's tree can be spliced into many rules and
specialised (e.g. per event type) without copies leaking changes between them. ``pos`` is the
(line, column) of the node inside its condition string, 1-based; it does not take part in
equality, so two trees that print the same compare equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

Pos: TypeAlias = tuple[int, int]


@dataclass(frozen=True, slots=True)
class FieldRef:
    """A field, with its optional ``[arg]`` (``proc.aname[2]`` -> name proc.aname, arg "2")."""

    name: str
    arg: str | None = None
    pos: Pos = field(default=(0, 0), compare=False)

    @property
    def key(self) -> str:
        return self.name if self.arg is None else f"{self.name}[{self.arg}]"


@dataclass(frozen=True, slots=True)
class Transform:
    """A transformer call: ``tolower(x)``, ``len(x)``, ``concat(a, b)``, or ``val(field)``."""

    name: str
    args: tuple[Operand, ...]
    pos: Pos = field(default=(0, 0), compare=False)


@dataclass(frozen=True, slots=True)
class Literal:
    """A string argument inside a transformer call (``join(",", proc.aname)``)."""

    value: str
    pos: Pos = field(default=(0, 0), compare=False)


Operand: TypeAlias = FieldRef | Transform | Literal


@dataclass(frozen=True, slots=True)
class Value:
    """A right-hand value as written. ``quoted`` keeps how it was spelled, for printing."""

    text: str
    quoted: bool = field(default=False, compare=False)
    pos: Pos = field(default=(0, 0), compare=False)


@dataclass(frozen=True, slots=True)
class ListValue:
    """``(a, "b c", 'd')``; items stay :class:`Value` so list names can be told from strings."""

    items: tuple[Value, ...]
    pos: Pos = field(default=(0, 0), compare=False)


@dataclass(frozen=True, slots=True)
class ListRef:
    """A bare list name after a list operator: ``proc.name in shell_binaries``."""

    name: str
    pos: Pos = field(default=(0, 0), compare=False)


Rhs: TypeAlias = Value | ListValue | ListRef | Transform


@dataclass(frozen=True, slots=True)
class Check:
    """``lhs op rhs``; ``rhs`` is None for ``exists``; ``modifier`` is oneof/anyof/allof."""

    lhs: FieldRef | Transform
    op: str
    rhs: Rhs | None = None
    modifier: str | None = None
    pos: Pos = field(default=(0, 0), compare=False)


@dataclass(frozen=True, slots=True)
class MacroRef:
    name: str
    pos: Pos = field(default=(0, 0), compare=False)


@dataclass(frozen=True, slots=True)
class Not:
    child: Expr
    pos: Pos = field(default=(0, 0), compare=False)


@dataclass(frozen=True, slots=True)
class And:
    children: tuple[Expr, ...]
    pos: Pos = field(default=(0, 0), compare=False)


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple[Expr, ...]
    pos: Pos = field(default=(0, 0), compare=False)


@dataclass(frozen=True, slots=True)
class Const:
    """A truth value the compiler folded (never produced by the parser)."""

    value: bool


Expr: TypeAlias = And | Or | Not | Check | MacroRef | Const

UNARY_OPS = frozenset({"exists"})
NUM_OPS = frozenset({"<", "<=", ">", ">="})
STR_OPS = frozenset(
    {
        "=",
        "==",
        "!=",
        "glob",
        "iglob",
        "contains",
        "icontains",
        "bcontains",
        "startswith",
        "bstartswith",
        "endswith",
        "regex",
    }
)
LIST_OPS = frozenset({"in", "intersects", "pmatch"})
ALL_OPS = UNARY_OPS | NUM_OPS | STR_OPS | LIST_OPS
MODIFIERS = frozenset({"oneof", "anyof", "allof"})
TRANSFORMERS = frozenset({"tolower", "toupper", "b64", "basename", "len", "join", "concat"})


def walk(expr: Expr) -> list[Expr]:
    """All nodes of a boolean tree, pre-order (checks are leaves)."""
    out: list[Expr] = []
    stack: list[Expr] = [expr]
    while stack:
        node = stack.pop()
        out.append(node)
        if isinstance(node, And | Or):
            stack.extend(reversed(node.children))
        elif isinstance(node, Not):
            stack.append(node.child)
    return out


def operand_fields(operand: Operand | Rhs | None) -> list[FieldRef]:
    """Every field an operand reads, through nested transformers."""
    if isinstance(operand, FieldRef):
        return [operand]
    if isinstance(operand, Transform):
        return [f for a in operand.args for f in operand_fields(a)]
    return []


def fields_of(expr: Expr) -> list[FieldRef]:
    """Every field a boolean tree reads (macros not expanded)."""
    out: list[FieldRef] = []
    for node in walk(expr):
        if isinstance(node, Check):
            out.extend(operand_fields(node.lhs))
            out.extend(operand_fields(node.rhs))
    return out
