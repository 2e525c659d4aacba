"""Pydantic models of the items of a Falco rules file (plus Sentinel's ``action`` key).

The models check shapes and types only; how items combine (append, override, list-in-list)
is :mod:`sentinel.loader.ruleset`'s job. Unknown keys are kept in ``model_extra`` so the
loader can warn about them instead of failing, as Falco does.
"""

from __future__ import annotations

import builtins
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

PRIORITIES = (
    "Emergency",
    "Alert",
    "Critical",
    "Error",
    "Warning",
    "Notice",
    "Informational",
    "Debug",
)
_PRIORITY_BY_LOWER = {p.lower(): p for p in PRIORITIES} | {"info": "Informational"}


def normalize_priority(value: str) -> str:
    """Case-insensitive priority -> Falco's spelling. Raises ValueError."""
    try:
        return _PRIORITY_BY_LOWER[value.strip().lower()]
    except KeyError:
        raise ValueError(
            f"invalid priority {value!r}; expected one of {', '.join(PRIORITIES)}"
        ) from None


def priority_rank(priority: str) -> int:
    """0 for Emergency (most severe) ... 7 for Debug."""
    return PRIORITIES.index(priority)


OverrideMode = Literal["append", "replace"]


class _Item(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, strict=False)

    def unknown_keys(self) -> list[str]:
        return sorted((self.model_extra or {}).keys())


class ExceptionModel(_Item):
    name: str
    fields: str | list[str] | None = None
    comps: str | list[str] | None = None
    values: list[Any] | None = None


class ListModel(_Item):
    list: str
    items: builtins.list[Any] = Field(default_factory=lambda: [])
    append: bool = False
    override: dict[str, OverrideMode] | None = None

    @field_validator("items", mode="before")
    @classmethod
    def _items_list(cls, v: Any) -> Any:
        return [] if v is None else v


class MacroModel(_Item):
    macro: str
    condition: str | None = None
    append: bool = False
    override: dict[str, OverrideMode] | None = None


class RuleModel(_Item):
    rule: str
    condition: str | None = None
    output: str | None = None
    desc: str | None = None
    priority: str | None = None
    tags: list[str] | None = None
    enabled: bool | None = None
    exceptions: list[ExceptionModel] | None = None
    source: str | None = None
    append: bool = False
    override: dict[str, OverrideMode] | None = None
    skip_if_unknown_filter: bool | None = Field(default=None, alias="skip-if-unknown-filter")
    warn_evttypes: bool | None = None
    action: Literal["alert", "deny"] | None = None
    capture: bool | None = None
    capture_duration: int | None = None

    @field_validator("priority")
    @classmethod
    def _priority(cls, v: str | None) -> str | None:
        return None if v is None else normalize_priority(v)

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [str(t) for t in v]
        return v

    @field_validator("action", mode="before")
    @classmethod
    def _action(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v


class EngineVersionModel(_Item):
    required_engine_version: str | int | float


class PluginVersionsModel(_Item):
    required_plugin_versions: list[dict[str, Any]]


ITEM_KINDS = ("rule", "macro", "list", "required_engine_version", "required_plugin_versions")
MODELS: dict[str, type[_Item]] = {
    "rule": RuleModel,
    "macro": MacroModel,
    "list": ListModel,
    "required_engine_version": EngineVersionModel,
    "required_plugin_versions": PluginVersionsModel,
}

# Keys whose value an override may append to / replace, per item kind (Falco's tables).
APPENDABLE = {
    "rule": {"condition", "output", "desc", "tags", "exceptions"},
    "macro": {"condition"},
    "list": {"items"},
}
REPLACEABLE = {
    "rule": {
        "condition",
        "output",
        "desc",
        "priority",
        "tags",
        "exceptions",
        "enabled",
        "warn_evttypes",
        "skip-if-unknown-filter",
        "action",
    },
    "macro": {"condition"},
    "list": {"items"},
}
