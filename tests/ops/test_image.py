"""The container image, for real: a local base made with debootstrap (no registry), a podman
build, then the documented `podman run` line running `sentinel doctor` and `sentinel run`.

Slow the first time (debootstrap of the base, ~6 min here; the base is cached as
localhost/debian:bookworm-slim, so later runs take seconds plus the cached build).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ops.deployment import ROOT, documented_run_line, find

pytestmark = pytest.mark.container

IMAGE = "localhost/sentinel:ci"
BUSYBOX = "/bin/busybox"
# The host's CA bundle: on machines behind a TLS-intercepting proxy pip needs it during the
# build (it is mounted for the build only, it does not enter the image).
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def sh(argv: list[str], timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    if os.geteuid() != 0:
        print("SKIP: rootful podman needs root")
        pytest.skip("needs root")
    t0 = time.monotonic()
    base = sh(["bash", str(ROOT / "deploy" / "make-base-image.sh")])
    assert base.returncode == 0, base.stdout + base.stderr
    t1 = time.monotonic()
    argv = ["podman", "build", "-t", IMAGE]
    if HOST_CA.exists():
        argv += [
            "-v",
            f"{HOST_CA}:/run/build-ca.crt:ro",
            "--build-arg",
            "PIP_CERT=/run/build-ca.crt",
        ]
    build = sh([*argv, str(ROOT)])
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    t2 = time.monotonic()
    print(f"image: base {t1 - t0:.1f}s ({base.stdout.strip()}), build {t2 - t1:.1f}s")
    yield IMAGE


def run_line(image: str, *command: str, state: Path) -> list[str]:
    """The documented line with our image tag, a temporary spool directory and a command."""
    argv = documented_run_line()
    assert argv[-1] == "localhost/sentinel"
    argv = argv[:-1]
    i = argv.index("/var/lib/sentinel:/var/lib/sentinel")
    argv[i] = f"{state}:/var/lib/sentinel"
    return [*argv, image, *command]


def test_doctor_in_the_image_with_the_documented_privileges(image: str, tmp_path: Path) -> None:
    t0 = time.monotonic()
    res = sh(run_line(image, "doctor", "--json", state=tmp_path), timeout=120)
    print(f"doctor in container: {time.monotonic() - t0:.1f}s")
    assert res.returncode == 0, res.stdout + res.stderr
    checks = {c["name"]: c for c in json.loads(res.stdout)["checks"]}
    assert checks["btf"]["status"] == "OK"
    assert checks["bpf-lsm"]["status"] == "WARN"
    assert "BPF LSM is not available" in checks["bpf-lsm"]["detail"]
    for name in ("privileges", "tracefs", "kernel-headers", "bcc", "bcc-compile", "ringbuf"):
        assert checks[name]["status"] == "OK", checks[name]


def test_without_the_capabilities_doctor_says_run_cannot_work(image: str) -> None:
    res = sh(["podman", "run", "--rm", "--cap-drop=all", image, "doctor", "--json"], timeout=120)
    assert res.returncode == 1
    checks = {c["name"]: c for c in json.loads(res.stdout)["checks"]}
    assert checks["privileges"]["status"] == "FAIL"
    assert checks["bcc-compile"]["status"] == "FAIL"


def test_daemonset_layout_read_only_root_with_the_configmaps(image: str, tmp_path: Path) -> None:
    """As the DaemonSet runs it: read-only root, /lib/modules and /tmp writable, the config
    and rules ConfigMaps as directories; doctor validates the config, validate the rules."""
    cfg_dir, rules_dir = tmp_path / "config", tmp_path / "rules.d"
    cfg_dir.mkdir()
    rules_dir.mkdir()
    for name, text in find("ConfigMap", "sentinel-config")["data"].items():
        (cfg_dir / name).write_text(text)
    for name, text in find("ConfigMap", "sentinel-rules")["data"].items():
        (rules_dir / name).write_text(text)
    argv = run_line(image, state=tmp_path)[:-1]
    argv[2:2] = [
        "--read-only",
        "--tmpfs",
        "/lib/modules",
        "--tmpfs",
        "/tmp",
        "-v",
        f"{cfg_dir}:/etc/sentinel/config:ro",
        "-v",
        f"{rules_dir}:/etc/sentinel/rules.d:ro",
    ]
    res = sh([*argv, image, "doctor", "--config", "/etc/sentinel/config/sentinel.yaml"], 120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK   config: /etc/sentinel/config/sentinel.yaml valid" in res.stdout
    res = sh([*argv, image, "validate", "/opt/sentinel/rules", "/etc/sentinel/rules.d"], 120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_sentinel_run_in_the_image_sees_a_shell_in_a_host_container(
    image: str, tmp_path: Path
) -> None:
    """The image's `sentinel run`, with only the documented privileges, alerts on a shell
    started in another (real podman) container on the host."""
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    (rootfs / "bin" / "sh").symlink_to("busybox")
    marker = f"ops-{uuid.uuid4().hex[:8]}"
    state = tmp_path / "state"
    state.mkdir()
    name = f"sentinel-ci-{marker}"
    proc = subprocess.Popen(
        ["podman", "run", "--name", name, *run_line(image, "run", state=state)[2:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        armed = False
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if "armed" in line:
                armed = True
                break
        assert armed, "sentinel run in the image never armed"
        shell = sh(
            [
                "podman",
                "run",
                "--rm",
                "--network",
                "none",
                "--rootfs",
                str(rootfs),
                "/bin/sh",
                "-c",
                f"echo {marker}",
            ],
            timeout=60,
        )
        assert shell.returncode == 0, shell.stderr
        time.sleep(2)
    finally:
        sh(["podman", "stop", "-t", "10", name], timeout=60)
        out, err = proc.communicate(timeout=60)
        sh(["podman", "rm", "-f", name], timeout=60)
    alerts = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    mine = [
        a for a in alerts if a["rule"] == "Shell Spawned in a Container" and marker in a["output"]
    ]
    assert len(mine) == 1, (alerts[:5], err[-2000:])
    assert mine[0]["output_fields"]["container.id"] not in (None, "host")
