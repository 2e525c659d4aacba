"""Execs copy their environment only for rules that read it (sentinel.app.sensor.reads_env)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sentinel.app.sensor import reads_env
from sentinel.cli.common import load_compiled
from sentinel.engine import Engine
from sentinel.paths import RULES_DIR

FALCO = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "falco"


def _rules(text: str, tmp_path: Path) -> list[object]:
    f = tmp_path / "r.yaml"
    f.write_text(text)
    compiled = load_compiled([f])
    assert compiled is not None
    return list(Engine(compiled).rules)


RULE = "- rule: R\n  desc: d\n  condition: {cond}\n  output: '{out}'\n  priority: INFO\n"


@pytest.mark.parametrize(
    ("cond", "out", "want"),
    [
        ('evt.type = execve and proc.env contains "X=1"', "o", True),
        ("evt.type = execve and proc.env[X] = 1", "o", True),
        ("evt.type = execve", "env=%proc.env", True),  # in the output only
        ("evt.type = execve and proc.name = sh", "%proc.cmdline", False),
    ],
)
def test_a_rule_reads_env_in_its_condition_or_output(
    cond: str, out: str, want: bool, tmp_path: Path
) -> None:
    assert reads_env(_rules(RULE.format(cond=cond, out=out), tmp_path)) is want


def test_falco_files_and_the_default_rules() -> None:
    if not FALCO.exists():
        pytest.skip(f"Falco's rules files not found at {FALCO}")
    files = [FALCO / f for f in ("falco_rules.yaml", "falco-incubating_rules.yaml")]
    compiled = load_compiled(files)
    assert compiled is not None and reads_env(Engine(compiled).rules)  # GLIBC_TUNABLES...
    default = load_compiled([RULES_DIR])
    assert default is not None and not reads_env(Engine(default).rules)
