"""The VM harness's own failure paths, on the host: they decide whether a broken start-up or a
hung guest shows up as a clear failure or as a silent VM time-out.

- ``wait_armed`` must fail at once, with sentinel's stderr, when ``sentinel run`` exits
  before arming (main's CI once waited out the whole VM on a sentinel that had died at once).
- A VM that hits its time-out must name the guest test it was in, read from the shared log a
  real ``pytest -u -v`` writes (as tests/vm/guest_entry.sh runs it).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import sentinel_env, wait_armed
from tests.vm.test_vm import VmRun, vm_timeout_s

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


def test_a_timed_out_vm_names_the_guest_test_it_was_in(tmp_path: Path) -> None:
    (tmp_path / "test_g.py").write_text(
        "import time\n\ndef test_quick():\n    pass\n\ndef test_hangs():\n    time.sleep(600)\n"
    )
    log = tmp_path / "guest-pytest.log"
    with log.open("w") as f:
        proc = subprocess.run(
            [
                "timeout",
                "20",
                sys.executable,
                "-u",
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "-v",
                "test_g.py",
            ],
            cwd=tmp_path,
            stdout=f,
            stderr=subprocess.STDOUT,
            check=False,
        )
    assert proc.returncode == 124
    run = VmRun("5.10", proc.returncode, 10.0, tmp_path, "")
    assert run.running() == "test_g.py::test_hangs"
    assert run.stopped() == (
        f"the 5.10 VM hit its {vm_timeout_s()} s time-out while running test_g.py::test_hangs"
    )
    # A finished suite names no test.
    log.write_text("test_g.py::test_quick PASSED\n")
    assert run.running() is None
