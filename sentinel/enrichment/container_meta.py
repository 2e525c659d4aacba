"""Container metadata from the runtimes' APIs, looked up in background threads and cached.

Why background threads: every lookup is a local round trip (milliseconds, or a timeout when a
runtime hangs) and the event path must never wait on it. Requests are queued, answered by one
worker, and cached; readers only ever look at the cache. One more thread per runtime follows its
event stream, so that a container is looked up when it is *created*, before its first process
runs (the cgroup watcher in ``containers.py`` asks at the same moment from the kernel's side).

Which API is spoken is chosen per socket found (:func:`discover_sockets`): the Docker API
(docker, podman; :mod:`container_docker`) or the Kubernetes CRI (containerd, CRI-O;
:mod:`container_cri`). A node may have several; a lookup asks the one the container's cgroup
names first. A runtime that is stopped or hangs makes its containers' fields missing: that is
logged once per socket, the runtime is skipped for ``retry_after`` seconds after each failure,
and every call is bounded by ``timeout``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import structlog

from sentinel.enrichment.container_docker import LOOKUP_ACTIONS, DockerApiClient
from sentinel.enrichment.container_fields import ContainerMeta

log = structlog.get_logger("sentinel.enrichment.containers")

Api = Literal["docker", "cri"]


@dataclass(frozen=True, slots=True)
class RuntimeSocket:
    """A runtime API endpoint: its unix socket, the API it speaks, and who usually serves it."""

    path: str
    api: Api
    name: str


# Where runtimes listen by default. /var/run is a link to /run on current distributions, but a
# DaemonSet may mount a host socket under either name, so both are tried (deduplicated).
KNOWN_SOCKETS = (
    RuntimeSocket("/run/containerd/containerd.sock", "cri", "containerd"),
    RuntimeSocket("/var/run/containerd/containerd.sock", "cri", "containerd"),
    RuntimeSocket("/run/k3s/containerd/containerd.sock", "cri", "containerd"),
    RuntimeSocket("/run/crio/crio.sock", "cri", "cri-o"),
    RuntimeSocket("/var/run/crio/crio.sock", "cri", "cri-o"),
    RuntimeSocket("/run/podman/podman.sock", "docker", "podman"),
    RuntimeSocket("/var/run/docker.sock", "docker", "docker"),
    RuntimeSocket("/run/docker.sock", "docker", "docker"),
)
_LIST_RUNNING = "*list-running*"  # queue token: look up every running container
_PREFERRED_API: dict[str, Api] = {"podman": "docker", "docker": "docker"}  # else: CRI first


def _unix_path(value: str) -> str | None:
    return value[len("unix://") :] if value.startswith("unix://") else None


def sockets_from_env(environ: Mapping[str, str] | None = None) -> list[RuntimeSocket]:
    """Sockets named by the environment: ``CONTAINER_RUNTIME_ENDPOINT`` (the CRI; crictl's
    variable) and ``CONTAINER_HOST`` (podman's) or ``DOCKER_HOST`` (the Docker API). Only
    local ``unix://`` ones: remote (tcp/ssh) endpoints are not ours to dial."""
    env = os.environ if environ is None else environ
    out = []
    cri = _unix_path(env.get("CONTAINER_RUNTIME_ENDPOINT", ""))
    if cri:
        out.append(RuntimeSocket(cri, "cri", "cri"))
    for var in ("CONTAINER_HOST", "DOCKER_HOST"):
        path = _unix_path(env.get(var, ""))
        if path:
            out.append(RuntimeSocket(path, "docker", "docker-api"))
            break
    return out


def socket_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The Docker-API socket the environment names (``CONTAINER_HOST``, else ``DOCKER_HOST``)."""
    return next((s.path for s in sockets_from_env(environ) if s.api == "docker"), None)


def discover_sockets(
    environ: Mapping[str, str] | None = None,
    candidates: Iterable[RuntimeSocket] = KNOWN_SOCKETS,
) -> list[RuntimeSocket]:
    """The runtime sockets to use: those the environment names, else every known socket that
    exists (one per real path). Costs a few stat calls; never connects."""
    named = sockets_from_env(environ)
    if named:
        return named
    out: list[RuntimeSocket] = []
    seen: set[str] = set()
    for sock in candidates:
        if not os.path.exists(sock.path):
            continue
        real = os.path.realpath(sock.path)
        if real not in seen:
            seen.add(real)
            out.append(sock)
    return out


def cri_runtime_found(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a CRI runtime socket is present (Kubernetes node): decides the default
    ``append_output``. A stat, no connection, so start-up never waits on a runtime."""
    return any(s.api == "cri" for s in discover_sockets(environ))


class RuntimeClient(Protocol):
    """What the fetcher needs from one runtime API socket (Docker API or CRI)."""

    path: str
    api: str

    def probe(self, timeout: float) -> str: ...
    def inspect(self, full_id: str, timeout: float) -> ContainerMeta | None: ...
    def list_ids(self, timeout: float) -> list[str]: ...
    def follow(
        self, on_event: Callable[[str, str], None], stop: threading.Event, timeout: float
    ) -> None: ...
    def interrupt(self) -> None: ...
    def close(self) -> None: ...


def make_client(sock: RuntimeSocket) -> RuntimeClient:
    """The client for a socket's API. gRPC is imported only when a CRI socket exists."""
    if sock.api == "cri":
        from sentinel.enrichment.container_cri import CriClient

        return CriClient(sock.path)
    return DockerApiClient(sock.path)


class MetadataFetcher:
    """Background lookups of container metadata, cached by full container id.

    States per id: absent (never asked), ``pending`` (queued or in flight), ``done`` (fields
    known; possibly empty when no runtime knows the id), ``unavailable`` (no runtime that could
    know it answered; retried on a later request after ``retry_after`` seconds).

    ``sockets``: the runtime sockets to ask; None means :func:`discover_sockets`, again at
    each lookup, so a runtime started after Sentinel is found.
    """

    def __init__(
        self,
        sockets: Sequence[RuntimeSocket] | None = None,
        *,
        candidates: Iterable[RuntimeSocket] = KNOWN_SOCKETS,
        timeout: float = 2.0,
        retry_after: float = 5.0,
        follow_events: bool = True,
        on_container_event: Callable[[str, str], None] | None = None,
    ) -> None:
        self.sockets = list(sockets) if sockets is not None else None
        self.candidates = tuple(candidates)
        self.timeout = timeout
        self.retry_after = retry_after
        self.follow_events = follow_events
        self.on_container_event = on_container_event
        self._cache: dict[str, dict[str, Any]] = {}
        self._state: dict[str, tuple[str, float]] = {}
        self._cond = threading.Condition()
        self._queue: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._stop = threading.Event()
        self._started = False
        self._threads: list[threading.Thread] = []
        self._clients: dict[str, RuntimeClient] = {}
        self._down_until: dict[str, float] = {}
        self._warned: set[str] = set()
        self._listeners: list[Callable[[str], None]] = []
        self.fetches = 0
        self.failures = 0

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker (and the event followers); idempotent. Never waits on a runtime."""
        with self._cond:
            if self._started:
                return
            self._started = True
        self._spawn(self._work, "container-meta")
        # Containers that were already running when we started get no "create" event: look
        # them all up now, so their first event after our start already has metadata.
        self._queue.put((_LIST_RUNNING, ""))

    def close(self) -> None:
        """Stop the threads, within ``timeout`` + 1 s in all. Closing the clients wakes them:
        followers' streams are cancelled or shut down, and a CRI call in flight (even one
        to a hung runtime) is cancelled with its channel. The threads are daemons: one still
        inside a Docker-API call past the budget ends with the process."""
        self._stop.set()
        self._queue.put(None)
        for c in list(self._clients.values()):
            with contextlib.suppress(Exception):
                c.close()
        deadline = time.monotonic() + self.timeout + 1.0
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))

    def add_listener(self, callback: Callable[[str], None]) -> None:
        """``callback(full_id)`` runs (in the worker thread) whenever a lookup finishes.

        For callers that defer events of containers whose metadata is still pending.
        """
        self._listeners.append(callback)

    def clients(self) -> list[RuntimeClient]:
        """The clients of the sockets in use now (created on first sight, followed if asked)."""
        socks = (
            self.sockets if self.sockets is not None else discover_sockets(None, self.candidates)
        )
        out = []
        for sock in socks:
            client = self._clients.get(sock.path)
            if client is None:
                client = self._clients[sock.path] = make_client(sock)
                if self.follow_events and self._started and not self._stop.is_set():
                    self._spawn(functools.partial(self._follow, client), "container-events")
            out.append(client)
        return out

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    # -- reading (event path: never blocks) -------------------------------------------------
    def get(self, full_id: str) -> dict[str, Any] | None:
        """Cached fields, or None when not (yet) known. Never waits."""
        return self._cache.get(full_id)

    def state(self, full_id: str) -> str | None:
        entry = self._state.get(full_id)
        return entry[0] if entry else None

    def request(self, full_id: str, hint: str = "") -> None:
        """Queue a lookup unless one is pending, done, or failed too recently. Never waits.
        ``hint``: the runtime the cgroup path names (its API is asked first)."""
        now = time.monotonic()
        with self._cond:
            entry = self._state.get(full_id)
            if entry is not None:
                st, when = entry
                if st in ("pending", "done"):
                    return
                if st == "unavailable" and now - when < self.retry_after:
                    return
            self._state[full_id] = ("pending", now)
        self.start()
        self._queue.put((full_id, hint))

    def forget(self, full_id: str) -> None:
        """Drop what is known of a container (renamed or updated), so the next request asks."""
        with self._cond:
            self._state.pop(full_id, None)

    def wait(self, full_id: str, timeout: float) -> bool:
        """Wait until the lookup of ``full_id`` is no longer pending (for tests and callers
        that choose to defer an event, never for the event path itself)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                entry = self._state.get(full_id)
                if entry is None or entry[0] != "pending":
                    return entry is not None and entry[0] == "done"
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)

    # -- the worker ------------------------------------------------------------------------
    def _usable(self, client: RuntimeClient) -> bool:
        return self._down_until.get(client.path, 0.0) <= time.monotonic()

    def _failed(self, client: RuntimeClient, exc: Exception) -> str:
        """Skip this runtime for ``retry_after``; warn the first time only."""
        self._down_until[client.path] = time.monotonic() + self.retry_after
        if client.path not in self._warned and not self._stop.is_set():  # not: cancelled by close
            self._warned.add(client.path)
            log.warning(
                "container runtime unreachable; container metadata fields will be missing",
                socket=client.path,
                api=client.api,
                error=str(exc),
                retry_seconds=self.retry_after,
            )
        return f"{client.path}: {exc}"

    def _fetch(self, full_id: str, hint: str) -> tuple[str, dict[str, Any]]:
        clients = self.clients()
        if not clients:
            self.failures += 1
            if "" not in self._warned:
                self._warned.add("")
                log.warning(
                    "no container runtime socket; container metadata fields will be missing",
                    sockets=[s.path for s in self.candidates],
                )
            return "unavailable", {}
        preferred = _PREFERRED_API.get(hint, "cri")
        unavailable = 0
        for client in sorted(clients, key=lambda c: c.api != preferred):
            if not self._usable(client):
                unavailable += 1
                continue
            try:
                meta = client.inspect(full_id, self.timeout)
            except OSError as exc:
                self._failed(client, exc)
                unavailable += 1
                continue
            if meta is not None:
                return "done", meta.fields()
        if not unavailable:
            return "done", {}  # every runtime answered: nobody knows this container
        self.failures += 1
        return "unavailable", {}

    def _list_running(self) -> None:
        for client in self.clients():
            if not self._usable(client):
                continue
            try:
                ids = client.list_ids(self.timeout)
            except OSError as exc:
                self._failed(client, exc)
                continue
            for cid in ids:
                self.request(cid)

    def _work(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None:
                return
            full_id, hint = item
            try:
                if full_id == _LIST_RUNNING:
                    self._list_running()
                    continue
                self.fetches += 1
                st, fields = self._fetch(full_id, hint)
            except Exception as exc:  # a client bug must not end every later lookup
                if not self._stop.is_set():
                    log.error("container metadata lookup failed", id=full_id, error=repr(exc))
                if full_id == _LIST_RUNNING:
                    continue
                self.failures += 1
                st, fields = "unavailable", {}
            with self._cond:
                if st == "done":
                    self._cache[full_id] = fields
                self._state[full_id] = (st, time.monotonic())
                self._cond.notify_all()
            for cb in list(self._listeners):
                with contextlib.suppress(Exception):
                    cb(full_id)

    # -- the event followers ---------------------------------------------------------------
    def _follow(self, client: RuntimeClient) -> None:
        """Follow one runtime's events for as long as we run; reconnect with a backoff."""
        backoff = 0.2
        while not self._stop.is_set():
            try:
                client.follow(self._on_event, self._stop, self.timeout)
                backoff = 0.2
            except Exception:  # unreachable, or a broken stream: retry; lookups report it
                pass
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _on_event(self, action: str, full_id: str) -> None:
        if action == "subscribed":
            # whatever started while we were not listening
            self._queue.put((_LIST_RUNNING, ""))
            return
        if action in LOOKUP_ACTIONS:
            if action in ("rename", "update"):
                self.forget(full_id)
            self.request(full_id)
        if self.on_container_event is not None:
            with contextlib.suppress(Exception):
                self.on_container_event(action, full_id)
