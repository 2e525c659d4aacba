"""Boot each VM kernel once and turn every guest test result into a host test result.

The host kernel refuses LSM programs (see ../shared/KERNEL.md), and it is one kernel. So the
enforcement suite and the sensor's portability tests run in QEMU VMs booting Debian's own
kernels, one per line of scripts/vm-kernels.conf (5.10, 6.1, 6.12), BPF LSM in each boot's LSM
list, over this machine's root file system (scripts/vm-run.sh). Inside, tests/vm/guest_entry.sh
writes ``sentinel doctor``'s report, runs its kernel's suite of :data:`GUEST_SUITES` (the
third column of its line) with a JUnit report and (on
:data:`BENCH_KERNEL` only) bench/bench_lsm.py, into a shared directory.

One boot per kernel serves all of that kernel's tests. Adding a kernel is a line in
scripts/vm-kernels.conf; adding a test file to a suite is a line in :data:`GUEST_SUITES`.
`make test` boots the kernels whose line says ``yes`` (what fits CI's 60 minutes);
``SENTINEL_VM_KERNELS=all`` (`make test-kernels`) boots every one, ``SENTINEL_VM_KERNELS=5.10,6.12``
those, and ``SENTINEL_VM_SUITE=portability`` (a suite name) or
``SENTINEL_VM_SUITE=tests/kernel/test_event_types.py`` (paths) replaces each kernel's suite.
The guest test ids are collected on the host first (``pytest --collect-only``), so a guest
test that never ran in a VM fails here as "missing" instead of silently vanishing. A kernel
that was not fetched fails its tests with the command that fetches it.
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
from functools import cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
KERNELS_CONF = REPO / "scripts" / "vm-kernels.conf"

# What runs in a VM, by the suite name of its kernel's line in scripts/vm-kernels.conf.
# "portability": what differs between kernels: the sensor on that kernel (every traced event
# type decodes with the right fields, the prefilter's BPF verdicts equal the model's, the
# default rules fire, the helper detection agrees with bpftool) and the BPF LSM hooks and
# policy maps (test_enforcement). "full" adds the rest of the enforcement suite: `sentinel run`
# with deny rules, its reloads and their memory, which exercise Sentinel's own code above the
# same hooks; ~20 min under emulation, so it runs on one kernel (CI's 60-minute budget: README).
PORTABILITY = [
    "tests/kernel/test_event_types.py",  # every traced event type decodes with the right fields
    "tests/kernel/test_prefilter_kernel.py",  # the prefilter's BPF verdicts equal the model's
    "tests/kernel/test_default_rules.py",  # the default rules fire on the live kernel: files
    "tests/kernel/test_default_rules_proc.py",  # and processes (execs, in podman containers too)
    "tests/kernel/test_features.py::test_detected_helpers_match_bpftool",  # detection vs oracle
    "tests/vm/guest/test_enforcement.py",  # BPF LSM: each hook denies, neighbours allowed
]
GUEST_SUITES: dict[str, list[str]] = {
    "portability": PORTABILITY,
    "full": ["tests/vm/guest"],  # the whole enforcement suite (the host runs the sensor's tests)
    "all": ["tests/vm/guest", *PORTABILITY[:-1]],  # both
}


def vm_timeout_s() -> int:
    """A VM's bound (SENTINEL_VM_TIMEOUT, default 3000 s): the whole guest suite in one boot
    (boot, doctor, tests, bench) under software emulation on a loaded 2-core machine takes
    20-40 min (times per kernel: README; vm-run.sh's own default, 900 s, is for one-off
    commands). It stops a hung guest, and then the failure names the test it was in. A single
    hung guest test fails sooner, alone (guest_entry.sh: SENTINEL_GUEST_TEST_TIMEOUT)."""
    return int(os.environ.get("SENTINEL_VM_TIMEOUT", "3000"))


BENCH_KERNEL = "6.1"  # the LSM write-storm benchmark (README) runs in this kernel's VM only


def _conf_rows() -> list[list[str]]:
    lines = KERNELS_CONF.read_text().splitlines()
    return [ln.split() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def suites() -> dict[str, list[str]]:
    """Each kernel of scripts/vm-kernels.conf and the tests its VM runs (its line's suite;
    SENTINEL_VM_SUITE replaces them all: a suite name of :data:`GUEST_SUITES`, or
    path,path... for development)."""
    out = {}
    for row in _conf_rows():
        suite = row[2] if len(row) > 2 else "portability"
        if suite not in GUEST_SUITES:
            raise ValueError(f"{KERNELS_CONF}: kernel {row[0]}: unknown suite {suite!r}")
        out[row[0]] = GUEST_SUITES[suite]
    chosen = os.environ.get("SENTINEL_VM_SUITE")
    if chosen:
        paths = GUEST_SUITES.get(chosen, chosen.split(","))
        out = {k: paths for k in out}
    return out


def kernels(narrow: bool = True) -> list[str]:
    """The kernel names of scripts/vm-kernels.conf, in order. With ``narrow``: those whose
    line's fourth column is ``yes`` (what `make test` boots within CI's 60 minutes: README),
    or SENTINEL_VM_KERNELS's (``all``, or name,name...)."""
    rows = _conf_rows()
    names = [row[0] for row in rows]
    if not narrow:
        return names
    only = os.environ.get("SENTINEL_VM_KERNELS", "")
    if only == "all":
        return names
    if only:
        unknown = set(only.split(",")) - set(names)
        if unknown:
            raise ValueError(f"SENTINEL_VM_KERNELS: unknown {sorted(unknown)} (known: {names})")
        return [n for n in names if n in only.split(",")]
    return [row[0] for row in rows if len(row) > 3 and row[3] == "yes"]


