"""Container and pod metadata from a real containerd through the CRI (Kubernetes nodes).

Pods and containers are made through the CRI API itself, as the kubelet makes them; Sentinel's
resolver then finds them from their processes (cgroups) and asks the CRI. containerd 1.6
(Debian 12) has no ``GetContainerEvents``: the follower falls back to polling, which these
tests therefore exercise for real.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from sentinel.enrichment.container_cgroup import match_cgroup_path
from sentinel.enrichment.container_meta import RuntimeSocket, discover_sockets
from sentinel.enrichment.containers import ContainerInfo, ContainerResolver
from sentinel.enrichment.cri_api import api_pb2 as pb

from .containerd import BUSYBOX_IMAGE, BUSYBOX_REPO, PAUSE_IMAGE, Containerd, PodRef

pytestmark = pytest.mark.container

LABELS = {"app": "web", "tier": "front"}


def cri(node: Containerd) -> list[RuntimeSocket]:
    return [RuntimeSocket(str(node.sock), "cri", "containerd")]


def pids_of(container_id: str) -> list[int]:
    """Host pids whose cgroup names the container (found the way the sensor finds them)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            text = (d / "cgroup").read_text()
        except OSError:
            continue
        if container_id in text:
            out.append(int(d.name))
    return out


def one_pid(container_id: str) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = pids_of(container_id)
        if pids:
            return min(pids)
        time.sleep(0.05)
    raise AssertionError(f"no process of container {container_id}")


def resolved(resolver: ContainerResolver, container_id: str) -> ContainerInfo:
    info = resolver.resolve_pid(one_pid(container_id))
    assert info is not None
    assert resolver.wait_metadata(info, 10), info.metadata_state
    return info


@pytest.fixture
def pod(node: Containerd) -> PodRef:
    return node.run_pod("web-0", "team-a", LABELS)


def test_container_and_pod_fields(node: Containerd, pod: PodRef, tmp_path: Path) -> None:
    cid = node.create_container(
        pod, "shell", ["/bin/sleep", "300"], mounts=((str(tmp_path), "/data", True),)
    )
    with ContainerResolver(sockets=cri(node)) as resolver:
        f = resolved(resolver, cid).fields()
    created = node.cri.call(
        "ContainerStatus",
        pb.ContainerStatusRequest(container_id=cid),
        pb.ContainerStatusResponse,
        5,
    ).status.created_at
    assert f["container.id"] == cid[:12]
    assert f["container.full_id"] == cid
    assert f["container.type"] == "containerd"
    assert f["container.name"] == "shell"
    assert f["k8s.container.name"] == "shell"
    assert f["container.image"] == BUSYBOX_IMAGE
    assert f["container.image.repository"] == BUSYBOX_REPO
    assert f["container.image.tag"] == "1.0"
    assert f["container.image.digest"] == node.image_digest(BUSYBOX_IMAGE)
    assert len(f["container.image.id"]) == 64
    assert f["container.privileged"] is False
    assert f["container.start_ts"] == created
    assert 0 <= f["container.duration"] < 120 * 10**9
    assert f["container.mounts"] == f"{tmp_path}:/data::false:private"
    assert f["container.host_network"] is True  # the pod has hostNetwork
    assert f["container.host_pid"] is False
    assert f["k8s.ns.name"] == "team-a"
    assert f["k8s.pod.name"] == "web-0"
    assert f["k8s.pod.uid"] == pod.uid
    assert f["k8s.pod.sandbox_id"] == pod.sandbox_id[:12]
    assert f["k8s.pod.full_sandbox_id"] == pod.sandbox_id
    assert f["k8s.pod.labels"] == "app:web,tier:front"
    assert f["k8s.pod.label[app]"] == "web"
    assert f["k8s.pod.label[tier]"] == "front"
    assert f["container.label[io.kubernetes.pod.namespace]"] == "team-a"


