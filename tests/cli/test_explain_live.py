"""``sentinel explain --live``: which enabled rules the live sensor can fire.

The answer is derived from the event table and the getters (sentinel.app.coverage); these
tests give it rules whose gaps are known and check it names exactly those, then run it on
Falco's three files as a user would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sentinel.app.coverage import applies, rule_liveness
from sentinel.compiler import CompiledRule, compile_rules
from sentinel.enrichment.event import sensor_fields
from sentinel.events import BY_NAME
from sentinel.loader import load_ruleset
from tests.helpers import CORPUS, write_rules

FALCO = [CORPUS / n for n in ("falco_rules.yaml", "falco-incubating_rules.yaml")]
FALCO.append(CORPUS / "falco-sandbox_rules.yaml")

RULES = """
- rule: live open
  desc: d
  condition: evt.type = openat and fd.name = /etc/shadow and proc.name = cat
  output: o
  priority: INFO
- rule: untraced type
  desc: d
  condition: evt.type in (openat, pread) and fd.name = /x
  output: o
  priority: INFO
- rule: field another type has
  desc: d
  condition: evt.type in (unlink, connect) and fd.sip = 192.0.2.1
  output: o
  priority: INFO
- rule: per-type branches
  desc: d
  condition: >
    (evt.type = unlink and evt.arg.path = /x) or (evt.type = rename and evt.arg.oldpath = /x)
    or (evt.type = unlink and evt.arg.oldpath = /y)
  output: o
  priority: INFO
"""


def compiled(tmp_path: Path, text: str = RULES) -> list[CompiledRule]:
    return compile_rules(load_ruleset([write_rules(tmp_path, text)])).enabled


def test_names_untraced_types_and_fields_no_event_type_fills(tmp_path: Path) -> None:
    rows = {r.rule: r for r in rule_liveness(compiled(tmp_path), sensor_fields())}
    assert rows["live open"].live
    assert rows["untraced type"].untraced == ["pread"]
    assert not rows["untraced type"].live
    # fd.sip on connect is filled; unlink has no descriptor, so libsinsp has no fd.sip there
    # either: nothing is missing.
    assert rows["field another type has"].live
    # evt.arg.oldpath on unlink: unlink has no such parameter (in Falco neither): not a gap.
    assert rows["per-type branches"].live


def test_a_field_the_type_should_fill_but_does_not_is_named(tmp_path: Path) -> None:
    filled = sensor_fields()
    filled["fd.name"] = filled["fd.name"] - {"openat"}  # as if openat's getter were missing
    rows = {r.rule: r for r in rule_liveness(compiled(tmp_path), filled)}
    assert rows["live open"].unfilled == {"fd.name": ["openat"]}
    assert not rows["live open"].live


def test_a_missing_tracepoint_is_reported_apart(tmp_path: Path) -> None:
    rows = rule_liveness(compiled(tmp_path), sensor_fields(), lambda t: t != "openat")
    live_open = next(r for r in rows if r.rule == "live open")
    assert live_open.live and not live_open.live_here
    assert live_open.no_tracepoint == ["openat"]


def test_applies_follows_parameters_and_descriptors() -> None:
    assert applies("evt.arg.path", BY_NAME["unlink"])
    assert not applies("evt.arg.oldpath", BY_NAME["unlink"])
    assert applies("fd.name", BY_NAME["openat"])
    assert applies("fd.sip", BY_NAME["dup2"])
    assert not applies("fd.name", BY_NAME["unlinkat"])  # its dirfd is not the event's fd
    assert applies("proc.name", BY_NAME["unlink"])


def test_explain_live_on_falcos_three_files() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "sentinel", "explain", "--live", "--json", *map(str, FALCO)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["enabled"] == 81
    gaps = {r["rule"]: r for r in doc["rules"] if not r["live"]}
    # The goal of issue 12: every enabled Falco rule has every event type and field live.
    assert gaps == {}
    assert doc["live"] == 81
    text = subprocess.run(
        [sys.executable, "-m", "sentinel", "explain", "--live", *map(str, FALCO)],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "81 of 81 enabled rules have every event type and field live" in text
