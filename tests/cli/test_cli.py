"""The rules-language commands, run as a user would: ``sentinel validate|replay|fields``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sentinel.fields import FIELDS
from tests.helpers import CORPUS, write_rules

FALCO_FILES = ["falco_rules.yaml", "falco-incubating_rules.yaml", "falco-sandbox_rules.yaml"]
EXPECTED = {  # rules / macros / lists per file, from ../shared/corpus/falco/SOURCE.md
    "falco_rules.yaml": (25, 87, 49),
    "falco-incubating_rules.yaml": (31, 82, 54),
    "falco-sandbox_rules.yaml": (37, 183, 60),
}


def sentinel(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sentinel", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("name", FALCO_FILES)
def test_validate_loads_each_upstream_falco_file_with_zero_errors(name: str):
    res = sentinel("validate", "--json", str(CORPUS / name))
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads(res.stdout)
    assert summary["errors"] == []
    rules, macros, lists = EXPECTED[name]
    assert (summary["rules"], summary["macros"], summary["lists"]) == (rules, macros, lists)
    assert summary["rules_compiled"] == rules  # every rule parsed and compiled


def test_validate_all_three_together():
    res = sentinel("validate", *(str(CORPUS / n) for n in FALCO_FILES))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("OK: 93 rules")


def test_validate_reports_errors_with_position_and_exit_1(tmp_path: Path):
    path = write_rules(
        tmp_path,
        """
        - rule: Bad
          desc: d
          condition: proc.name = x and
          output: o
          priority: INFO
        """,
    )
    res = sentinel("validate", str(path))
    assert res.returncode == 1
    assert f"{path}:3:" in res.stderr and "rule 'Bad'" in res.stderr
    assert "^" in res.stderr
    assert res.stdout.startswith("FAILED")


def test_every_field_of_the_stable_rules_is_registered():
    import re

    import yaml

    used: set[str] = set()
    for item in yaml.safe_load((CORPUS / "falco_rules.yaml").read_text()):
        for key in ("condition", "output"):
            for m in re.finditer(r"\b([a-z0-9_]+(?:\.[a-z0-9_]+)+)", str(item.get(key, ""))):
                if m.group(1).split(".")[0] in (
                    "evt",
                    "proc",
                    "fd",
                    "user",
                    "group",
                    "container",
                    "k8s",
                    "thread",
                ):
                    used.add(m.group(1))
    missing = sorted(f for f in used if f not in FIELDS)
    assert not missing
    res = sentinel("fields", "--json")
    listed = {row["name"] for row in json.loads(res.stdout)}
    assert used <= listed


EVENTS = [
    {
        "evt.type": "execve",
        "proc.name": "sh",
        "proc.pname": "runc",
        "proc.tty": 34816,
        "container.id": "3f2a12345678",
        "proc.aname": ["runc", "containerd-shim", "systemd"],
        "user.name": "root",
        "proc.cmdline": "sh",
        "proc.exepath": "/bin/sh",
    },
    {"evt.type": "execve", "proc.name": "ls", "proc.pname": "bash", "container.id": "host"},
]


def test_replay_gives_falco_alert_for_terminal_shell_in_container(tmp_path: Path):
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(e) for e in EVENTS) + "\n")
    res = sentinel("replay", "--rules", str(CORPUS / "falco_rules.yaml"), str(events))
    assert res.returncode == 0, res.stderr
    alerts = [json.loads(line) for line in res.stdout.splitlines()]
    assert [a["rule"] for a in alerts] == ["Terminal shell in container"]
    assert alerts[0]["output_fields"]["proc.pname"] == "runc"
    assert alerts[0]["priority"] == "Notice"


def test_replay_reports_bad_lines_by_number_and_strict_stops(tmp_path: Path):
    rules = write_rules(
        tmp_path,
        """
        - rule: Any exec
          desc: d
          condition: evt.type = execve
          output: "exec %proc.name"
          priority: INFO
        """,
    )
    lines = [
        json.dumps(EVENTS[1]),
        "{not json",
        '{"evt.type": "execve", "fd.num": "x"}',
        "[1, 2]",
        json.dumps(EVENTS[1]),
    ]
    res = sentinel("replay", "--rules", str(rules), "-", stdin="\n".join(lines) + "\n")
    assert res.returncode == 0
    assert len(res.stdout.splitlines()) == 2
    for n in (2, 3, 4):
        assert f"<stdin>:{n}: bad event" in res.stderr
    assert "needs a number" in res.stderr and "must be a JSON object" in res.stderr
    strict = sentinel("replay", "--strict", "--rules", str(rules), "-", stdin="\n".join(lines))
    assert strict.returncode == 1 and len(strict.stdout.splitlines()) == 1


def test_replay_matching_all_and_rules_error_exit(tmp_path: Path):
    rules = write_rules(
        tmp_path,
        """
        - rule: A
          desc: d
          condition: evt.type = execve
          output: a
          priority: INFO
        - rule: B
          desc: d
          condition: proc.name = ls
          output: b
          priority: INFO
        """,
    )
    line = json.dumps(EVENTS[1])
    res = sentinel("replay", "--matching", "all", "--rules", str(rules), "-", stdin=line)
    assert [json.loads(x)["rule"] for x in res.stdout.splitlines()] == ["A", "B"]
    bad = write_rules(tmp_path, "- rule: X\n  condition: (\n", "bad.yaml")
    res = sentinel("replay", "--rules", str(bad), "-", stdin=line)
    assert res.returncode == 1 and "bad.yaml" in res.stderr


def test_fields_text_listing():
    res = sentinel("fields")
    assert res.returncode == 0
    assert any(line.startswith("proc.aname[N]") for line in res.stdout.splitlines())


def test_replay_output_setup_errors_are_one_clear_line(tmp_path: Path):
    rules = write_rules(
        tmp_path,
        """
        - rule: A
          desc: d
          condition: evt.type = execve
          output: a
          priority: INFO
        """,
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "outputs:\n  - type: syslog\n    transport: tls\n    host: 127.0.0.1\n    port: 6514\n"
        f"    tls:\n      ca_file: {tmp_path}/missing-ca.pem\n"
        f"spool:\n  dir: {tmp_path}/spool\n"
    )
    res = sentinel("replay", "--config", str(cfg), "--rules", str(rules), "-", stdin="")
    assert res.returncode == 2
    assert "cannot start outputs" in res.stderr and "missing-ca.pem" in res.stderr
    assert "Traceback" not in res.stderr


def test_run_without_a_config_file_still_reads_environment_overrides():
    """``SENTINEL_*`` variables override the defaults even with no ``--config`` (they used to
    be ignored then): a bad value is reported, naming the variable, before anything loads."""
    import os

    res = subprocess.run(
        [sys.executable, "-m", "sentinel", "run", "--duration", "1"],
        env={**os.environ, "SENTINEL_MATCHING": "bogus"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert "SENTINEL_MATCHING" in res.stderr and "matching" in res.stderr
    assert res.stdout == ""


def test_validate_warns_about_every_field_no_event_type_fills(tmp_path: Path):
    """A check on a field the live sensor never fills is always false: say so, per field,
    and only for those (the derived set, not a hand-kept list)."""
    from sentinel.enrichment.event import filled_fields

    path = write_rules(
        tmp_path,
        """
        - rule: Env
          desc: d
          condition: >
            evt.type = execve and proc.exe_ino.ctime_duration_pidns_start > 0
            and proc.env contains SECRET and fd.ip = 10.0.0.1
          output: o
          priority: INFO
        - rule: Net
          desc: d
          condition: evt.type = connect and fd.net = 10.0.0.0/8 and fd.port = 22
          output: o
          priority: INFO
        """,
    )
    res = sentinel("validate", "--json", str(path))
    assert res.returncode == 0, res.stderr
    warned = {
        w["message"].split("'")[1]
        for w in json.loads(res.stdout)["warnings"]
        if w["code"] == "unsupported-field"
    }
    unfilled = "proc.exe_ino.ctime_duration_pidns_start"
    assert unfilled not in filled_fields() and "fd.ip" in filled_fields()
    assert "proc.env" in filled_fields()
    assert warned == {unfilled}


def test_explain_names_where_each_traced_types_values_come_from(tmp_path: Path):
    """Only the event types a rule can match are listed, each with the source of its values
    (the kernel's own objects for an open, the caller's memory for what it passed)."""
    rules = write_rules(
        tmp_path,
        """
        - rule: shadow
          desc: d
          condition: evt.type = openat and fd.name = /etc/shadow
          output: o
          priority: WARNING
        """,
    )
    res = sentinel("explain", "--json", str(rules))
    assert res.returncode == 0, res.stdout + res.stderr
    fams = json.loads(res.stdout)["event_types"]
    assert set(fams) == {"openat"}
    assert "kernel" in fams["openat"]["values_from"]
    text = sentinel("explain", str(rules)).stdout
    assert "values from:" in text and "execve" not in text
