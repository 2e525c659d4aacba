"""The kernel part of each rule: a necessary condition the BPF programs can test cheaply.

For every event type the prefilter judges (those of the exec, file and connect families: see
sentinel.events), a rule's condition is specialised to the type and abstracted: each check on a
field the event table binds to a kernel dimension for that type (comm, uid, the family's path
exact/prefix/suffix, open intent, result, destination port, address, socket family) becomes a
*constraint* on that dimension; every other check becomes "unknown" (true). A negated check
becomes a *negative* constraint (the value must NOT be one of these: ``not proc.name in
(...)``, ``fd.net != 127.0.0.0/8``) where the kernel's value is exactly the field's and the
check an exact equivalence (equality, a path's startswith/endswith, a CIDR); a negated boolean
is the other value; any other negated check is unknown. The result is put in
disjunctive normal form: a list of *terms*, each a conjunction of per-dimension constraints
("boxes"). Dropping a check only widens a term, so the kernel part is an over-approximation:
whenever the full condition can be true, some term is true. That is the invariant the kernel
filter relies on to drop events safely.

Encoding the terms into map contents is :mod:`.tables`' job; :mod:`.maps` writes them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sentinel.compiler.fold import specialize
from sentinel.compiler.values import IPNetwork, parse_bool
from sentinel.events import BY_NAME, PREFILTER_FAMILIES, Family
from sentinel.events.args import enum_text
from sentinel.events.dims import BIND_DIMS, PATH_DIMS, Bind, Dim
from sentinel.events.schema import Param
from sentinel.language import ast
from sentinel.prefilter.layout import LPM_PAYLOAD, PATH_MAX_KEY

COMM_LEN = 15  # TASK_COMM_LEN - 1: proc.name is the task's comm
MAX_TERMS_PER_RULE = 32

# The event types the prefilter judges (each on its own terms), and their families.
TYPES: tuple[str, ...] = tuple(t for f in PREFILTER_FAMILIES for t in f.type_names)
FAMILY_OF: dict[str, str] = {t: f.name for f in PREFILTER_FAMILIES for t in f.type_names}


def _dims(f: Family) -> tuple[Dim, ...]:
    binds = [*f.kernel_fields.values(), *(b for t in f.event_types for b in t.binds.values())]
    used = {d for b in binds for d in BIND_DIMS[b]}
    return tuple(d for d in Dim if d in used)


# The dimensions the BPF code evaluates for each event type: its family's (the union of the
# family's bindings'; its handler computes them all).
DIMS_OF: dict[str, tuple[Dim, ...]] = {
    t: _dims(f) for f in PREFILTER_FAMILIES for t in f.type_names
}


def bindings(evt_type: str) -> dict[str, Bind]:
    """The fields a rule may test that the kernel knows exactly for this event type: the
    family's bindings, less the fields its getters do not fill for this type."""
    t = BY_NAME[evt_type]
    fam = t.family
    assert fam is not None
    only = fam.getters.only
    own = {
        name: b
        for name, b in fam.kernel_fields.items()
        if name not in only or evt_type in only[name]
    }
    return {**own, **t.binds}


def _params(evt_type: str) -> dict[str, Param]:
    return {f"evt.arg.{p.name}": p for p in BY_NAME[evt_type].params}


# What a path dimension is about, per event type (for `sentinel explain`).
PATH_FIELD = {
    t: next(n for n, b in bindings(t).items() if b is Bind.PATH)
    for t in TYPES
    if Bind.PATH in bindings(t).values()
}


Value = str | int | bool | IPNetwork


def dim_label(dim: Dim, evt_type: str | None = None) -> str:
    """A dimension's name as `explain` shows it: the path dims name the type's path field."""
    field_name = PATH_FIELD.get(evt_type or "")
    if field_name is None or dim not in PATH_DIMS:
        return dim.value
    return field_name + {Dim.PATH: "", Dim.PATH_PREFIX: " prefix", Dim.PATH_SUFFIX: " suffix"}[dim]


