"""Benchmarks that compare two checkouts: a worker run of a bench script importing
``sentinel`` from a given checkout, and that checkout's commit.

Imported lazily by the parent process only: a worker runs with the other checkout first on
``PYTHONPATH``, whose ``bench`` package may not have this module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def worker(script: str, args: list[str], checkout: Path, what: str) -> dict[str, Any]:
    """Run ``script`` (this checkout's bench file) with ``args`` in a fresh interpreter whose
    ``sentinel`` comes from ``checkout``; its last stdout line is a JSON object that names
    where ``sentinel`` came from (``sentinel_from``), which must be that checkout."""
    proc = subprocess.run(
        [sys.executable, script, *args],
        env={**os.environ, "PYTHONPATH": str(checkout)},
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    res: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    imported = Path(res.pop("sentinel_from")).resolve()
    if not imported.is_relative_to(checkout.resolve()):
        raise RuntimeError(f"{what} for {checkout} imported sentinel from {imported}")
    return res


def commit(checkout: Path) -> str:
    """The checkout's short commit, or "?"."""
    out = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "?"
