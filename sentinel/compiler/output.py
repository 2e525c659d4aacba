"""Output strings: ``"Shell in %container.id (parent=%proc.pname)"`` -> parts, and rendering.

Fields are ``%name``, ``%name[arg]`` or ``%(name)`` as in Falco. A missing value prints
``<NA>`` and appears as ``null`` in ``output_fields``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sentinel.compiler.runtime import field_arg

_FIELD = re.compile(
    r"%(?:\((?P<p>[a-zA-Z][a-zA-Z0-9_]*(?:\.[a-zA-Z0-9_]+)+(?:\[[^\]]*\])?)\)"
    r"|(?P<f>[a-zA-Z][a-zA-Z0-9_]*(?:\.[a-zA-Z0-9_]+)+(?:\[[^\]\s]*\])?))"
)


@dataclass(frozen=True, slots=True)
class OutputTemplate:
    text: str
    parts: tuple[str | tuple[str, str, str | None], ...]  # literal | (key, name, arg)
    fields: tuple[str, ...]  # keys in order of first appearance

    def values(self, event: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in self.parts:
            if isinstance(p, tuple) and p[0] not in out:
                key, name, arg = p
                out[key] = lookup(event, key, name, arg)
        return out

    def render(self, values: Mapping[str, Any]) -> str:
        return "".join(p if isinstance(p, str) else display(values.get(p[0])) for p in self.parts)


def lookup(event: Mapping[str, Any], key: str, name: str, arg: str | None) -> Any:
    if arg is None:
        return event.get(name)
    try:
        return field_arg(event, name, arg, key)
    except (ValueError, TypeError):
        return None


def display(v: Any) -> str:
    if v is None:
        return "<NA>"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, list | tuple):
        return ",".join(display(x) for x in v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def parse_output(text: str) -> OutputTemplate:
    parts: list[str | tuple[str, str, str | None]] = []
    fields: list[str] = []
    pos = 0
    for m in _FIELD.finditer(text):
        if m.start() > pos:
            parts.append(text[pos : m.start()])
        key = m.group("p") or m.group("f")
        name, _, rest = key.partition("[")
        arg = rest[:-1] if rest else None
        parts.append((key, name, arg))
        if key not in fields:
            fields.append(key)
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    return OutputTemplate(text, tuple(parts), tuple(fields))