@dataclass(frozen=True, slots=True)
class Constraint:
    """The dimension's value must be one of ``values`` (exact), or start/end with one (prefix,
    suffix dims), or lie in one of the networks (daddr)."""

    dim: Dim
    values: frozenset[Value]
    negated: bool = False  # the value must be none of ``values`` (see tables: miss masks)
    # a positive prefix/suffix/network constraint's exceptions: the value must also be under
    # none of these ("fd.name startswith /etc and not fd.name startswith /etc/ssl/")
    excluded: frozenset[Value] = frozenset()

    def describe(self, evt_type: str | None = None) -> str:
        shown = sorted(str(v) for v in self.values)
        if len(shown) > 6:
            shown = [*shown[:6], f"... ({len(self.values)} values)"]
        verb = {
            Dim.PATH_PREFIX: "starts with",
            Dim.PATH_SUFFIX: "ends with",
            Dim.DADDR: "in",
        }.get(self.dim, "is")
        if self.negated:
            verb = {
                "is": "is not",
                "in": "not in",
                "starts with": "does not start with",
                "ends with": "does not end with",
            }[verb]
        if self.excluded:
            verb = f"{verb} (but none of {sorted(str(v) for v in self.excluded)})"
        name = dim_label(self.dim, evt_type)
        if self.dim in (Dim.PATH_PREFIX, Dim.PATH_SUFFIX) and evt_type in PATH_FIELD:
            name = PATH_FIELD[evt_type]  # "proc.exepath starts with ..."
        return f"{name} {verb} {{{', '.join(shown)}}}"


Term = dict[Dim, Constraint]  # a conjunction; {} is "always true"


@dataclass
class RulePlan:
    """One rule's kernel part for one event type: ``terms`` (DNF); ``[{}]`` means
    unconstrained, ``[]`` means the rule cannot match this event type at all."""

    rule: str
    evt_type: str
    terms: list[Term] = field(default_factory=list)
    approximated: list[str] = field(default_factory=list)  # what was widened, for `explain`

    @property
    def unconstrained(self) -> bool:
        return any(not t for t in self.terms)

    def describe(self) -> list[str]:
        if not self.terms:
            return ["never (no event of this type can match)"]
        return [
            " and ".join(c.describe(self.evt_type) for c in t.values()) if t else "always"
            for t in self.terms
        ]


# ---- abstraction of single checks ------------------------------------------------------------

_UNKNOWN = object()  # the check constrains nothing the kernel sees


def _values(c: ast.Check) -> list[str] | None:
    if isinstance(c.rhs, ast.Value):
        return [c.rhs.text]
    if isinstance(c.rhs, ast.ListValue):
        return [i.text for i in c.rhs.items]
    return None


def _glob_literals(pattern: str) -> str:
    """The literal runs of a glob joined by NUL (so a run never spans a wildcard)."""
    return "\0".join(re.split(r"[*?]|\[[^\]]*\]", pattern))


def _failed(name: str, op: str, vals: list[str]) -> bool | None:
    """Whether a check on the result pins the syscall's success (False) or failure (True):
    ``evt.res`` by name (SUCCESS, E...), ``evt.rawres`` and an open's ``fd.num`` by number."""
    if name == "evt.res" and len(vals) == 1:
        v = vals[0]
        if op in ("=", "==") and v == "SUCCESS":
            return False
        if (op in ("=", "==") and v.startswith("E")) or (op == "startswith" and v == "E"):
            return True
        return None
    if name == "evt.res" or len(vals) != 1:
        return None
    try:
        n = int(vals[0], 0)
    except ValueError:
        return None
    if (op in ("=", "==") and n < 0) or (op == "<" and n <= 0) or (op == "<=" and n < 0):
        return True
    if (op in ("=", "==", ">=") and n >= 0) or (op == ">" and n >= -1):
        return False
    return None


def _glob_prefix(pattern: str) -> str:
    m = re.search(r"[*?\[\\]", pattern)
    return pattern if m is None else pattern[: m.start()]


