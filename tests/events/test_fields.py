"""What ``sentinel fields --sensor`` lists is what the sensor fills: every such field yields a
value on a record of each event type that defines it.

"Filled by the sensor" is derived from the getters (sentinel.enrichment.event.sensor_fields),
never declared, so a field the registry names but no code fills (fd.ip/fd.net/fd.port once
were) cannot be listed; and a getter that exists but returns nothing for a plain record of
its own event type fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from sentinel.enrichment.container_docker import inspect_meta
from sentinel.enrichment.container_fields import ContainerMeta, Pod
from sentinel.enrichment.containers import CONTAINER_FIELDS, ContainerInfo
from sentinel.enrichment.event import LiveEvent, filled_fields, sensor_fields
from sentinel.enrichment.process_fields import INDEXED
from sentinel.events.fd import SOCKET_FIELDS
from sentinel.fields import FIELDS
from tests.events.conftest import SAMPLES

REPO = Path(__file__).resolve().parents[2]
# Indexed fields take an argument; the value of each for a sample argument.
INDEXED_ARGS = {"evt.arg": "0", **{name: "1" for name in INDEXED}, "proc.env": "HOME"}
# Defined for an event type, but without a value by its nature (as in libsinsp): a listening or
# fresh socket has no peer, a dup'ed socket no directory, a dup'ed file no socket ends. And
# accept's queue statistics, which the sensor does not read (README, limits): always empty.
NO_VALUE = {
    *((t, f) for t in ("listen", "socket") for f in ("fd.rip", "fd.rnet", "fd.rport")),
    *((t, f) for t in ("listen", "socket") for f in ("fd.dip", "fd.dport")),
    *(("listen", f) for f in ("fd.cip", "fd.cnet", "fd.cport")),
    *(("socket", f) for f in ("fd.sip", "fd.snet", "fd.sport")),
    ("dup2", "fd.directory"),
    *((t, f) for t in ("dup", "dup3") for f in SOCKET_FIELDS),
    ("dup2", "fd.filename"),
    *(
        (t, f"evt.arg.{q}")
        for t in ("accept", "accept4")
        for q in ("queuepct", "queuelen", "queuemax")
    ),
}


def test_every_filled_field_has_a_value_on_each_event_type_that_fills_it(
    event: Callable[..., LiveEvent],
) -> None:
    per_field = sensor_fields()
    missing = []
    for evt_type, sample in SAMPLES.items():
        ev = event(evt_type, **sample)
        for name, types in per_field.items():
            if evt_type not in types or name in CONTAINER_FIELDS:
                continue  # container fields: below, from the runtime's answer
            key = f"{name}[{INDEXED_ARGS[name]}]" if name in INDEXED_ARGS else name
            if (ev.get(key) is None) != ((evt_type, key) in NO_VALUE):
                missing.append(f"{evt_type}: {key}")
    assert missing == []


def test_container_fields_come_from_the_runtime_answer() -> None:
    """The container fields every event type carries: identity from the cgroup, the rest from
    a runtime's answer: the Docker API's inspect (podman, Docker) and the CRI's (containerd,
    CRI-O: the pod sandbox's fields). Indexed fields read the flat keys and container.mounts."""
    inspect = {
        "Name": "/web",
        "Image": "sha256:" + "ab" * 32,
        "Created": "2026-11-28T10:00:00.123456789Z",
        "Config": {
            "Image": "registry.local/team/web:1.2",
            "Labels": {
                "io.kubernetes.pod.namespace": "prod",
                "io.kubernetes.pod.name": "web-0",
                "io.kubernetes.pod.uid": "0f1e",
                "app": "web",
            },
        },
        "HostConfig": {"Privileged": False},
        "Mounts": [{"Source": "/data", "Destination": "/var/lib/x", "Mode": "", "RW": True}],
    }
    pinned = {**inspect, "Config": {"Image": "registry.local/team/web@sha256:" + "cd" * 32}}
    cri = ContainerMeta(
        runtime="containerd",
        pod=Pod(namespace="prod", name="web-0", uid="0f1e", sandbox_id="5" * 64,
                labels={"app": "web"}, ip="10.0.0.7", host_network=False, host_pid=False,
                host_ipc=False),
        k8s_container_name="web",
    )  # fmt: skip
    got = {
        **ContainerInfo("a" * 64, "podman").fields(),
        **inspect_meta(pinned).fields(),  # an image pinned by digest
        **inspect_meta(inspect).fields(),  # an image by tag
        **cri.fields(),
        "container.duration": 1,  # computed by ContainerInfo.fields() from start_ts
    }
    indexed = {n for n in CONTAINER_FIELDS if FIELDS[n].arg.value == "required"}
    plain = CONTAINER_FIELDS - indexed
    assert plain <= {k for k, v in got.items() if v is not None}, plain - set(got)
    # the indexed ones read these: flat label keys, the mounts string
    assert got["container.label[app]"] == "web" and got["k8s.pod.label[app]"] == "web"
    assert got["container.mounts"] == "/data:/var/lib/x::true:"


def test_every_filled_field_is_in_the_registry() -> None:
    """A getter for a name the registry lacks could never be used by a rule."""
    unknown = set(sensor_fields()) - set(FIELDS)
    # evt.arg.<param> of parameters Falco's rules do not use are filled but not registered
    assert {n for n in unknown if not n.startswith("evt.arg.")} == set()


def test_fields_cli_lists_exactly_the_filled_fields() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "sentinel", "fields", "--sensor", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    rows = json.loads(res.stdout)
    listed = {r["name"] for r in rows}
    assert listed == set(FIELDS) & filled_fields()
    assert {"fd.ip", "fd.net", "fd.port", "fs.path.name"} <= listed
    assert "proc.exe_ino.ctime_duration_pidns_start" not in listed  # registered, not filled
    by_name = {r["name"]: r for r in rows}
    file_ops = ["open", "openat", "openat2", "creat", "unlink", "unlinkat", "mkdir", "mkdirat"]
    file_ops += ["rmdir", "chmod", "fchmodat", "umount2", "chdir", "fchdir", "fchmod"]
    assert by_name["fs.path.name"]["sensor_event_types"] == sorted(file_ops)
