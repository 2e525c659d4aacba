"""Kernel plans -> the contents of the BPF filter maps, in one place (as Tetragon keeps its
selector encoding in ``pkg/selectors``); :mod:`.model` evaluates them as ``bpf/prefilter/filter.h``
does, and :mod:`.maps` writes them (the byte layout of every key is documented there).

Per event type, every term of every rule gets a bit. Per dimension the kernel looks the event's
value up and ORs the result with that dimension's *wildcard* mask (the terms that do not
constrain it); ANDing over the dimensions leaves the terms whose box contains the event. The
event goes to user space iff a bit survives. Masks are ``NWORDS`` 64-bit words, so the number
of terms is not limited to 64.

Prefix and suffix dimensions use LPM tries (suffixes on the reversed bytes); an LPM lookup
returns only the longest stored prefix, so each stored prefix carries the bits of every shorter
stored prefix of it too. Destination addresses use one LPM trie per IP version the same way.

A *negative* constraint (the value is none of S: ``not proc.name in (...)``, ``fd.net !=
127.0.0.0/8``) leaves its term out of the wildcard: the term's bit is in the dimension's
*miss* mask (the lookup found nothing: the value is in no stored entry, so not in S) and in
every stored entry but those of S (for a trie: every entry not under one of S; each of S is
stored, so a value under one of them finds an entry under it, the longest, without the bit).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sentinel.events.dims import Dim
from sentinel.language import ast
from sentinel.prefilter.layout import MAX_TERMS
from sentinel.prefilter.plan import DIMS_OF, TYPES, Constraint, RulePlan, plan_rule

LPM_DIMS = (Dim.PATH_PREFIX, Dim.PATH_SUFFIX)


@dataclass
class TypeTables:
    """The map contents of one event type (a "family" of the maps, in filter.h's words)."""

    evt_type: str
    nterms: int = 0
    pass_all: bool = False
    reason: str = ""
    term_rules: list[str] = field(default_factory=list)
    wild: dict[Dim, int] = field(default_factory=dict)
    miss: dict[Dim, int] = field(default_factory=dict)  # the terms a failed lookup satisfies
    exact: dict[Dim, dict[Any, int]] = field(default_factory=dict)  # value -> mask
    lpm: dict[Dim, dict[bytes, int]] = field(default_factory=dict)  # key bytes -> mask
    nets: dict[int, dict[tuple[bytes, int], int]] = field(default_factory=dict)  # ver -> (addr,len)

    @property
    def all_bits(self) -> int:
        return (1 << self.nterms) - 1


@dataclass
class KernelTables:
    types: dict[str, TypeTables]
    plans: list[RulePlan]


def key_bytes(dim: Dim, v: Any) -> bytes:
    b = str(v).encode("utf-8", "surrogateescape")
    return b[::-1] if dim is Dim.PATH_SUFFIX else b


def build_tables(rules: Sequence[tuple[str, ast.Expr]]) -> KernelTables:
    """``rules``: (name, expanded condition) of the enabled rules, in order."""
    plans: list[RulePlan] = []
    fams: dict[str, TypeTables] = {}
    for fam in TYPES:
        ft = TypeTables(fam)
        fams[fam] = ft
        fam_plans = [plan_rule(name, expr, fam) for name, expr in rules]
        if sum(len(p.terms) for p in fam_plans) > MAX_TERMS:
            # the negated checks' terms do not fit the maps: without them (fewer, wider terms)
            fam_plans = [plan_rule(name, expr, fam, negations=False) for name, expr in rules]
        terms: list[tuple[str, dict[Dim, Any]]] = []
        for plan in fam_plans:
            plans.append(plan)
            if plan.unconstrained and not ft.pass_all:
                ft.pass_all = True
                ft.reason = f"rule '{plan.rule}' has no condition the kernel can test for {fam}"
            terms.extend((plan.rule, t) for t in plan.terms)
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
        # A dimension the type's handler computes but its fields do not bind (a shared
        # prefilter entry, e.g. the fd family's through f_sock) constrains no term.
        every = (1 << len(terms)) - 1
        for dim in Dim:
            if dim not in DIMS_OF[fam]:
                ft.wild[dim] = every
        negatives: list[tuple[int, Constraint]] = []
        excepted: list[tuple[int, Constraint]] = []
        for bit, (_n, term) in enumerate(terms):
            mask = 1 << bit
            for dim in DIMS_OF[fam]:
                c = term.get(dim)
                if c is None:
                    ft.wild[dim] |= mask
                    continue
                if c.negated:
                    negatives.append((mask, c))
                    _store_keys(ft, c)
                    continue
                if c.excluded:  # a positive with exceptions: its bits (below), less theirs
                    excepted.append((mask, c))
                    _store_keys(ft, dataclasses.replace(c, values=c.excluded))
                if dim is Dim.DADDR:
                    for net in c.values:
                        assert isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network)
                        k = (net.network_address.packed, net.prefixlen)
                        tbl = ft.nets[net.version]
                        tbl[k] = tbl.get(k, 0) | mask
                elif dim in LPM_DIMS:
                    for v in c.values:
                        k2 = key_bytes(dim, v)
                        ft.lpm[dim][k2] = ft.lpm[dim].get(k2, 0) | mask
                else:
                    for v in c.values:
                        ft.exact[dim][v] = ft.exact[dim].get(v, 0) | mask
        # an LPM lookup returns the longest stored prefix only: fold shorter ones in
        for table in ft.lpm.values():
            _fold_prefixes(table)
        for nets in ft.nets.values():
            _fold_nets(nets)
        for mask, c in negatives:  # after the fold: the exclusions are not folded
            _add_negative(ft, mask, c)
        for mask, c in excepted:
            _clear_under(ft, mask, c)
    return KernelTables(fams, plans)


