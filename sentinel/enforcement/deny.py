"""Deny rules -> a BPF LSM :class:`~sentinel.enforcement.policy.DenyPolicy`.

A rule with ``action: deny`` is decided in the kernel, before the operation happens, so it must
compile *exactly* into what the LSM hooks can test: no user-space residue, no approximation.
Supported shapes (macros and lists expand as usual; ``or`` and ``in`` make several entries):

* file writes: open event types with ``evt.is_open_write = true`` and ``fd.name`` tested with
  ``=``/``in`` (a file) or ``pmatch``/``startswith "<dir>/"`` (a tree). The hooks then deny
  every way of modifying it (open for write, truncate, rename, unlink, link, chmod, ...).
* exec: exec event types with ``proc.exepath`` ``=``/``in`` (a binary) or
  ``pmatch``/``startswith "<dir>/"`` (everything below a directory); or, alone in a term,
  ``proc.is_exe_from_memfd = true`` (fileless execution) or ``proc.is_exe_upper_layer = true``
  (a binary in a container's writable layer: drift).
* connect: ``connect`` with ``fd.sip``/``fd.rip``/``fd.snet``/``fd.rnet`` (an address or CIDR)
  and/or ``fd.sport``/``fd.rport``/``fd.dport`` (ports).

Anything else (a negation, another field, another operator) is a load error that names the
rule and the check, because silently enforcing a different condition is worse than refusing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from sentinel.compiler.fold import maybe_true, specialize
from sentinel.enforcement.policy import ConnectDeny, DenyPolicy
from sentinel.events import EVENT_TYPES
from sentinel.language import ast, to_text

PATH_OPS_EXACT = ("=", "==", "in")
PATH_OPS_TREE = ("pmatch", "startswith")
IP_FIELDS = ("fd.sip", "fd.rip", "fd.dip", "fd.snet", "fd.rnet")
PORT_FIELDS = ("fd.sport", "fd.rport", "fd.dport")


class DenyCompileError(ValueError):
    """A deny rule the kernel cannot decide exactly; the message names the rule and check."""


@dataclass
class DenySpec:
    """What one or more deny rules ask for; turned into a DenyPolicy by :func:`to_policy`."""

    protect: dict[str, str] = field(default_factory=dict)  # path -> rule
    exec_exact: dict[str, str] = field(default_factory=dict)
    exec_prefix: dict[str, str] = field(default_factory=dict)
    connect: list[tuple[str, str | None, tuple[int, ...]]] = field(default_factory=list)
    exec_memfd: str | None = None
    exec_upper: str | None = None

    def to_policy(self) -> DenyPolicy:
        return DenyPolicy(
            protect=dict(self.protect),
            exec_exact=dict(self.exec_exact),
            exec_prefix=dict(self.exec_prefix),
            connect=[ConnectDeny(rule, cidr, ports) for rule, cidr, ports in self.connect],
            exec_memfd=self.exec_memfd,
            exec_upper=self.exec_upper,
        )


def _fail(rule: str, why: str, node: ast.Expr | None = None) -> DenyCompileError:
    where = f" in `{to_text(node)}`" if node is not None else ""
    return DenyCompileError(
        f"rule '{rule}' has action: deny but cannot be decided in the kernel: {why}{where}"
    )


def _dnf(rule: str, e: ast.Expr) -> list[list[ast.Check]]:
    """Exact DNF of a specialised condition whose leaves are checks (no negation allowed)."""
    if isinstance(e, ast.Const):
        return [[]] if e.value else []
    if isinstance(e, ast.Check):
        return [[e]]
    if isinstance(e, ast.Not):
        raise _fail(rule, "a negation (`not`) has no kernel equivalent in a deny rule", e)
    if isinstance(e, ast.Or):
        return [t for c in e.children for t in _dnf(rule, c)]
    assert isinstance(e, ast.And)
    acc: list[list[ast.Check]] = [[]]
    for c in e.children:
        acc = [a + b for a in acc for b in _dnf(rule, c)]
    return acc


def _values(rule: str, c: ast.Check) -> list[str]:
    if isinstance(c.rhs, ast.Value):
        return [c.rhs.text]
    if isinstance(c.rhs, ast.ListValue):
        return [i.text for i in c.rhs.items]
    raise _fail(rule, "the right-hand side must be constant values", c)


def _field(c: ast.Check) -> str | None:
    if isinstance(c.lhs, ast.FieldRef) and c.lhs.arg is None and not c.modifier:
        return c.lhs.name
    return None


def _tree(rule: str, c: ast.Check, v: str) -> str:
    """The directory a pmatch/startswith value protects, exactly component-wise."""
    if c.op == "startswith" and not v.endswith("/"):
        raise _fail(
            rule,
            f"`startswith {v}` also matches {v}x; write `pmatch ({v})` or end it with '/'",
            c,
        )
    path = v.rstrip("/") or "/"
    if not path.startswith("/"):
        raise _fail(rule, f"path {v!r} must be absolute", c)
    return path


def _file_term(rule: str, term: list[ast.Check], out: DenySpec) -> None:
    write = False
    paths: list[str] = []
    for c in term:
        name = _field(c)
        if name == "evt.is_open_write" and c.op in ("=", "==") and _values(rule, c) == ["true"]:
            write = True
        elif name == "fd.name" and c.op in PATH_OPS_EXACT:
            paths.extend(v for v in _values(rule, c))
        elif name == "fd.name" and c.op in PATH_OPS_TREE:
            paths.extend(_tree(rule, c, v) for v in _values(rule, c))
        else:
            raise _fail(rule, f"'{to_text(c)}' is not a check the LSM file hooks decide", c)
    if not write:
        raise _fail(
            rule, "a file deny rule must test `evt.is_open_write = true` (reads are never denied)"
        )
    if not paths:
        raise _fail(rule, "a file deny rule must name the protected paths with fd.name")
    for p in paths:
        if not p.startswith("/"):
            raise _fail(rule, f"path {p!r} must be absolute")
        out.protect.setdefault(p, rule)


# Boolean exec fields a term may consist of alone -> the DenySpec attribute they set.
EXEC_FLAGS = {"proc.is_exe_from_memfd": "exec_memfd", "proc.is_exe_upper_layer": "exec_upper"}


def _exec_flag(rule: str, term: list[ast.Check], out: DenySpec) -> bool:
    """A term that is exactly ``<exec flag> = true``: recorded; False if it is not one."""
    flags = [c for c in term if _field(c) in EXEC_FLAGS]
    if not flags:
        return False
    c = flags[0]
    values = [v.lower() for v in _values(rule, c)]
    if len(term) != 1 or c.op not in ("=", "==") or values != ["true"]:
        raise _fail(
            rule,
            f"'{_field(c)}' is decided in the kernel only as `{_field(c)} = true`, alone "
            "in its term",
            c,
        )
    attr = EXEC_FLAGS[_field(c) or ""]
    if getattr(out, attr) is None:
        setattr(out, attr, rule)
    return True


def _exec_term(rule: str, term: list[ast.Check], out: DenySpec) -> None:
    if _exec_flag(rule, term, out):
        return
    found = False
    for c in term:
        name = _field(c)
        if name == "proc.exepath" and c.op in PATH_OPS_EXACT:
            for v in _values(rule, c):
                out.exec_exact.setdefault(v, rule)
            found = True
        elif name == "proc.exepath" and c.op in PATH_OPS_TREE:
            for v in _values(rule, c):
                out.exec_prefix.setdefault(_tree(rule, c, v), rule)
            found = True
        else:
            raise _fail(
                rule,
                f"'{to_text(c)}' is not a check the exec hook decides (use proc.exepath, "
                "proc.is_exe_from_memfd or proc.is_exe_upper_layer)",
                c,
            )
    if not found:
        raise _fail(rule, "an exec deny rule must name binaries with proc.exepath")


def _connect_term(rule: str, term: list[ast.Check], out: DenySpec) -> None:
    cidrs: list[str] | None = None
    ports: list[int] | None = None
    for c in term:
        name = _field(c)
        if name in IP_FIELDS and c.op in ("=", "==", "in"):
            got = []
            for v in _values(rule, c):
                try:
                    got.append(str(ipaddress.ip_network(v, strict=False)))
                except ValueError:
                    raise _fail(rule, f"{v!r} is not an address or CIDR", c) from None
            cidrs = got if cidrs is None else [x for x in cidrs if x in got]
        elif name in PORT_FIELDS and c.op in ("=", "==", "in"):
            got_p = []
            for v in _values(rule, c):
                try:
                    got_p.append(int(v, 0))
                except ValueError:
                    raise _fail(rule, f"{v!r} is not a port", c) from None
            ports = got_p if ports is None else [p for p in ports if p in got_p]
        else:
            raise _fail(rule, f"'{to_text(c)}' is not a check the connect hook decides", c)
    if cidrs is None and ports is None:
        raise _fail(rule, "a connect deny rule must name addresses (fd.sip/fd.snet) or ports")
    for cidr in cidrs if cidrs is not None else [None]:
        out.connect.append((rule, cidr, tuple(sorted(set(ports or [])))))


def _drop_exit_direction(e: ast.Expr) -> ast.Expr:
    """``evt.dir = <`` (Falco's "after the syscall") is moot for a hook that runs before it."""
    if isinstance(e, ast.Check):
        f = _field(e)
        if f == "evt.dir" and e.op in ("=", "==") and isinstance(e.rhs, ast.Value):
            return ast.Const(e.rhs.text == "<")
        return e
    if isinstance(e, ast.Not):
        return ast.Not(_drop_exit_direction(e.child), e.pos)
    if isinstance(e, ast.And | ast.Or):
        return type(e)(tuple(_drop_exit_direction(c) for c in e.children), e.pos)
    return e


def compile_deny(rules: Iterable[tuple[str, ast.Expr]]) -> DenySpec:
    """Deny rules (name, expanded condition) -> DenySpec. Raises DenyCompileError."""
    out = DenySpec()
    for name, raw in rules:
        expr = _drop_exit_direction(raw)
        types = maybe_true(expr)
        shapes = [s for s, ts in SHAPES.items() if set(ts) & types]
        others = {t for t in types} - {t for ts in SHAPES.values() for t in ts}
        if others:
            shown = ", ".join(sorted(t if t[0] != "\x00" else "<any other>" for t in others))
            raise _fail(name, f"it can match event types the LSM hooks do not see: {shown}")
        if not shapes:
            raise _fail(name, "it matches no exec, open or connect event")
        for shape in shapes:
            for t in SHAPES[shape]:
                cond = specialize(expr, t)
                for term in _dnf(name, cond):
                    TERM_COMPILERS[shape](name, term, out)
    return out


# Deny shape (the event table's EventType.deny) -> its event types, and how a term of it
# compiles into the policy.
SHAPES: dict[str, tuple[str, ...]] = {}
for _t in EVENT_TYPES:
    if _t.deny:
        SHAPES[_t.deny] = (*SHAPES.get(_t.deny, ()), _t.name)
TERM_COMPILERS = {"file": _file_term, "exec": _exec_term, "connect": _connect_term}
