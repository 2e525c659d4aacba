"""The Kubernetes CRI (gRPC ``runtime.v1``) over a unix socket: containerd and CRI-O.

A Kubernetes node has no Docker API: the kubelet talks to its runtime through the CRI, and that
is the only place a container's pod (namespace, name, uid, labels) is known on the node. This
client asks it, from :class:`~sentinel.enrichment.container_meta.MetadataFetcher`'s threads only:

- ``inspect``: ``ListContainers`` (filter: the id) for the container's pod sandbox,
  ``ContainerStatus`` (verbose, for ``privileged``) and ``PodSandboxStatus`` (cached per
  sandbox). An id no container has may be a pod sandbox itself (the pause process): its pod
  fields are answered, as Falco does.
- ``follow``: ``GetContainerEvents`` where the runtime offers it (containerd >= 1.7, CRI-O
  >= 1.26 with evented PLEG), else polling ``ListContainers`` every ``poll_interval``.
  Either way the cgroup watcher already asks for a container when its cgroup appears (before
  its first process runs), so the stream is a second route, not the only one.

Every unary call carries a deadline, so a runtime that accepts connections and never answers
costs one ``timeout`` per call, in a background thread. The stubs are the upstream CRI
``api.proto``'s messages, generated once and vendored (see ``cri_api/__init__.py``); methods
are called by name through ``grpc.Channel.unary_unary``, which needs no generated service code.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import structlog
from google.protobuf.message import Message

from sentinel.enrichment.container_fields import ContainerMeta, Mount, Pod
from sentinel.enrichment.cri_api import api_pb2 as pb

log = structlog.get_logger("sentinel.enrichment.containers")

SERVICE = "/runtime.v1.RuntimeService/"
MAX_MESSAGE = 16 << 20  # the kubelet's own limit for CRI answers
# CRI MountPropagation -> the names Docker and Falco print.
_PROPAGATION = {
    pb.PROPAGATION_PRIVATE: "private",
    pb.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    pb.PROPAGATION_BIDIRECTIONAL: "rshared",
}
_EVENT_ACTION = {
    pb.CONTAINER_CREATED_EVENT: "create",
    pb.CONTAINER_STARTED_EVENT: "start",
    pb.CONTAINER_STOPPED_EVENT: "die",
    pb.CONTAINER_DELETED_EVENT: "destroy",
}
# Runtimes name themselves in Version; container.type uses Falco's spelling.
_RUNTIME_TYPE = {"containerd": "containerd", "cri-o": "cri-o"}

M = TypeVar("M", bound=Message)


class CriError(OSError):
    """A CRI call failed in a way that says nothing about the container (unreachable, timed
    out, refused): the runtime is unavailable for now."""

    def __init__(self, method: str, code: grpc.StatusCode | None, details: str) -> None:
        name = code.name if code is not None else "UNKNOWN"
        super().__init__(f"{method}: {name}: {details}")
        self.code = code


def _status(exc: grpc.RpcError) -> tuple[grpc.StatusCode | None, str]:
    """(code, details) of a failed call; a bare RpcError (not raised by a call) has neither."""
    try:
        return exc.code(), exc.details() or str(exc)
    except AttributeError:
        return None, str(exc)


class CriClient:
    """One CRI socket (``runtime.v1``). Thread-safe for the fetcher's worker and follower."""

    api = "cri"

    def __init__(self, path: str, *, poll_interval: float = 1.0) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self.runtime = ""  # "containerd" / "cri-o" once Version answered
        self.runtime_version = ""
        self.events_supported: bool | None = None  # None until the stream was tried
        self.serves_cri = True  # False: the socket answers, but not runtime.v1 (see _ready)
        self._channel = grpc.insecure_channel(
            f"unix://{path}",
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.enable_retries", 0),  # our caller decides when to retry
            ],
        )
        self._sandboxes: OrderedDict[str, Pod] = OrderedDict()
        self._lock = threading.Lock()
        self._stream: Any = None  # the live GetContainerEvents call, to cancel it
        self._wake = threading.Event()

    # -- calls -----------------------------------------------------------------------------
    def call(self, method: str, request: Message, response: type[M], timeout: float) -> M:
        """One unary RuntimeService call with a deadline. Raises CriError (an OSError), with
        the gRPC status code kept for callers that tell NOT_FOUND from the rest."""
        fn: grpc.UnaryUnaryMultiCallable[Message, M] = self._channel.unary_unary(
            SERVICE + method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response.FromString,
        )
        try:
            answer: M = fn(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise CriError(method, *_status(exc)) from None
        except ValueError as exc:  # "Cannot invoke RPC on closed channel!": close() won a race
            raise CriError(method, grpc.StatusCode.CANCELLED, str(exc)) from None
        return answer

    def version(self, timeout: float) -> pb.VersionResponse:
        answer = self.call("Version", pb.VersionRequest(version="v1"), pb.VersionResponse, timeout)
        self.runtime = _RUNTIME_TYPE.get(answer.runtime_name, answer.runtime_name or "cri")
        self.runtime_version = answer.runtime_version
        return answer

    def probe(self, timeout: float) -> str:
        """Who answers here, e.g. 'containerd 1.7.24 (CRI runtime.v1)'; OSError otherwise
        (also for a socket that answers without the CRI: it gives no pod metadata)."""
        answer = self.version(timeout)
        return f"{answer.runtime_name} {answer.runtime_version} (CRI {answer.runtime_api_version})"

    def _ready(self, timeout: float) -> bool:
        """Ask Version once. False for a socket that answers without the CRI ``runtime.v1``
        service (Docker's own containerd has its CRI plugin disabled; runtimes older than
        Kubernetes 1.26's requirement speak only v1alpha2): it knows no container of ours,
        which is not a failure. Raises CriError when the runtime is unreachable or hangs."""
        if self.runtime or not self.serves_cri:
            return self.serves_cri
        try:
            self.version(timeout)
        except CriError as exc:
            if exc.code != grpc.StatusCode.UNIMPLEMENTED:
                raise
            self.serves_cri = False
            log.info("socket does not serve the CRI runtime.v1 API; ignored", socket=self.path)
        return self.serves_cri

    # -- what the fetcher asks -------------------------------------------------------------
    def inspect(self, full_id: str, timeout: float) -> ContainerMeta | None:
        """The container's (or pod sandbox's) metadata; None when this runtime knows neither.
        Raises OSError when the runtime is unreachable, hangs past ``timeout`` or does not
        serve the CRI (e.g. Docker's own containerd, whose CRI plugin is disabled)."""
        if not self._ready(timeout):
            return None
        listing = self.call(
            "ListContainers",
            pb.ListContainersRequest(filter=pb.ContainerFilter(id=full_id)),
            pb.ListContainersResponse,
            timeout,
        )
        ctr = next((c for c in listing.containers if c.id == full_id), None)
        if ctr is None:
            pod = self._sandbox(full_id, timeout)
            return None if pod is None else ContainerMeta(runtime=self.runtime, pod=pod)
        try:
            status = self.call(
                "ContainerStatus",
                pb.ContainerStatusRequest(container_id=full_id, verbose=True),
                pb.ContainerStatusResponse,
                timeout,
            )
        except CriError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                return None  # removed between the two calls
            raise
        pod = self._sandbox(ctr.pod_sandbox_id, timeout) if ctr.pod_sandbox_id else None
        return container_meta(self.runtime, ctr, status, pod)

    def list_ids(self, timeout: float, *, running: bool = True) -> list[str]:
        """Ids of the running containers, or (``running=False``, for polling) of every one the
        runtime has: created, running, or exited but not removed."""
        if not self._ready(timeout):
            return []
        flt = pb.ContainerFilter(state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING))
        listing = self.call(
            "ListContainers",
            pb.ListContainersRequest(filter=flt if running else None),
            pb.ListContainersResponse,
            timeout,
        )
        return [c.id for c in listing.containers]

    def _sandbox(self, sandbox_id: str, timeout: float) -> Pod | None:
        """The pod of a sandbox id (cached: a sandbox's metadata and labels never change)."""
        with self._lock:
            pod = self._sandboxes.get(sandbox_id)
        if pod is not None:
            return pod
        try:
            answer = self.call(
                "PodSandboxStatus",
                pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id),
                pb.PodSandboxStatusResponse,
                timeout,
            )
        except CriError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        pod = sandbox_pod(answer.status)
        with self._lock:
            self._sandboxes[sandbox_id] = pod
            while len(self._sandboxes) > 4096:
                self._sandboxes.popitem(last=False)
        return pod

    # -- events ----------------------------------------------------------------------------
    def follow(
        self, on_event: Callable[[str, str], None], stop: threading.Event, timeout: float
    ) -> None:
        """``on_event(action, full_id)`` per container event until ``stop`` or a failure
        (OSError). Uses the runtime's event stream, or polls where it has none."""
        if not self._ready(timeout):  # a hung or absent runtime fails here, within timeout
            self._wake.wait()  # nothing to follow on this socket
            return
        if self.events_supported is not False:
            try:
                self._stream_events(on_event, stop)
                return
            except CriError as exc:
                if exc.code != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                self.events_supported = False
        self._poll(on_event, stop, timeout)

    def _stream_events(self, on_event: Callable[[str, str], None], stop: threading.Event) -> None:
        fn: grpc.UnaryStreamMultiCallable[Message, pb.ContainerEventResponse]
        fn = self._channel.unary_stream(
            SERVICE + "GetContainerEvents",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.ContainerEventResponse.FromString,
        )
        # No deadline: the stream lives as long as we do; interrupt() cancels it.
        stream = fn(pb.GetEventsRequest())
        self._stream = stream
        # Reported before the first event: what started meanwhile is listed by the fetcher.
        on_event("subscribed", "")
        try:
            for ev in stream:
                self.events_supported = True
                on_event(_EVENT_ACTION.get(ev.container_event_type, "other"), ev.container_id)
                if stop.is_set():
                    return
        except grpc.RpcError as exc:
            code, details = _status(exc)
            if stop.is_set() and code == grpc.StatusCode.CANCELLED:
                return
            raise CriError("GetContainerEvents", code, details) from None
        finally:
            self._stream = None

    def _poll(
        self, on_event: Callable[[str, str], None], stop: threading.Event, timeout: float
    ) -> None:
        """``ListContainers`` every ``poll_interval``; new ids are reported as ``create``."""
        seen = set(self.list_ids(timeout, running=False))
        on_event("subscribed", "")
        while not stop.is_set():
            self._wake.wait(self.poll_interval)
            if stop.is_set():
                return
            now = set(self.list_ids(timeout, running=False))
            for cid in now - seen:
                on_event("create", cid)
            seen = now

    def interrupt(self) -> None:
        stream = self._stream
        if stream is not None:
            stream.cancel()
        self._wake.set()

    def close(self) -> None:
        self.interrupt()
        self._channel.close()