def _store_keys(ft: TypeTables, c: Constraint) -> None:
    """An entry for each excluded value (its lookup must find one, without the term's bit)."""
    if c.dim is Dim.DADDR:
        for net in c.values:
            assert isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network)
            ft.nets[net.version].setdefault((net.network_address.packed, net.prefixlen), 0)
    elif c.dim in LPM_DIMS:
        for v in c.values:
            ft.lpm[c.dim].setdefault(key_bytes(c.dim, v), 0)
    else:
        for v in c.values:
            ft.exact[c.dim].setdefault(v, 0)


def _under(ft: TypeTables, dim: Dim, heads: frozenset[Any]) -> list[Any]:
    """The stored keys of a trie dimension that lie under one of ``heads``."""
    if dim is Dim.DADDR:
        nets = [n for n in heads if isinstance(n, ipaddress.IPv4Network | ipaddress.IPv6Network)]
        out: list[Any] = []
        for table in ft.nets.values():
            for k in table:
                net = ipaddress.ip_network((k[0], k[1]))
                if any(net.version == x.version and net.subnet_of(x) for x in nets):  # type: ignore[arg-type]
                    out.append(k)
        return out
    keys = [key_bytes(dim, v) for v in heads]
    return [k for k in ft.lpm[dim] if any(k.startswith(h) for h in keys)]


def _trie_tables(ft: TypeTables, dim: Dim) -> list[dict[Any, int]]:
    """The stored entries of a trie dimension: one table per IP version for addresses."""
    return list(ft.nets.values()) if dim is Dim.DADDR else [ft.lpm[dim]]


def _clear_under(ft: TypeTables, mask: int, c: Constraint) -> None:
    """A positive trie constraint's exceptions: the term's bit (folded into every entry under
    its prefixes) taken out of the entries under the excepted ones. A value under an
    exception finds an entry under it (each exception is stored): the longest stored prefix."""
    under = set(_under(ft, c.dim, c.excluded))
    for table in _trie_tables(ft, c.dim):
        for k in table:
            if k in under:
                table[k] &= ~mask


def _add_negative(ft: TypeTables, mask: int, c: Constraint) -> None:
    """The term (``mask``) passes a miss and every entry outside the excluded values."""
    dim = c.dim
    ft.miss[dim] = ft.miss.get(dim, 0) | mask
    if dim is Dim.DADDR or dim in LPM_DIMS:
        under = set(_under(ft, dim, c.values))
        for table in _trie_tables(ft, dim):
            for k in table:
                if k not in under:
                    table[k] |= mask
    else:
        exact = ft.exact[dim]
        for v in exact:
            if v not in c.values:
                exact[v] |= mask


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
