"""Container identity of real podman + runc containers, by pid and by cgroup v2 id."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from sentinel.enrichment.container_cgroup import CgroupIndex, find_cgroup2_root
from sentinel.enrichment.containers import HOST, ContainerResolver

from .conftest import Podman

pytestmark = pytest.mark.container


def _cgroup2_path_of(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    raise AssertionError(f"no cgroup v2 line for pid {pid}")


def _cgroup_id(path: str) -> int:
    root = find_cgroup2_root()
    assert root is not None
    return os.stat(root + path).st_ino


def test_cgroup2_root_on_this_host() -> None:
    root = find_cgroup2_root()
    assert root is not None
    with open("/proc/self/mounts", encoding="utf-8") as f:
        assert any(ln.split()[1:3] == [root, "cgroup2"] for ln in f)


def test_resolve_real_container_by_pid_and_cgroup_id(containers: Podman) -> None:
    name, cid, pid = containers.start_sleeper()
    resolver = ContainerResolver(fetch_metadata=False)

    by_pid = resolver.resolve_pid(pid)
    assert by_pid is not None
    assert by_pid.full_id == cid
    assert by_pid.id == cid[:12]
    assert by_pid.runtime == "podman"
    # Same short id as the runtime prints it.
    assert containers.run("ps", "--filter", f"name={name}", "--format", "{{.ID}}").strip() == (
        by_pid.id
    )
    # The real cgroup naming on this hybrid host: v1 lines and the v2 line name the container.
    with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert any(ln.startswith("0::") and cid in ln for ln in lines)
    assert any(not ln.startswith("0::") and cid in ln for ln in lines)

    cgid = _cgroup_id(_cgroup2_path_of(pid))
    by_id = resolver.resolve_cgroup_id(cgid)
    assert by_id is by_pid
    assert by_id.fields()["container.id"] == cid[:12]
    assert by_id.fields()["container.full_id"] == cid


def test_conmon_is_not_the_container(containers: Podman) -> None:
    name, _cid, _pid = containers.start_sleeper()
    conmon_pid = int(containers.run("inspect", "-f", "{{.State.ConmonPid}}", name).strip())
    resolver = ContainerResolver(fetch_metadata=False)
    info = resolver.resolve_pid(conmon_pid)
    assert info is HOST, _cgroup2_path_of(conmon_pid)


def test_short_lived_process_resolves_after_exit(containers: Podman) -> None:
    """A process that is gone before we look: /proc cannot help, its cgroup id still does."""
    name, cid, _pid = containers.start_sleeper()
    out = containers.run("exec", name, "/bin/sh", "-c", "cat /proc/self/cgroup; echo $$")
    lines = out.strip().splitlines()
    pid_in_ns = int(lines[-1])
    path = next(ln[3:] for ln in lines if ln.startswith("0::"))
    assert pid_in_ns > 1
    resolver = ContainerResolver(fetch_metadata=False)
    info = resolver.resolve_cgroup_id(_cgroup_id(path))
    assert info is not None
    assert info.full_id == cid


def _short_lived_container(containers: Podman) -> tuple[int, str, subprocess.Popen[bytes]]:
    """Start `podman run --rm ... sleep 1.5` and learn its cgroup id while it exists:
    (cgroup id, full id, the podman process)."""
    name = containers.name()
    argv = containers.argv(
        "run", "--rm", "--network", "none", "--name", name, "--rootfs",
        str(containers.rootfs), "/bin/sleep", "1.5",
    )  # fmt: skip
    child = subprocess.Popen(argv, env=containers.env)
    root = find_cgroup2_root()
    assert root is not None
    parent = os.path.join(root, "libpod_parent")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        cid = containers.run(
            "ps", "-a", "--no-trunc", "--filter", f"name={name}", "--format", "{{.ID}}",
            check=False,
        ).strip()  # fmt: skip
        if cid:
            try:
                return os.stat(os.path.join(parent, f"libpod-{cid}")).st_ino, cid, child
            except FileNotFoundError:
                pass
        time.sleep(0.01)
    child.kill()
    raise AssertionError("the container's cgroup never appeared")


@pytest.mark.parametrize("via", ["cgroup watcher", "runtime events"])
def test_container_gone_before_first_lookup(containers: Podman, api_socket: str, via: str) -> None:
    """A whole container that runs, exits and is removed before its first event is resolved:
    the resolver indexed its cgroup while it existed (inotify on the cgroup tree, or the
    runtime's event stream as a second line)."""
    watch = via == "cgroup watcher"
    with ContainerResolver(api_socket, follow_events=not watch, watch_cgroups=watch) as resolver:
        time.sleep(0.5)  # the event follower subscribes asynchronously
        scans = resolver.index.scans
        cgid, cid, child = _short_lived_container(containers)
        assert child.wait(timeout=30) == 0
        root = find_cgroup2_root()
        assert root is not None
        assert not os.path.exists(os.path.join(root, "libpod_parent", f"libpod-{cid}"))
        if watch:
            assert resolver.index.scans == scans  # indexed by the watcher, not by a walk
        info = resolver.resolve_cgroup_id(cgid)
        assert info is not None, "cgroup of the removed container was not indexed"
        assert info.full_id == cid


def test_host_processes_and_unknown_ids() -> None:
    resolver = ContainerResolver(fetch_metadata=False, watch_cgroups=False)
    assert resolver.resolve_pid(os.getpid()) is HOST
    assert resolver.resolve_pid(1) is HOST
    root = find_cgroup2_root()
    assert root is not None
    assert resolver.resolve_cgroup_id(os.stat(root).st_ino) is HOST
    assert HOST.fields() == {
        "container.id": "host",
        "container.full_id": "host",
        "container.name": "host",
    }
    # A vanished pid and an id no cgroup has: "cannot tell", not "host".
    assert resolver.resolve_pid(2**22 + 12345) is None
    scans = resolver.index.scans
    assert resolver.resolve_cgroup_id(2**50) is None
    assert resolver.index.scans == scans + 1
    # Repeated misses of one id within the negative TTL do not rescan the tree each time.
    for _ in range(100):
        assert resolver.resolve_cgroup_id(2**50) is None
    assert resolver.index.scans == scans + 1


def test_index_keeps_removed_cgroups(tmp_path: object) -> None:
    """Entries are merged, never dropped on rescan, so ids of removed cgroups keep resolving;
    here on a real cgroup2 directory we create and remove ourselves."""
    root = find_cgroup2_root()
    assert root is not None
    d = os.path.join(root, f"sentinel-ctest-{os.getpid()}")
    os.mkdir(d)
    try:
        ino = os.stat(d).st_ino
        index = CgroupIndex(root)
        assert index.lookup(ino) == "/" + os.path.basename(d)
    finally:
        os.rmdir(d)
    index.rescan()
    assert index.lookup(ino) == "/" + os.path.basename(d)
    assert CgroupIndex(root).lookup(ino) is None
