"""Errors and warnings that point at a place in a rules file.

Every problem names the file, the 1-based line and column inside it, the item (rule, macro or
list and its name) and, where the text is known, shows the line with a caret, the way a compiler
does. ``RulesError`` carries all problems of a load so a user fixes them in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Location:
    file: Path
    line: int
    column: int
    source_line: str | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class Problem:
    message: str
    location: Location | None = None
    item: str | None = None  # e.g. "rule 'Terminal shell in container'"
    severity: str = "error"
    code: str = ""

    def format(self) -> str:
        where = f"{self.location}: " if self.location else ""
        what = f"{self.item}: " if self.item else ""
        text = f"{where}{self.severity}: {what}{self.message}"
        loc = self.location
        if loc is not None and loc.source_line is not None:
            caret = " " * (loc.column - 1) + "^"
            text += f"\n    {loc.source_line.rstrip()}\n    {caret}"
        return text

    def to_dict(self) -> dict[str, object]:
        loc = self.location
        return {
            "severity": self.severity,
            "message": self.message,
            "item": self.item,
            "file": str(loc.file) if loc else None,
            "line": loc.line if loc else None,
            "column": loc.column if loc else None,
            "code": self.code,
        }


@dataclass
class Diagnostics:
    """Collects problems while loading; ``raise_if_errors`` turns them into a RulesError."""

    problems: list[Problem] = field(default_factory=list)

    def error(
        self, message: str, location: Location | None = None, item: str | None = None
    ) -> None:
        self.problems.append(Problem(message, location, item, "error"))

    def warn(
        self,
        message: str,
        location: Location | None = None,
        item: str | None = None,
        code: str = "",
    ) -> None:
        self.problems.append(Problem(message, location, item, "warning", code))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def raise_if_errors(self) -> None:
        if self.errors:
            raise RulesError(self.errors, self.warnings)


class RulesError(Exception):
    """Rules that cannot be loaded; ``problems`` has every error found (warnings separate)."""

    def __init__(self, problems: list[Problem], warnings: list[Problem] | None = None) -> None:
        self.problems = problems
        self.warnings = warnings or []
        super().__init__("\n".join(p.format() for p in problems))
