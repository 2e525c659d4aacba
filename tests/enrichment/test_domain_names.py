"""fd.sip.name and its kin: the rules' domain names, resolved as libsinsp does.

The system resolver is real here (``localhost`` answers from /etc/hosts on any machine, with no
network); answers that change and a resolver that fails are faults the real one cannot be made
to produce on demand, so those tests give DomainNames a resolver function of their own, and
say so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sentinel.compiler import domain_names
from sentinel.enrichment.dns import NAMES, DomainNames
from sentinel.enrichment.event import LiveEvent
from tests.helpers import cond_engine, matches


def test_the_system_resolver_names_loopback_localhost() -> None:
    names = DomainNames()
    names.watch(["LocalHost."])  # DNS names compare without case or the final dot
    assert names.names_of("127.0.0.1") == []  # nothing before the first answer
    names.refresh_due()
    assert names.names_of("127.0.0.1") == ["localhost"]
    assert names.names_of("::ffff:127.0.0.1") == ["localhost"]
    assert names.names_of("192.0.2.1") == [] and names.names_of(None) == []


def test_a_live_connect_has_the_name_its_server_address_resolves_from(
    event: Callable[..., LiveEvent],
) -> None:
    NAMES.watch(["localhost"])
    NAMES.refresh_due()
    ev = event("connect", fd=3, res=0, addr=("127.0.0.1", 80), laddr="127.0.0.1", lport=5000)
    assert ev.get("fd.sip.name") == ["localhost"] and ev.get("fd.rip.name") == ["localhost"]
    ev = event("connect", fd=3, res=0, addr=("192.0.2.1", 80), laddr="10.0.0.2", lport=5000)
    assert ev.get("fd.sip.name") == []


@pytest.mark.parametrize(
    ("cond", "names", "expected"),
    [
        ("fd.sip.name = localhost", ["localhost"], True),
        ("fd.sip.name = example.org", ["localhost"], False),
        ("fd.sip.name != example.org", ["localhost"], True),
        ("fd.sip.name != localhost", ["localhost"], False),
        ("fd.sip.name != localhost", [], True),  # an address no name resolves to
        ("fd.sip.name in (example.org, localhost)", ["localhost"], True),
        ("fd.sip.name in (example.org)", ["localhost", "db.local"], False),
        ("fd.sip.name = db.local", ["localhost", "db.local"], True),  # two names, one address
    ],
)
def test_comparisons_are_libsinsps(
    tmp_path: Path, cond: str, names: list[str], expected: bool
) -> None:
    engine = cond_engine(tmp_path, f"evt.type = connect and {cond}")
    assert matches(engine, **{"evt.type": "connect", "fd.sip.name": names}) is expected


def test_the_compiler_lists_the_names_rules_mention(tmp_path: Path) -> None:
    engine = cond_engine(
        tmp_path,
        "evt.type = connect and (fd.sip.name in (a.example, b.example) or fd.cip.name = c.example)"
        " and not fd.rip.name = d.example",
    )
    assert domain_names(engine.rules) == {"a.example", "b.example", "c.example", "d.example"}


def test_answers_refresh_back_off_and_survive_an_outage() -> None:
    """A resolver function stands in for DNS: a changing answer and a failure on demand."""
    answers: dict[str, object] = {"svc.example": frozenset({"192.0.2.10"})}

    def resolve(name: str) -> frozenset[str]:
        got = answers[name]
        if isinstance(got, OSError):
            raise got
        assert isinstance(got, frozenset)
        return got

    names = DomainNames(resolve, base_refresh_s=10, max_refresh_s=40)
    names.watch(["svc.example"])
    assert names.refresh_due(now=0) == 10
    assert names.names_of("192.0.2.10") == ["svc.example"]
    assert names.refresh_due(now=5) == 5  # not due yet
    assert names.refresh_due(now=10) == 20  # same answer: the interval doubles
    assert names.refresh_due(now=30) == 40
    assert names.refresh_due(now=70) == 40  # up to the maximum
    answers["svc.example"] = OSError("resolver down")
    names.refresh_due(now=110)
    assert names.names_of("192.0.2.10") == ["svc.example"]  # the last answer stays
    answers["svc.example"] = frozenset({"192.0.2.11"})
    assert names.refresh_due(now=150) == 10  # a new answer: back to the base interval
    assert names.names_of("192.0.2.10") == [] and names.names_of("192.0.2.11") == ["svc.example"]


def test_the_background_thread_resolves_without_being_asked() -> None:
    names = DomainNames()
    names.start()
    try:
        names.watch(["localhost"])
        deadline = time.monotonic() + 5
        while not names.names_of("127.0.0.1") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert names.names_of("127.0.0.1") == ["localhost"]
    finally:
        names.close()
