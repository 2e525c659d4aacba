"""README's event-type and field tables are generated from the event table; stale ones fail.

``scripts/gen_readme_tables.py --check`` regenerates the block in memory and compares; a change
to the table (an event type, a parameter, a getter) without rerunning the script fails here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gen_readme_tables.py"


def check(readme: Path | None = None) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, str(SCRIPT), "--check"]
    if readme is not None:
        args += ["--readme", str(readme)]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=REPO)


def test_readme_block_is_current() -> None:
    res = check()
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_stale_block_is_caught(tmp_path: Path) -> None:
    """The check can fail: drop one event type's row from a copy and it says so."""
    text = (REPO / "README.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| system | `setns` |"))
    stale = tmp_path / "README.md"
    stale.write_text(text.replace(row + "\n", ""))
    res = check(stale)
    assert res.returncode == 1
    assert "stale" in res.stdout


def test_every_event_type_and_filled_field_is_listed() -> None:
    from sentinel.enrichment.event import sensor_fields
    from sentinel.events import EVENT_TYPES

    text = (REPO / "README.md").read_text()
    for t in EVENT_TYPES:
        assert f"| `{t.name}` |" in text, t.name
    for name in sensor_fields():
        if not name.startswith("evt.arg."):
            assert f"`{name}`" in text, name
