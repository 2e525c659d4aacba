"""The kernel part of each rule: a necessary condition the BPF programs can test cheaply.

For every event family the sensor traces (exec, open, connect), a rule's condition is
specialised to the family's event types and abstracted: each check on a field the kernel can see
becomes a *constraint* on one dimension (comm, uid, open path exact/prefix/suffix, executable
path exact/prefix/suffix, open intent, destination port, destination address, socket family);
every other check, and every negated check, becomes "unknown" (true). The result is put in
disjunctive normal form: a list of *terms*, each a conjunction of per-dimension constraints
("boxes"). Dropping a check only widens a term, so the kernel part is an over-approximation:
whenever the full condition can be true, some term is true. That is the invariant the kernel
filter relies on to drop events safely.

Encoding the terms into BPF maps is :mod:`sentinel.kernel.filters`' job.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from sentinel.compiler.fold import specialize
from sentinel.compiler.values import IPNetwork, parse_bool
from sentinel.language import ast

COMM_LEN = 15  # TASK_COMM_LEN - 1: proc.name is the task's comm
PATH_MAX_KEY = 255  # longest path the kernel's exact-path hash keys on
LPM_PAYLOAD = 252  # longest prefix/suffix an LPM trie key holds (256-byte data, 4 of header)
MAX_TERMS_PER_RULE = 32

FAMILIES: dict[str, tuple[str, ...]] = {
    "exec": ("execve", "execveat"),
    "open": ("open", "openat", "openat2", "creat"),
    "connect": ("connect",),
}


class Dim(StrEnum):
    COMM = "comm"
    UID = "uid"
    # The family's path: fd.name for open, proc.exepath for exec (the same map encodings).
    PATH = "path"  # exact
    PATH_PREFIX = "path_prefix"  # prefix
    PATH_SUFFIX = "path_suffix"  # suffix
    OPEN_WRITE = "open_write"  # open: (flags & O_ACCMODE) in (O_WRONLY, O_RDWR)
    OPEN_READ = "open_read"  # open: (flags & O_ACCMODE) in (O_RDONLY, O_RDWR)
    DPORT = "dport"  # connect: destination port
    DADDR = "daddr"  # connect: destination address (CIDRs, v4 and v6)
    FAMILY = "family"  # connect: '4', '6' or 'u'
    FAILED = "failed"  # open, connect: the syscall returned an error
    RAW_DOTDOT = "raw_dotdot"  # open: the path as passed contains "../"


DIMS_OF: dict[str, tuple[Dim, ...]] = {
    "exec": (Dim.COMM, Dim.UID, Dim.PATH, Dim.PATH_PREFIX, Dim.PATH_SUFFIX),
    "open": (
        Dim.COMM,
        Dim.UID,
        Dim.PATH,
        Dim.PATH_PREFIX,
        Dim.PATH_SUFFIX,
        Dim.OPEN_WRITE,
        Dim.OPEN_READ,
        Dim.FAILED,
        Dim.RAW_DOTDOT,
    ),
    "connect": (Dim.COMM, Dim.UID, Dim.DPORT, Dim.DADDR, Dim.FAMILY, Dim.FAILED),
}

Value = str | int | bool | IPNetwork

# What a path dimension is about, per family (for `sentinel explain`).
PATH_FIELD = {"open": "fd.name", "exec": "proc.exepath"}


def dim_label(dim: Dim, family: str | None = None) -> str:
    """A dimension's name as `explain` shows it: the path dims name the family's field."""
    field_name = PATH_FIELD.get(family or "")
    if field_name is None or dim not in (Dim.PATH, Dim.PATH_PREFIX, Dim.PATH_SUFFIX):
        return dim.value
    return field_name + {Dim.PATH: "", Dim.PATH_PREFIX: " prefix", Dim.PATH_SUFFIX: " suffix"}[dim]


@dataclass(frozen=True, slots=True)
class Constraint:
    """The dimension's value must be one of ``values`` (exact), or start/end with one (prefix,
    suffix dims), or lie in one of the networks (daddr)."""

    dim: Dim
    values: frozenset[Value]

    def describe(self, family: str | None = None) -> str:
        shown = sorted(str(v) for v in self.values)
        if len(shown) > 6:
            shown = [*shown[:6], f"... ({len(self.values)} values)"]
        verb = {
            Dim.PATH_PREFIX: "starts with",
            Dim.PATH_SUFFIX: "ends with",
            Dim.DADDR: "in",
        }.get(self.dim, "is")
        name = dim_label(self.dim, family)
        if self.dim in (Dim.PATH_PREFIX, Dim.PATH_SUFFIX) and family in PATH_FIELD:
            name = PATH_FIELD[family]  # "proc.exepath starts with ..."
        return f"{name} {verb} {{{', '.join(shown)}}}"


Term = dict[Dim, Constraint]  # a conjunction; {} is "always true"


@dataclass
class RulePlan:
    """One rule's kernel part for one family: ``terms`` (DNF); ``[{}]`` means unconstrained,
    ``[]`` means the rule cannot match this family at all."""

    rule: str
    family: str
    terms: list[Term] = field(default_factory=list)
    approximated: list[str] = field(default_factory=list)  # what was widened, for `explain`

    @property
    def unconstrained(self) -> bool:
        return any(not t for t in self.terms)

    def describe(self) -> list[str]:
        if not self.terms:
            return ["never (no event of this family can match)"]
        return [
            " and ".join(c.describe(self.family) for c in t.values()) if t else "always"
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


def _failed(name: str, op: str, vals: list[str], family: str) -> bool | None:
    """Whether a check pins the syscall's success (False) or failure (True)."""
    if name == "evt.res" and len(vals) == 1:
        v = vals[0]
        if op in ("=", "==") and v == "SUCCESS":
            return False
        if (op in ("=", "==") and v.startswith("E")) or (op == "startswith" and v == "E"):
            return True
        return None
    if name not in ("fd.num", "evt.rawres") or len(vals) != 1:
        return None
    if name == "fd.num" and family != "open":
        return None  # a connect's fd.num is the socket, not the result
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


