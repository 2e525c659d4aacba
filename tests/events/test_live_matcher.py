"""A live event is matched by code that calls its field functions directly (the engine's
``direct`` matchers); a plain mapping by code that asks ``get``. Both must give the same
rules for the same event: checked with Falco's three upstream files on records built as the
sensor emits them (every sample event type, and opens and execs aimed at the rules'
constants so that many rules match and many almost do)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from sentinel.compiler import compile_rules
from sentinel.engine import Engine
from sentinel.enrichment.event import LiveEvent, live_getters
from sentinel.language import ast
from sentinel.loader import load_rules
from tests.events.conftest import SAMPLES
from tests.helpers import CORPUS

FILES = ["falco_rules.yaml", "falco-incubating_rules.yaml", "falco-sandbox_rules.yaml"]
Make = Callable[..., LiveEvent]


class Plain(Mapping[str, Any]):
    """The same event without its field functions: the engine's ``get`` path."""

    def __init__(self, ev: LiveEvent) -> None:
        self.get = ev.get  # type: ignore[method-assign]
        self._ev = ev

    def __getitem__(self, name: str) -> Any:
        return self._ev[name]

    def __iter__(self) -> Any:
        return iter(self._ev)

    def __len__(self) -> int:
        return len(self._ev)


def _constants(e: ast.Expr, field: str) -> set[str]:
    if isinstance(e, ast.Not):
        return _constants(e.child, field)
    if isinstance(e, ast.And | ast.Or):
        return {t for c in e.children for t in _constants(c, field)}
    if not isinstance(e, ast.Check) or not isinstance(e.lhs, ast.FieldRef):
        return set()
    if e.lhs.key != field:
        return set()
    items = e.rhs.items if isinstance(e.rhs, ast.ListValue) else [e.rhs]
    return {i.text for i in items if isinstance(i, ast.Value)}


@pytest.fixture(scope="module")
def engines() -> tuple[Engine, Engine]:
    if not (CORPUS / FILES[0]).exists():
        pytest.fail(f"Falco's rules are missing from {CORPUS}")
    compiled = compile_rules(load_rules([CORPUS / f for f in FILES]))
    return Engine(compiled, matching="all", hostname="t"), Engine(compiled, hostname="t")


def _records(event: Make, engine: Engine) -> list[LiveEvent]:
    out = [event(t, **values) for t, values in SAMPLES.items()]
    paths: set[str] = set()
    names: set[str] = set()
    for r in engine.rules:
        paths |= {p for p in _constants(r.expr, "fd.name") if p.startswith("/")}
        paths |= {"/" + p.strip("/") + "/x" for p in _constants(r.expr, "fd.directory")}
        names |= {n for n in _constants(r.expr, "proc.name") if len(n) < 16}
    for i, path in enumerate(sorted(paths)):
        for flags in (0, 0o1, 0o102):  # read, write, create
            comm = sorted(names)[i % len(names)] if i % 3 else "tester"
            out.append(event("openat", path=path, flags=flags, res=3, comm=comm))
    for name in sorted(names):
        out.append(event("execve", comm=name, args=[name, "-c", "x"], filename=f"/bin/{name}"))
    return out


def test_direct_and_get_matchers_agree_on_falco_rules(
    event: Make, engines: tuple[Engine, Engine]
) -> None:
    every, first = engines
    matched: set[int] = set()
    events = _records(event, every)
    for ev in events:
        assert getattr(ev, "getters", None) is not None
        want = [r.index for r in every.match(Plain(ev))]
        assert [r.index for r in every.match(ev)] == want, ev.to_dict()
        assert [r.index for r in first.match(ev)] == want[:1], ev.to_dict()
        matched.update(want)
    # both paths were taken (one matcher per event type each) and the events reach rules
    assert every._direct and every._matchers
    assert len(matched) >= 10, sorted(matched)


def test_warm_with_live_getters_builds_the_matcher_live_events_use(
    event: Make, engines: tuple[Engine, Engine]
) -> None:
    every, _first = engines
    engine = Engine(every.compiled, hostname="t")
    engine.warm({"openat", "execve"}, getters=live_getters)
    built = dict(engine._direct)
    assert set(built) == {"openat", "execve"} and not engine._matchers
    ev = event("openat", path="/etc/shadow", flags=0, res=3)
    assert [r.index for r in engine.match(ev)] == [r.index for r in every.match(Plain(ev))][:1]
    assert engine._direct == built  # the first live event built nothing more