def _net(text: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None


def abstract(
    c: ast.Check, binds: Mapping[str, Bind], params: Mapping[str, Param] | None = None
) -> Constraint | object:
    """A positive check -> a constraint on one dimension, or _UNKNOWN. ``binds``: the fields
    the kernel knows exactly for the event type at hand (see :func:`bindings`); ``params``:
    its parameters by field name (an ``evt.arg`` key's value names)."""
    if not isinstance(c.lhs, ast.FieldRef) or c.lhs.arg is not None or c.modifier:
        return _UNKNOWN
    name, op = c.lhs.name, c.op
    if op == "!=":  # a != b: not (a = b)
        return abstract_negated(dataclasses.replace(c, op="="), binds, params)
    bind = binds.get(name)
    vals = _values(c)
    if bind is None or vals is None:
        return _UNKNOWN
    exact = op in ("=", "==", "in", "intersects")
    if bind in (Bind.RESULT, Bind.RESULT_FD):
        failed = _failed(name, op, vals)
        return _UNKNOWN if failed is None else Constraint(Dim.FAILED, frozenset({failed}))
    if bind is Bind.RAW_DOTDOT:
        if len(vals) != 1:
            return _UNKNOWN
        literal = vals[0] if op == "contains" else _glob_literals(vals[0]) if op == "glob" else ""
        return Constraint(Dim.RAW_DOTDOT, frozenset({True})) if "../" in literal else _UNKNOWN
    if bind is Bind.PATH:
        return _path(exact, op, vals)
    if bind is Bind.OPEN_FLAGS:
        # Falco's "Create files below dev" (incubating): without it every open below /dev,
        # /dev/null's included, reached user space. Other flag names are not judged.
        if op == "contains" and vals == ["O_CREAT"]:
            return Constraint(Dim.OPEN_CREAT, frozenset({True}))
        return _UNKNOWN
    if bind is Bind.ARG_ENUM:
        param = (params or {}).get(name)
        return _UNKNOWN if param is None else _enum(param, op, vals)
    if not exact:
        return _UNKNOWN
    if bind is Bind.COMM:
        return Constraint(Dim.COMM, frozenset(v[:COMM_LEN] for v in vals))
    if bind in (Bind.UID, Bind.PORT):
        try:
            nums = frozenset(int(v, 0) for v in vals)
        except ValueError:
            return _UNKNOWN
        return Constraint(Dim.UID if bind is Bind.UID else Dim.DPORT, nums)
    if bind is Bind.PATH_DIR:
        return Constraint(Dim.PATH_PREFIX, frozenset(_cap(v.rstrip("/") + "/") for v in vals))
    if bind is Bind.PATH_BASE:
        return Constraint(Dim.PATH_SUFFIX, frozenset(_cap("/" + v, tail=True) for v in vals))
    if bind in _BOOL_DIMS:
        if op not in ("=", "=="):
            return _UNKNOWN
        try:
            want = parse_bool(vals[0])
        except ValueError:
            return _UNKNOWN
        return Constraint(_BOOL_DIMS[bind], frozenset({want}))
    if bind is Bind.ADDR:
        nets = [_net(v) for v in vals]
        if any(n is None for n in nets):
            return _UNKNOWN
        return Constraint(Dim.DADDR, frozenset(n for n in nets if n is not None))
    if bind in _FAMILY_VALUES:
        table = _FAMILY_VALUES[bind]
        return Constraint(Dim.FAMILY, frozenset(f for v in vals for f in table.get(v, ())))
    return _UNKNOWN


def abstract_negated(
    c: ast.Check, binds: Mapping[str, Bind], params: Mapping[str, Param] | None = None
) -> Constraint | object:
    """A negated check -> a negative constraint (or a boolean's other value), or _UNKNOWN.

    Only where the positive abstraction is an exact equivalence: a widened positive (a comm
    cut to 15 bytes, a prefix capped to the trie's key, pmatch read as a prefix, a glob's
    head, fd.directory as a prefix) would, negated, exclude events the rule matches. Values
    the kernel cannot hold exactly are left out of the excluded set (excluding less is safe)."""
    if not isinstance(c.lhs, ast.FieldRef) or c.lhs.arg is not None or c.modifier:
        return _UNKNOWN
    name, op = c.lhs.name, c.op
    bind = binds.get(name)
    vals = _values(c)
    if bind is None or vals is None:
        return _UNKNOWN
    if op == "!=":  # not (a != b): a = b
        return abstract(dataclasses.replace(c, op="="), binds, params)
    exact = op in ("=", "==", "in")
    if bind in _BOOL_DIMS:
        pos = abstract(c, binds, params)
        if not isinstance(pos, Constraint) or len(pos.values) != 1:
            return _UNKNOWN
        return Constraint(pos.dim, frozenset({not next(iter(pos.values))}))
    if bind is Bind.PATH:
        if exact:
            keep = frozenset(v for v in vals if len(v.encode()) <= PATH_MAX_KEY)
            return Constraint(Dim.PATH, keep, negated=True)
        if op in ("startswith", "endswith"):
            dim = Dim.PATH_PREFIX if op == "startswith" else Dim.PATH_SUFFIX
            keep = frozenset(v for v in vals if 0 < len(v.encode()) <= LPM_PAYLOAD)
            return Constraint(dim, keep, negated=True)
        return _UNKNOWN
    if not exact:
        return _UNKNOWN
    if bind is Bind.PATH_BASE:
        keep = frozenset("/" + v for v in vals if len(("/" + v).encode()) <= LPM_PAYLOAD)
        return Constraint(Dim.PATH_SUFFIX, keep, negated=True)
    if bind is Bind.COMM:
        return Constraint(Dim.COMM, frozenset(v for v in vals if len(v) <= COMM_LEN), True)
    if bind in (Bind.UID, Bind.PORT, Bind.ADDR, Bind.ARG_ENUM) or bind in _FAMILY_VALUES:
        pos = abstract(c, binds, params)
        if not isinstance(pos, Constraint):
            return _UNKNOWN
        return Constraint(pos.dim, pos.values, negated=True)
    return _UNKNOWN


def _enum(param: Param, op: str, vals: list[str]) -> Constraint | object:
    """``evt.arg.<key>`` renders as its value's name (or the number when it has none): the
    values whose text satisfies the check. A contains-check with digits could match numbers
    without a name, which are not enumerable: unknown."""
    texts = {v: enum_text(v, param.names) for v, _n in param.names}  # as args.py renders
    if op in ("=", "==", "in", "intersects"):
        out: set[int] = set()
        for want in vals:
            out |= {v for v, text in texts.items() if text == want}
            if want.isdigit() and int(want) not in texts:
                out.add(int(want))  # an unnamed value renders as its number
        return Constraint(Dim.ARG, frozenset(out))
    if op == "contains" and len(vals) == 1 and not any(ch.isdigit() for ch in vals[0]):
        return Constraint(Dim.ARG, frozenset(v for v, text in texts.items() if vals[0] in text))
    return _UNKNOWN


_BOOL_DIMS = {
    Bind.OPEN_WRITE: Dim.OPEN_WRITE,
    Bind.OPEN_READ: Dim.OPEN_READ,
    Bind.OPEN_CREAT: Dim.OPEN_CREAT,
    Bind.CONNECTED: Dim.CONNECTED,
}

# fd.typechar / fd.sockfamily / fd.type values -> the kernel's family codes ('4', '6', 'u').
# The fd family's records know every descriptor type: a file 'f', a directory 'd', a pipe 'p',
# anything else 'o' (bpf/sensor/fd.h's fd_typechar). The net family's kernel value is a socket
# family or none (then the dimension is not judged).
_FAMILY_VALUES: dict[Bind, dict[str, tuple[str, ...]]] = {
    Bind.TYPECHAR: {c: (c,) for c in "46ufdpo"},
    Bind.SOCKFAMILY: {"ip": ("4", "6"), "unix": ("u",)},
    Bind.FDTYPE: {
        "ipv4": ("4",),
        "ipv6": ("6",),
        "unix": ("u",),
        "file": ("f",),
        "directory": ("d",),
        "pipe": ("p",),
        "unknown": ("o",),
    },
}


def _path(exact: bool, op: str, vals: list[str]) -> Constraint | object:
    """A path field the kernel holds as the very string user space reports (an open's fd.name,
    an exec's proc.exepath): equality through the exact-path hash, startswith / pmatch / a
    glob's literal head as a prefix, endswith as a suffix."""
    if exact:
        if all(len(v.encode()) <= PATH_MAX_KEY for v in vals):
            return Constraint(Dim.PATH, frozenset(vals))
        # Too long for the exact-path hash: its head, as a prefix the trie can hold.
        return Constraint(Dim.PATH_PREFIX, frozenset(_cap(v) for v in vals))
    if op in ("startswith", "pmatch"):
        return Constraint(Dim.PATH_PREFIX, frozenset(_cap(v) for v in vals))
    if op == "endswith":
        return Constraint(Dim.PATH_SUFFIX, frozenset(_cap(v, tail=True) for v in vals))
    if op == "glob" and len(vals) == 1:
        return Constraint(Dim.PATH_PREFIX, frozenset({_cap(_glob_prefix(vals[0]))}))
    return _UNKNOWN


def _cap(s: str, tail: bool = False) -> str:
    """Keep a prefix (or suffix) within the kernel's key length: a shorter one is weaker."""
    b = s.encode()
    if len(b) <= LPM_PAYLOAD:
        return s
    cut = b[-LPM_PAYLOAD:] if tail else b[:LPM_PAYLOAD]
    return cut.decode("utf-8", "ignore")


# ---- DNF ---------------------------------------------------------------------------------------


class _TooBig(Exception):
    pass


def _intersect(a: Term, b: Term) -> Term | None:
    out = dict(a)
    for dim, c in b.items():
        old = out.get(dim)
        if old is None:
            out[dim] = c
        elif old.negated and c.negated:
            out[dim] = Constraint(dim, old.values | c.values, negated=True)  # none of either
        elif old.negated or c.negated:
            pos, neg = (c, old) if old.negated else (old, c)
            if dim in (Dim.PATH_PREFIX, Dim.PATH_SUFFIX, Dim.DADDR):
                out[dim] = dataclasses.replace(pos, excluded=pos.excluded | neg.values)
                continue
            left = pos.values - neg.values
            if not left:
                return None
            out[dim] = Constraint(dim, left)
        elif dim in (Dim.PATH_PREFIX, Dim.PATH_SUFFIX, Dim.DADDR):
            # two prefix sets: keeping one of them is a weaker, still necessary condition
            continue
        else:
            both = old.values & c.values
            if not both:
                return None  # contradictory: this term can never be true
            out[dim] = Constraint(dim, both)
    return out


def _dnf(
    e: ast.Expr,
    binds: Mapping[str, Bind],
    notes: list[str],
    negated: bool = False,
    params: Mapping[str, Param] | None = None,
    negations: bool = True,
) -> list[Term]:
    if isinstance(e, ast.Const):
        return [{}] if e.value != negated else []
    if isinstance(e, ast.Not):
        return _dnf(e.child, binds, notes, not negated, params, negations)
    if isinstance(e, ast.Check):
        if negated and not negations:
            return [{}]  # a negated check widens to "unknown"
        c = abstract_negated(e, binds, params) if negated else abstract(e, binds, params)
        if not negations and isinstance(c, Constraint) and c.negated:
            return [{}]  # ("!=": a negation too)
        if c is _UNKNOWN:
            return [{}]
        assert isinstance(c, Constraint)
        if c.negated:
            return [{c.dim: c}] if c.values else [{}]  # excluding nothing is no constraint
        return [{c.dim: c}] if c.values else []
    assert isinstance(e, ast.And | ast.Or)
    conj = isinstance(e, ast.And) != negated  # De Morgan under negation
    parts = [_dnf(k, binds, notes, negated, params, negations) for k in e.children]
    if not conj:
        out: list[Term] = []
        for p in parts:
            if any(not t for t in p):
                return [{}]
            out.extend(p)
        if len(out) > MAX_TERMS_PER_RULE:
            raise _TooBig
        return out
    acc: list[Term] = [{}]
    for p in parts:
        nxt: list[Term] = []
        for a in acc:
            for b in p:
                t = _intersect(a, b)
                if t is not None:
                    nxt.append(t)
        if len(nxt) > MAX_TERMS_PER_RULE:
            raise _TooBig
        acc = _dedupe(nxt)
        if not acc:
            return []
    return acc


def _dedupe(terms: Iterable[Term]) -> list[Term]:
    seen: list[Term] = []
    for t in terms:
        if t not in seen:
            seen.append(t)
    if any(not t for t in seen):
        return [{}]
    return seen


def plan_rule(name: str, expr: ast.Expr, evt_type: str, negations: bool = True) -> RulePlan:
    """The rule's kernel part for one event type. Negated checks multiply terms (``not (a
    and b)`` is a disjunction): when they make more than MAX_TERMS_PER_RULE, the rule is
    planned again with negated checks widened to "unknown" (``negations=False``)."""
    plan = RulePlan(name, evt_type)
    cond = specialize(expr, evt_type)
    binds, params = bindings(evt_type), _params(evt_type)
    try:
        terms = _dnf(cond, binds, plan.approximated, params=params, negations=negations)
    except _TooBig:
        try:
            terms = _dnf(cond, binds, plan.approximated, params=params, negations=False)
            if negations:
                plan.approximated.append(
                    f"more than {MAX_TERMS_PER_RULE} terms with its negated checks: "
                    "planned without them"
                )
        except _TooBig:
            plan.approximated.append(f"more than {MAX_TERMS_PER_RULE} terms: widened to 'always'")
            terms = [{}]
    plan.terms = _dedupe(terms)
    return plan
