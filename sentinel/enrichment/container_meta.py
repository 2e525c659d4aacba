"""Container metadata from the runtime's Docker-compatible API over its unix socket.

Why a background thread: the API is a local HTTP round trip (milliseconds, or a timeout when the
runtime hangs) and the event path must never wait on it. Requests are queued, answered by one
worker, and cached; readers only ever look at the cache. A second thread follows the runtime's
event stream (``GET /events``) so that a container is looked up when it is *created*, before its
first process runs, which is what makes metadata available for the very first exec in a
container (e.g. ``podman run -t IMAGE /bin/sh``).

Both Docker and podman (``podman system service``) speak this API, so one client serves both.
When no socket answers, fields are simply missing and that is logged once, not per event.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import structlog

log = structlog.get_logger("sentinel.enrichment.containers")

DEFAULT_SOCKETS = ("/run/podman/podman.sock", "/var/run/docker.sock", "/run/docker.sock")
API_PREFIX = "/v1.40"
_LIST_RUNNING = "*list-running*"  # queue token: look up every running container


def socket_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The runtime socket named by ``CONTAINER_HOST`` (podman's variable) or ``DOCKER_HOST``,
    when it is a local ``unix://`` one; remote (tcp/ssh) endpoints are not ours to dial."""
    env = os.environ if environ is None else environ
    for var in ("CONTAINER_HOST", "DOCKER_HOST"):
        value = env.get(var, "")
        if value.startswith("unix://"):
            return value[len("unix://") :]
    return None


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over AF_UNIX: the Docker API's transport, without extra dependencies."""

    def __init__(self, path: str, timeout: float = 2.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ApiError(Exception):
    """The runtime answered, but not with what we asked for."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status


def api_get_json(socket_path: str, path: str, timeout: float = 2.0) -> Any:
    """GET a JSON document from the API; raises OSError (unreachable) or ApiError."""
    conn = UnixHTTPConnection(socket_path, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
        if resp.status != 200:
            raise ApiError(resp.status, body)
        return json.loads(body)
    except (http.client.HTTPException, ValueError) as exc:
        raise OSError(f"bad answer from {socket_path}: {exc}") from exc
    finally:
        conn.close()


def parse_rfc3339_ns(text: str) -> int | None:
    """'2026-11-25T08:31:00.606103061Z' -> ns since the epoch (Go prints ns; Python parses us)."""
    if not text or text.startswith("0001-01-01"):
        return None
    frac_ns = 0
    main = text
    tz = ""
    # Split off the zone (Z or +hh:mm / -hh:mm) and the fraction, which may have 9 digits.
    if main.endswith("Z"):
        main, tz = main[:-1], "+00:00"
    elif len(main) > 6 and main[-6] in "+-" and main[-3] == ":":
        main, tz = main[:-6], main[-6:]
    if "." in main:
        main, frac = main.split(".", 1)
        if not frac.isdigit():
            return None
        frac_ns = int(frac[:9].ljust(9, "0"))
    try:
        dt = datetime.fromisoformat(main + (tz or "+00:00"))
    except ValueError:
        return None
    return int(dt.timestamp()) * 1_000_000_000 + frac_ns


def split_image(image: str) -> tuple[str, str | None]:
    """'localhost/sentinel-test:1.0' -> ('localhost/sentinel-test', '1.0').

    A colon only separates a tag after the last slash (``host:5000/repo`` has no tag); a digest
    reference (``repo@sha256:...``) has no tag. Untagged names mean ``latest`` (Docker's rule).
    """
    if "@" in image:
        return image.split("@", 1)[0], None
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1 :]
    return image, "latest"


def metadata_fields(inspect: dict[str, Any]) -> dict[str, Any]:
    """Falco container/k8s fields from a ``/containers/<id>/json`` answer (Docker or podman)."""
    out: dict[str, Any] = {}
    config = inspect.get("Config") or {}
    host_config = inspect.get("HostConfig") or {}
    name = str(inspect.get("Name") or "").lstrip("/")
    if name:
        out["container.name"] = name
    image = str(config.get("Image") or "")
    if image:
        out["container.image"] = image
        repo, tag = split_image(image)
        out["container.image.repository"] = repo
        if tag is not None:
            out["container.image.tag"] = tag
        if "@" in image:
            out["container.image.digest"] = image.split("@", 1)[1]
    image_id = str(inspect.get("Image") or "").removeprefix("sha256:")
    if image_id:
        out["container.image.id"] = image_id
    if "Privileged" in host_config:
        out["container.privileged"] = bool(host_config["Privileged"])
    # Falco's container.start_ts is the creation time (libsinsp reads "Created").
    created = inspect.get("Created")
    if isinstance(created, str):
        ts = parse_rfc3339_ns(created)
        if ts is not None:
            out["container.start_ts"] = ts
    mounts = inspect.get("Mounts") or []
    if isinstance(mounts, list):
        rendered = []
        dests = []
        for m in mounts:
            if not isinstance(m, dict):
                continue
            dest = str(m.get("Destination") or "")
            dests.append(dest)
            rendered.append(
                f"{m.get('Source', '')}:{dest}:{m.get('Mode', '')}:"
                f"{'true' if m.get('RW') else 'false'}:{m.get('Propagation', '')}"
            )
        out["container.mounts"] = ",".join(rendered)
        out["container.mount.dest"] = dests
    labels = config.get("Labels") or {}
    if isinstance(labels, dict):
        for label, field in (
            ("io.kubernetes.pod.namespace", "k8s.ns.name"),
            ("io.kubernetes.pod.name", "k8s.pod.name"),
            ("io.kubernetes.pod.uid", "k8s.pod.uid"),
        ):
            if labels.get(label):
                out[field] = str(labels[label])
        out["container.labels"] = {str(k): str(v) for k, v in labels.items()}
    return out


class MetadataFetcher:
    """Background lookups of container metadata, cached by full container id.

    States per id: absent (never asked), ``pending`` (queued or in flight), ``done`` (fields
    known; possibly empty when the runtime does not know the id), ``unavailable`` (no runtime
    answered; retried on a later request after ``retry_after`` seconds).
    """

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        candidates: Iterable[str] = DEFAULT_SOCKETS,
        timeout: float = 2.0,
        retry_after: float = 5.0,
        follow_events: bool = True,
        on_container_event: Callable[[str, str], None] | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.candidates = tuple(candidates)
        self.timeout = timeout
        self.retry_after = retry_after
        self.follow_events = follow_events
        self.on_container_event = on_container_event
        self._cache: dict[str, dict[str, Any]] = {}
        self._state: dict[str, tuple[str, float]] = {}
        self._cond = threading.Condition()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._warned_unreachable = False
        self._listeners: list[Callable[[str], None]] = []
        self._events_conn: UnixHTTPConnection | None = None
        self.fetches = 0
        self.failures = 0

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker (and the event follower); idempotent."""
        with self._cond:
            if self._threads:
                return
            worker = threading.Thread(target=self._work, name="container-meta", daemon=True)
            self._threads.append(worker)
            if self.follow_events:
                follower = threading.Thread(
                    target=self._follow, name="container-events", daemon=True
                )
                self._threads.append(follower)
        for t in self._threads:
            t.start()
        # Containers that were already running when we started get no "create" event: look
        # them all up now, so their first event after our start already has metadata.
        self._queue.put(_LIST_RUNNING)

    def close(self) -> None:
        """Stop the threads; the event follower wakes up within its socket timeout."""
        self._stop.set()
        self._queue.put(None)
        conn = self._events_conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(timeout=self.timeout + 1.0)

    def add_listener(self, callback: Callable[[str], None]) -> None:
        """``callback(full_id)`` runs (in the worker thread) whenever a lookup finishes.

        For callers that defer events of containers whose metadata is still pending.
        """
        self._listeners.append(callback)

    # -- reading (event path: never blocks) -------------------------------------------------
    def get(self, full_id: str) -> dict[str, Any] | None:
        """Cached fields, or None when not (yet) known. Never waits."""
        return self._cache.get(full_id)

    def state(self, full_id: str) -> str | None:
        entry = self._state.get(full_id)
        return entry[0] if entry else None

    def request(self, full_id: str) -> None:
        """Queue a lookup unless one is pending, done, or failed too recently. Never waits."""
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
        self._queue.put(full_id)

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
    def _sockets(self) -> list[str]:
        if self.socket_path is not None:
            return [self.socket_path]
        from_env = socket_from_env()
        if from_env is not None:
            return [from_env]
        return [p for p in self.candidates if os.path.exists(p)]

    def _fetch(self, full_id: str) -> tuple[str, dict[str, Any]]:
        sockets = self._sockets()
        errors = []
        for sock in sockets:
            try:
                data = api_get_json(sock, f"{API_PREFIX}/containers/{full_id}/json", self.timeout)
            except ApiError as exc:
                if exc.status == 404:
                    continue  # another runtime may know it
                errors.append(f"{sock}: {exc}")
                continue
            except OSError as exc:
                errors.append(f"{sock}: {exc}")
                continue
            if isinstance(data, dict):
                return "done", metadata_fields(data)
        if not errors and sockets:
            return "done", {}  # every runtime answered: nobody knows this container
        self.failures += 1
        if not self._warned_unreachable:
            self._warned_unreachable = True
            log.warning(
                "container runtime unreachable; container metadata fields will be missing",
                sockets=sockets or list(self.candidates),
                errors=errors or ["no runtime socket exists"],
            )
        return "unavailable", {}

    def _list_running(self) -> None:
        for sock in self._sockets():
            try:
                listing = api_get_json(sock, f"{API_PREFIX}/containers/json", self.timeout)
            except (OSError, ApiError):
                continue  # the per-container lookups will report unreachability (once)
            if isinstance(listing, list):
                for item in listing:
                    cid = str(item.get("Id") or "") if isinstance(item, dict) else ""
                    if len(cid) == 64:
                        self.request(cid)

    def _work(self) -> None:
        while not self._stop.is_set():
            full_id = self._queue.get()
            if full_id is None:
                return
            if full_id == _LIST_RUNNING:
                self._list_running()
                continue
            self.fetches += 1
            st, fields = self._fetch(full_id)
            with self._cond:
                if st == "done":
                    self._cache[full_id] = fields
                self._state[full_id] = (st, time.monotonic())
                self._cond.notify_all()
            for cb in list(self._listeners):
                with contextlib.suppress(Exception):
                    cb(full_id)

    # -- the event follower ----------------------------------------------------------------
    def _follow(self) -> None:
        """Follow ``GET /events`` and look containers up as soon as they are created."""
        query = urllib.parse.urlencode({"filters": json.dumps({"type": ["container"]})})
        backoff = 0.2
        while not self._stop.is_set():
            sockets = self._sockets()
            if not sockets:
                self._stop.wait(1.0)
                continue
            conn = UnixHTTPConnection(sockets[0], timeout=self.timeout)
            self._events_conn = conn
            try:
                conn.request("GET", f"{API_PREFIX}/events?{query}")
                resp = conn.getresponse()
                if resp.status != 200:
                    raise OSError(f"events: HTTP {resp.status}")
                # The stream may stay idle for hours: no read timeout. close() shuts the socket
                # down to wake us (a timed-out socket file cannot be read again anyway).
                if conn.sock is not None:
                    conn.sock.settimeout(None)
                backoff = 0.2
                self._queue.put(_LIST_RUNNING)  # whatever started while we were not listening
                self._read_events(resp)
            except (OSError, http.client.HTTPException, ValueError):
                pass
            finally:
                conn.close()
                self._events_conn = None
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _read_events(self, resp: http.client.HTTPResponse) -> None:
        while not self._stop.is_set():
            line = resp.readline()
            if not line:
                return
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            action = str(event.get("Action") or event.get("status") or "")
            actor = event.get("Actor") or {}
            cid = str(event.get("id") or (actor.get("ID") if isinstance(actor, dict) else ""))
            if len(cid) != 64:
                continue
            if action in ("create", "init", "start", "rename", "update"):
                if action in ("rename", "update"):
                    with self._cond:
                        self._state.pop(cid, None)
                self.request(cid)
            if self.on_container_event is not None:
                with contextlib.suppress(Exception):
                    self.on_container_event(action, cid)
