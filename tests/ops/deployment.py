"""Reading the deployment artefacts the tests check: the documented run line and manifests."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "operations.md"
DEPLOY = ROOT / "deploy"
RUN_LINE_MARK = "<!-- run-line:"


def documented_run_line() -> list[str]:
    """The `podman run` line of docs/operations.md (the line after the marker), as argv."""
    lines = DOCS.read_text().splitlines()
    i = next(n for n, ln in enumerate(lines) if ln.startswith(RUN_LINE_MARK))
    argv = shlex.split(lines[i + 1])
    assert argv[:2] == ["podman", "run"], argv
    return argv


def documented_caps() -> set[str]:
    argv = documented_run_line()
    caps = next(a for a in argv if a.startswith("--cap-add="))
    return set(caps.removeprefix("--cap-add=").split(","))


def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for f in sorted(DEPLOY.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(f.read_text()) if d)
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name)