def test_privileged_container(node: Containerd) -> None:
    pod = node.run_pod("admin-0", "kube-system", {}, privileged=True)
    cid = node.create_container(pod, "priv", ["/bin/sleep", "300"], privileged=True)
    with ContainerResolver(sockets=cri(node)) as resolver:
        f = resolved(resolver, cid).fields()
    assert f["container.privileged"] is True


def test_pause_process_answers_its_pod(node: Containerd, pod: PodRef) -> None:
    """The sandbox's own process (pause) is in a cgroup named by the sandbox id, which no
    container has: its pod fields are answered, as Falco does."""
    with ContainerResolver(sockets=cri(node)) as resolver:
        f = resolved(resolver, pod.sandbox_id).fields()
    assert f["container.id"] == pod.sandbox_id[:12]
    assert f["k8s.pod.sandbox_id"] == pod.sandbox_id[:12]
    assert f["k8s.ns.name"] == "team-a"
    assert f["k8s.pod.name"] == "web-0"
    assert "container.image" not in f
    # that process runs the locally built pause image (no registry here)
    assert node.image_digest(PAUSE_IMAGE).startswith("sha256:")


def test_cgroupfs_layout_names_the_container_and_pod(node: Containerd, pod: PodRef) -> None:
    """The kubelet's cgroupfs layout, live: /kubepods/besteffort/pod<uid>/<container id>."""
    cid = node.create_container(pod, "shell", ["/bin/sleep", "300"])
    text = Path(f"/proc/{one_pid(cid)}/cgroup").read_text()
    v2 = next(line.split(":", 2)[2] for line in text.splitlines() if line.startswith("0::"))
    assert v2 == f"/kubepods/besteffort/pod{pod.uid}/{cid}"
    m = match_cgroup_path(v2)
    assert m is not None
    assert (m.full_id, m.pod_uid, m.runtime) == (cid, pod.uid, "cri")


@pytest.mark.parametrize("via", ["cgroup watcher", "runtime polling"])
def test_new_container_is_prefetched(node: Containerd, pod: PodRef, via: str) -> None:
    """A new container is looked up before any event of ours asks for it: from its cgroup's
    creation (inotify) or from the CRI's container list (containerd 1.6 has no event stream,
    so the follower polls ListContainers)."""
    watch = via == "cgroup watcher"
    with ContainerResolver(
        sockets=cri(node), watch_cgroups=watch, follow_events=not watch
    ) as resolver:
        meta = resolver.meta
        assert meta is not None
        time.sleep(0.5)  # the follower's first listing
        cid = node.create_container(pod, "late", ["/bin/sleep", "300"])
        deadline = time.monotonic() + 10
        while meta.state(cid) != "done" and time.monotonic() < deadline:
            time.sleep(0.02)
        cached = meta.get(cid)
        assert cached is not None, meta.state(cid)
        assert cached["container.name"] == "late"
        assert cached["k8s.pod.name"] == "web-0"


def test_running_containers_are_looked_up_at_start(node: Containerd, pod: PodRef) -> None:
    cid = node.create_container(pod, "early", ["/bin/sleep", "300"])
    with ContainerResolver(sockets=cri(node), follow_events=False, watch_cgroups=False) as r:
        meta = r.meta
        assert meta is not None
        deadline = time.monotonic() + 10
        while meta.state(cid) != "done" and time.monotonic() < deadline:
            time.sleep(0.02)
        cached = meta.get(cid)
        assert cached is not None and cached["container.name"] == "early"


def _identity(cid: str, pod: PodRef) -> dict[str, str]:
    return {
        "container.id": cid[:12],
        "container.full_id": cid,
        "container.type": "cri",
        "k8s.pod.uid": pod.uid,
    }


