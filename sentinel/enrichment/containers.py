"""Container identity and metadata for events: the ``container.*`` and ``k8s.*`` fields.

The kernel sensor hands us a cgroup v2 id (from ``bpf_get_current_cgroup_id()``) or a pid; we
answer with a :class:`ContainerInfo` whose :meth:`ContainerInfo.fields` gives Falco's field
names. Identity (``container.id``) comes from the cgroup name alone, synchronously and cheaply;
metadata (name, image, pod, privileged, ...) comes from the runtime's API (Docker API or the
Kubernetes CRI, per socket found) in a background thread and appears in ``fields()`` as soon as
it is cached. The event path never waits for it.

Usage from the sensor::

    resolver = ContainerResolver()            # or ContainerResolver("/run/podman/podman.sock")
    info = resolver.resolve_cgroup_id(cgid) or resolver.resolve_pid(pid)
    event.update(info.fields() if info else {})

``resolve_*`` return ``None`` only when they cannot tell (unknown cgroup id, vanished pid);
host processes get :data:`HOST`, whose ``container.id`` is ``host`` as in Falco.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from sentinel.enrichment.container_cgroup import (
    CgroupIndex,
    CgroupWatcher,
    match_cgroup_path,
    parse_cgroup_path,
    parse_proc_cgroup,
)
from sentinel.enrichment.container_meta import MetadataFetcher, RuntimeSocket

__all__ = [
    "CONTAINER_FIELDS",
    "HOST",
    "ContainerInfo",
    "ContainerResolver",
    "MetadataWaiter",
    "parse_cgroup_path",
]

SHORT_ID_LEN = 12  # what Falco (and docker ps) print as container.id

# Every container/k8s field ContainerInfo.fields() (with the runtime metadata it merges in) can
# fill: every event type has them (sentinel.enrichment.event derives "filled by the sensor"
# from this). Identity comes from cgroups; the rest from the runtime (Docker API or CRI, via
# container_fields.ContainerMeta.fields). The [arg] fields are answered from container.mounts
# and the flat container.label[KEY] / k8s.pod.label[KEY] keys.
CONTAINER_FIELDS = frozenset(
    {
        "container.id", "container.full_id", "container.type", "container.name",
        "container.image", "container.image.id", "container.image.repository",
        "container.image.tag", "container.image.digest", "container.privileged",
        "container.start_ts", "container.duration", "container.mounts", "container.mount",
        "container.mount.source", "container.mount.dest", "container.mount.mode",
        "container.mount.rdwr", "container.mount.propagation", "container.label",
        "container.labels", "container.ip", "container.host_pid", "container.host_network",
        "container.host_ipc",
        "k8s.ns.name", "k8s.pod.name", "k8s.pod.uid", "k8s.pod.label", "k8s.pod.labels",
        "k8s.pod.ip", "k8s.pod.sandbox_id", "k8s.pod.full_sandbox_id", "k8s.container.name",
    }
)  # fmt: skip


class ContainerInfo:
    """One container (or the host). Metadata is read from the fetcher's cache at call time,
    so an info object obtained before the lookup finished shows the fields once it has."""

    __slots__ = ("_meta", "cgroup_path", "full_id", "pod_uid", "runtime")

    def __init__(
        self,
        full_id: str,
        runtime: str,
        *,
        cgroup_path: str | None = None,
        pod_uid: str | None = None,
        meta: MetadataFetcher | None = None,
    ) -> None:
        self.full_id = full_id
        self.runtime = runtime
        self.cgroup_path = cgroup_path
        self.pod_uid = pod_uid
        self._meta = meta

    @property
    def id(self) -> str:
        """The 12-hex short id, or ``host``."""
        return self.full_id[:SHORT_ID_LEN] if not self.is_host else "host"

    @property
    def is_host(self) -> bool:
        return self.full_id == "host"

    @property
    def metadata_state(self) -> str | None:
        """``pending``, ``done``, ``unavailable``, or None (no lookup asked, or host)."""
        if self._meta is None or self.is_host:
            return None
        return self._meta.state(self.full_id)

    def fields(self) -> dict[str, Any]:
        """Falco field name -> value; metadata fields only when known (missing otherwise)."""
        if self.is_host:
            return {"container.id": "host", "container.full_id": "host", "container.name": "host"}
        out: dict[str, Any] = {
            "container.id": self.id,
            "container.full_id": self.full_id,
            "container.type": self.runtime,
        }
        if self.pod_uid:
            out["k8s.pod.uid"] = self.pod_uid
        if self._meta is not None:
            meta = self._meta.get(self.full_id)
            if meta:
                out.update(meta)
                start = meta.get("container.start_ts")
                if isinstance(start, int):
                    # at evaluation time, which trails the event by the loop's latency (ms)
                    out["container.duration"] = max(0, time.time_ns() - start)
        return out

    def __repr__(self) -> str:
        return f"ContainerInfo({self.id!r}, runtime={self.runtime!r})"


HOST = ContainerInfo("host", "host")


class ContainerResolver:
    """cgroup id / pid / cgroup path -> :class:`ContainerInfo`, with async metadata.

    ``runtime_socket``: one Docker-compatible API socket; ``sockets``: any runtime sockets
    (Docker API or CRI). Neither means :func:`~sentinel.enrichment.container_meta.
    discover_sockets`: what ``CONTAINER_RUNTIME_ENDPOINT`` / ``CONTAINER_HOST`` /
    ``DOCKER_HOST`` name, else every usual containerd, CRI-O, podman and docker socket present.
    ``fetch_metadata=False`` gives identity only (no threads at all).
    """

    def __init__(
        self,
        runtime_socket: str | None = None,
        *,
        sockets: Sequence[RuntimeSocket] | None = None,
        cgroup_root: str | None = None,
        fetch_metadata: bool = True,
        follow_events: bool = True,
        watch_cgroups: bool = True,
        proc_root: str = "/proc",
        max_cached: int = 16384,
    ) -> None:
        self.index = CgroupIndex(cgroup_root)
        self.proc_root = proc_root
        self.max_cached = max_cached
        self.meta: MetadataFetcher | None = None
        if runtime_socket is not None:
            sockets = [RuntimeSocket(runtime_socket, "docker", "docker-api")]
        if fetch_metadata:
            self.meta = MetadataFetcher(
                sockets,
                follow_events=follow_events,
                on_container_event=self._on_runtime_event,
            )
        self.watcher = CgroupWatcher(self.index, self._on_new_cgroup) if watch_cgroups else None
        self._by_cgid: OrderedDict[int, ContainerInfo] = OrderedDict()
        self._by_id: dict[str, ContainerInfo] = {}
        self._lock = threading.Lock()

    parse_cgroup_path = staticmethod(parse_cgroup_path)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the metadata threads now (otherwise they start at the first container), index
        the cgroup tree, and watch it for new cgroups (see :class:`CgroupWatcher`)."""
        if self.meta is not None:
            self.meta.start()
        if self.watcher is None or not self.watcher.start():
            self.index.rescan()

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
        if self.meta is not None:
            self.meta.close()

    def __enter__(self) -> ContainerResolver:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- resolving -------------------------------------------------------------------------
    def resolve_cgroup_id(self, cgid: int) -> ContainerInfo | None:
        """By cgroup v2 id (= inode in the cgroup2 mount). None when the id is unknown."""
        with self._lock:
            info = self._by_cgid.get(cgid)
        if info is not None:
            return info
        path = self.index.lookup(cgid)
        if path is None:
            return None
        info = self.resolve_cgroup_path(path)
        with self._lock:
            self._by_cgid[cgid] = info
            while len(self._by_cgid) > self.max_cached:
                self._by_cgid.popitem(last=False)
        return info

    def resolve_pid(self, pid: int) -> ContainerInfo | None:
        """From /proc/PID/cgroup (v2 line first, then v1 lines). None when the pid is gone."""
        try:
            with open(f"{self.proc_root}/{pid}/cgroup", encoding="utf-8") as f:
                text = f.read()
        except OSError:
            return None
        for _hierarchy, path in parse_proc_cgroup(text):
            if match_cgroup_path(path) is not None:
                return self.resolve_cgroup_path(path)
        return HOST

    def resolve_cgroup_path(self, path: str) -> ContainerInfo:
        """By cgroup path (as in /proc/PID/cgroup or from a BPF-read cgroup name)."""
        m = match_cgroup_path(path)
        if m is None:
            return HOST
        with self._lock:
            info = self._by_id.get(m.full_id)
            if info is None:
                info = ContainerInfo(
                    m.full_id, m.runtime, cgroup_path=path, pod_uid=m.pod_uid, meta=self.meta
                )
                self._by_id[m.full_id] = info
        if self.meta is not None:
            self.meta.request(m.full_id, m.runtime)
        return info

    # -- metadata helpers ------------------------------------------------------------------
    def wait_metadata(self, info: ContainerInfo, timeout: float) -> bool:
        """Block until ``info``'s metadata lookup finished (True: fields known). For tests and
        for callers that defer an event off the event path; the event path must not call it."""
        if self.meta is None or info.is_host:
            return False
        self.meta.request(info.full_id)
        return self.meta.wait(info.full_id, timeout)

    def add_metadata_listener(self, callback: Callable[[str], None]) -> None:
        """``callback(full_id)`` after each metadata lookup finishes (worker thread)."""
        if self.meta is not None:
            self.meta.add_listener(callback)

    def _on_new_cgroup(self, path: str) -> None:
        # A container's cgroup appears at `runc create`, before its first process runs:
        # looking it up now is what lets that first exec carry the container's metadata.
        if match_cgroup_path(path) is not None:
            self.resolve_cgroup_path(path)

    def _on_runtime_event(self, action: str, full_id: str) -> None:
        # The container's cgroup exists from "init" on: index it now, so that its id still
        # resolves if the container is gone before its first event is processed.
        if action in ("init", "start"):
            self.index.rescan()

    def stats(self) -> dict[str, Any]:
        return {
            "cgroup_scans": self.index.scans,
            "cgroup_watches": self.watcher.watches if self.watcher else 0,
            "cgroup_last_scan_seconds": self.index.last_scan_seconds,
            "containers": len(self._by_id),
            "metadata_fetches": self.meta.fetches if self.meta else 0,
            "metadata_failures": self.meta.failures if self.meta else 0,
        }


