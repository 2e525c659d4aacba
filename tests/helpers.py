"""Small builders shared by the rules-language tests."""

from __future__ import annotations

import os
import subprocess
import textwrap
import threading
from pathlib import Path
from typing import Any

import yaml

from sentinel.compiler import compile_rules
from sentinel.engine import Engine, normalize_event
from sentinel.loader import load_ruleset

# The upstream Falco rules live in ../shared/corpus/falco beside the checkout (never copied in).
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "falco"


def write_rules(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return p


def engine_for(tmp_path: Path, text: str, matching: str = "first") -> Engine:
    rs = load_ruleset([write_rules(tmp_path, text)])
    return Engine(compile_rules(rs), matching=matching)  # type: ignore[arg-type]


def cond_engine(tmp_path: Path, condition: str, extra: str = "") -> Engine:
    """An engine with one rule 'R' whose condition is ``condition``."""
    rule = {
        "rule": "R",
        "desc": "d",
        "condition": condition,
        "output": "out %proc.name",
        "priority": "WARNING",
        "warn_evttypes": False,
    }
    return engine_for(tmp_path, textwrap.dedent(extra) + yaml.safe_dump([rule], sort_keys=False))


def matches(engine: Engine, **fields: Any) -> bool:
    ev = {k.replace("__", "."): v for k, v in fields.items()}
    return bool(engine.match(normalize_event(ev)))


def ev(**fields: Any) -> dict[str, Any]:
    return normalize_event({k.replace("__", "."): v for k, v in fields.items()})


def sentinel_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a ``sentinel run`` subprocess: metrics on an ephemeral loopback port, so
    two runs at once (two tests, a test and an operator's Sentinel) never fight over 9376."""
    return {**(os.environ if base is None else base), "SENTINEL_METRICS_ADDRESS": "127.0.0.1:0"}


def log_records(lines: str | list[str]) -> list[dict[str, Any]]:
    """Sentinel's stderr log lines (structlog JSON when stderr is not a terminal) as dicts;
    other lines are skipped."""
    import json

    text = lines if isinstance(lines, str) else "\n".join(lines)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def log_event(line: str, event: str) -> dict[str, Any] | None:
    """The log record of one stderr line if its event is ``event`` (else None)."""
    recs = log_records(line)
    return recs[0] if recs and recs[0].get("event") == event else None


def wait_armed(
    proc: subprocess.Popen[str], armed: threading.Event, timeout: float, stderr: list[str]
) -> None:
    """Wait until ``sentinel run`` logged ``armed`` (its stderr reader sets ``armed``); fail at
    once, with its stderr, when it exits first (a start-up error must not cost the whole
    timeout: in a VM that hid the error behind the VM's own time-out), or after ``timeout``.
    ``stderr`` is the list the reader appends lines to."""
    import time

    def tail() -> str:
        return "".join(ln if ln.endswith("\n") else ln + "\n" for ln in stderr[-40:])

    deadline = time.monotonic() + timeout
    while not armed.wait(0.5):
        rc = proc.poll()
        if rc is not None:
            time.sleep(0.5)  # let the reader take the last lines
            if armed.is_set():
                return
            raise AssertionError(f"sentinel run exited with {rc} before it armed:\n" + tail())
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"sentinel run did not arm within {timeout:.0f} s:\n" + tail())