def sandbox_pod(status: pb.PodSandboxStatus) -> Pod:
    """A PodSandboxStatus as :class:`Pod` (namespaces shared with the node: NODE mode)."""
    options = status.linux.namespaces.options
    has_ns = status.HasField("linux") and status.linux.HasField("namespaces")
    return Pod(
        namespace=status.metadata.namespace,
        name=status.metadata.name,
        uid=status.metadata.uid,
        sandbox_id=status.id,
        labels=dict(status.labels),
        ip=status.network.ip,
        host_network=(options.network == pb.NODE) if has_ns else None,
        host_pid=(options.pid == pb.NODE) if has_ns else None,
        host_ipc=(options.ipc == pb.NODE) if has_ns else None,
    )


def _verbose_info(status: pb.ContainerStatusResponse) -> dict[str, Any]:
    """The runtime's verbose ``info`` JSON (containerd and CRI-O both put it under "info")."""
    try:
        info = json.loads(status.info.get("info", "") or "{}")
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _dig(obj: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)
    return obj


def _privileged(info: dict[str, Any]) -> bool | None:
    """containerd: the CRI config it was created with (``privileged`` omitted when false);
    CRI-O: a top-level ``privileged``. None when the runtime said neither."""
    if isinstance(info.get("config"), dict):
        return bool(_dig(info, "config", "linux", "security_context", "privileged"))
    flag = info.get("privileged")
    return flag if isinstance(flag, bool) else None