class MetadataWaiter:
    """Holds work (typically: rendering an alert) until its container's metadata lookup has
    finished, for at most ``max_wait`` seconds, without blocking the caller.

    Why: a container's first process can run a few milliseconds before the runtime answers
    for it (podman holds the container's lock until ``start`` returns), so an alert on that
    first exec, rendered at once, would lack the container's name and image. The sensor loop
    calls :meth:`defer` instead of emitting, and :meth:`run_due` after each poll; nothing is
    held when the metadata is known, the container is the host, or the runtime is unreachable
    (the state is then ``unavailable``, not ``pending``). Single-threaded: call it from the
    sensor loop only.
    """

    def __init__(self, max_wait: float = 1.0) -> None:
        self.max_wait = max_wait
        self._held: list[tuple[float, ContainerInfo, Callable[[], None]]] = []
        self.deferred = 0
        self.expired = 0

    @staticmethod
    def needs_wait(info: ContainerInfo | None) -> bool:
        return info is not None and info.metadata_state == "pending"

    def __len__(self) -> int:
        return len(self._held)

    def submit(self, info: ContainerInfo | None, fn: Callable[[], None]) -> None:
        """Run ``fn`` now when nothing is pending for ``info``, else hold it."""
        if self.needs_wait(info):
            assert info is not None
            self.defer(info, fn)
        else:
            fn()

    def defer(self, info: ContainerInfo, fn: Callable[[], None]) -> None:
        self.deferred += 1
        self._held.append((time.monotonic() + self.max_wait, info, fn))

    def run_due(self, *, flush: bool = False) -> int:
        """Run, in submission order, what is ready (lookup finished) or overdue; ``flush``
        runs everything (at shutdown). Returns how many ran."""
        if not self._held:
            return 0
        now = time.monotonic()
        keep: list[tuple[float, ContainerInfo, Callable[[], None]]] = []
        due: list[Callable[[], None]] = []
        for item in self._held:
            deadline, info, fn = item
            if flush or not self.needs_wait(info):
                due.append(fn)
            elif now >= deadline:
                self.expired += 1
                due.append(fn)
            else:
                keep.append(item)
        self._held = keep
        for fn in due:
            fn()
        return len(due)
