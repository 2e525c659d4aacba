"""The Docker-compatible HTTP API over a unix socket: docker, and podman's ``system service``.

One client object per socket, used by :class:`~sentinel.enrichment.container_meta.
MetadataFetcher`'s threads only (never by the event path): ``inspect`` one container,
``list_ids`` of the running ones, and ``follow`` the runtime's event stream (``GET /events``)
so a container is looked up when it is created, before its first process runs.
Plain ``http.client`` over AF_UNIX: the API is simple enough that a dependency would not pay.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import urllib.parse
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sentinel.enrichment.container_fields import ContainerMeta, Mount, Pod

API_PREFIX = "/v1.40"
# Docker's event actions that (re)define what we know of a container.
LOOKUP_ACTIONS = ("create", "init", "start", "rename", "update")


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


def inspect_meta(inspect: dict[str, Any], runtime: str = "") -> ContainerMeta:
    """A ``/containers/<id>/json`` answer (Docker or podman) as :class:`ContainerMeta`."""
    config = inspect.get("Config") or {}
    host_config = inspect.get("HostConfig") or {}
    privileged = bool(host_config["Privileged"]) if "Privileged" in host_config else None
    # Falco's container.start_ts is the creation time (libsinsp reads "Created").
    created = inspect.get("Created")
    mounts = None
    raw_mounts = inspect.get("Mounts") or []
    if isinstance(raw_mounts, list):
        mounts = tuple(
            Mount(
                str(m.get("Source") or ""),
                str(m.get("Destination") or ""),
                str(m.get("Mode") or ""),
                bool(m.get("RW")),
                str(m.get("Propagation") or ""),
            )
            for m in raw_mounts
            if isinstance(m, dict)
        )
    labels = config.get("Labels") or {}
    labels = {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
    # cri-dockerd (Kubernetes on Docker Engine) labels each container with its pod.
    pod = None
    if labels.get("io.kubernetes.pod.name"):
        pod = Pod(
            namespace=labels.get("io.kubernetes.pod.namespace", ""),
            name=labels["io.kubernetes.pod.name"],
            uid=labels.get("io.kubernetes.pod.uid", ""),
        )
    return ContainerMeta(
        runtime=runtime,
        name=str(inspect.get("Name") or "").lstrip("/"),
        image=str(config.get("Image") or ""),
        image_id=str(inspect.get("Image") or ""),
        privileged=privileged,
        created_ns=parse_rfc3339_ns(created) if isinstance(created, str) else None,
        mounts=mounts,
        labels=labels,
        pod=pod,
        k8s_container_name=labels.get("io.kubernetes.container.name", ""),
    )


class DockerApiClient:
    """One Docker-API socket. Every call is bounded by ``timeout`` except the event stream,
    which may stay idle for hours; :meth:`interrupt` wakes it."""

    api = "docker"

    def __init__(self, path: str) -> None:
        self.path = path
        self._events_conn: UnixHTTPConnection | None = None

    def probe(self, timeout: float) -> str:
        """Who answers here, e.g. 'podman 4.3.1 (Docker API)'; OSError when nobody does."""
        try:
            doc = api_get_json(self.path, "/version", timeout)
        except ApiError as exc:
            raise OSError(str(exc)) from exc
        if not isinstance(doc, dict):
            raise OSError(f"bad answer from {self.path}: not an object")
        components = doc.get("Components") or []
        names = " ".join(str(c.get("Name", "")) for c in components if isinstance(c, dict))
        name = "podman" if "podman" in names.lower() else "docker"
        return f"{name} {doc.get('Version', '?')} (Docker API)"

    def inspect(self, full_id: str, timeout: float) -> ContainerMeta | None:
        """The container's metadata; None when this runtime does not know it. OSError when
        the runtime is unreachable or answers garbage."""
        try:
            data = api_get_json(self.path, f"{API_PREFIX}/containers/{full_id}/json", timeout)
        except ApiError as exc:
            if exc.status == 404:
                return None  # another runtime may know it
            raise OSError(str(exc)) from exc
        if not isinstance(data, dict):
            raise OSError(f"bad answer from {self.path}: not an object")
        return inspect_meta(data)

    def list_ids(self, timeout: float) -> list[str]:
        """Full ids of the running containers."""
        try:
            listing = api_get_json(self.path, f"{API_PREFIX}/containers/json", timeout)
        except ApiError as exc:
            raise OSError(str(exc)) from exc
        if not isinstance(listing, list):
            return []
        ids = (str(item.get("Id") or "") for item in listing if isinstance(item, dict))
        return [cid for cid in ids if len(cid) == 64]

    def follow(
        self, on_event: Callable[[str, str], None], stop: threading.Event, timeout: float
    ) -> None:
        """Call ``on_event(action, full_id)`` for each container event until the stream ends
        or ``stop`` is set; raises OSError when the stream cannot be opened."""
        query = urllib.parse.urlencode({"filters": json.dumps({"type": ["container"]})})
        conn = UnixHTTPConnection(self.path, timeout=timeout)
        self._events_conn = conn
        try:
            conn.request("GET", f"{API_PREFIX}/events?{query}")
            resp = conn.getresponse()
            if resp.status != 200:
                raise OSError(f"events: HTTP {resp.status}")
            # The stream may stay idle for hours: no read timeout. interrupt() shuts the socket
            # down to wake us (a timed-out socket file cannot be read again anyway).
            if conn.sock is not None:
                conn.sock.settimeout(None)
            on_event("subscribed", "")
            while not stop.is_set():
                line = resp.readline()
                if not line:
                    return
                event = _parse_event(line)
                if event is not None:
                    on_event(*event)
        except (http.client.HTTPException, ValueError) as exc:
            raise OSError(f"events from {self.path}: {exc}") from exc
        finally:
            conn.close()
            self._events_conn = None

    def interrupt(self) -> None:
        conn = self._events_conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.interrupt()


def _parse_event(line: bytes) -> tuple[str, str] | None:
    """(action, full id) of one ``/events`` line, None for anything else."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    action = str(event.get("Action") or event.get("status") or "")
    actor = event.get("Actor") or {}
    cid = str(event.get("id") or (actor.get("ID") if isinstance(actor, dict) else ""))
    return (action, cid) if len(cid) == 64 else None
