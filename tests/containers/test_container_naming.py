"""The cgroup naming table: every runtime's cgroup path shape -> (runtime, full id)."""

from __future__ import annotations

import pytest

from sentinel.enrichment.container_cgroup import match_cgroup_path, parse_proc_cgroup
from sentinel.enrichment.containers import ContainerResolver, parse_cgroup_path

CID = "3f2a9c0d1e2b4a5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e"
UID = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"

CASES = [
    # docker, cgroupfs driver (v1 and v2 paths look alike) and systemd driver
    (f"/docker/{CID}", ("docker", CID)),
    (f"/system.slice/docker-{CID}.scope", ("docker", CID)),
    # podman: cgroupfs (this machine), systemd, rootless, and the nested "container" cgroup
    (f"/libpod_parent/libpod-{CID}", ("podman", CID)),
    (f"/machine.slice/libpod-{CID}.scope", ("podman", CID)),
    (f"/machine.slice/libpod-{CID}.scope/container", ("podman", CID)),
    (
        f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope",
        ("podman", CID),
    ),
    # containerd outside Kubernetes (nerdctl/ctr: namespace/id) and CRI
    (f"/default/{CID}", ("containerd", CID)),
    (f"/system.slice/cri-containerd-{CID}.scope", ("containerd", CID)),
    # cri-o
    (f"/machine.slice/crio-{CID}.scope", ("cri-o", CID)),
    # kubepods, cgroupfs and systemd drivers
    (f"/kubepods/burstable/pod{UID}/{CID}", ("cri", CID)),
    (f"/kubepods/pod{UID}/{CID}", ("cri", CID)),
    (
        "/kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope",
        ("containerd", CID),
    ),
    (
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}"
        f".slice/crio-{CID}.scope",
        ("cri-o", CID),
    ),
    # guaranteed pods sit right under kubepods (no QoS level), in both drivers
    (
        f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope",
        ("containerd", CID),
    ),
    # CRI-O with the cgroupfs driver names the leaf crio-<id>
    (f"/kubepods/besteffort/pod{UID}/crio-{CID}", ("cri-o", CID)),
    # containerd's cgroupfs driver under kubepods (the live test makes this one for real)
    (f"/kubepods/besteffort/pod{UID}/{CID}", ("cri", CID)),
]

NOT_CONTAINERS = [
    "/",
    "",
    "/user.slice/user-0.slice/session-1.scope",
    "/system.slice/ssh.service",
    "/process_api/bc77e402bb6bd3764edac4189011af10",  # 32 hex: not a container id
    f"/libpod_parent/libpod-conmon-{CID}",  # podman's monitor, not the container
    f"/machine.slice/libpod-conmon-{CID}.scope",
    f"/machine.slice/crio-conmon-{CID}.scope",
    f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-conmon-{CID}.scope",
    f"/docker/{CID[:-1]}",  # 63 hex
    f"/docker/{CID.upper()}",  # runtimes write lower-case hex
    f"/system.slice/docker-{CID}.service",
]


@pytest.mark.parametrize(("path", "expected"), CASES)
def test_container_cgroups_are_recognised(path: str, expected: tuple[str, str]) -> None:
    assert parse_cgroup_path(path) == expected
    assert ContainerResolver.parse_cgroup_path(path) == expected


@pytest.mark.parametrize("path", NOT_CONTAINERS)
def test_other_cgroups_are_not_containers(path: str) -> None:
    assert parse_cgroup_path(path) is None


def test_kubepods_pod_uid_from_either_driver() -> None:
    for path, _ in CASES:
        m = match_cgroup_path(path)
        assert m is not None
        assert m.pod_uid == (UID if "kubepods" in path else None), path


def test_fields_of_a_path_without_runtime() -> None:
    resolver = ContainerResolver(fetch_metadata=False)
    info = resolver.resolve_cgroup_path(f"/kubepods/burstable/pod{UID}/{CID}")
    assert info.fields() == {
        "container.id": CID[:12],
        "container.full_id": CID,
        "container.type": "cri",
        "k8s.pod.uid": UID,
    }
    host = resolver.resolve_cgroup_path("/system.slice/ssh.service")
    assert host.fields()["container.id"] == "host"
    assert host.is_host


def test_proc_cgroup_v2_line_first_then_v1() -> None:
    text = (
        f"12:memory:/docker/{CID}\n"
        "1:name=systemd:/system.slice/x.service\n"
        f"0::/system.slice/docker-{CID}.scope\n"
        "garbage line\n"
    )
    assert parse_proc_cgroup(text) == [
        ("unified", f"/system.slice/docker-{CID}.scope"),
        ("memory", f"/docker/{CID}"),
        ("name=systemd", "/system.slice/x.service"),
    ]
