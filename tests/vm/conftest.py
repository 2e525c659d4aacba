"""tests/vm: host-side tests, plus the guest suite (tests/vm/guest) that only runs in the VM.

The guest tests load BPF LSM programs, which this host's kernel refuses; on the host they are
run *through* tests/vm/test_vm.py, which boots the VM once and reports each guest result as a
host test. So the host never collects tests/vm/guest directly.
"""

from __future__ import annotations

import os
import sys

import pytest

collect_ignore = [] if os.environ.get("SENTINEL_IN_VM") == "1" else ["guest"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The time each kernel's VM took, and its parts (CI's 60-minute budget is mostly these)."""
    mod = sys.modules.get("tests.vm.test_vm")
    runs = getattr(mod, "RUNS", {}) if mod is not None else {}
    if runs:
        terminalreporter.section("VM kernels")
        for run in runs.values():
            terminalreporter.write_line(run.report())
