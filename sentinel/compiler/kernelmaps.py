"""Kernel plans -> the contents of the BPF filter maps, in one place (as Tetragon keeps its
selector encoding in ``pkg/selectors``), plus a Python model that evaluates them exactly as
``bpf/filter.h`` does.

Per family, every term of every rule gets a bit. Per dimension the kernel looks the event's
value up and ORs the result with that dimension's *wildcard* mask (the terms that do not
constrain it); ANDing over the dimensions leaves the terms whose box contains the event. The
event goes to user space iff a bit survives. Masks are ``NWORDS`` 64-bit words, so the number
of terms is not limited to 64.

Prefix and suffix dimensions use LPM tries (suffixes on the reversed bytes); an LPM lookup
returns only the longest stored prefix, so each stored prefix carries the bits of every shorter
stored prefix of it too. Destination addresses use one LPM trie per IP version the same way.
"""

from __future__ import annotations

import ipaddress
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sentinel.compiler.kernelplan import DIMS_OF, FAMILIES, LPM_PAYLOAD, Dim, RulePlan, plan_rule
from sentinel.language import ast

NWORDS = 8  # 512 terms per family; beyond that a family is not filtered (sound, reported)
MAX_TERMS = NWORDS * 64
LPM_DIMS = (Dim.PATH_PREFIX, Dim.PATH_SUFFIX)


@dataclass
class FamilyTables:
    family: str
    nterms: int = 0
    pass_all: bool = False
    reason: str = ""
    term_rules: list[str] = field(default_factory=list)
    wild: dict[Dim, int] = field(default_factory=dict)
    exact: dict[Dim, dict[Any, int]] = field(default_factory=dict)  # value -> mask
    lpm: dict[Dim, dict[bytes, int]] = field(default_factory=dict)  # key bytes -> mask
    nets: dict[int, dict[tuple[bytes, int], int]] = field(default_factory=dict)  # ver -> (addr,len)

    @property
    def all_bits(self) -> int:
        return (1 << self.nterms) - 1


@dataclass
class KernelTables:
    families: dict[str, FamilyTables]
    plans: list[RulePlan]


def _key(dim: Dim, v: Any) -> bytes:
    b = str(v).encode("utf-8", "surrogateescape")
    return b[::-1] if dim is Dim.PATH_SUFFIX else b


def build_tables(rules: Sequence[tuple[str, ast.Expr]]) -> KernelTables:
    """``rules``: (name, expanded condition) of the enabled rules, in order."""
    plans: list[RulePlan] = []
    fams: dict[str, FamilyTables] = {}
    for fam in FAMILIES:
        ft = FamilyTables(fam)
        fams[fam] = ft
        terms: list[tuple[str, dict[Dim, Any]]] = []
        for name, expr in rules:
            plan = plan_rule(name, expr, fam)
            plans.append(plan)
            if plan.unconstrained and not ft.pass_all:
                ft.pass_all = True
                ft.reason = f"rule '{name}' has no condition the kernel can test for {fam} events"
            terms.extend((name, t) for t in plan.terms)
        if not ft.pass_all and len(terms) > MAX_TERMS:
            ft.pass_all = True
            ft.reason = f"{len(terms)} terms exceed the {MAX_TERMS} the maps hold"
        if ft.pass_all:
            continue
        ft.nterms = len(terms)
        ft.term_rules = [n for n, _ in terms]
        for dim in DIMS_OF[fam]:
            ft.wild[dim] = 0
            if dim is Dim.DADDR:
                ft.nets = {4: {}, 6: {}}
            elif dim in LPM_DIMS:
                ft.lpm[dim] = {}
            else:
                ft.exact[dim] = {}
        for bit, (_n, term) in enumerate(terms):
            mask = 1 << bit
            for dim in DIMS_OF[fam]:
                c = term.get(dim)
                if c is None:
                    ft.wild[dim] |= mask
                elif dim is Dim.DADDR:
                    for net in c.values:
                        assert isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network)
                        k = (net.network_address.packed, net.prefixlen)
                        tbl = ft.nets[net.version]
                        tbl[k] = tbl.get(k, 0) | mask
                elif dim in LPM_DIMS:
                    for v in c.values:
                        k2 = _key(dim, v)
                        ft.lpm[dim][k2] = ft.lpm[dim].get(k2, 0) | mask
                else:
                    for v in c.values:
                        ft.exact[dim][v] = ft.exact[dim].get(v, 0) | mask
        # an LPM lookup returns the longest stored prefix only: fold shorter ones in
        for table in ft.lpm.values():
            _fold_prefixes(table)
        for nets in ft.nets.values():
            _fold_nets(nets)
    return KernelTables(fams, plans)


