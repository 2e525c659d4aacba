"""The matcher's speed-ups change cost, never answers: shared tests grouped into blocks
(sentinel.engine.plan), sibling checks on one field merged (sentinel.compiler.merge), cheap
conjuncts first. Checked against a reference that evaluates each rule's whole condition on
its own, in rule order, with no grouping, merging or specialisation, over events built from
the constants of Falco's three upstream files so that many rules match and many almost do."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from sentinel.compiler import CompiledRule, compile_rules
from sentinel.compiler.codegen import CodeGen, compile_function
from sentinel.engine import Engine, normalize_event
from sentinel.engine.plan import Block, Leaf, conjuncts, cost, plan, rule_indexes
from sentinel.fields import FIELDS, Kind
from sentinel.language import ast
from sentinel.language.parser import parse
from sentinel.loader import load_rules
from tests.helpers import CORPUS, cond_engine, matches

FILES = ["falco_rules.yaml", "falco-incubating_rules.yaml", "falco-sandbox_rules.yaml"]
TYPES = ["openat", "execve", "connect", "clone", "procexit", "accept", "unlinkat", "setuid"]


def _c(text: str) -> ast.Expr:
    return parse(text)


# -- the plan ------------------------------------------------------------------------------------


def test_a_test_two_rules_share_becomes_one_block_around_them() -> None:
    a, b, c = _c("proc.name = a"), _c("fd.num > 3"), _c("user.uid = 0")
    nodes = plan([(0, ast.And((a, b))), (1, ast.And((a, c))), (2, c)])
    assert isinstance(nodes[0], Block) and nodes[0].guard == a
    assert nodes[0].body == (Leaf(0, (b,)), Leaf(1, (c,)))
    assert nodes[1] == Leaf(2, (c,))
    assert sorted(rule_indexes(nodes)) == [0, 1, 2]


def test_a_rule_that_is_only_the_shared_test_matches_inside_its_block() -> None:
    a, b = _c("proc.name = a"), _c("fd.num > 3")
    nodes = plan([(4, a), (5, ast.And((a, b)))])
    assert nodes == (Block(a, (Leaf(4, ()), Leaf(5, (b,)))),)


def test_a_dear_test_rules_share_is_not_hoisted_above_their_cheap_ones() -> None:
    """Two write rules share a package-manager exception (an ancestor scan); hoisting it
    would make every open pay for the scan that ``evt.is_open_write`` spares most of them."""
    dear = _c("not proc.aexepath in (/usr/bin/dpkg)")
    w, r = _c("evt.is_open_write = true"), _c("evt.is_open_read = true")
    nodes = plan([(0, ast.And((dear, w))), (1, ast.And((dear, r)))])
    assert nodes == (Leaf(0, (w, dear)), Leaf(1, (r, dear)))


def test_no_block_for_a_test_only_one_rule_has() -> None:
    a, b = _c("proc.name = a"), _c("fd.num > 3")
    assert plan([(0, a), (1, b)]) == (Leaf(0, (a,)), Leaf(1, (b,)))
    assert conjuncts(ast.Const(True)) == ()


def test_a_rules_own_tests_run_cheapest_first() -> None:
    scan, cheap = _c("proc.aname[2] in (nginx, httpd)"), _c("proc.name in (sh, bash)")
    [leaf] = plan([(0, ast.And((scan, cheap)))])
    assert isinstance(leaf, Leaf) and leaf.rest == (cheap, scan)
    assert cost(_c("proc.cmdline regex 'a.*'")) > cost(_c("proc.cmdline = a"))
    assert cost(_c("proc.aname = a")) > cost(_c("proc.name = a"))


# -- merged checks, evaluated --------------------------------------------------------------------

MERGED = [
    ("fd.name startswith /a/ or fd.name startswith /b/ or proc.name = x", "fd.name", "/b/c", True),
    ("fd.name startswith /a/ or fd.name startswith /b/ or proc.name = x", "fd.name", "/c/b", False),
    ("fd.name endswith .a or fd.name endswith .b", "fd.name", "x.b", True),
    ("fd.name endswith .a or fd.name endswith .b", "fd.name", "x.c", False),
    ("proc.name = a or proc.name in (b, c) or proc.name = d", "proc.name", "c", True),
    ("proc.name = a or proc.name in (b, c) or proc.name = d", "proc.name", "d", True),
    ("proc.name = a or proc.name in (b, c) or proc.name = d", "proc.name", "e", False),
    ("fd.num = 3 or fd.num in (4, 5)", "fd.num", 5, True),
    ("fd.num = 3 or fd.num in (4, 5)", "fd.num", 6, False),
    ("not proc.name = a and not proc.name in (b) and fd.num > 0", "proc.name", "b", False),
    ("not proc.name = a and not proc.name in (b) and fd.num > 0", "proc.name", "z", True),
    # a missing field: every merged check is false, so the negation holds
    ("not proc.name = a and not proc.name = b and fd.num > 0", "proc.exe", "a", True),
]


@pytest.mark.parametrize(("cond", "field", "value", "expected"), MERGED)
def test_merged_checks_answer_as_the_checks_one_by_one(
    tmp_path: Path, cond: str, field: str, value: Any, expected: bool
) -> None:
    engine = cond_engine(tmp_path, f"evt.type = openat and ({cond})")
    assert matches(engine, **{"evt.type": "openat", "fd.num": 1, field: value}) is expected


def test_the_merged_code_makes_one_call_for_a_chain_of_prefixes() -> None:
    expr = _c(" or ".join(f"fd.name startswith /p{i}/" for i in range(30)))
    merged, plain = CodeGen(), CodeGen(merge_checks=False)
    assert merged.expr(expr).count("startswith") == 1
    assert plain.expr(expr).count("startswith") == 30


# -- the whole engine against the reference, on Falco's files ------------------------------------


def _texts(e: ast.Expr, positive: bool = True) -> list[tuple[str, str, bool]]:
    """(field, text, under an even number of nots) for every constant ``e`` compares a
    field with; prefixes and suffixes padded so that they are not the whole value."""
    if isinstance(e, ast.Not):
        return _texts(e.child, not positive)
    if isinstance(e, ast.And | ast.Or):
        return [t for c in e.children for t in _texts(c, positive)]
    if not isinstance(e, ast.Check) or not isinstance(e.lhs, ast.FieldRef):
        return []
    out: list[tuple[str, str, bool]] = []
    items = e.rhs.items if isinstance(e.rhs, ast.ListValue) else [e.rhs]
    for item in items:
        if isinstance(item, ast.Value):
            text = item.text
            if e.op == "startswith":
                text += "x/y"
            elif e.op == "endswith":
                text = "/x/" + text
            elif e.op in ("contains", "icontains"):
                text = f"a {text} b"
            out.append((e.lhs.key, text, positive))
    return out


def _events(rules: list[CompiledRule], n: int, seed: int) -> list[dict[str, Any]]:
    """Half the events aimed at one rule (its event type, values its positive checks name),
    the other half fields drawn from any rule's constants."""
    rng = random.Random(seed)
    per_rule = [_texts(r.expr) for r in rules]
    values: dict[str, list[str]] = {}
    for texts in per_rule:
        for name, text, _pos in texts:
            values.setdefault(name, []).append(text)
    names = sorted(values)
    out = []
    while len(out) < n:
        raw: dict[str, Any] = {"evt.type": rng.choice(TYPES), "evt.num": len(out) + 1}
        for name in rng.sample(names, 12):
            raw[name] = rng.choice(values[name])
        if len(out) % 2:
            i = rng.randrange(len(rules))
            types = sorted(rules[i].event_types & set(TYPES)) or TYPES
            raw["evt.type"] = rng.choice(types)
            for name, text, positive in per_rule[i]:
                if positive and rng.random() < 0.7:
                    raw[name] = text
        for name, value in list(raw.items()):
            info = FIELDS.get(name.split("[", 1)[0])
            if info is not None and info.kind is not Kind.SCALAR and "[" not in name:
                raw[name] = [value, rng.choice(values.get(name, [value]))]
        try:
            out.append(normalize_event(raw))
        except ValueError:
            continue  # a text where the field holds numbers
    return out


