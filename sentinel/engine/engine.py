"""The matching engine: events in, alerts out.

Rules are indexed by the event types they can match (:func:`sentinel.compiler.maybe_true`).
The first event of each type builds one generated function that tests every candidate rule's
condition specialised to that type (``evt.type`` tests folded away), with the tests rules share
done once for all of them (:mod:`.plan`), so an event costs one dict lookup plus the checks
that can still fail for it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from sentinel.alerts import Alert
from sentinel.compiler import (
    OTHER,
    CompiledRule,
    CompiledRules,
    OutputTemplate,
    compile_rules,
    parse_output,
    specialize,
)
from sentinel.compiler.codegen import CodeGen, compile_function
from sentinel.engine.plan import Block, Node, plan
from sentinel.fields import EVENT_TYPES
from sentinel.language import ast
from sentinel.loader import RuleSet, priority_rank

Matching = Literal["first", "all"]

# Falco's container plugin appends these to every syscall rule's output (its `append_output`),
# since upstream rules no longer name container fields themselves.
DEFAULT_APPEND_OUTPUT = ("container.id", "container.name", "container.image")
# ... and on a Kubernetes node also these, which the plugin suggests for every alert and which
# Falco's consumers (falcosidekick, dashboards) key alerts on.
K8S_APPEND_OUTPUT = ("container.image.repository", "k8s.ns.name", "k8s.pod.name")


def default_append_output(kubernetes: bool) -> tuple[str, ...]:
    """The ``append_output`` when the config sets none: with ``kubernetes`` (a CRI runtime
    socket was found) the pod's namespace and name are part of every alert."""
    return DEFAULT_APPEND_OUTPUT + K8S_APPEND_OUTPUT if kubernetes else DEFAULT_APPEND_OUTPUT


Matcher = Callable[[Mapping[str, Any]], Sequence[int]]
Getters = Mapping[str, Callable[[Any], Any]]
_NONE: tuple[int, ...] = ()


