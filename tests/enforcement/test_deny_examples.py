"""The deny examples shipped in rules/ (sentinel_deny_examples.yaml): off by default, and each
compiles exactly into a BPF LSM policy once enabled the way docs/rules.md says (a later file
with ``enabled: true``). Enforcement itself is proven in the VM (tests/vm/guest)."""

from __future__ import annotations

from pathlib import Path

from sentinel.compiler import compile_rules
from sentinel.enforcement.deny import compile_deny
from sentinel.enforcement.policy import build_plan
from sentinel.loader import load_rules

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "rules"
EXAMPLES = {
    "Deny Writes to the Shadow Password Files",
    "Deny Program Execution from /dev/shm",
    "Deny Connections to the Cloud Metadata Service",
}


def enable_all(tmp_path: Path) -> Path:
    p = tmp_path / "local.yaml"
    p.write_text("".join(f"- rule: {name}\n  enabled: true\n" for name in sorted(EXAMPLES)))
    return p


def test_the_default_rules_enable_no_deny_rule() -> None:
    compiled = compile_rules(load_rules([RULES]))
    deny = {r.name for r in compiled.rules if r.action == "deny"}
    assert deny == EXAMPLES
    assert not [r for r in compiled.enabled if r.action == "deny"]


def test_enabled_examples_compile_exactly(tmp_path: Path) -> None:
    compiled = compile_rules(load_rules([RULES, enable_all(tmp_path)]))
    deny = [r for r in compiled.enabled if r.action == "deny"]
    assert {r.name for r in deny} == EXAMPLES
    spec = compile_deny([(r.name, r.expr) for r in deny])
    assert spec.protect == {
        "/etc/shadow": "Deny Writes to the Shadow Password Files",
        "/etc/gshadow": "Deny Writes to the Shadow Password Files",
    }
    assert spec.exec_exact == {}
    assert spec.exec_prefix == {"/dev/shm": "Deny Program Execution from /dev/shm"}
    assert spec.connect == [
        ("Deny Connections to the Cloud Metadata Service", "169.254.169.254/32", (80,))
    ]
    # Every path exists here, so the policy resolves into map entries (what run loads).
    plan = build_plan(spec.to_policy())  # type: ignore[arg-type]
    assert plan is not None


def test_enabling_one_example_enables_only_it(tmp_path: Path) -> None:
    one = tmp_path / "one.yaml"
    one.write_text("- rule: Deny Program Execution from /dev/shm\n  enabled: true\n")
    compiled = compile_rules(load_rules([RULES, one]))
    deny = [r.name for r in compiled.enabled if r.action == "deny"]
    assert deny == ["Deny Program Execution from /dev/shm"]
