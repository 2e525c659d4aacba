"""Several rules files -> one :class:`RuleSet`, applying Falco's combination semantics.

Items are processed in file order, files in the order given: lists expand lists defined before
them (list-in-list), ``append: true`` and ``override: {key: append|replace}`` modify an item
defined earlier, a second definition of the same name replaces the first in place. Conditions
stay text here (parsing is the language stage); an appended condition remembers each fragment's
place in its file so errors still point at the right line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sentinel.loader import models
from sentinel.loader.errors import Diagnostics, Location
from sentinel.loader.yamlpos import RawItem, ScalarSpan, load_file


@dataclass(slots=True)
class CondText:
    """A condition's text, possibly built from fragments (appends) in several places."""

    fragments: list[tuple[str, ScalarSpan | None, Location]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(f[0] for f in self.fragments)

    def append(self, other: CondText) -> None:
        self.fragments.extend(other.fragments)

    def locate(self, line: int, column: int) -> Location | None:
        """(line, column) in :attr:`text` -> the place in the rules file."""
        text = self.text
        offset = 0
        for _ in range(line - 1):
            offset = text.index("\n", offset) + 1
        offset += column - 1
        start = 0
        for frag, span, loc in self.fragments:
            if offset <= start + len(frag):
                return span.location(offset - start) if span is not None else loc
            start += len(frag) + 1
        last = self.fragments[-1] if self.fragments else None
        if last is None:
            return None
        return last[1].location(len(last[0])) if last[1] else last[2]


@dataclass(slots=True)
class ListDef:
    name: str
    items: list[str]
    location: Location


@dataclass(slots=True)
class MacroDef:
    name: str
    condition: CondText
    location: Location


@dataclass(slots=True)
class ExceptionDef:
    name: str
    fields: str | list[str] | None
    comps: str | list[str] | None
    values: list[Any]
    location: Location


@dataclass(slots=True)
class RuleDef:
    name: str
    condition: CondText
    output: str
    desc: str
    priority: str
    location: Location
    tags: list[str] = field(default_factory=list)
    enabled: bool = True
    exceptions: list[ExceptionDef] = field(default_factory=list)
    source: str = "syscall"
    skip_if_unknown_filter: bool = False
    warn_evttypes: bool = True
    action: str = "alert"


@dataclass
class RuleSet:
    """Everything the rules files define, merged; conditions not yet parsed."""

    lists: dict[str, ListDef] = field(default_factory=dict)
    macros: dict[str, MacroDef] = field(default_factory=dict)
    rules: dict[str, RuleDef] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    diagnostics: Diagnostics = field(default_factory=Diagnostics)
    engine_version: str | None = None


def _list_item_text(v: Any) -> str:
    """A list item as text. Quoted items ('"(systemd)"') keep their quotes here; the compiler
    unquotes them with the language's string rules when it expands the list."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


class _Builder:
    def __init__(self, rs: RuleSet) -> None:
        self.rs = rs
        self.diag = rs.diagnostics

    # -- helpers ---------------------------------------------------------------------------
    def _cond(self, raw: RawItem, text: str) -> CondText:
        return CondText([(text, raw.span("condition"), raw.value_location("condition"))])

    def _check_override(
        self, raw: RawItem, kind: str, name: str, model: Any, ident_key: str
    ) -> dict[str, str] | None:
        """Validate ``append``/``override``; return {key: mode} for a modifying item."""
        label = f"{kind} '{name}'"
        override: dict[str, str] | None = model.override
        if model.append and override is not None:
            self.diag.error(
                "keys 'override' and 'append: true' cannot be used together",
                raw.location("override"),
                label,
            )
            return None
        if override is None and not model.append:
            return None
        present = set(raw.data) - {ident_key, "append", "override"}
        if model.append:
            modes = {k: "append" for k in present}
        else:
            modes = dict(override or {})
            if not modes:
                self.diag.error("'override' has no keys", raw.location("override"), label)
                return None
        for key, mode in modes.items():
            allowed = models.APPENDABLE[kind] if mode == "append" else models.REPLACEABLE[kind]
            if key not in allowed:
                verb = "appended to" if mode == "append" else "replaced"
                hint = (
                    ", use 'replace' instead"
                    if mode == "append" and key in models.REPLACEABLE[kind]
                    else ""
                )
                self.diag.error(f"key '{key}' cannot be {verb}{hint}", raw.location(key), label)
                return None
            if key not in raw.data:
                self.diag.error(
                    f"key '{key}' is listed in 'override' but has no value in this item",
                    raw.location("override"),
                    label,
                )
                return None
        extra = present - set(modes)
        if extra:
            key = sorted(extra)[0]
            self.diag.error(
                f"key '{key}' must be listed in 'override' to change an existing {kind}",
                raw.location(key),
                label,
            )
            return None
        return modes

    # -- items -----------------------------------------------------------------------------
    def add(self, raw: RawItem) -> None:
        kind = next((k for k in models.ITEM_KINDS if k in raw.data), None)
        if kind is None:
            self.diag.warn(
                f"unknown top-level item with keys {sorted(raw.data)}; ignored",
                raw.location(),
            )
            return
        try:
            model = models.MODELS[kind].model_validate(raw.data)
        except ValidationError as exc:
            for err in exc.errors():
                key = str(err["loc"][0]) if err["loc"] else None
                name = raw.data.get(kind)
                self.diag.error(
                    f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}",
                    raw.value_location(key) if key else raw.location(),
                    f"{kind} '{name}'" if isinstance(name, str) else kind,
                )
            return
        for key in model.unknown_keys():
            self.diag.warn(
                f"unknown key '{key}' ignored",
                raw.location(key),
                f"{kind} '{raw.data.get(kind)}'",
                code="unknown-key",
            )
        getattr(self, f"_{kind}")(raw, model)

    def _required_engine_version(self, raw: RawItem, model: models.EngineVersionModel) -> None:
        self.rs.engine_version = str(model.required_engine_version)

    def _required_plugin_versions(self, raw: RawItem, model: models.PluginVersionsModel) -> None:
        # Sentinel has no plugins: container fields are built in, so the 'container' plugin a
        # Falco file asks for is satisfied; anything else cannot be.
        for req in model.required_plugin_versions:
            name = req.get("name")
            if name != "container":
                self.diag.warn(
                    f"plugin '{name}' is not available in Sentinel; rules using its fields "
                    "will fail to compile",
                    raw.location(),
                    code="plugin",
                )

    def _list(self, raw: RawItem, model: models.ListModel) -> None:
        label = f"list '{model.list}'"
        items: list[str] = []
        for v in model.items:
            text = _list_item_text(v)
            ref = self.rs.lists.get(text)
            if ref is not None and text != model.list:
                items.extend(ref.items)
            else:
                items.append(text)
        modes = self._check_override(raw, "list", model.list, model, "list")
        if modes is None and (model.append or model.override is not None):
            return
        if modes:
            existing = self.rs.lists.get(model.list)
            if existing is None:
                self.diag.error(
                    "list has 'append' or 'override' but no list by that name already exists",
                    raw.location(),
                    label,
                )
                return
            if modes["items"] == "append":
                existing.items.extend(items)
            else:
                existing.items = items
            return
        self.rs.lists[model.list] = ListDef(model.list, items, raw.location())

    def _macro(self, raw: RawItem, model: models.MacroModel) -> None:
        label = f"macro '{model.macro}'"
        modes = self._check_override(raw, "macro", model.macro, model, "macro")
        if modes is None and (model.append or model.override is not None):
            return
        if model.condition is None:
            self.diag.error("item has no mapping for key 'condition'", raw.location(), label)
            return
        cond = self._cond(raw, model.condition)
        if modes:
            existing = self.rs.macros.get(model.macro)
            if existing is None:
                self.diag.error(
                    "macro has 'append' or 'override' but no macro by that name already exists",
                    raw.location(),
                    label,
                )
                return
            if modes["condition"] == "append":
                existing.condition.append(cond)
            else:
                existing.condition = cond
            return
        self.rs.macros[model.macro] = MacroDef(model.macro, cond, raw.location())

    def _exceptions(self, raw: RawItem, model: models.RuleModel) -> list[ExceptionDef]:
        out = []
        node = raw.values.get("exceptions")
        for i, ex in enumerate(model.exceptions or []):
            loc = raw.value_location("exceptions")
            if node is not None and hasattr(node, "value") and i < len(node.value):
                loc = raw.source.location(node.value[i].start_mark.index)
            out.append(ExceptionDef(ex.name, ex.fields, ex.comps, list(ex.values or []), loc))
        return out

    def _rule(self, raw: RawItem, model: models.RuleModel) -> None:
        name = model.rule
        label = f"rule '{name}'"
        existing = self.rs.rules.get(name)
        keys = set(raw.data) - {"rule"}
        if keys == {"enabled"} and not model.append and model.override is None:
            # Legacy form: enable/disable a rule defined earlier.
            if existing is None:
                self.diag.error(
                    "rule has only 'enabled' but no rule by that name already exists",
                    raw.location(),
                    label,
                )
                return
            existing.enabled = bool(model.enabled)
            return
        modes = self._check_override(raw, "rule", name, model, "rule")
        if modes is None and (model.append or model.override is not None):
            return
        if modes:
            if existing is None:
                self.diag.error(
                    "rule has 'append' or 'override' but no rule by that name already exists",
                    raw.location(),
                    label,
                )
                return
            self._modify_rule(raw, model, existing, modes, label)
            return
        missing = [k for k in ("condition", "output", "desc", "priority") if k not in raw.data]
        if model.source not in (None, "syscall"):
            missing = [k for k in missing if k != "condition"] if model.condition else missing
        if missing:
            self.diag.error(f"item has no mapping for key '{missing[0]}'", raw.location(), label)
            return
        assert model.condition is not None and model.priority is not None
        rule = RuleDef(
            name=name,
            condition=self._cond(raw, model.condition),
            output=(model.output or "").strip(),
            desc=(model.desc or "").strip(),
            priority=model.priority,
            location=raw.location(),
            tags=list(model.tags or []),
            enabled=True if model.enabled is None else model.enabled,
            exceptions=self._exceptions(raw, model),
            source=model.source or "syscall",
            skip_if_unknown_filter=bool(model.skip_if_unknown_filter),
            warn_evttypes=True if model.warn_evttypes is None else model.warn_evttypes,
            action=model.action or "alert",
        )
        if existing is not None:
            self.diag.warn(
                "rule redefined; the later definition replaces it", raw.location(), label
            )
        self.rs.rules[name] = rule

    def _modify_rule(
        self,
        raw: RawItem,
        model: models.RuleModel,
        rule: RuleDef,
        modes: dict[str, str],
        label: str,
    ) -> None:
        for key, mode in modes.items():
            if key == "condition":
                cond = self._cond(raw, model.condition or "")
                if mode == "append":
                    rule.condition.append(cond)
                else:
                    rule.condition = cond
            elif key == "output":
                new = (model.output or "").strip()
                rule.output = f"{rule.output} {new}" if mode == "append" else new
            elif key == "desc":
                new = (model.desc or "").strip()
                rule.desc = f"{rule.desc} {new}" if mode == "append" else new
            elif key == "tags":
                new_tags = list(model.tags or [])
                rule.tags = (
                    rule.tags + [t for t in new_tags if t not in rule.tags]
                    if mode == "append"
                    else new_tags
                )
            elif key == "exceptions":
                new_ex = self._exceptions(raw, model)
                if mode == "replace":
                    rule.exceptions = new_ex
                    continue
                by_name = {e.name: e for e in rule.exceptions}
                for ex in new_ex:
                    old = by_name.get(ex.name)
                    if old is None:
                        rule.exceptions.append(ex)
                    else:
                        old.values.extend(ex.values)
            elif key == "priority":
                assert model.priority is not None
                rule.priority = model.priority
            elif key == "enabled":
                rule.enabled = bool(model.enabled)
            elif key == "warn_evttypes":
                rule.warn_evttypes = bool(model.warn_evttypes)
            elif key == "skip-if-unknown-filter":
                rule.skip_if_unknown_filter = bool(model.skip_if_unknown_filter)
            elif key == "action":
                rule.action = model.action or "alert"


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given; a directory contributes its *.yaml/*.yml files in name order."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.suffix in (".yaml", ".yml")))
        else:
            out.append(p)
    return out


def load_ruleset(paths: Iterable[Path]) -> RuleSet:
    """Read and merge rules files. Problems are collected in ``diagnostics`` (not raised)."""
    rs = RuleSet()
    builder = _Builder(rs)
    for path in expand_paths(paths):
        rs.files.append(path)
        try:
            _source, items, err, loc = load_file(path)
        except OSError as exc:
            rs.diagnostics.error(f"cannot read rules file: {exc.strerror}", Location(path, 1, 1))
            continue
        except UnicodeDecodeError:
            rs.diagnostics.error("rules file is not UTF-8", Location(path, 1, 1))
            continue
        if err is not None:
            rs.diagnostics.error(err, loc or Location(path, 1, 1))
            continue
        for raw in items or []:
            builder.add(raw)
    return rs
