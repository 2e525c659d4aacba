"""Compiler: merged rules -> checked ASTs -> per-event-type Python predicates.

``compile_rules`` does everything that can fail, once, when rules load; what it returns can
only match events. The kernel plan (in-kernel prefilter) will be derived from the same ASTs.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from sentinel.compiler.fold import OTHER, UNIVERSE, maybe_true, specialize
from sentinel.compiler.output import OutputTemplate, parse_output
from sentinel.compiler.resolve import Resolver
from sentinel.fields import FIELDS
from sentinel.language import ast
from sentinel.loader import Diagnostics, Location, RulesError, RuleSet

# Fields whose values are domain names the rules' names resolve to.
DOMAIN_FIELDS = frozenset({"fd.sip.name", "fd.cip.name", "fd.lip.name", "fd.rip.name"})


@dataclass(slots=True)
class CompiledRule:
    index: int
    name: str
    desc: str
    priority: str
    tags: list[str]
    source: str
    action: str
    enabled: bool
    expr: ast.Expr
    event_types: frozenset[str]  # from UNIVERSE; OTHER means "also types without a name"
    output: OutputTemplate
    location: Location


@dataclass
class CompiledRules:
    rules: list[CompiledRule] = field(default_factory=list)
    diagnostics: Diagnostics = field(default_factory=Diagnostics)
    ruleset: RuleSet | None = None

    @property
    def enabled(self) -> list[CompiledRule]:
        return [r for r in self.rules if r.enabled]


def compile_rules(
    rs: RuleSet, strict: bool = True, filled: Collection[str] | None = None
) -> CompiledRules:
    """Compile every rule (enabled or not, so that errors surface either way).

    With ``strict`` the first batch of errors raises :class:`RulesError`; otherwise they stay
    in ``diagnostics`` (``sentinel validate`` reports them all). ``filled``: the fields the
    live sensor fills (sentinel.enrichment.event.sensor_fields); every other field an enabled
    rule uses gets a warning. None: no such warnings (replay, tests).
    """
    diag = rs.diagnostics
    out = CompiledRules(diagnostics=diag, ruleset=rs)
    resolver = Resolver(rs, diag)
    for name in rs.macros:  # syntax and field errors in unused macros too, as Falco does
        resolver.macro(name)
    for r in rs.rules.values():
        label = f"rule '{r.name}'"
        if r.source != "syscall":
            diag.warn(
                f"source '{r.source}' is not supported by Sentinel; rule not loaded",
                r.location,
                label,
                code="source",
            )
            continue
        expr = resolver.rule(r)
        if expr is None:
            continue
        try:
            template = parse_output(r.output)
        except ValueError as exc:
            diag.error(f"output: {exc}", r.location, label)
            continue
        for fname in template.fields:
            base = fname.split("[", 1)[0]
            if base not in FIELDS:
                diag.warn(
                    f"output field '%{fname}' is unknown; it prints <NA>",
                    r.location,
                    label,
                    code="output-field",
                )
        types = maybe_true(expr)
        if r.warn_evttypes and OTHER in types:
            diag.warn(
                "rule does not restrict evt.type: it is evaluated for every event",
                r.location,
                label,
                code="evttypes",
            )
        out.rules.append(
            CompiledRule(
                index=len(out.rules),
                name=r.name,
                desc=r.desc,
                priority=r.priority,
                tags=list(r.tags),
                source=r.source,
                action=r.action,
                enabled=r.enabled,
                expr=expr,
                event_types=types,
                output=template,
                location=r.location,
            )
        )
    for f in sorted(_unsupported_fields(out, filled) if filled is not None else ()):
        diag.warn(
            f"field '{f}' is not produced by Sentinel's sensor: checks on it are false "
            "(treated as missing) unless events carry it",
            None,
            None,
            code="unsupported-field",
        )
    if strict:
        diag.raise_if_errors()
    return out


def domain_names(rules: Iterable[CompiledRule]) -> frozenset[str]:
    """The names rules compare fd.sip.name/fd.cip.name/... with: the live side resolves them
    (sentinel.enrichment.dns), as libsinsp does."""
    out: set[str] = set()
    for r in rules:
        for node in ast.walk(r.expr):
            if (
                isinstance(node, ast.Check)
                and isinstance(node.lhs, ast.FieldRef)
                and node.lhs.name in DOMAIN_FIELDS
            ):
                rhs = node.rhs
                if isinstance(rhs, ast.ListValue):
                    out.update(i.text for i in rhs.items)
                elif isinstance(rhs, ast.Value):
                    out.add(rhs.text)
    return frozenset(out)


def _unsupported_fields(out: CompiledRules, filled: Collection[str]) -> set[str]:
    names: set[str] = set()
    for r in out.enabled:
        for node in ast.walk(r.expr):
            if isinstance(node, ast.Check):
                for f in ast.operand_fields(node.lhs) + ast.operand_fields(node.rhs):
                    if f.name in FIELDS and f.name not in filled:
                        names.add(f.name)
    return names


__all__ = [
    "OTHER",
    "UNIVERSE",
    "CompiledRule",
    "CompiledRules",
    "OutputTemplate",
    "RulesError",
    "compile_rules",
    "domain_names",
    "maybe_true",
    "parse_output",
    "specialize",
]