@cache
def guest_ids(kernel: str) -> list[str]:
    """The ids of the tests ``kernel``'s VM runs, collected on the host."""
    return _collect(tuple(suites()[kernel]))


@cache
def _collect(paths: tuple[str, ...]) -> list[str]:
    env = dict(os.environ, SENTINEL_IN_VM="1", PYTHONDONTWRITEBYTECODE="1")
    argv = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    out = subprocess.run(
        [*argv, *paths],
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
    kernel: str
    rc: int
    seconds: float
    outdir: Path
    log: str
    info: dict[str, str] = field(default_factory=dict)
    results: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (outcome, text)

    @property
    def timed_out(self) -> bool:
        """timeout(1)'s status when the VM hit SENTINEL_VM_TIMEOUT (or was killed after it)."""
        return self.rc in (124, 137)

    def running(self) -> str | None:
        """The guest test that had started but not finished when the guest stopped: pytest -v
        writes a test's id before running it and its outcome after (guest_entry.sh: -u)."""
        log = self.outdir / "guest-pytest.log"
        if not log.exists():
            return None
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if "::" in ln]
        if not lines:
            return None
        last = lines[-1].split()
        if any(w in last for w in ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS")):
            return None
        return last[0]

    def stopped(self) -> str:
        """Why the guest's suite did not finish, naming the test it was in."""
        where = self.running()
        in_test = f" while running {where}" if where else " (no guest test was running)"
        if self.timed_out:
            return f"the {self.kernel} VM hit its {vm_timeout_s()} s time-out{in_test}"
        return f"the {self.kernel} VM stopped (rc {self.rc}){in_test}"

    def tail(self, n: int = 60) -> str:
        guest = self.outdir / "guest-pytest.log"
        text = guest.read_text(errors="replace") if guest.exists() else self.log
        return "\n".join(text.splitlines()[-n:])

    def report(self) -> str:
        """One line for the run's summary: the time this kernel's VM took, and its parts."""
        parts = ", ".join(
            f"{k.removesuffix('_s')} {float(self.info[k]):.0f} s"
            for k in ("boot_uptime_s", "doctor_s", "suite_s", "bench_s", "armed_s")
            if self.info.get(k, "None") != "None"
        )
        failed = sum(1 for o, _ in self.results.values() if o != "passed")
        return (
            f"kernel {self.kernel} ({self.info.get('kernel', '?')}): {self.seconds:.0f} s "
            f"({parts}); {len(self.results)} guest tests, {failed} not passed; rc {self.rc}"
        )


def _parse_junit(path: Path) -> dict[str, tuple[str, str]]:
    results: dict[str, tuple[str, str]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        # classname is e.g. "tests.vm.guest.test_enforcement" for module-level tests.
        nodeid = case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "")
        outcome, text = "passed", ""
        for tag in ("failure", "error"):
            el = case.find(tag)
            if el is not None:
                outcome, text = "failed", (el.get("message", "") + "\n" + (el.text or ""))
        el = case.find("skipped")
        if el is not None and outcome == "passed":
            outcome, text = "skipped", el.get("message", "")
        results[nodeid] = (outcome, text)
    return results


RUNS: dict[str, VmRun] = {}  # one boot per kernel; read by tests/vm/conftest.py's summary


def boot(kernel: str) -> VmRun:
    """Boot ``kernel``'s VM and run the whole guest suite in it, once per session."""
    if kernel in RUNS:
        return RUNS[kernel]
    if os.geteuid() != 0:
        pytest.skip("the VM suite needs root (BPF, mounts inside the guest); CI runs as root")
    if not (REPO / "build" / "kernels" / kernel / "kernel.env").exists():
        pytest.fail(
            f"kernel {kernel} is not fetched: run scripts/fetch-kernels.sh {kernel} "
            "(scripts/setup.sh does it for every kernel of scripts/vm-kernels.conf)"
        )
    outdir = Path(tempfile.mkdtemp(prefix=f"sentinel-vm-{kernel}-"))
    os.chmod(outdir, 0o777)
    skip = "" if kernel == BENCH_KERNEL else "SENTINEL_VM_BENCH=0 "
    guest_entry = REPO / "tests" / "vm" / "guest_entry.sh"
    entry = f"{skip}bash {guest_entry} {outdir} {' '.join(suites()[kernel])}"
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "vm-run.sh"), "--kernel", kernel, str(outdir), entry],
        env={**os.environ, "SENTINEL_VM_TIMEOUT": str(vm_timeout_s())},
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - t0
    started = outdir / "vm-started"
    if started.exists():  # not the wait for the VM lock: the VM's own time
        seconds = time.time() - float(started.read_text())
    run = VmRun(kernel, proc.returncode, seconds, outdir, proc.stdout + proc.stderr)
    info = outdir / "guest-info.txt"
    if info.exists():
        for line in info.read_text().splitlines():
            k, _, v = line.partition("=")
            run.info[k] = v
    armed = outdir / "armed.jsonl"  # tests/live.py: every `sentinel run` of the suite
    if armed.exists():
        recs = [json.loads(ln) for ln in armed.read_text().splitlines() if ln.strip()]
        compiled = [r["seconds"] for r in recs if not r.get("bpf_cached")]
        if compiled:  # the first start-up that compiled its programs (no cache yet)
            run.info["armed_s"] = str(compiled[0])
    junit = outdir / "junit.xml"
    if junit.exists():
        run.results = _parse_junit(junit)
    RUNS[kernel] = run
    print(f"\nVM {run.report()}")
    return run


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kernel" in metafunc.fixturenames and "guest_test" in metafunc.fixturenames:
        metafunc.parametrize(
            ("kernel", "guest_test"), [(k, t) for k in kernels() for t in guest_ids(k)]
        )
    elif "kernel" in metafunc.fixturenames:
        metafunc.parametrize("kernel", kernels())