def _image_name(status: pb.ContainerStatus, info: dict[str, Any]) -> str:
    """The image as a name (repo:tag); runtimes may report only the image id here."""
    for name in (status.image.image, status.image.user_specified_image):
        if name and not name.startswith("sha256:"):
            return name
    annotations = _dig(info, "runtimeSpec", "annotations") or {}
    for key in ("io.kubernetes.cri.image-name", "io.kubernetes.cri-o.ImageName"):
        value = annotations.get(key) if isinstance(annotations, dict) else None
        if isinstance(value, str) and value:
            return value
    return ""


def container_meta(
    runtime: str,
    ctr: pb.Container,
    status_resp: pb.ContainerStatusResponse,
    pod: Pod | None,
) -> ContainerMeta:
    """ListContainers' entry + ContainerStatus (+ the pod) as :class:`ContainerMeta`."""
    status = status_resp.status
    info = _verbose_info(status_resp)
    # image_ref is "repo@sha256:<manifest digest>" when the image has a registry digest
    # (pulled, or imported with digests), else the image id "sha256:<config digest>".
    image_ref = status.image_ref or ctr.image_ref
    digest = image_ref.split("@", 1)[1] if "@" in image_ref else ""
    image_id: str = status.image_id or ctr.image_id
    if not image_id:
        refs: tuple[Any, ...] = (ctr.image_ref, _dig(info, "config", "image", "image"))
        image_id = next((r for r in refs if isinstance(r, str) and r.startswith("sha256:")), "")
    return ContainerMeta(
        runtime=runtime,
        name=status.metadata.name,
        image=_image_name(status, info),
        image_id=image_id,
        image_digest=digest,
        privileged=_privileged(info),
        created_ns=status.created_at or ctr.created_at or None,
        mounts=tuple(
            Mount(
                m.host_path,
                m.container_path,
                "",
                not m.readonly,
                _PROPAGATION.get(m.propagation, ""),
            )
            for m in status.mounts
        ),
        labels=dict(status.labels),
        pod=pod,
        k8s_container_name=status.metadata.name,
    )
