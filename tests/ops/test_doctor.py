"""``sentinel doctor`` on this host, for real: the bcc compile, the ring buffer round trip and
the BPF LSM probe all run against the running kernel.

This machine's kernel refuses BPF LSM programs (see ../shared/KERNEL.md), so doctor must say
so as a WARN and still exit 0; everything else must be OK.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SENTINEL = [sys.executable, "-m", "sentinel"]
pytestmark = pytest.mark.kernel


def require_root() -> None:
    if os.geteuid() != 0:
        print("SKIP: doctor's real checks need root")
        pytest.skip("needs root")


def doctor(*args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [*SENTINEL, "doctor", *args]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd="/")


@pytest.fixture(scope="module")
def podman_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private, real podman API service (not the system socket other suites rely on)."""
    require_root()
    sock = tmp_path_factory.mktemp("podman") / "podman.sock"
    proc = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sock.exists(), "podman system service did not create its socket"
        yield str(sock)
    finally:
        proc.terminate()
        proc.wait(10)


def test_doctor_on_this_host(podman_socket: str) -> None:
    t0 = time.monotonic()
    res = doctor("--json", "--runtime-socket", podman_socket)
    took = time.monotonic() - t0
    print(f"doctor --json took {took:.2f}s")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["ok"] is True
    by_name = {c["name"]: c for c in doc["checks"]}
    assert set(by_name) == {
        "privileges",
        "btf",
        "kernel-features",
        "tracefs",
        "bpffs",
        "kernel-headers",
        "bcc",
        "bcc-compile",
        "ringbuf",
        "bpf-lsm",
        "container-runtime",
    }
    lsm = by_name.pop("bpf-lsm")
    assert lsm["status"] == "WARN"
    assert "BPF LSM is not available" in lsm["detail"]
    assert "lsm=" in lsm["fix"]
    not_ok = {n: c for n, c in by_name.items() if c["status"] != "OK"}
    assert not_ok == {}
    detail = by_name["container-runtime"]["detail"]
    assert detail.startswith("answered: podman "), detail
    assert detail.endswith(f" (Docker API) at {podman_socket}"), detail
    assert "sys_enter_getppid" in by_name["bcc-compile"]["detail"]
    # this host's 6.18 has every optional feature the sensor uses (no fallback compiled)
    assert (
        "the sensor uses all of: task_btf, task_pt_regs, exit_group_dead"
        in (by_name["kernel-features"]["detail"])
    )


def test_text_output_one_line_per_check(tmp_path: Path) -> None:
    require_root()
    missing = str(tmp_path / "no.sock")
    res = doctor("--runtime-socket", missing)
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert lines[-1] == "sentinel run can work here"
    checks = lines[:-1]
    assert len(checks) == 11
    for ln in checks:
        assert ln.split(" ", 1)[0] in ("OK", "WARN", "FAIL"), ln
    warn = [ln for ln in checks if ln.startswith("WARN")]
    assert [w.split()[1] for w in warn] == ["bpf-lsm:", "container-runtime:"]
    assert all("(fix: " in w for w in warn)
    assert not any("(fix: " in ln for ln in checks if ln.startswith("OK"))


def test_unprivileged_user_cannot_run() -> None:
    require_root()
    if shutil.which("setpriv") is None:  # util-linux, always on Debian
        pytest.fail("setpriv missing")
    res = doctor("--json", user="65534")
    assert res.returncode == 1, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["ok"] is False
    by_name = {c["name"]: c for c in doc["checks"]}
    assert by_name["privileges"]["status"] == "FAIL"
    assert "euid 65534" in by_name["privileges"]["detail"]
    assert by_name["bcc-compile"]["status"] == "FAIL"


def test_invalid_config_fails_doctor(tmp_path: Path) -> None:
    require_root()
    cfg = tmp_path / "sentinel.yaml"
    cfg.write_text("matching: sometimes\n")
    res = doctor("--config", str(cfg), "--runtime-socket", str(tmp_path / "none"))
    assert res.returncode == 1
    line = next(ln for ln in res.stdout.splitlines() if " config: " in ln)
    assert line.startswith(f"FAIL config: {cfg}:1: matching: ")
    assert res.stdout.splitlines()[-1] == "sentinel run cannot work here"


def test_kernel_features_for_the_startup_summary() -> None:
    require_root()
    from sentinel.doctor import kernel_features

    feats = kernel_features()
    assert feats["btf"] is True
    assert feats["ringbuf"] is True
    assert feats["bpf_lsm"] is False  # this kernel refuses LSM programs (KERNEL.md)
    assert feats["kernel"] == os.uname().release
