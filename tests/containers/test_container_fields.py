"""Container/k8s fields without a runtime: Falco's formats, the registry's sensor flags, rules
on the [arg] fields, socket discovery, the default append_output and the vendored CRI stubs."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2

from sentinel.compiler import compile_rules
from sentinel.engine import normalize_event
from sentinel.engine.engine import DEFAULT_APPEND_OUTPUT, default_append_output
from sentinel.enrichment import cri_api
from sentinel.enrichment.container_fields import LABEL_MAX_LEN, ContainerMeta, Mount, Pod
from sentinel.enrichment.container_meta import (
    KNOWN_SOCKETS,
    RuntimeSocket,
    cri_runtime_found,
    discover_sockets,
    sockets_from_env,
)
from sentinel.enrichment.containers import CONTAINER_FIELDS
from sentinel.enrichment.cri_api import api_pb2
from sentinel.enrichment.event import filled_fields
from sentinel.fields import FIELDS
from sentinel.loader import load_ruleset
from tests.helpers import cond_engine, matches, write_rules

SANDBOX = "5" * 64
FULL = ContainerMeta(
    runtime="containerd",
    name="shell",
    image="registry.example:5000/team/app:v2",
    image_id="sha256:" + "c" * 64,
    image_digest="sha256:" + "d" * 64,
    privileged=False,
    created_ns=1_700_000_000_000_000_000,
    mounts=(
        Mount("/srv/data", "/data", "", False, "private"),
        Mount("/var/run/x:y", "/run/x", "z", True, "rslave"),
    ),
    labels={"io.kubernetes.container.name": "shell"},
    pod=Pod(
        namespace="team-a",
        name="web-0",
        uid="0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0",
        sandbox_id=SANDBOX,
        labels={"app": "web", "app.kubernetes.io/name": "web", "big": "x" * (LABEL_MAX_LEN + 1)},
        ip="10.1.2.3",
        host_network=False,
        host_pid=True,
        host_ipc=False,
    ),
    k8s_container_name="shell",
)


def test_falco_formats() -> None:
    f = FULL.fields()
    assert f == {
        "container.type": "containerd",
        "container.name": "shell",
        "container.image": "registry.example:5000/team/app:v2",
        "container.image.repository": "registry.example:5000/team/app",
        "container.image.tag": "v2",
        "container.image.digest": "sha256:" + "d" * 64,
        "container.image.id": "c" * 64,
        "container.privileged": False,
        "container.start_ts": 1_700_000_000_000_000_000,
        "container.mounts": "/srv/data:/data::false:private,/var/run/x:y:/run/x:z:true:rslave",
        "container.labels": "io.kubernetes.container.name:shell",
        "container.label[io.kubernetes.container.name]": "shell",
        "k8s.container.name": "shell",
        "k8s.ns.name": "team-a",
        "k8s.pod.name": "web-0",
        "k8s.pod.uid": "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0",
        "k8s.pod.ip": "10.1.2.3",
        "container.ip": "10.1.2.3",
        "k8s.pod.sandbox_id": SANDBOX[:12],
        "k8s.pod.full_sandbox_id": SANDBOX,
        "container.host_network": False,
        "container.host_pid": True,
        "container.host_ipc": False,
        # Falco's label_max_len: the oversized label is dropped, the others kept, sorted
        "k8s.pod.labels": "app:web,app.kubernetes.io/name:web",
        "k8s.pod.label[app]": "web",
        "k8s.pod.label[app.kubernetes.io/name]": "web",
    }


def test_unknown_stays_missing() -> None:
    """Nothing invented: an empty meta yields no field; a digest comes from repo@digest."""
    assert ContainerMeta().fields() == {}
    f = ContainerMeta(image="app@sha256:" + "a" * 64).fields()
    assert f["container.image.digest"] == "sha256:" + "a" * 64
    assert "container.image.tag" not in f


def test_container_fields_cover_what_is_produced() -> None:
    """CONTAINER_FIELDS (next to ContainerInfo.fields, what "filled by the sensor" derives
    from) names every field a fully known container produces, and each is a registry field."""
    produced = {k.split("[", 1)[0] for k in FULL.fields()}
    produced |= {"container.id", "container.full_id", "container.duration"}
    mount_args = {n for n in CONTAINER_FIELDS if n.startswith("container.mount")} - {
        "container.mounts"
    }
    assert produced | mount_args == set(CONTAINER_FIELDS)
    assert set(CONTAINER_FIELDS) <= set(FIELDS)
    filled = filled_fields()
    assert set(CONTAINER_FIELDS) <= filled


def test_fields_survive_the_replay_format() -> None:
    """Every value is a flat scalar: a capture of these events replays."""
    ev = normalize_event({"evt.type": "execve", **FULL.fields()})
    assert ev["k8s.pod.label[app]"] == "web"
    assert ev["container.start_ts"] == 1_700_000_000_000_000_000


def test_validate_does_not_warn_about_filled_fields(tmp_path: Path) -> None:
    checks = " and ".join(
        f"{n}[0] exists" if FIELDS[n].arg.value == "required" else f"{n} exists"
        for n in sorted(CONTAINER_FIELDS)
    )
    rules = write_rules(
        tmp_path,
        f"""
        - rule: every container field
          desc: d
          condition: evt.type = execve and {checks}
          output: o
          priority: INFO
        """,
    )
    compiled = compile_rules(load_ruleset([rules]))
    warned = [d.message for d in compiled.diagnostics.warnings]
    assert not [w for w in warned if "is not produced" in w], warned


EV = {"evt.type": "execve", "proc.name": "sh", **FULL.fields()}


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("container.mount.dest[/srv/*] = /data", True),
        ("container.mount.dest[0] = /data", True),
        ("container.mount.source[1] = /var/run/x:y", True),  # a colon inside a path
        ("container.mount.source[/run/*] = /var/run/x:y", True),  # by destination
        ("container.mount.mode[1] = z", True),
        ("container.mount.rdwr[/srv/data] = false", True),
        ("container.mount.propagation[1] = rslave", True),
        ("container.mount[0] = /srv/data:/data::false:private", True),
        ("container.mount[/nowhere] = none", True),  # Falco: "none", not missing
        ("container.mount.dest[/nowhere] exists", False),
        ("container.mount.dest[7] exists", False),
        ("k8s.pod.label[app] = web", True),
        ("k8s.pod.label[app.kubernetes.io/name] = web", True),
        ("k8s.pod.label[big] exists", False),
        ("k8s.ns.name = team-a and k8s.pod.name startswith web-", True),
        ("k8s.ns.name = team-b", False),
        ("container.label[io.kubernetes.container.name] = shell", True),
        ("container.host_pid = true and container.host_network = false", True),
        ("k8s.pod.sandbox_id = 555555555555", True),
    ],
)
def test_rules_on_container_and_pod_fields(tmp_path: Path, condition: str, expected: bool) -> None:
    engine = cond_engine(tmp_path, f"evt.type = execve and {condition}")
    assert matches(engine, **{k.replace(".", "__"): v for k, v in EV.items()}) is expected


# -- socket discovery ----------------------------------------------------------------------
def test_sockets_from_environment() -> None:
    env = {
        "CONTAINER_RUNTIME_ENDPOINT": "unix:///run/k/c.sock",
        "CONTAINER_HOST": "unix:///run/p.sock",
        "DOCKER_HOST": "unix:///run/d.sock",
    }
    assert sockets_from_env(env) == [
        RuntimeSocket("/run/k/c.sock", "cri", "cri"),
        RuntimeSocket("/run/p.sock", "docker", "docker-api"),
    ]
    assert sockets_from_env({"CONTAINER_RUNTIME_ENDPOINT": "tcp://10.0.0.1:1"}) == []
    assert cri_runtime_found(env) is True
    assert cri_runtime_found({"CONTAINER_HOST": "unix:///run/p.sock"}) is False


def test_discovery_of_present_sockets(tmp_path: Path) -> None:
    """Known paths that exist, once per real path (a /var/run link to /run counts once)."""
    real = tmp_path / "run"
    real.mkdir()
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "run").symlink_to(real)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(real / "crio.sock"))
    candidates = [
        RuntimeSocket(str(real / "containerd.sock"), "cri", "containerd"),  # absent
        RuntimeSocket(str(real / "crio.sock"), "cri", "cri-o"),
        RuntimeSocket(str(tmp_path / "var" / "run" / "crio.sock"), "cri", "cri-o"),
    ]
    try:
        assert discover_sockets({}, candidates) == [candidates[1]]
    finally:
        server.close()
    # the defaults cover both kubelet runtimes and both Docker-API ones, at both spellings
    paths = {s.path: s.api for s in KNOWN_SOCKETS}
    assert paths["/run/containerd/containerd.sock"] == "cri"
    assert paths["/var/run/crio/crio.sock"] == "cri"
    assert paths["/run/podman/podman.sock"] == "docker"
    assert paths["/var/run/docker.sock"] == "docker"


def test_default_append_output() -> None:
    assert default_append_output(False) == DEFAULT_APPEND_OUTPUT
    k8s = default_append_output(True)
    assert k8s[: len(DEFAULT_APPEND_OUTPUT)] == DEFAULT_APPEND_OUTPUT
    assert {"k8s.ns.name", "k8s.pod.name", "container.image.repository"} <= set(k8s)


def test_config_default_follows_the_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sentinel.config import load_config
    from sentinel.ops import default_engine

    rules = write_rules(tmp_path, "- rule: r\n  desc: d\n  condition: evt.type = execve\n"
                        "  output: o\n  priority: INFO\n")  # fmt: skip
    compiled = compile_rules(load_ruleset([rules]))
    cfg = load_config(None, {})
    monkeypatch.setenv("CONTAINER_RUNTIME_ENDPOINT", f"unix://{tmp_path}/c.sock")
    assert "k8s.ns.name" in default_engine(compiled, cfg).append_output
    monkeypatch.delenv("CONTAINER_RUNTIME_ENDPOINT")
    monkeypatch.setenv("CONTAINER_HOST", f"unix://{tmp_path}/p.sock")  # Docker API only
    assert default_engine(compiled, cfg).append_output == DEFAULT_APPEND_OUTPUT
    explicit = cfg.model_copy(update={"append_output": ["proc.name"]})
    monkeypatch.setenv("CONTAINER_RUNTIME_ENDPOINT", f"unix://{tmp_path}/c.sock")
    assert default_engine(compiled, explicit).append_output == ("proc.name",)


# -- the vendored CRI stubs ----------------------------------------------------------------
CRI_DIR = Path(cri_api.__file__).parent


def test_vendored_proto_is_the_recorded_upstream_file() -> None:
    digest = hashlib.sha256((CRI_DIR / "api.proto").read_bytes()).hexdigest()
    assert digest == cri_api.PROTO_SHA256
    assert "Apache License" in (CRI_DIR / "LICENSE").read_text()


def test_vendored_stubs_are_what_the_proto_generates(tmp_path: Path) -> None:
    """Regenerate from the vendored api.proto (grpcio-tools, a dev dependency) and compare the
    descriptors: the checked-in module encodes exactly that proto, whatever protoc printed."""
    out = tmp_path / "api.desc"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{CRI_DIR}",
         f"--descriptor_set_out={out}", "api.proto"],
        check=True, capture_output=True,
    )  # fmt: skip
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    _drop_json_names(fresh.message_type)  # derived names a descriptor set adds; gencode omits
    vendored = descriptor_pb2.FileDescriptorProto.FromString(api_pb2.DESCRIPTOR.serialized_pb)
    assert vendored == fresh
    assert vendored.package == "runtime.v1"


def _drop_json_names(messages: Any) -> None:
    for m in messages:
        for f in m.field:
            f.ClearField("json_name")
        _drop_json_names(m.nested_type)


def test_cri_call_on_a_closed_client_is_a_cri_error(tmp_path: Path) -> None:
    """close() racing a lookup: gRPC raises ValueError on a closed channel; the client turns
    it into its own error (an OSError), which the fetcher's worker handles, instead of dying
    (it did, in a bench that closed the resolver right after start)."""
    from sentinel.enrichment.container_cri import CriClient, CriError

    client = CriClient(str(tmp_path / "none.sock"))
    client.close()
    with pytest.raises(CriError, match="CANCELLED"):
        client.version(1.0)