class Engine:
    """Evaluates events against compiled rules. Not thread-safe; one per event loop."""

    def __init__(
        self,
        rules: RuleSet | CompiledRules,
        matching: Matching = "first",
        hostname: str | None = None,
        min_priority: str = "Debug",
        append_output: Sequence[str] = DEFAULT_APPEND_OUTPUT,
    ) -> None:
        compiled = rules if isinstance(rules, CompiledRules) else compile_rules(rules)
        limit = priority_rank(min_priority)
        self.compiled = compiled
        self.rules: list[CompiledRule] = [
            r for r in compiled.enabled if priority_rank(r.priority) <= limit
        ]
        self.matching: Matching = matching
        self.hostname = hostname if hostname is not None else socket.gethostname()
        self._matchers: dict[str | None, Matcher] = {}
        # per event type, for events that bring their own field functions (``getters``)
        self._direct: dict[str | None, Matcher] = {}
        self._single: dict[int, Matcher] = {}
        self.events = 0
        self.type_errors = 0
        self.alerts_by_rule: dict[str, int] = {}
        self._extra: dict[str, OutputTemplate] = {}
        self.append_output = tuple(append_output)

    # -- introspection ---------------------------------------------------------------------
    def event_types(self) -> set[str]:
        """Event type names some enabled rule can match (all known names if a rule is
        unrestricted)."""
        names: set[str] = set()
        for r in self.rules:
            if OTHER in r.event_types:
                return set(EVENT_TYPES)
            names |= r.event_types
        return names

    def candidates(self, evt_type: str | None) -> list[CompiledRule]:
        key = evt_type if evt_type in EVENT_TYPES else OTHER
        return [r for r in self.rules if key in r.event_types]

    # -- matching --------------------------------------------------------------------------
    def _build(self, evt_type: str | None, getters: Getters | None = None) -> Matcher:
        """The matcher of one event type; with ``getters`` (the field functions of the events
        it will see), one that calls them directly (:class:`CodeGen`'s ``direct``)."""
        gen = CodeGen(memo_fields=True, direct=getters)
        rules: list[tuple[int, ast.Expr]] = []
        for rule in self.candidates(evt_type):
            cond = specialize(rule.expr, evt_type)
            if not (isinstance(cond, ast.Const) and not cond.value):
                rules.append((rule.index, cond))
        body = ["h = []", *_emit(plan(rules), gen, "")]
        # hits come out in plan order: rule order is restored here (the first one wins)
        body.append("return (min(h),) if h else ()" if self.matching == "first" else "h.sort()")
        if self.matching == "all":
            body.append("return h")
        fn: Matcher = compile_function("match", body, gen)  # generated: typed by contract
        (self._matchers if getters is None else self._direct)[evt_type] = fn
        return fn

    def warm(
        self, evt_types: set[str], getters: Callable[[str], Getters | None] | None = None
    ) -> None:
        """Build the matchers for these event types now rather than on first sight: with
        ``getters`` (an event type's field functions, as its live events bring them), the
        matchers live events use."""
        for t in evt_types:
            table = getters(t) if getters is not None else None
            if table is None:
                if t not in self._matchers:
                    self._build(t)
            elif t not in self._direct:
                self._build(t, table)

    def _rule_fn(self, rule: CompiledRule, evt_type: str | None) -> Matcher:
        gen = CodeGen()
        code = gen.expr(specialize(rule.expr, evt_type))
        return compile_function("one", [f"return (0,) if {code} else ()"], gen)

    def match(self, event: Mapping[str, Any]) -> list[CompiledRule]:
        """Rules that match ``event`` (at most one with matching 'first')."""
        self.events += 1
        t = event.get("evt.type")
        # A live event names the functions behind its fields (one table per event type, so
        # per type one matcher); a plain mapping (replay, a deferred event) has none.
        getters: Getters | None = getattr(event, "getters", None)
        if getters is None:
            fn = self._matchers.get(t)
            if fn is None:
                fn = self._build(t)
        else:
            fn = self._direct.get(t)
            if fn is None:
                fn = self._build(t, getters)
        try:
            hits = fn(event)
        except (TypeError, AttributeError):
            # A value of the wrong type for its field (e.g. text where a number belongs): test
            # rule by rule so one bad field only silences the checks that read it.
            self.type_errors += 1
            hits = self._match_slowly(event, t)
        if not hits:
            return []
        by_index = self.compiled.rules
        return [by_index[i] for i in hits]

    def _match_slowly(self, event: Mapping[str, Any], t: Any) -> list[int]:
        hits: list[int] = []
        for rule in self.candidates(t):
            try:
                if self._rule_fn(rule, t)(event):
                    hits.append(rule.index)
                    if self.matching == "first":
                        break
            except (TypeError, AttributeError):
                continue
        return hits

    def _extra_for(self, rule: CompiledRule) -> OutputTemplate:
        """The appended fields this rule's output does not already name."""
        extra = self._extra.get(rule.name)
        if extra is None:
            missing = [f for f in self.append_output if f not in rule.output.fields]
            text = " ".join(f"{f.replace('.', '_')}=%{f}" for f in missing)
            extra = self._extra[rule.name] = parse_output(text)
        return extra

    def alert(self, rule: CompiledRule, event: Mapping[str, Any], action: str = "") -> Alert:
        values = rule.output.values(event)
        output = rule.output.render(values)
        if self.append_output and rule.source == "syscall":
            extra = self._extra_for(rule)
            if extra.fields:
                more = extra.values(event)
                values.update(more)
                output = f"{output} {extra.render(more)}"
        ts = event.get("evt.time")
        return Alert(
            rule=rule.name,
            priority=rule.priority,
            output=output,
            output_fields=values,
            tags=list(rule.tags),
            source=rule.source,
            hostname=self.hostname,
            action=action or rule.action,
            time_ns=ts if isinstance(ts, int) else time.time_ns(),
        )

    def process(self, event: Mapping[str, Any]) -> list[Alert]:
        """Match ``event`` and build an alert for each matching rule."""
        rules = self.match(event)
        if not rules:
            return []
        out = []
        for r in rules:
            self.alerts_by_rule[r.name] = self.alerts_by_rule.get(r.name, 0) + 1
            out.append(self.alert(r, event))
        return out


def _emit(nodes: Sequence[Node], gen: CodeGen, indent: str) -> list[str]:
    """Source lines appending each matching rule's index to ``h``."""
    lines: list[str] = []
    for n in nodes:
        if isinstance(n, Block):
            lines.append(f"{indent}if {gen.expr(n.guard)}:")
            lines.extend(_emit(n.body, gen, indent + "    "))
        elif n.rest:
            rest = n.rest[0] if len(n.rest) == 1 else ast.And(n.rest)
            lines.append(f"{indent}if {gen.expr(rest)}: h.append({n.index})")
        else:
            lines.append(f"{indent}h.append({n.index})")
    return lines
