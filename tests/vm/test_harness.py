"""The VM harness's own failure paths, on the host: they decide whether a broken start-up
shows up as a clear failure or as a silent VM time-out.

- ``wait_armed`` must fail at once, with sentinel's stderr, when ``sentinel run`` exits
  before arming (main's CI once waited out the whole VM on a sentinel that had died at once).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import sentinel_env, wait_armed

REPO = Path(__file__).resolve().parents[2]


def test_wait_armed_fails_at_once_with_stderr_when_sentinel_exits(tmp_path: Path) -> None:
    cfg = tmp_path / "sentinel.yaml"
    cfg.write_text(f"rules: [{tmp_path / 'no-such-rules.yaml'}]\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sentinel", "run", "--config", str(cfg)],
        cwd=REPO,
        env=sentinel_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr: list[str] = []
    armed = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr.append(line)

    threading.Thread(target=read, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(AssertionError) as err:
        wait_armed(proc, armed, 600, stderr)
    assert time.monotonic() - t0 < 60, "waited for the time-out instead of the exit"
    text = str(err.value)
    assert f"exited with {proc.returncode} before it armed" in text
    assert "no-such-rules.yaml" in text, text  # sentinel's own reason reaches the failure