@pytest.mark.parametrize("fault", ["stopped", "hung"])
def test_stopped_or_hung_containerd_fields_missing_logged_once(
    node: Containerd, pod: PodRef, fault: str
) -> None:
    """containerd stopped (its containers keep running, as on a node) or hung (SIGSTOP: the
    socket accepts, nothing answers): resolution is immediate and exact about identity, the
    metadata fields are missing, and one warning is logged however many lookups fail."""
    cids = [node.create_container(pod, f"c{i}", ["/bin/sleep", "300"]) for i in range(3)]
    pids = [one_pid(c) for c in cids]
    if fault == "stopped":
        node.stop_daemon()
    else:
        node.freeze()
    try:
        with (
            capture_logs() as logs,
            ContainerResolver(sockets=cri(node), follow_events=True, watch_cgroups=False) as r,
        ):
            assert r.meta is not None
            r.meta.timeout = 1.0
            r.meta.retry_after = 0.5
            t0 = time.monotonic()
            infos = [r.resolve_pid(p) for p in pids]
            took = time.monotonic() - t0
            assert took < 0.5, took  # the event path never waits on the runtime
            for info, cid in zip(infos, cids, strict=True):
                assert info is not None
                assert info.fields() == _identity(cid, pod)
                assert r.wait_metadata(info, 10) is False
                assert info.metadata_state == "unavailable"
                assert info.fields() == _identity(cid, pod)
            time.sleep(1.5)  # retries and follower reconnects happen meanwhile: still one line
            for info in infos:
                assert info is not None
                assert r.wait_metadata(info, 10) is False
    finally:
        if fault == "stopped":
            node.start()
        else:
            node.thaw()
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1, logs
    assert "unreachable" in warnings[0]["event"]
    assert warnings[0]["socket"] == str(node.sock)


def test_recovers_when_containerd_comes_back(node: Containerd, pod: PodRef) -> None:
    cid = node.create_container(pod, "back", ["/bin/sleep", "300"])
    node.freeze()
    try:
        with ContainerResolver(sockets=cri(node), watch_cgroups=False) as r:
            assert r.meta is not None
            r.meta.timeout = 0.5
            r.meta.retry_after = 0.2
            info = r.resolve_pid(one_pid(cid))
            assert info is not None
            assert r.wait_metadata(info, 10) is False
            node.thaw()
            time.sleep(0.3)
            assert r.wait_metadata(info, 10) is True
            assert info.fields()["container.name"] == "back"
    finally:
        node.thaw()


def test_socket_without_cri_is_not_a_failure(cri_images: dict[str, Path]) -> None:
    """Docker's own containerd runs with its CRI plugin disabled: its socket answers, but not
    ``runtime.v1``. That is no runtime failure: no warning, lookups say "unknown"."""
    plain = Containerd(Path(tempfile.mkdtemp(prefix="sentinel-nocri-")), cri_images)
    try:
        plain.start(cri=False)
        with capture_logs() as logs, ContainerResolver(sockets=cri(plain)) as r:
            assert r.meta is not None
            r.meta.request("f" * 64)
            assert r.meta.wait("f" * 64, 10) is True  # done: nobody knows it
            assert r.meta.get("f" * 64) == {}
    finally:
        plain.stop()
    assert [e for e in logs if e["log_level"] == "warning"] == []


@pytest.fixture
def crio_path(cri_images: dict[str, Path]) -> Iterator[Containerd]:
    """containerd serving the CRI at CRI-O's socket path (/run/crio/crio.sock): CRI-O is not
    in Debian's archive (bookworm or trixie), so its *path* is tested with the same client."""
    sock = Path("/run/crio/crio.sock")
    if sock.exists():
        pytest.skip("a real CRI-O socket exists here; not replacing it")
    made_dir = not sock.parent.exists()
    sock.parent.mkdir(exist_ok=True)
    other = Containerd(Path(tempfile.mkdtemp(prefix="sentinel-crio-")), cri_images, sock=sock)
    try:
        other.start()
        yield other
    finally:
        other.stop()
        with contextlib.suppress(OSError):
            sock.unlink()
        if made_dir:
            with contextlib.suppress(OSError):
                sock.parent.rmdir()