def abstract(c: ast.Check, family: str) -> Constraint | object:
    """A positive check -> a constraint on one dimension, or _UNKNOWN."""
    if not isinstance(c.lhs, ast.FieldRef) or c.lhs.arg is not None or c.modifier:
        return _UNKNOWN
    name, op = c.lhs.name, c.op
    vals = _values(c)
    if vals is None:
        return _UNKNOWN
    exact = op in ("=", "==", "in", "intersects")
    dims = DIMS_OF[family]
    if Dim.FAILED in dims:
        failed = _failed(name, op, vals, family)
        if failed is not None:
            return Constraint(Dim.FAILED, frozenset({failed}))
    if Dim.RAW_DOTDOT in dims and name == "fd.nameraw" and len(vals) == 1:
        literal = vals[0] if op == "contains" else _glob_literals(vals[0]) if op == "glob" else ""
        if "../" in literal:
            return Constraint(Dim.RAW_DOTDOT, frozenset({True}))

    if name == "proc.name" and exact:
        return Constraint(Dim.COMM, frozenset(v[:COMM_LEN] for v in vals))
    if name == "user.uid" and exact:
        try:
            return Constraint(Dim.UID, frozenset(int(v, 0) for v in vals))
        except ValueError:
            return _UNKNOWN
    if family == "exec":
        # proc.exe is argv[0], which the caller chooses: never a kernel dimension.
        if name == "proc.exepath":
            return _path(op in ("=", "==", "in"), op, vals)
        return _UNKNOWN
    if Dim.PATH in dims:
        if name == "fd.name":
            return _path(exact, op, vals)
        if name == "fd.directory" and exact:
            return Constraint(Dim.PATH_PREFIX, frozenset(_cap(v.rstrip("/") + "/") for v in vals))
        if name == "fd.filename" and exact:
            return Constraint(Dim.PATH_SUFFIX, frozenset(_cap("/" + v, tail=True) for v in vals))
        if name in ("evt.is_open_write", "evt.is_open_read") and op in ("=", "=="):
            try:
                want = parse_bool(vals[0])
            except ValueError:
                return _UNKNOWN
            dim = Dim.OPEN_WRITE if name == "evt.is_open_write" else Dim.OPEN_READ
            return Constraint(dim, frozenset({want}))
    if Dim.DPORT in dims:
        if name in ("fd.sport", "fd.rport", "fd.dport") and exact:
            try:
                return Constraint(Dim.DPORT, frozenset(int(v, 0) for v in vals))
            except ValueError:
                return _UNKNOWN
        if name in ("fd.sip", "fd.rip", "fd.dip", "fd.snet", "fd.rnet") and exact:
            nets = [_net(v) for v in vals]
            if any(n is None for n in nets):
                return _UNKNOWN
            return Constraint(Dim.DADDR, frozenset(n for n in nets if n is not None))
        if name == "fd.typechar" and exact:
            return Constraint(Dim.FAMILY, frozenset(v for v in vals if v in ("4", "6", "u")))
        if name == "fd.sockfamily" and exact:
            fams = {"ip": ("4", "6"), "unix": ("u",)}
            return Constraint(Dim.FAMILY, frozenset(f for v in vals for f in fams.get(v, ())))
        if name == "fd.type" and exact:
            fams2 = {"ipv4": "4", "ipv6": "6", "unix": "u"}
            return Constraint(Dim.FAMILY, frozenset(fams2[v] for v in vals if v in fams2))
    return _UNKNOWN


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
        elif dim in (Dim.PATH_PREFIX, Dim.PATH_SUFFIX, Dim.DADDR):
            # two prefix sets: keeping one of them is a weaker, still necessary condition
            continue
        else:
            both = old.values & c.values
            if not both:
                return None  # contradictory: this term can never be true
            out[dim] = Constraint(dim, both)
    return out


def _dnf(e: ast.Expr, family: str, notes: list[str], negated: bool = False) -> list[Term]:
    if isinstance(e, ast.Const):
        return [{}] if e.value != negated else []
    if isinstance(e, ast.Not):
        return _dnf(e.child, family, notes, not negated)
    if isinstance(e, ast.Check):
        if negated:
            return [{}]  # a negated check widens to "unknown"
        c = abstract(e, family)
        if c is _UNKNOWN:
            return [{}]
        assert isinstance(c, Constraint)
        return [{c.dim: c}] if c.values else []
    assert isinstance(e, ast.And | ast.Or)
    conj = isinstance(e, ast.And) != negated  # De Morgan under negation
    parts = [_dnf(k, family, notes, negated) for k in e.children]
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


def plan_rule(name: str, expr: ast.Expr, family: str) -> RulePlan:
    """The rule's kernel part for ``family`` (union over the family's event types)."""
    plan = RulePlan(name, family)
    terms: list[Term] = []
    for t in FAMILIES[family]:
        cond = specialize(expr, t)
        try:
            terms.extend(_dnf(cond, family, plan.approximated))
        except _TooBig:
            plan.approximated.append(
                f"more than {MAX_TERMS_PER_RULE} terms for {t}: widened to 'always'"
            )
            terms.append({})
    plan.terms = _dedupe(terms)
    return plan
