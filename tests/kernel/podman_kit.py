"""Real podman + runc containers for the kernel tests, with nothing taken from a registry.

As in tests/containers: a containers.conf of our own (runc, cgroupfs, no default ulimits; see
../shared/KERNEL.md), a busybox rootfs (``--rootfs``), and for tests that need an image (an
overlay root whose upper layer a dropped binary lands in) a local ``podman import`` of it. A
private ``podman system service`` answers Sentinel's metadata lookups (``CONTAINER_HOST`` for
Sentinel only: it would turn the podman CLI into a remote client).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.containers.conftest import CONF, podman_service

APPLETS = ("sh", "cp", "mount", "cat", "true", "sleep")


class Podman:
    def __init__(self, workdir: Path) -> None:
        for tool in ("podman", "runc"):
            if shutil.which(tool) is None:
                raise AssertionError(f"{tool} is missing: run scripts/setup.sh")
        conf = workdir / "containers.conf"
        conf.write_text(CONF)
        self.env = dict(os.environ, CONTAINERS_CONF=str(conf))
        self.workdir = workdir

    def argv(self, *args: str) -> list[str]:
        return ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", *args]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            self.argv(*args), env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert res.returncode == 0, f"podman {' '.join(args)}: {res.stderr.strip()}"
        return res

    @contextmanager
    def api(self) -> Iterator[str]:
        """A private API socket (unix://...) for Sentinel's container metadata."""
        sock = self.workdir / f"podman-{uuid.uuid4().hex[:6]}.sock"
        with podman_service(self.argv(), self.env, str(sock)):
            yield f"unix://{sock}"

    @contextmanager
    def image(self, rootfs: Path) -> Iterator[str]:
        """``rootfs`` imported as a local image (removed afterwards)."""
        name = f"localhost/sentinel-falcolive:{uuid.uuid4().hex[:8]}"
        tar = self.workdir / "rootfs.tar"
        with tarfile.open(tar, "w") as tf:
            tf.add(rootfs, arcname=".")
        image_id = self.run("import", str(tar), name).stdout.strip()
        try:
            yield name
        finally:
            subprocess.run(
                self.argv("rmi", "-f", image_id), env=self.env, capture_output=True, check=False
            )


def busybox_rootfs(root: Path) -> Path:
    """busybox and its applets; /lib and /lib64 point into a /usr bind-mounted at run time
    (the host's, read-only: python3 for the actions that need it)."""
    (root / "bin").mkdir(parents=True)
    shutil.copy2(shutil.which("busybox") or "/bin/busybox", root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    for d in ("proc", "sys", "dev", "etc", "tmp", "usr", "run", "kit", "report", "mnt"):
        (root / d).mkdir()
    (root / "lib").symlink_to("usr/lib")
    (root / "lib64").symlink_to("usr/lib64")
    return root
