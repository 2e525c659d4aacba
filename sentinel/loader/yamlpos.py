"""YAML with positions: each top-level item keeps where each of its keys and values stand.

PyYAML's composer gives nodes with start/end marks; we construct plain Python values from them
and keep the scalar nodes of interest so that an error at character N of a condition can be
reported at its line and column in the file, even for multi-line (plain, folded or literal)
scalars where YAML has rewritten the line breaks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sentinel.loader.errors import Location


@dataclass(slots=True)
class SourceFile:
    path: Path
    text: str
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lines = self.text.split("\n")

    def location(self, index: int) -> Location:
        """Character index in the file -> 1-based line/column with the line's text."""
        line = self.text.count("\n", 0, index)
        start = self.text.rfind("\n", 0, index) + 1
        src = self.lines[line] if line < len(self.lines) else None
        return Location(self.path, line + 1, index - start + 1, src)


@dataclass(slots=True)
class ScalarSpan:
    """Where a scalar's value came from, to map offsets in the value back into the file."""

    source: SourceFile
    start: int
    end: int
    style: str | None  # None plain, '"', "'", '|', '>'

    def location(self, offset: int = 0) -> Location:
        return self.source.location(self._map(offset))

    def _map(self, offset: int) -> int:
        raw = self.source.text[self.start : self.end]
        skip = 0
        if self.style in ('"', "'"):
            skip = 1
        elif self.style in ("|", ">"):
            nl = raw.find("\n")
            skip = nl + 1 if nl >= 0 else len(raw)
        # Walk the value and the raw text together; whitespace differs (folding, indentation),
        # other characters appear in order. Escapes make it approximate, which is fine for
        # pointing at a token.
        value = self._value
        i, j = 0, skip
        while i < offset and i < len(value) and j < len(raw):
            if value[i].isspace():
                i += 1
                continue
            if raw[j] == value[i]:
                i += 1
            j += 1
        while j < len(raw) and raw[j].isspace() and self.style not in ('"', "'"):
            j += 1
        return self.start + min(j, len(raw))

    _value: str = ""


@dataclass(slots=True)
class RawItem:
    """One top-level list element of a rules file."""

    data: dict[str, Any]
    source: SourceFile
    start: int  # index of the item's first character in the file
    keys: dict[str, int] = field(default_factory=dict)  # key -> index of the key
    values: dict[str, yaml.Node] = field(default_factory=dict)  # key -> value node

    def location(self, key: str | None = None) -> Location:
        if key is not None and key in self.keys:
            return self.source.location(self.keys[key])
        return self.source.location(self.start)

    def value_location(self, key: str) -> Location:
        node = self.values.get(key)
        if node is None:
            return self.location(key)
        return self.source.location(node.start_mark.index)

    def span(self, key: str) -> ScalarSpan | None:
        node = self.values.get(key)
        if not isinstance(node, yaml.ScalarNode):
            return None
        span = ScalarSpan(self.source, node.start_mark.index, node.end_mark.index, node.style)
        span._value = str(node.value)
        return span


class _Constructor(yaml.constructor.SafeConstructor):
    """Safe constructor that also reads a bare ``=`` (YAML 1.1's "value" tag) as text, since
    Falco exceptions write ``comps: [=, startswith]``."""


_Constructor.add_constructor(
    "tag:yaml.org,2002:value",
    lambda loader, node: loader.construct_scalar(node),  # type: ignore[arg-type]
)


def _compose(text: str) -> yaml.Node | None:
    """The YAML node tree, through libyaml when PyYAML has it (5-10x faster than the pure
    Python parser: the three Falco files take ~0.5 s of start-up there). Errors are
    reported by the pure Python parser, whose messages the tests and users know."""
    loader = getattr(yaml, "CSafeLoader", None)
    if loader is not None:
        try:
            node: yaml.Node | None = yaml.compose(text, Loader=loader)
            return node
        except yaml.YAMLError:
            pass  # parsed again below, for the message
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    return node


def load_file(path: Path) -> tuple[SourceFile, list[RawItem] | None, str | None, Location | None]:
    """Parse ``path``. Returns (source, items, error message, error location)."""
    text = path.read_text(encoding="utf-8")
    source = SourceFile(path, text)
    try:
        root = _compose(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        loc = source.location(mark.index) if mark is not None else None
        return source, None, f"invalid YAML: {exc.problem or exc}", loc
    if root is None:
        return source, [], None, None
    if not isinstance(root, yaml.SequenceNode):
        return source, None, "a rules file must be a YAML list of items", source.location(0)
    items: list[RawItem] = []
    ctor = _Constructor()
    for node in root.value:
        if not isinstance(node, yaml.MappingNode):
            return (
                source,
                None,
                "each item must be a mapping (rule, macro, list, ...)",
                source.location(node.start_mark.index),
            )
        data: dict[str, Any] = {}
        item = RawItem(data, source, node.start_mark.index)
        for knode, vnode in node.value:
            key = str(ctor.construct_object(knode, deep=True))
            data[key] = ctor.construct_object(vnode, deep=True)
            item.keys[key] = knode.start_mark.index
            item.values[key] = vnode
        items.append(item)
    return source, items, None, None
