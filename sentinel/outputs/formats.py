"""Alert formats for SIEMs: Sentinel/Falco JSON, Elastic Common Schema, OCSF, and CEF.

Each format maps the Falco fields an alert's output carries (``proc.name``, ``fd.name``, ...)
onto the target schema's own fields, so that SIEM dashboards and detections built for the
schema work on Sentinel's alerts without a custom parser. The original ``output_fields`` are
always kept as well (ECS: ``sentinel.output_fields``; OCSF: ``unmapped``; CEF: ``cs6``), so no
information is lost by choosing a schema.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

from sentinel import __version__
from sentinel.alerts import Alert, format_time

PRODUCT = "Sentinel"
ECS_VERSION = "8.11.0"
OCSF_VERSION = "1.1.0"

# Falco priority -> RFC 5424 severity (0 = Emergency .. 7 = Debug).
SYSLOG_SEVERITY = {
    "emergency": 0,
    "alert": 1,
    "critical": 2,
    "error": 3,
    "warning": 4,
    "notice": 5,
    "informational": 6,
    "info": 6,
    "debug": 7,
}


def syslog_severity(priority: str) -> int:
    return SYSLOG_SEVERITY.get(priority.lower(), 5)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str)


def _f(alert: Alert, *names: str) -> Any:
    """The first of ``names`` present (not None) in the alert's output fields."""
    for name in names:
        value = alert.output_fields.get(name)
        if value is not None:
            return value
    return None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _prune(obj: dict[str, Any]) -> dict[str, Any]:
    """Drop None values and empty sub-objects, recursively: a SIEM should not index nulls."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            value = _prune(value)
            if not value:
                continue
        if value is None or value == []:
            continue
        out[key] = value
    return out


# -- event classification ---------------------------------------------------------------------

EvtKind = Literal["process", "file", "network", "other"]

_PROCESS = {"execve", "execveat", "clone", "clone3", "fork", "vfork", "ptrace", "kill", "prctl"}
_FILE_CREATE = {"creat", "mkdir", "mkdirat", "symlink", "symlinkat", "link", "linkat", "mknod"}
_FILE_DELETE = {"unlink", "unlinkat", "rmdir"}
_FILE_CHANGE = {"rename", "renameat", "renameat2", "chmod", "fchmod", "fchmodat", "chown",
                "fchown", "fchownat", "lchown", "truncate", "ftruncate", "setxattr"}  # fmt: skip
_FILE_ACCESS = {"open", "openat", "openat2", "creat", "open_by_handle_at", "read", "write", "mmap"}
_NETWORK = {"connect", "accept", "accept4", "bind", "listen", "sendto", "recvfrom", "sendmsg",
            "recvmsg", "socket"}  # fmt: skip


def classify(evt_type: str | None) -> EvtKind:
    if evt_type in _PROCESS:
        return "process"
    if evt_type in _FILE_CREATE | _FILE_DELETE | _FILE_CHANGE | _FILE_ACCESS:
        return "file"
    if evt_type in _NETWORK:
        return "network"
    return "other"


def _ecs_category_type(evt_type: str | None, action: str) -> tuple[list[str], list[str]]:
    if evt_type in ("execve", "execveat", "clone", "clone3", "fork", "vfork"):
        cat, typ = ["process"], ["start"]
    elif evt_type in ("ptrace", "prctl"):
        cat, typ = ["process"], ["access"]
    elif evt_type == "kill":
        cat, typ = ["process"], ["end"]
    elif evt_type in _FILE_CREATE:
        cat, typ = ["file"], ["creation"]
    elif evt_type in _FILE_DELETE:
        cat, typ = ["file"], ["deletion"]
    elif evt_type in _FILE_CHANGE:
        cat, typ = ["file"], ["change"]
    elif evt_type in _FILE_ACCESS:
        cat, typ = ["file"], ["access"]
    elif evt_type in ("connect", "accept", "accept4"):
        cat, typ = ["network"], ["connection", "start"]
    elif evt_type in _NETWORK:
        cat, typ = ["network"], ["info"]
    else:
        cat, typ = ["intrusion_detection"], ["info"]
    if action == "deny":
        typ = [*typ, "denied"]
    return cat, typ


# -- ECS ---------------------------------------------------------------------------------------

ECS_SEVERITY = {0: 100, 1: 99, 2: 90, 3: 73, 4: 47, 5: 21, 6: 10, 7: 0}


def _ecs_process(alert: Alert) -> dict[str, Any]:
    return {
        "name": _f(alert, "proc.name"),
        "pid": _int(_f(alert, "proc.pid", "proc.vpid")),
        "executable": _f(alert, "proc.exepath", "proc.exe"),
        "command_line": _f(alert, "proc.cmdline"),
        "working_directory": _f(alert, "proc.cwd"),
        "parent": {
            "name": _f(alert, "proc.pname"),
            "pid": _int(_f(alert, "proc.ppid")),
            "command_line": _f(alert, "proc.pcmdline"),
            "executable": _f(alert, "proc.pexepath", "proc.pexe"),
        },
        "user": {"name": _f(alert, "user.name"), "id": _str(_f(alert, "user.uid"))},
    }


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _file_path(alert: Alert) -> str | None:
    return _str(_f(alert, "fs.path.name", "fd.name", "evt.arg.path", "evt.arg.name"))


def to_ecs(alert: Alert) -> dict[str, Any]:
    evt_type = _f(alert, "evt.type")
    category, types = _ecs_category_type(evt_type, alert.action)
    kind = classify(evt_type)
    severity = syslog_severity(alert.priority)
    doc: dict[str, Any] = {
        "@timestamp": format_time(alert.time_ns),
        "ecs": {"version": ECS_VERSION},
        "message": alert.output,
        "tags": alert.tags,
        "event": {
            "kind": "alert",
            "category": category,
            "type": types,
            "action": evt_type,
            "id": alert.id,
            "severity": ECS_SEVERITY[severity],
            "module": "sentinel",
            "dataset": "sentinel.alerts",
            "provider": alert.source,
            "outcome": "failure" if alert.action == "deny" else None,
        },
        "log": {"level": alert.priority.lower()},
        "rule": {"name": alert.rule, "ruleset": "sentinel"},
        "host": {"hostname": alert.hostname or None, "name": alert.hostname or None},
        "observer": {"vendor": PRODUCT, "product": PRODUCT, "type": "ids", "version": __version__},
        "process": _ecs_process(alert),
        "user": {"name": _f(alert, "user.name"), "id": _str(_f(alert, "user.uid"))},
        "container": {
            "id": _f(alert, "container.id"),
            "name": _f(alert, "container.name"),
            "image": {
                "name": _f(alert, "container.image.repository", "container.image"),
                "tag": [t] if (t := _f(alert, "container.image.tag")) is not None else None,
            },
        },
        "orchestrator": {
            "namespace": _f(alert, "k8s.ns.name"),
            "resource": {"name": _f(alert, "k8s.pod.name"), "type": "pod"}
            if _f(alert, "k8s.pod.name")
            else None,
        },
        "sentinel": {
            "action": alert.action,
            "priority": alert.priority,
            "source": alert.source,
            "output_fields": alert.output_fields,
        },
    }
    if kind == "file" or _f(alert, "fs.path.name") is not None:
        path = _file_path(alert)
        doc["file"] = {
            "path": path,
            "name": _f(alert, "fd.filename") or (path.rsplit("/", 1)[-1] if path else None),
            "directory": _f(alert, "fd.directory"),
        }
    if kind == "network" or _f(alert, "fd.sip", "fd.rip") is not None:
        doc["destination"] = {
            "ip": _f(alert, "fd.sip", "fd.rip"),
            "port": _int(_f(alert, "fd.sport", "fd.rport")),
        }
        doc["source"] = {"ip": _f(alert, "fd.cip"), "port": _int(_f(alert, "fd.cport"))}
        doc["network"] = {"transport": _f(alert, "fd.l4proto")}
    out_fields = doc["sentinel"]["output_fields"]
    pruned = _prune(doc)
    pruned.setdefault("sentinel", {})["output_fields"] = out_fields  # keep nulls: they say "absent"
    return pruned


# -- OCSF --------------------------------------------------------------------------------------

OCSF_SEVERITY = {0: (6, "Fatal"), 1: (5, "Critical"), 2: (5, "Critical"), 3: (4, "High"),
                 4: (3, "Medium"), 5: (2, "Low"), 6: (1, "Informational"),
                 7: (1, "Informational")}  # fmt: skip


def _ocsf_process(alert: Alert) -> dict[str, Any]:
    exe = _f(alert, "proc.exepath", "proc.exe")
    return {
        "name": _f(alert, "proc.name"),
        "pid": _int(_f(alert, "proc.pid", "proc.vpid")),
        "cmd_line": _f(alert, "proc.cmdline"),
        "file": {"path": exe, "name": exe.rsplit("/", 1)[-1] if isinstance(exe, str) else None},
        "user": {"name": _f(alert, "user.name"), "uid": _str(_f(alert, "user.uid"))},
        "parent_process": {
            "name": _f(alert, "proc.pname"),
            "pid": _int(_f(alert, "proc.ppid")),
            "cmd_line": _f(alert, "proc.pcmdline"),
        },
        "container": _ocsf_container(alert),
    }


def _ocsf_container(alert: Alert) -> dict[str, Any]:
    return {
        "uid": _f(alert, "container.id"),
        "name": _f(alert, "container.name"),
        "image": {
            "name": _f(alert, "container.image.repository", "container.image"),
            "tag": _f(alert, "container.image.tag"),
        },
    }


def _ocsf_file(alert: Alert) -> dict[str, Any]:
    path = _file_path(alert)
    return {
        "path": path,
        "name": _f(alert, "fd.filename") or (path.rsplit("/", 1)[-1] if path else None),
        "type_id": 1,
        "type": "Regular File",
    }


def _ocsf_endpoint(alert: Alert, ip: str, port: str) -> dict[str, Any]:
    return {"ip": _f(alert, ip), "port": _int(_f(alert, port))}


def _ocsf_common(alert: Alert, profiles: list[str]) -> dict[str, Any]:
    sev_id, sev = OCSF_SEVERITY[syslog_severity(alert.priority)]
    return {
        "time": alert.time_ns // 1_000_000,
        "severity_id": sev_id,
        "severity": sev,
        "message": alert.output,
        "metadata": {
            "version": OCSF_VERSION,
            "uid": alert.id,
            "product": {"name": PRODUCT, "vendor_name": PRODUCT, "version": __version__},
            "profiles": profiles,
            "labels": alert.tags,
            "log_name": alert.source,
        },
        "device": {"hostname": alert.hostname or None, "type_id": 0, "type": "Unknown"},
        "unmapped": {"output_fields": alert.output_fields, "priority": alert.priority},
    }


def to_ocsf(alert: Alert) -> dict[str, Any]:
    """Detection Finding (class 2004): the class SIEMs expect for a rule match."""
    evt_type = _f(alert, "evt.type")
    kind = classify(evt_type)
    evidence: dict[str, Any] = {
        "process": _ocsf_process(alert),
        "container": _ocsf_container(alert),
    }
    if kind == "file":
        evidence["file"] = _ocsf_file(alert)
    if kind == "network":
        evidence["dst_endpoint"] = _ocsf_endpoint(alert, "fd.sip", "fd.sport")
        evidence["src_endpoint"] = _ocsf_endpoint(alert, "fd.cip", "fd.cport")
    doc = {
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": 1,
        "activity_name": "Create",
        "type_uid": 200401,
        "type_name": "Detection Finding: Create",
        "status_id": 1,
        "status": "New",
        **_ocsf_common(alert, ["security_control"] if alert.action != "alert" else []),
        "finding_info": {
            "uid": alert.id,
            "title": alert.rule,
            "desc": alert.output,
            "types": alert.tags,
            "created_time": alert.time_ns // 1_000_000,
            "analytic": {"name": alert.rule, "type_id": 1, "type": "Rule"},
        },
        "evidences": [_prune(evidence)],
    }
    if alert.action != "alert":
        doc.update(_security_control(alert))
    return _keep_unmapped(doc)


def _security_control(alert: Alert) -> dict[str, Any]:
    """OCSF security_control profile: what the control did (enforced deny or detection)."""
    if alert.action == "deny":
        return {"action_id": 2, "action": "Denied", "disposition_id": 2, "disposition": "Blocked"}
    return {"action_id": 1, "action": "Allowed", "disposition_id": 15, "disposition": "Detected"}


def _keep_unmapped(doc: dict[str, Any]) -> dict[str, Any]:
    unmapped = doc["unmapped"]
    pruned = _prune(doc)
    pruned["unmapped"] = unmapped
    return pruned


def to_ocsf_activity(alert: Alert) -> dict[str, Any]:
    """The System/Network activity class of the event itself, with the security_control
    profile (``action``/``disposition``) saying that Sentinel flagged or blocked it.

    Events with no matching activity class fall back to a Detection Finding.
    """
    evt_type = _f(alert, "evt.type")
    kind = classify(evt_type)
    if kind == "process":
        cls, name, cat, cat_name = 1007, "Process Activity", 1, "System Activity"
        act_id, act = (1, "Launch") if evt_type in ("execve", "execveat") else (99, "Other")
        if evt_type == "kill":
            act_id, act = 2, "Terminate"
        elif evt_type == "ptrace":
            act_id, act = 3, "Open"
        body: dict[str, Any] = {
            "process": _ocsf_process(alert),
            "actor": {
                "process": {
                    "name": _f(alert, "proc.pname"),
                    "pid": _int(_f(alert, "proc.ppid")),
                    "cmd_line": _f(alert, "proc.pcmdline"),
                }
            },
        }
    elif kind == "file":
        cls, name, cat, cat_name = 1001, "File System Activity", 1, "System Activity"
        if evt_type in _FILE_CREATE:
            act_id, act = 1, "Create"
        elif evt_type in _FILE_DELETE:
            act_id, act = 4, "Delete"
        elif evt_type in ("rename", "renameat", "renameat2"):
            act_id, act = 5, "Rename"
        elif evt_type in _FILE_CHANGE:
            act_id, act = 6, "Set Attributes"
        else:
            act_id, act = 14, "Open"
        body = {"file": _ocsf_file(alert), "actor": {"process": _ocsf_process(alert)}}
    elif kind == "network":
        cls, name, cat, cat_name = 4001, "Network Activity", 4, "Network Activity"
        act_id, act = (1, "Open") if evt_type in ("connect", "accept", "accept4") else (99, "Other")
        body = {
            "dst_endpoint": _ocsf_endpoint(alert, "fd.sip", "fd.sport"),
            "src_endpoint": _ocsf_endpoint(alert, "fd.cip", "fd.cport"),
            "connection_info": {"protocol_name": _f(alert, "fd.l4proto")},
            "actor": {"process": _ocsf_process(alert)},
        }
    else:
        return to_ocsf(alert)
    doc = {
        "class_uid": cls,
        "class_name": name,
        "category_uid": cat,
        "category_name": cat_name,
        "activity_id": act_id,
        "activity_name": act,
        "type_uid": cls * 100 + act_id,
        "type_name": f"{name}: {act}",
        **_ocsf_common(alert, ["security_control", "container"]),
        **body,
        "container": _ocsf_container(alert),
        "is_alert": True,
        "status_id": 1,
        "status": "Success",
        **_security_control(alert),
        "firewall_rule": {"name": alert.rule, "uid": alert.rule, "desc": alert.output},
    }
    return _keep_unmapped(doc)


# -- CEF ---------------------------------------------------------------------------------------

CEF_SEVERITY = {0: 10, 1: 9, 2: 8, 3: 7, 4: 5, 5: 4, 6: 3, 7: 0}


def cef_header_escape(value: str) -> str:
    """CEF header fields: backslash and pipe escaped; a line break would end the record."""
    value = value.replace("\\", "\\\\").replace("|", "\\|")
    return value.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def cef_ext_escape(value: str) -> str:
    """CEF extension values: backslash, equals and line breaks escaped (pipes are literal)."""
    return (
        value.replace("\\", "\\\\")
        .replace("=", "\\=")
        .replace("\r\n", "\\n")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )


def to_cef(alert: Alert) -> str:
    sev = CEF_SEVERITY[syslog_severity(alert.priority)]
    evt_type = _f(alert, "evt.type")
    ext: list[tuple[str, Any]] = [
        ("rt", alert.time_ns // 1_000_000),
        ("msg", alert.output),
        ("externalId", alert.id),
        ("act", alert.action),
        ("cat", alert.source),
        ("dvchost", alert.hostname or None),
        ("sproc", _f(alert, "proc.name")),
        ("spid", _int(_f(alert, "proc.pid"))),
        ("suser", _f(alert, "user.name")),
        ("suid", _f(alert, "user.uid")),
        ("filePath", _file_path(alert) if classify(evt_type) == "file" else None),
        ("dst", _f(alert, "fd.sip")),
        ("dpt", _int(_f(alert, "fd.sport"))),
        ("src", _f(alert, "fd.cip")),
        ("spt", _int(_f(alert, "fd.cport"))),
    ]
    custom = [
        ("tags", ",".join(alert.tags)),
        ("containerId", _f(alert, "container.id")),
        ("cmdline", _f(alert, "proc.cmdline")),
        ("evtType", evt_type),
        ("priority", alert.priority),
        ("outputFields", _dumps(alert.output_fields)),
    ]
    for i, (label, value) in enumerate(custom, start=1):
        if value not in (None, ""):  # a label without its value would mislead the parser
            ext += [(f"cs{i}Label", label), (f"cs{i}", value)]
    extension = " ".join(f"{k}={cef_ext_escape(str(v))}" for k, v in ext if v not in (None, ""))
    header = "|".join(
        cef_header_escape(x)
        for x in ("CEF:0", PRODUCT, PRODUCT, __version__, alert.rule, alert.rule, str(sev))
    )
    return f"{header}|{extension}"


# -- dispatch ----------------------------------------------------------------------------------

OcsfClass = Literal["detection_finding", "activity"]


def document(alert: Alert, fmt: str, ocsf_class: OcsfClass = "detection_finding") -> Any:
    """The alert as a JSON-serialisable value (an object, or the CEF string)."""
    if fmt == "json":
        return alert.to_dict()
    if fmt == "ecs":
        return to_ecs(alert)
    if fmt == "ocsf":
        return to_ocsf_activity(alert) if ocsf_class == "activity" else to_ocsf(alert)
    if fmt == "cef":
        return to_cef(alert)
    raise ValueError(f"unknown format {fmt!r}")


def render(alert: Alert, fmt: str, ocsf_class: OcsfClass = "detection_finding") -> str:
    """The alert as one line of text (JSON has no raw newlines; CEF escapes them)."""
    if fmt == "json":
        return alert.to_json()
    doc = document(alert, fmt, ocsf_class)
    return doc if isinstance(doc, str) else _dumps(doc)


Renderer = Callable[[Alert], str]
