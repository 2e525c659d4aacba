"""The README's table of Sentinel's default rules, generated from rules/ (never typed by hand):
``python -m sentinel.readme`` writes it with the README's other generated blocks, and
tests/test_readme.py fails while it is stale, so a rule changed without regenerating the table
fails CI.
"""

from __future__ import annotations

import re
from pathlib import Path

from sentinel.compiler import CompiledRule, compile_rules
from sentinel.loader import load_rules
from sentinel.paths import RULES_DIR

_TECHNIQUE = re.compile(r"^T\d{4}(\.\d{3})?$")


def _summary(desc: str) -> str:
    """The description's first sentence: up to the first '. ' or ': ' outside `code`."""
    text = " ".join(desc.split())
    in_code = False
    for i, ch in enumerate(text):
        if ch == "`":
            in_code = not in_code
        elif not in_code and ch in ".:" and text[i + 1 : i + 2] in (" ", ""):
            text = text[:i]
            break
    return text.replace("|", "\\|")


def _attack(tags: list[str]) -> str:
    tactics = [t.removeprefix("mitre_").replace("_", " ") for t in tags if t.startswith("mitre_")]
    techniques = [t for t in tags if _TECHNIQUE.match(t)]
    return ", ".join(techniques) + (f" ({', '.join(tactics)})" if tactics else "")


def _types(r: CompiledRule) -> str:
    return ", ".join(sorted(t for t in r.event_types if t.isidentifier()))


def _table(rules: list[CompiledRule], last: str) -> list[str]:
    rows = [
        f"| rule | what it is for | priority | event types | MITRE ATT&CK | {last} |",
        "|---|---|---|---|---|---|",
    ]
    for r in rules:
        rows.append(
            f"| {r.name} | {_summary(r.desc)} | {r.priority} | {_types(r)} "
            f"| {_attack(r.tags)} | {'on' if r.enabled else 'off'} |"
        )
    return rows


def render(rules_dir: Path = RULES_DIR) -> str:
    """Markdown: the detection rules in ``rules_dir`` (in load order, the order first-match
    tries them), then the enforcement (deny) examples."""
    compiled = compile_rules(load_rules([rules_dir]))
    alert = [r for r in compiled.rules if r.action != "deny"]
    deny = [r for r in compiled.rules if r.action == "deny"]
    out = _table(alert, "default")
    if deny:
        out += ["", "Enforcement examples (`action: deny`, BPF LSM):", ""]
        out += _table(deny, "default")
    return "\n".join(out)