def _fold_prefixes(table: dict[bytes, int]) -> None:
    keys = sorted(table, key=len)
    for i, k in enumerate(keys):
        for shorter in keys[:i]:
            if k.startswith(shorter):
                table[k] |= table[shorter]


def _fold_nets(table: dict[tuple[bytes, int], int]) -> None:
    nets = {k: ipaddress.ip_network((k[0], k[1])) for k in table}
    for k, n in nets.items():
        for k2, n2 in nets.items():
            if k2 != k and n2.prefixlen < n.prefixlen and n.subnet_of(n2):  # type: ignore[arg-type]
                table[k] |= table[k2]


# ---- the model: what the BPF filter decides -----------------------------------------------


@dataclass(frozen=True, slots=True)
class KernelView:
    """What the BPF program sees of an event (before any user-space enrichment)."""

    family: str
    comm: str
    uid: int
    path: str | None = None  # open: the path argument as passed; exec: proc.exepath (None: unknown)
    flags: int = 0
    # open, relative path: the directory it starts from as the kernel's walk gives it (the cwd,
    # or the dirfd's file; what sentinel.kernel.records.join_walk makes of the walk), or None
    # when the walk is unusable (truncated, bad dirfd)
    base: str | None = None
    dport: int | None = None
    daddr: str | None = None
    sock_family: str | None = None  # '4', '6', 'u'
    ret: int = 0  # the syscall's return value


O_ACCMODE, O_WRONLY, O_RDWR = 3, 1, 2


PATH_READ_MAX = 254  # longest path argument the kernel reads whole (256 bytes with the NUL)
COMPOSED_MAX = 255  # longest base + "/" + relative path the kernel composes


def canonical_path(raw: str) -> bool:
    """True when the user-space fd.name (normpath) equals the raw path: absolute, no empty,
    '.' or '..' component, no trailing '/' (hidden names such as '/.x' are ordinary);
    otherwise the kernel cannot judge the path."""
    if not raw.startswith("/"):
        return False
    return raw == "/" or _plain_components(raw[1:])


def canonical_relative(raw: str) -> bool:
    """True when the kernel composes fd.name from the base and raw: '.', '..', or a path with
    no empty, '.' or '..' component and no trailing '/' (then fd.name is base + '/' + raw)."""
    if raw in (".", ".."):
        return True
    return bool(raw) and not raw.startswith("/") and _plain_components(raw)


def _plain_components(rel: str) -> bool:
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def kernel_path(kv: KernelView) -> str | None:
    """The path the kernel judges the path dimensions on (fd.name as user space will compute
    it), or None when it cannot know it exactly (then those dimensions are skipped)."""
    raw = kv.path
    if raw is None or len(raw.encode("utf-8", "surrogateescape")) > PATH_READ_MAX:
        return None
    if raw.startswith("/"):
        return raw if canonical_path(raw) else None
    if kv.base is None or not canonical_relative(raw):
        return None
    if raw == ".":
        return kv.base
    if raw == "..":
        return posixpath.dirname(kv.base)
    full = ("" if kv.base == "/" else kv.base) + "/" + raw
    return full if len(full.encode("utf-8", "surrogateescape")) <= COMPOSED_MAX else None


