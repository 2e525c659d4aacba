"""Container metadata as the runtimes report it, and how it becomes Falco's fields.

Why one neutral type: Sentinel speaks two runtime APIs (Docker's HTTP API for docker and podman,
the CRI's gRPC API for containerd and CRI-O) and both must produce exactly the same field names,
types and formats (Falco's container plugin's), or a rule that works on a podman host would
silently miss on a Kubernetes node. Each client fills a :class:`ContainerMeta`; only
:meth:`ContainerMeta.fields` knows Falco's names.

Labels become one string field (``container.labels``, ``k8s.pod.labels``: ``k1:v1,k2:v2`` as
Falco prints them) plus one flat key per label (``k8s.pod.label[app]``), so an event stays a flat
mapping of scalars that ``sentinel capture`` can write and ``sentinel replay`` read back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Falco's container plugin drops labels whose value is longer than this (its label_max_len
# default): a label can hold a whole JSON document, which no alert should carry.
LABEL_MAX_LEN = 100


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


@dataclass(frozen=True, slots=True)
class Mount:
    """One mount of a container; rendered ``source:dest:mode:rdwr:propagation`` like Falco."""

    source: str
    dest: str
    mode: str = ""
    rw: bool = True
    propagation: str = ""

    def render(self) -> str:
        rw = "true" if self.rw else "false"
        return f"{self.source}:{self.dest}:{self.mode}:{rw}:{self.propagation}"


@dataclass(frozen=True, slots=True)
class Pod:
    """The Kubernetes pod (CRI pod sandbox) a container belongs to."""

    namespace: str = ""
    name: str = ""
    uid: str = ""
    sandbox_id: str = ""  # the full 64-hex sandbox id
    labels: Mapping[str, str] = field(default_factory=dict)
    ip: str = ""
    host_network: bool | None = None
    host_pid: bool | None = None
    host_ipc: bool | None = None


@dataclass(frozen=True, slots=True)
class ContainerMeta:
    """What a runtime told us about one container; empty values are unknown, not false."""

    runtime: str = ""  # container.type as the runtime names itself ("containerd", "cri-o")
    name: str = ""
    image: str = ""  # as the runtime reports it: repo:tag, or repo@sha256:...
    image_id: str = ""
    image_digest: str = ""  # the registry (manifest) digest, "sha256:..."
    privileged: bool | None = None
    created_ns: int | None = None
    mounts: tuple[Mount, ...] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    pod: Pod | None = None
    k8s_container_name: str = ""  # the container's name in the pod spec

    def fields(self) -> dict[str, Any]:
        """Falco field name -> value, for what is known."""
        out: dict[str, Any] = {}
        if self.runtime:
            out["container.type"] = self.runtime
        if self.name:
            out["container.name"] = self.name
        if self.image:
            out["container.image"] = self.image
            repo, tag = split_image(self.image)
            out["container.image.repository"] = repo
            if tag is not None:
                out["container.image.tag"] = tag
        digest = self.image_digest or (self.image.split("@", 1)[1] if "@" in self.image else "")
        if digest:
            out["container.image.digest"] = digest
        if self.image_id:
            out["container.image.id"] = self.image_id.removeprefix("sha256:")
        if self.privileged is not None:
            out["container.privileged"] = self.privileged
        if self.created_ns:
            out["container.start_ts"] = self.created_ns
        if self.mounts is not None:
            out["container.mounts"] = ",".join(m.render() for m in self.mounts)
        out.update(_labels("container", self.labels))
        if self.k8s_container_name:
            out["k8s.container.name"] = self.k8s_container_name
        if self.pod is not None:
            out.update(_pod_fields(self.pod))
        return out


def _labels(prefix: str, labels: Mapping[str, str]) -> dict[str, str]:
    """``<prefix>.labels`` (Falco's ``k:v,k:v``, sorted) and one ``<prefix>.label[k]`` each."""
    kept = {str(k): str(v) for k, v in labels.items() if len(str(v)) <= LABEL_MAX_LEN}
    if not kept:
        return {}
    out = {f"{prefix}.label[{k}]": v for k, v in kept.items()}
    out[f"{prefix}.labels"] = ",".join(f"{k}:{v}" for k, v in sorted(kept.items()))
    return out


def _pod_fields(pod: Pod) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in (
        ("k8s.ns.name", pod.namespace),
        ("k8s.pod.name", pod.name),
        ("k8s.pod.uid", pod.uid),
        ("k8s.pod.ip", pod.ip),
        ("container.ip", pod.ip),  # every container of a pod shares the sandbox's network
    ):
        if value:
            out[name] = value
    if pod.sandbox_id:
        out["k8s.pod.sandbox_id"] = pod.sandbox_id[:12]
        out["k8s.pod.full_sandbox_id"] = pod.sandbox_id
    for name, flag in (
        ("container.host_network", pod.host_network),
        ("container.host_pid", pod.host_pid),
        ("container.host_ipc", pod.host_ipc),
    ):
        if flag is not None:
            out[name] = flag
    out.update(_labels("k8s.pod", pod.labels))
    return out
