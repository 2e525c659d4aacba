"""Real podman + runc containers for the container tests, prepared from scratch.

Nothing here relies on the machine's podman configuration: the session writes its own
containers.conf (runc, cgroupfs, no default ulimits, file events; see ../shared/KERNEL.md for why
crun and default ulimits fail here) and points CONTAINERS_CONF at it for every podman call, so
the tests behave the same on a fresh clone where only the apt packages exist. No registry is
reachable: the rootfs is busybox-static, and the image is a local `podman import` of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sentinel.enrichment.container_docker import api_get_json

from .containerd import Containerd, build_images

IMAGE = "localhost/sentinel-test:1.0"
BUSYBOX_APPLETS = ["sh", "cat", "sleep", "stat", "ls", "id", "true", "echo", "tty", "env", "ps"]
CONF = """[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("container tests need root (rootful podman, cgroup access); CI runs as root")


class Podman:
    """Runs podman with the session's configuration; tracks containers to remove them."""

    def __init__(self, conf: Path, prefix: str) -> None:
        self.env = dict(os.environ, CONTAINERS_CONF=str(conf))
        self.prefix = prefix
        self.names: list[str] = []

    def argv(self, *args: str) -> list[str]:
        return ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", *args]

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        proc = subprocess.run(
            self.argv(*args), env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def name(self) -> str:
        n = f"{self.prefix}-{uuid.uuid4().hex[:8]}"
        self.names.append(n)
        return n

    def start_sleeper(self, *extra: str, image: str | None = None) -> tuple[str, str, int]:
        """A detached container running `sleep 300`: (name, full id, host pid)."""
        name = self.name()
        source = [image] if image else ["--rootfs", str(self.rootfs)]
        cid = self.run(
            "run", "-d", "--network", "none", "--name", name, *extra, *source, "/bin/sleep", "300"
        ).strip()
        pid = int(self.run("inspect", "-f", "{{.State.Pid}}", name).strip())
        return name, cid, pid

    rootfs: Path

    def cleanup(self) -> None:
        if self.names:
            self.run("rm", "-f", "--ignore", "-t", "0", *self.names, check=False)
            self.names.clear()


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(busybox):
        raise AssertionError("busybox-static is missing: run scripts/setup.sh")
    root = tmp_path_factory.mktemp("rootfs")
    (root / "bin").mkdir()
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in BUSYBOX_APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    for d in ("proc", "sys", "dev", "etc", "tmp"):
        (root / d).mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    return root


@pytest.fixture(scope="session")
def podman(rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    _require_root()
    if shutil.which("podman") is None or shutil.which("runc") is None:
        raise AssertionError("podman/runc are missing: run scripts/setup.sh")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(CONF)
    p = Podman(conf, f"sentinel-ctest-{uuid.uuid4().hex[:6]}")
    p.rootfs = rootfs
    yield p
    p.cleanup()


@pytest.fixture
def containers(podman: Podman) -> Iterator[Podman]:
    """The session's podman; containers started through it are removed after the test."""
    yield podman
    podman.cleanup()


@pytest.fixture(scope="session")
def image(podman: Podman, rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local image made from the busybox rootfs, so image fields exist to be asserted."""
    tar = tmp_path_factory.mktemp("image") / "rootfs.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(rootfs, arcname=".")
    image_id = podman.run("import", "--change", "CMD=/bin/sh", str(tar), IMAGE).strip()
    yield IMAGE
    podman.cleanup()
    podman.run("rmi", "-f", image_id, check=False)


@contextmanager
def podman_service(argv: list[str], env: dict[str, str], sock: str) -> Iterator[None]:
    """``podman system service`` (``argv``: podman and its global options) on the unix socket
    ``sock``, answering when the block starts, stopped after it."""
    proc = subprocess.Popen(
        [*argv, "system", "service", "--time=0", f"unix://{sock}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # it waits for podman's storage lock, which other podman commands on a busy machine
        # may hold for tens of seconds
        deadline = time.monotonic() + 120
        while True:
            try:
                api_get_json(sock, "/v1.40/version", timeout=1.0)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise AssertionError(f"podman system service did not come up: {err}") from None
                time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def api_socket(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private `podman system service` (not the system socket) for metadata lookups."""
    sock = str(tmp_path_factory.mktemp("api") / "podman.sock")
    with podman_service(podman.argv(), podman.env, sock):
        yield sock


# -- a private containerd (Kubernetes CRI) ---------------------------------------------------
@pytest.fixture(scope="session")
def cri_images(rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The locally built pause and busybox images (docker-archive tarballs)."""
    _require_root()
    return build_images(rootfs, tmp_path_factory.mktemp("cri-images"))


def _require_containerd() -> None:
    _require_root()
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        raise AssertionError("containerd is missing: run scripts/setup.sh")


@pytest.fixture(scope="session")
def containerd(cri_images: dict[str, Path]) -> Iterator[Containerd]:
    """One private containerd for the session (started once: ~1 s plus the image import);
    each test's pods are removed by the ``node`` fixture."""
    _require_containerd()
    # a short path: unix socket paths are limited to 107 bytes
    workdir = Path(tempfile.mkdtemp(prefix="sentinel-ctd-"))
    node = Containerd(workdir, cri_images)
    try:
        node.start()
        yield node
    finally:
        node.stop()


@pytest.fixture
def node(containerd: Containerd) -> Iterator[Containerd]:
    """The session's containerd, running (thawed, restarted if a test stopped it); the pods a
    test made are removed after it."""
    if containerd.proc is None:
        containerd.start()
    containerd.thaw()
    yield containerd
    if containerd.proc is None:
        containerd.start()
    containerd.thaw()
    for pod in list(containerd.pods):
        containerd.remove_pod(pod)