def _reference(rules: list[CompiledRule]) -> list[tuple[int, Any]]:
    """Each rule alone: its whole expanded condition, unspecialised and unmerged."""
    fns = []
    for r in rules:
        gen = CodeGen(merge_checks=False)
        code = gen.expr(r.expr)
        fns.append((r.index, compile_function("ref", [f"return {code}"], gen)))
    return fns


def _expected(fns: list[tuple[int, Any]], event: dict[str, Any]) -> list[int]:
    hits = []
    for index, fn in fns:
        try:
            if fn(event):
                hits.append(index)
        except (TypeError, AttributeError):
            continue  # the engine's per-rule fallback skips such a rule too
    return hits


@pytest.fixture(scope="module")
def falco() -> Any:
    if not (CORPUS / FILES[0]).exists():
        pytest.fail(f"Falco's rules are missing from {CORPUS}")
    return compile_rules(load_rules([CORPUS / f for f in FILES]))


def test_indexed_engine_matches_the_reference_on_falco_rules(falco: Any) -> None:
    first, every = Engine(falco, hostname="t"), Engine(falco, matching="all", hostname="t")
    fns = _reference(first.rules)
    events = _events(first.rules, 4000, seed=16)
    matched = set()
    for event in events:
        want = _expected(fns, event)
        assert [r.index for r in every.match(event)] == want, event
        assert [r.index for r in first.match(event)] == want[:1], event
        matched.update(want)
    # the events exercise the rules, not only their misses
    assert len(matched) >= 40, len(matched)
