"""Deny rules compile exactly into a BPF LSM policy, or fail naming the rule and the check."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sentinel.compiler import compile_rules
from sentinel.enforcement.deny import DenyCompileError, compile_deny
from sentinel.loader import load_rules

MACROS = """
- macro: open_write
  condition: evt.type in (open, openat, openat2) and evt.is_open_write = true
- list: protected
  items: [/srv/protected, /etc/sentinel]
"""


def spec_for(tmp_path: Path, *conds: str):  # type: ignore[no-untyped-def]
    rules = yaml.safe_load(MACROS) + [
        {
            "rule": f"D{i}",
            "desc": "d",
            "condition": c,
            "output": "o",
            "priority": "CRITICAL",
            "action": "deny",
        }
        for i, c in enumerate(conds)
    ]
    p = tmp_path / "deny.yaml"
    p.write_text(yaml.safe_dump(rules))
    compiled = compile_rules(load_rules([p]))
    return compile_deny([(r.name, r.expr) for r in compiled.rules if r.action == "deny"])


def test_file_exec_and_connect_shapes(tmp_path: Path) -> None:
    spec = spec_for(
        tmp_path,
        "open_write and fd.name pmatch (protected)",
        "open_write and (fd.name = /etc/shadow or fd.name startswith /opt/keys/)",
        "evt.type = execve and evt.dir = < and proc.exepath in (/usr/bin/nc, /bin/nc)",
        "evt.type in (execve, execveat) and proc.exepath pmatch (/opt/bad)",
        "evt.type = connect and fd.snet in (10.0.0.0/8, 127.0.0.2) and fd.sport in (22, 4444)",
        "evt.type = connect and fd.rport = 6667",
    )
    assert spec.protect == {
        "/srv/protected": "D0",
        "/etc/sentinel": "D0",
        "/etc/shadow": "D1",
        "/opt/keys": "D1",
    }
    assert spec.exec_exact == {"/usr/bin/nc": "D2", "/bin/nc": "D2"}
    assert spec.exec_prefix == {"/opt/bad": "D3"}
    assert ("D4", "10.0.0.0/8", (22, 4444)) in spec.connect
    assert ("D4", "127.0.0.2/32", (22, 4444)) in spec.connect
    assert ("D5", None, (6667,)) in spec.connect
    policy = spec.to_policy()
    assert policy.rules() == ["D0", "D1", "D2", "D3", "D4", "D5"]
    assert (policy.exec_memfd, policy.exec_upper) == (None, None)


def test_drift_and_fileless_exec_shapes(tmp_path: Path) -> None:
    """What Sysdig and KubeArmor sell as drift control: decided at exec, in the kernel."""
    spec = spec_for(
        tmp_path,
        "evt.type in (execve, execveat) and proc.is_exe_upper_layer = true",
        "evt.type = execve and evt.dir = < and proc.is_exe_from_memfd=True",
        "evt.type in (execve, execveat) and (proc.is_exe_from_memfd = true"
        " or proc.exepath = /usr/bin/nc)",
    )
    policy = spec.to_policy()
    assert (policy.exec_upper, policy.exec_memfd) == ("D0", "D1")  # the first rule names it
    assert policy.exec_exact == {"/usr/bin/nc": "D2"}
    assert policy.rules() == ["D2", "D1", "D0"]


@pytest.mark.parametrize(
    ("cond", "message"),
    [
        ("open_write and fd.name startswith /etc and not proc.name = dpkg", "negation"),
        ("open_write and fd.name startswith /etc/ and proc.name = vi", "proc.name = vi"),
        ("open_write and fd.name startswith /srv/protected", "pmatch"),
        ("evt.type = openat and fd.name = /etc/shadow", "evt.is_open_write = true"),
        ("evt.type = execve and proc.name = nc", "use proc.exepath"),
        ("fd.name = /etc/shadow", "event types the LSM hooks do not see"),
        ("evt.type = connect and fd.sip = banana", "invalid value"),
        ("evt.type = ptrace", "event types the LSM hooks do not see"),
        ("open_write and fd.name contains secret", "not a check the LSM file hooks decide"),
        ("evt.type = execve and proc.is_exe_from_memfd = false", "only as `proc.is_exe_"),
        (
            "evt.type = execve and proc.is_exe_upper_layer = true and proc.exepath = /bin/sh",
            "alone in its term",
        ),
    ],
)
def test_undecidable_deny_rules_fail_naming_rule_and_check(
    tmp_path: Path, cond: str, message: str
) -> None:
    with pytest.raises((DenyCompileError, Exception), match=message) as info:
        spec_for(tmp_path, cond)
    if isinstance(info.value, DenyCompileError):
        assert "rule 'D0'" in str(info.value)
