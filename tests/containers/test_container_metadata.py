"""Container metadata from a real `podman system service` over its unix socket."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from sentinel.enrichment.container_docker import parse_rfc3339_ns
from sentinel.enrichment.container_fields import split_image
from sentinel.enrichment.container_meta import socket_from_env
from sentinel.enrichment.containers import ContainerResolver

from .conftest import IMAGE, Podman

pytestmark = pytest.mark.container


def _created_ns(podman: Podman, name: str) -> int:
    fmt = '{{.Created.Format "2006-01-02T15:04:05.999999999Z07:00"}}'
    text = podman.run("inspect", "-f", fmt, name).strip()
    ts = parse_rfc3339_ns(text)
    assert ts is not None, text
    return ts


def test_metadata_of_rootfs_container(containers: Podman, api_socket: str) -> None:
    name, cid, pid = containers.start_sleeper()
    with ContainerResolver(api_socket) as resolver:
        info = resolver.resolve_pid(pid)
        assert info is not None
        assert resolver.wait_metadata(info, 10)
        f = info.fields()
    assert f["container.id"] == cid[:12]
    assert f["container.name"] == name
    assert f["container.privileged"] is False
    assert f["container.type"] == "podman"
    assert f["container.start_ts"] == _created_ns(containers, name)
    assert abs(f["container.start_ts"] - time.time_ns()) < 120 * 10**9
    # --rootfs has no image: the image fields are missing, not invented.
    for field in ("container.image", "container.image.repository", "container.image.tag"):
        assert field not in f


def test_metadata_of_image_container(containers: Podman, api_socket: str, image: str) -> None:
    name, _cid, pid = containers.start_sleeper(
        "--privileged",
        "--label", "io.kubernetes.pod.namespace=team-a",
        "--label", "io.kubernetes.pod.name=web-0",
        image=image,
    )  # fmt: skip
    image_id = containers.run("image", "inspect", "-f", "{{.Id}}", image).strip()
    with ContainerResolver(api_socket) as resolver:
        info = resolver.resolve_pid(pid)
        assert info is not None
        assert resolver.wait_metadata(info, 10)
        f = info.fields()
    assert f["container.name"] == name
    assert f["container.image"] == IMAGE
    assert f["container.image.repository"] == "localhost/sentinel-test"
    assert f["container.image.tag"] == "1.0"
    assert f["container.image.id"] == image_id
    assert f["container.privileged"] is True
    assert f["k8s.ns.name"] == "team-a"
    assert f["k8s.pod.name"] == "web-0"


@pytest.mark.parametrize("via", ["cgroup watcher", "runtime events"])
def test_metadata_is_prefetched(containers: Podman, api_socket: str, via: str) -> None:
    """The lookup starts when the container's cgroup appears (or the runtime reports it),
    before any event of ours asks: this is what gives the first exec in a new container its
    name and image."""
    watch = via == "cgroup watcher"
    with ContainerResolver(api_socket, follow_events=not watch, watch_cgroups=watch) as resolver:
        meta = resolver.meta
        assert meta is not None
        time.sleep(0.5)  # let the event follower subscribe
        name, cid, _pid = containers.start_sleeper()
        deadline = time.monotonic() + 10
        while meta.state(cid) != "done" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert meta.state(cid) == "done"
        cached = meta.get(cid)
        assert cached is not None
        assert cached["container.name"] == name


def test_running_containers_are_looked_up_at_start(containers: Podman, api_socket: str) -> None:
    """A container that was running before the resolver started (no "create" event to see):
    its metadata is fetched at start, before any event of it is resolved."""
    name, cid, _pid = containers.start_sleeper()
    with ContainerResolver(api_socket, follow_events=False) as resolver:
        meta = resolver.meta
        assert meta is not None
        deadline = time.monotonic() + 10
        while meta.state(cid) != "done" and time.monotonic() < deadline:
            time.sleep(0.02)
        cached = meta.get(cid)
        assert cached is not None
        assert cached["container.name"] == name


def test_runtime_socket_from_environment() -> None:
    assert socket_from_env({"CONTAINER_HOST": "unix:///run/x.sock"}) == "/run/x.sock"
    assert socket_from_env({"DOCKER_HOST": "unix:///var/run/d.sock"}) == "/var/run/d.sock"
    assert socket_from_env({"CONTAINER_HOST": "unix:///a", "DOCKER_HOST": "unix:///b"}) == "/a"
    assert socket_from_env({"DOCKER_HOST": "tcp://127.0.0.1:2375"}) is None
    assert socket_from_env({}) is None


def test_unreachable_runtime_loses_nothing_and_logs_once(
    containers: Podman, tmp_path: Path
) -> None:
    _n1, cid1, pid1 = containers.start_sleeper()
    _n2, cid2, pid2 = containers.start_sleeper()
    with capture_logs() as logs, ContainerResolver(str(tmp_path / "no-such.sock")) as resolver:
        infos = [resolver.resolve_pid(pid1), resolver.resolve_pid(pid2)]
        for info in infos:
            assert info is not None
            assert resolver.wait_metadata(info, 10) is False
            assert info.metadata_state == "unavailable"
        assert [i.fields() for i in infos if i] == [
            {"container.id": cid[:12], "container.full_id": cid, "container.type": "podman"}
            for cid in (cid1, cid2)
        ]
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1, logs
    assert "unreachable" in warnings[0]["event"]


def test_hung_runtime_never_blocks_resolution(containers: Podman, tmp_path: Path) -> None:
    """A runtime that accepts and never answers (a real listening socket, the fault itself):
    resolution returns at once with the identity; the lookup is still pending."""
    _name, cid, pid = containers.start_sleeper()
    path = str(tmp_path / "hung.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
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
        resolver = ContainerResolver(path, follow_events=False)
        resolver.meta.timeout = 3.0  # type: ignore[union-attr]
        info = resolver.resolve_pid(pid)
        assert info is not None
        assert info.fields() == {
            "container.id": cid[:12],
            "container.full_id": cid,
            "container.type": "podman",
        }
        assert info.metadata_state == "pending"
        assert resolver.wait_metadata(info, 10) is False
        assert info.metadata_state == "unavailable"
        resolver.close()
    finally:
        stop.set()
        t.join()
        for c in accepted:
            c.close()
        server.close()


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("localhost/sentinel-test:1.0", ("localhost/sentinel-test", "1.0")),
        ("busybox", ("busybox", "latest")),
        ("registry:5000/team/app", ("registry:5000/team/app", "latest")),
        ("registry:5000/team/app:v2", ("registry:5000/team/app", "v2")),
        ("app@sha256:" + "a" * 64, ("app", None)),
    ],
)
def test_split_image(image: str, expected: tuple[str, str | None]) -> None:
    assert split_image(image) == expected


def test_rfc3339_ns() -> None:
    assert parse_rfc3339_ns("1970-01-01T00:00:01.000000002Z") == 1_000_000_002
    assert parse_rfc3339_ns("1970-01-01T01:00:01.5+01:00") == 1_500_000_000
    assert parse_rfc3339_ns("0001-01-01T00:00:00Z") is None
    assert parse_rfc3339_ns("garbage") is None
