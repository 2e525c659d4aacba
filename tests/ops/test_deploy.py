"""The Kubernetes manifests are consistent with Sentinel itself: the ConfigMap's config and
rules load, every mount has a volume, and the DaemonSet asks for exactly the capabilities the
documented (and tested) `podman run` line uses."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import kubernetes_validate
import pytest

from sentinel.config import load_config, parse_address
from sentinel.loader import load_rules
from sentinel.paths import RULES_DIR
from tests.ops.deployment import documented_caps, documented_run_line, find, manifests


def test_every_manifest_is_namespaced_and_labelled() -> None:
    docs = manifests()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "ConfigMap", "DaemonSet", "Namespace"]
    for d in docs:
        assert d["metadata"]["labels"]["app.kubernetes.io/name"] == "sentinel"
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "sentinel"


def test_configmap_config_is_valid_and_its_rules_load(tmp_path: Path) -> None:
    cm = find("ConfigMap", "sentinel-config")
    cfg_file = tmp_path / "sentinel.yaml"
    cfg_file.write_text(cm["data"]["sentinel.yaml"])
    cfg = load_config(cfg_file, {})
    assert cfg.reload.watch is True
    assert parse_address(cfg.metrics_address)[1] == 9376
    assert [str(p) for p in cfg.rules] == ["/opt/sentinel/rules", "/etc/sentinel/rules.d"]
    # The image's /opt/sentinel/rules is this checkout's rules/; the local rules come from
    # the second ConfigMap. Together they must load without errors.
    rules_dir = tmp_path / "rules.d"
    rules_dir.mkdir()
    for name, text in find("ConfigMap", "sentinel-rules")["data"].items():
        (rules_dir / name).write_text(text)
    rs = load_rules([RULES_DIR, rules_dir])
    assert len(rs.diagnostics.errors) == 0


def test_daemonset_mounts_args_and_privileges() -> None:
    ds = find("DaemonSet", "sentinel")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostPID"] is True
    assert not spec.get("hostNetwork", False)
    (c,) = spec["containers"]
    volumes = {v["name"] for v in spec["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert set(mounts) <= volumes
    assert all("subPath" not in m for m in mounts.values())  # subPath defeats ConfigMap updates
    cfg_arg = c["args"][c["args"].index("--config") + 1]
    assert cfg_arg.startswith(mounts["config"]["mountPath"] + "/")
    assert mounts["rules"]["mountPath"] == "/etc/sentinel/rules.d"
    sc = c["securityContext"]
    assert sc["privileged"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == documented_caps()
    assert sc["readOnlyRootFilesystem"] is True
    port = c["ports"][0]["containerPort"]
    cm = find("ConfigMap", "sentinel-config")["data"]["sentinel.yaml"]
    assert f":{port}" in cm
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_documented_run_line_is_least_privilege() -> None:
    argv = documented_run_line()
    assert "--privileged" not in argv
    assert "--cap-drop=all" in argv
    assert "--pid=host" in argv
    assert documented_caps() == {"SYS_ADMIN", "BPF", "PERFMON", "SYS_PTRACE", "SYSLOG"}


# The Kubernetes versions the manifests are claimed for (docs/operations.md): from 1.26, the
# first kubelet that speaks only CRI runtime.v1 (what Sentinel's client speaks), to the newest
# whose API schemas kubernetes-validate ships.
K8S_VERSIONS = [f"1.{minor}.0" for minor in range(26, 38)]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_against_the_kubernetes_api_schema(version: str) -> None:
    """Offline, strict (unknown keys are errors), against that release's OpenAPI schemas."""
    for doc in manifests():
        kubernetes_validate.validate(doc, version, strict=True)


def test_schema_validation_catches_a_misspelt_key() -> None:
    """The check above can fail: a `readonly` for `readOnly` is rejected."""
    ds = copy.deepcopy(find("DaemonSet", "sentinel"))
    ds["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["readonly"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readonly"):
        kubernetes_validate.validate(ds, K8S_VERSIONS[-1], strict=True)


def test_daemonset_mounts_the_cri_sockets_read_only() -> None:
    """containerd's and CRI-O's socket directories, read-only, at the paths Sentinel looks
    at, and never created as directories in place of a socket file."""
    from sentinel.enrichment.container_meta import KNOWN_SOCKETS

    spec = find("DaemonSet", "sentinel")["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for runtime, sock in (
        ("containerd", "/run/containerd/containerd.sock"),
        ("cri-o", "/run/crio/crio.sock"),
    ):
        assert any(s.path == sock and s.api == "cri" and s.name == runtime for s in KNOWN_SOCKETS)
        directory = os.path.dirname(sock)
        m = mounts[directory]
        assert m["readOnly"] is True
        host = volumes[m["name"]]["hostPath"]
        assert host == {"path": directory, "type": "DirectoryOrCreate"}
