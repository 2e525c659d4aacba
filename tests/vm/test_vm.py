"""Boot the BPF LSM VM once and turn every guest test result into a host test result.

The host kernel refuses LSM programs (see ../shared/KERNEL.md), so enforcement is proven in
a QEMU VM running Debian's own kernel (BPF LSM on) over this machine's root file system
(scripts/vm-run.sh). Inside, tests/vm/guest_entry.sh runs tests/vm/guest with a JUnit report
and then bench/bench_lsm.py, writing into a shared directory.

The guest test ids are collected on the host first (``pytest --collect-only``), so a guest
test that never ran in the VM fails here as "missing" instead of silently vanishing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
GUEST_DIR = REPO / "tests" / "vm" / "guest"


def _guest_ids() -> list[str]:
    env = dict(os.environ, SENTINEL_IN_VM="1", PYTHONDONTWRITEBYTECODE="1")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            str(GUEST_DIR.relative_to(REPO)),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    ids = [ln.strip() for ln in out.stdout.splitlines() if "::" in ln]
    if not ids:
        raise RuntimeError(f"could not collect the guest tests:\n{out.stdout}\n{out.stderr}")
    return ids


@dataclass
class VmRun:
    rc: int
    seconds: float
    outdir: Path
    log: str
    info: dict[str, str] = field(default_factory=dict)
    results: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (outcome, text)

    def tail(self, n: int = 60) -> str:
        guest = self.outdir / "guest-pytest.log"
        text = guest.read_text(errors="replace") if guest.exists() else self.log
        return "\n".join(text.splitlines()[-n:])


def _parse_junit(path: Path) -> dict[str, tuple[str, str]]:
    results: dict[str, tuple[str, str]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        classname = case.get("classname", "")
        module, _, cls = classname.rpartition(".") if "." in classname else ("", "", classname)
        # classname is "tests.vm.guest.test_enforcement" for module-level tests.
        nodeid = classname.replace(".", "/") + ".py::" + case.get("name", "")
        outcome, text = "passed", ""
        for tag in ("failure", "error"):
            el = case.find(tag)
            if el is not None:
                outcome, text = "failed", (el.get("message", "") + "\n" + (el.text or ""))
        el = case.find("skipped")
        if el is not None and outcome == "passed":
            outcome, text = "skipped", el.get("message", "")
        results[nodeid] = (outcome, text)
        del module, cls
    return results


@pytest.fixture(scope="session")
def vm_run() -> VmRun:
    if os.geteuid() != 0:
        pytest.skip("the VM suite needs root (BPF, mounts inside the guest); CI runs as root")
    outdir = Path(tempfile.mkdtemp(prefix="sentinel-vm-"))
    os.chmod(outdir, 0o777)
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            "bash",
            str(REPO / "scripts" / "vm-run.sh"),
            str(outdir),
            f"bash {REPO / 'tests' / 'vm' / 'guest_entry.sh'} {outdir}",
        ],
        capture_output=True,
        text=True,
        check=False,
        # the whole guest suite in one boot: under software emulation on 2 cores it takes
        # 20-40 min (vm-run.sh's own default, 900 s, is for one-off commands)
        env={**os.environ, "SENTINEL_VM_TIMEOUT": os.environ.get("SENTINEL_VM_TIMEOUT", "3000")},
    )
    run = VmRun(proc.returncode, time.monotonic() - t0, outdir, proc.stdout + proc.stderr)
    info = outdir / "guest-info.txt"
    if info.exists():
        for line in info.read_text().splitlines():
            k, _, v = line.partition("=")
            run.info[k] = v
    junit = outdir / "junit.xml"
    if junit.exists():
        run.results = _parse_junit(junit)
    print(f"\nVM run: {run.seconds:.0f} s wall, rc {run.rc}, guest info {run.info}")
    return run


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "guest_test" in metafunc.fixturenames:
        metafunc.parametrize("guest_test", _guest_ids())


def test_vm_booted_and_suite_ran(vm_run: VmRun) -> None:
    assert vm_run.info.get("guest_done") == "1", f"VM did not finish (rc {vm_run.rc}):\n" + (
        vm_run.tail()
    )
    assert "bpf" in vm_run.info["lsm"].split(",")
    assert vm_run.results, "no JUnit results from the guest:\n" + vm_run.tail()


def test_guest(vm_run: VmRun, guest_test: str) -> None:
    if guest_test not in vm_run.results:
        pytest.fail(f"{guest_test} did not run in the VM. Guest output:\n{vm_run.tail()}")
    outcome, text = vm_run.results[guest_test]
    # A skip inside the VM is a failure: BPF LSM must work there.
    assert outcome == "passed", f"in the VM: {outcome}\n{text}"


def test_no_unexpected_guest_tests(vm_run: VmRun) -> None:
    expected = set(_guest_ids())
    assert set(vm_run.results) <= expected, set(vm_run.results) - expected


def test_lsm_bench_ran_in_vm(vm_run: VmRun) -> None:
    path = vm_run.outdir / "bench.json"
    assert path.exists(), "bench/bench_lsm.py wrote no result:\n" + (
        (vm_run.outdir / "bench.log").read_text(errors="replace")
        if (vm_run.outdir / "bench.log").exists()
        else vm_run.tail()
    )
    data = json.loads(path.read_text())
    print(f"\nLSM write-storm overhead in the VM: {json.dumps(data, indent=1)}")
    for case in data["cases"]:
        assert case["ratio"] > 0.5, case