def test_vm_booted_and_suite_ran(kernel: str) -> None:
    run = boot(kernel)
    assert run.info.get("guest_done") == "1", f"{run.stopped()}:\n" + run.tail()
    assert run.info.get("kernel", "").startswith(kernel + "."), run.info
    assert "bpf" in run.info["lsm"].split(",")
    assert run.results, "no JUnit results from the guest:\n" + run.tail()


def test_guest(kernel: str, guest_test: str) -> None:
    run = boot(kernel)
    if guest_test not in run.results:
        why = run.stopped() if run.info.get("guest_done") != "1" else "the suite left it out"
        pytest.fail(
            f"{guest_test} did not run in the {kernel} VM: {why}. Guest output:\n{run.tail()}"
        )
    outcome, text = run.results[guest_test]
    # A skip inside the VM is a failure: BPF LSM and the sensor must work there.
    assert outcome == "passed", f"in the {kernel} VM: {outcome}\n{text}"


def test_no_unexpected_guest_tests(kernel: str) -> None:
    run = boot(kernel)
    expected = set(guest_ids(kernel))
    assert set(run.results) <= expected, set(run.results) - expected


def test_doctor_ran_in_vm(kernel: str) -> None:
    """``sentinel doctor`` in the guest: it must find BPF LSM and say which kernel features
    the sensor falls back on (the README's kernel table quotes it)."""
    run = boot(kernel)
    path = run.outdir / "doctor.txt"
    assert path.exists(), run.tail()
    text = path.read_text()
    print(f"\nsentinel doctor on {kernel}:\n{text}")
    assert run.info.get("doctor_rc") == "0", text
    assert "OK   bpf-lsm:" in text, text
    assert "kernel-features:" in text, text


def test_lsm_bench_ran_in_vm() -> None:
    if BENCH_KERNEL not in kernels():
        pytest.skip(f"SENTINEL_VM_KERNELS leaves out {BENCH_KERNEL}, whose VM runs the bench")
    run = boot(BENCH_KERNEL)
    path = run.outdir / "bench.json"
    assert path.exists(), "bench/bench_lsm.py wrote no result:\n" + (
        (run.outdir / "bench.log").read_text(errors="replace")
        if (run.outdir / "bench.log").exists()
        else run.tail()
    )
    data = json.loads(path.read_text())
    print(f"\nLSM write-storm overhead in the {BENCH_KERNEL} VM: {json.dumps(data, indent=1)}")
    for case in data["cases"]:
        assert case["ratio"] > 0.5, case
