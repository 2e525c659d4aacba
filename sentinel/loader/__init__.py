"""Rules files (YAML) -> pydantic-validated items -> one merged :class:`RuleSet`."""

from collections.abc import Iterable
from pathlib import Path

from sentinel.loader.errors import Diagnostics, Location, Problem, RulesError
from sentinel.loader.models import PRIORITIES, normalize_priority, priority_rank
from sentinel.loader.ruleset import (
    CondText,
    ExceptionDef,
    ListDef,
    MacroDef,
    RuleDef,
    RuleSet,
    expand_paths,
    load_ruleset,
)


def load_rules(paths: Iterable[Path]) -> RuleSet:
    """Load and merge rules files; raise :class:`RulesError` listing every loader error."""
    rs = load_ruleset(paths)
    rs.diagnostics.raise_if_errors()
    return rs


__all__ = [
    "PRIORITIES",
    "CondText",
    "Diagnostics",
    "ExceptionDef",
    "ListDef",
    "Location",
    "MacroDef",
    "Problem",
    "RuleDef",
    "RuleSet",
    "RulesError",
    "expand_paths",
    "load_rules",
    "load_ruleset",
    "normalize_priority",
    "priority_rank",
]