def test_crio_socket_path_is_found_and_spoken_to(crio_path: Containerd) -> None:
    env = {k: v for k, v in os.environ.items() if k not in _ENV_SOCKETS}
    found = [s for s in discover_sockets(env) if s.name == "cri-o"]
    assert found == [RuntimeSocket("/run/crio/crio.sock", "cri", "cri-o")]
    pod = crio_path.run_pod("api-1", "team-c", {"app": "api"})
    cid = crio_path.create_container(pod, "api", ["/bin/sleep", "300"])
    with ContainerResolver(sockets=found) as resolver:
        f = resolved(resolver, cid).fields()
    assert (f["k8s.ns.name"], f["k8s.pod.name"], f["container.name"]) == ("team-c", "api-1", "api")


_ENV_SOCKETS = ("CONTAINER_RUNTIME_ENDPOINT", "CONTAINER_HOST", "DOCKER_HOST")


def test_hung_socket_never_blocks_resolution_or_start(node: Containerd, pod: PodRef) -> None:
    """A socket that accepts connections and never speaks (not even HTTP/2): start and
    resolution return at once; the lookup fails within the timeout, in the background."""
    cid = node.create_container(pod, "h", ["/bin/sleep", "300"])
    path = str(node.dir / "hung.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        r = ContainerResolver(sockets=[RuntimeSocket(path, "cri", "containerd")])
        assert r.meta is not None
        r.meta.timeout = 1.0
        t0 = time.monotonic()
        r.start()
        info = r.resolve_pid(one_pid(cid))
        took = time.monotonic() - t0
        assert took < 0.5, took
        assert info is not None and info.metadata_state == "pending"
        t1 = time.monotonic()
        assert r.wait_metadata(info, 10) is False
        assert time.monotonic() - t1 < 2 * r.meta.timeout + 1.0
        assert info.metadata_state == "unavailable"
        t2 = time.monotonic()
        r.close()
        assert time.monotonic() - t2 < r.meta.timeout + 1.5
    finally:
        stop.set()
        t.join()
        for c in accepted:
            c.close()
        server.close()
        os.unlink(path)


def test_socket_through_a_read_only_mount(node: Containerd, pod: PodRef) -> None:
    """The DaemonSet mounts the runtime's socket directory read-only: connect() on a unix
    socket still works there (the kernel's read-only check skips socket inodes)."""
    cid = node.create_container(pod, "ro", ["/bin/sleep", "300"])
    target = Path(tempfile.mkdtemp(prefix="sentinel-ro-"))
    subprocess.run(["mount", "--bind", str(node.dir), str(target)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        ro = target / node.sock.name
        with pytest.raises(OSError):
            (target / "probe").write_text("x")  # the mount really is read-only
        with ContainerResolver(sockets=[RuntimeSocket(str(ro), "cri", "containerd")]) as r:
            f = resolved(r, cid).fields()
        assert (f["container.name"], f["k8s.pod.name"]) == ("ro", "web-0")
    finally:
        subprocess.run(["umount", str(target)], check=False)
        target.rmdir()


def test_doctor_names_the_runtimes_that_answered(node: Containerd, tmp_path: Path) -> None:
    """`sentinel doctor`'s container-runtime check asks each socket, bounded: containerd
    answers with its name, version and API; a socket that accepts and never answers is
    named as not answering, within the probe timeouts."""
    from sentinel.doctor import check_runtime_socket

    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.bind(str(tmp_path / "hung.sock"))
    hung.listen(8)
    try:
        t0 = time.monotonic()
        check = check_runtime_socket((str(node.sock), str(tmp_path / "hung.sock")))
        took = time.monotonic() - t0
    finally:
        hung.close()
    assert check.status == "OK"
    assert check.detail.startswith("answered: containerd 1.6") and "(CRI v1)" in check.detail
    assert f"at {node.sock}" in check.detail
    assert f"not answering: {tmp_path / 'hung.sock'}" in check.detail
    assert took < 2 * 2.0 + 1.0  # two probes (CRI, then Docker API) of 2 s each at most