def _lpm(table: Mapping[bytes, int], key: bytes) -> int:
    best, best_len = 0, -1
    for k, m in table.items():
        if len(k) > best_len and key.startswith(k):
            best, best_len = m, len(k)
    return best


def _lpm_net(table: Mapping[tuple[bytes, int], int], addr: bytes) -> int:
    best, best_len = 0, -1
    a = int.from_bytes(addr, "big")
    bits = len(addr) * 8
    for (net, plen), m in table.items():
        n = int.from_bytes(net, "big")
        if plen > best_len and (plen == 0 or (a >> (bits - plen)) == (n >> (bits - plen))):
            best, best_len = m, plen
    return best


def passes(tables: KernelTables, kv: KernelView) -> bool:
    """The kernel filter's verdict for one event (True: sent to user space)."""
    ft = tables.families.get(kv.family)
    if ft is None or ft.pass_all:
        return True
    acc = ft.all_bits
    for dim in DIMS_OF[kv.family]:
        m = _dim_mask(ft, dim, kv)
        if m is None:
            continue  # the kernel cannot judge this dimension for this event
        acc &= m | ft.wild[dim]
        if not acc:
            return False
    return acc != 0


def _exe_mask(ft: FamilyTables, dim: Dim, exe: str | None) -> int | None:
    """proc.exepath: the kernel has exactly the string user space reports (any length the walk
    fits, canonical by construction), or nothing (a failed exec, a walk cut short)."""
    if not exe:
        return None
    if dim is Dim.PATH:
        return ft.exact[dim].get(exe, 0)  # exact values are <= 255 bytes: a longer path is none
    return _lpm(ft.lpm[dim], _key(dim, exe)[:LPM_PAYLOAD])


def _dim_mask(ft: FamilyTables, dim: Dim, kv: KernelView) -> int | None:
    if dim is Dim.COMM:
        return ft.exact[dim].get(kv.comm[:15], 0)
    if dim is Dim.UID:
        return ft.exact[dim].get(kv.uid, 0)
    if kv.family == "exec" and dim in (Dim.PATH, Dim.PATH_PREFIX, Dim.PATH_SUFFIX):
        return _exe_mask(ft, dim, kv.path)
    if dim in (Dim.PATH, Dim.PATH_PREFIX, Dim.PATH_SUFFIX):
        path = kernel_path(kv)
        if path is None:
            return None
        if dim is Dim.PATH:
            return ft.exact[dim].get(path, 0)
        key = _key(dim, path)[:LPM_PAYLOAD]  # the kernel looks up at most this many bytes
        return _lpm(ft.lpm[dim], key)
    if dim is Dim.OPEN_WRITE:
        return ft.exact[dim].get((kv.flags & O_ACCMODE) in (O_WRONLY, O_RDWR), 0)
    if dim is Dim.OPEN_READ:
        return ft.exact[dim].get((kv.flags & O_ACCMODE) in (0, O_RDWR), 0)
    if dim is Dim.FAILED:
        return ft.exact[dim].get(kv.ret < 0, 0)
    if dim is Dim.RAW_DOTDOT:
        if not kv.path or len(kv.path.encode("utf-8", "surrogateescape")) > PATH_READ_MAX:
            return None  # empty or not read whole: the kernel judges no path dimension
        return ft.exact[dim].get("../" in kv.path, 0)
    if dim is Dim.DPORT:
        return None if kv.dport is None else ft.exact[dim].get(kv.dport, 0)
    if dim is Dim.FAMILY:
        return None if kv.sock_family is None else ft.exact[dim].get(kv.sock_family, 0)
    if dim is Dim.DADDR:
        if kv.daddr is None:
            return None
        ip = ipaddress.ip_address(kv.daddr)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # user space shows a v4-mapped peer as IPv4
        return _lpm_net(ft.nets.get(ip.version, {}), ip.packed)
    return None
