"""What each operator, transformer and field kind means, evaluated by the compiled engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import cond_engine, engine_for, ev, matches

CASES = [
    # (condition, event fields, expected)
    ("proc.name = bash", {"proc.name": "bash"}, True),
    ("proc.name == bash", {"proc.name": "bash"}, True),
    ("proc.name = bash", {"proc.name": "sh"}, False),
    ("proc.name != bash", {"proc.name": "sh"}, True),
    ("proc.name != bash", {"proc.name": "bash"}, False),
    ("fd.num < 3", {"fd.num": 2}, True),
    ("fd.num < 3", {"fd.num": 3}, False),
    ("fd.num <= 3", {"fd.num": 3}, True),
    ("fd.num > 3", {"fd.num": 4}, True),
    ("fd.num >= 3", {"fd.num": 2}, False),
    ("fd.num >= -1", {"fd.num": -1}, True),
    ("evt.rawres > 0x10", {"evt.rawres": 17}, True),
    ("evt.rawres > 0x10", {"evt.rawres": 16}, False),
    ("proc.cmdline contains -jar", {"proc.cmdline": "java -jar x.jar"}, True),
    ("proc.cmdline contains -JAR", {"proc.cmdline": "java -jar x.jar"}, False),
    ("proc.cmdline icontains -JAR", {"proc.cmdline": "java -jar x.jar"}, True),
    ("evt.buffer bcontains 4a4b", {"evt.buffer": "xxJKyy"}, True),
    ("evt.buffer bcontains 4a4c", {"evt.buffer": "xxJKyy"}, False),
    ("evt.buffer bstartswith 7878", {"evt.buffer": "xxJK"}, True),
    ("evt.buffer bstartswith 4a", {"evt.buffer": "xxJK"}, False),
    ("fd.name startswith /etc/", {"fd.name": "/etc/passwd"}, True),
    ("fd.name startswith /etc/", {"fd.name": "/tmp/etc/passwd"}, False),
    ("fd.name endswith .log", {"fd.name": "/var/a.log"}, True),
    ("fd.name endswith .log", {"fd.name": "/var/a.logx"}, False),
    # glob is fnmatch without FNM_PATHNAME: * crosses '/'
    ("fd.name glob /var/*.log", {"fd.name": "/var/a/b/c.log"}, True),
    ("fd.name glob /var/?.log", {"fd.name": "/var/a.log"}, True),
    ("fd.name glob /var/?.log", {"fd.name": "/var/ab.log"}, False),
    ("fd.name glob '/var/[!a]*'", {"fd.name": "/var/b"}, True),
    ("fd.name glob '/var/[!a]*'", {"fd.name": "/var/a"}, False),
    ("fd.name glob /VAR/*", {"fd.name": "/var/x"}, False),
    ("fd.name iglob /VAR/*", {"fd.name": "/var/x"}, True),
    # regex matches the whole string
    ("proc.name regex 'ba.h'", {"proc.name": "bash"}, True),
    ("proc.name regex 'ba'", {"proc.name": "bash"}, False),
    ("proc.name regex 'b[a-z]+'", {"proc.name": "bash"}, True),
    ("proc.name in (bash, zsh)", {"proc.name": "zsh"}, True),
    ("proc.name in (bash, zsh)", {"proc.name": "sh"}, False),
    ("proc.name in ()", {"proc.name": "sh"}, False),
    ("proc.name intersects (bash, zsh)", {"proc.name": "bash"}, True),
    ("fd.name pmatch (/etc, /usr/bin)", {"fd.name": "/etc/passwd"}, True),
    ("fd.name pmatch (/etc, /usr/bin)", {"fd.name": "/etc"}, True),
    ("fd.name pmatch (/etc, /usr/bin)", {"fd.name": "/etcx/passwd"}, False),
    ("fd.name pmatch (/etc, /usr/bin)", {"fd.name": "/usr/bin/ls"}, True),
    ("proc.name exists", {"proc.name": "x"}, True),
    ("proc.name exists", {}, False),
    # modifiers
    ("proc.name startswith oneof (ba, zs)", {"proc.name": "zsh"}, True),
    ("proc.name startswith oneof (ba, zs)", {"proc.name": "sh"}, False),
    ("proc.name startswith anyof (ba, zs)", {"proc.name": "bash"}, True),
    ("proc.cmdline contains allof (a, b)", {"proc.cmdline": "xaxb"}, True),
    ("proc.cmdline contains allof (a, b)", {"proc.cmdline": "xax"}, False),
    ("proc.cmdline endswith oneof ('.sh', '.py')", {"proc.cmdline": "run.py"}, True),
    # typed fields
    ("evt.is_open_write = true", {"evt.is_open_write": True}, True),
    ("evt.is_open_write = true", {"evt.is_open_write": False}, False),
    ("evt.is_open_write=false", {"evt.is_open_write": False}, True),
    ("fd.typechar = 'f'", {"fd.typechar": "f"}, True),
    ("evt.arg.flags contains O_TRUNC", {"evt.arg.flags": "O_WRONLY|O_TRUNC"}, True),
    ("evt.arg.flags contains O_TRUNC", {"evt.arg.flags": "O_WRONLY|O_TRUNCX"}, False),
    ("fd.sip = 10.0.0.1", {"fd.sip": "10.0.0.1"}, True),
    ("fd.sip = 10.0.0.1", {"fd.sip": "10.0.0.2"}, False),
    ("fd.sip in (10.0.0.1, '::1')", {"fd.sip": "::1"}, True),
    ("fd.snet in (10.0.0.0/8, 192.168.0.0/16)", {"fd.snet": "10.1.2.3"}, True),
    ("fd.snet in (10.0.0.0/8, 192.168.0.0/16)", {"fd.snet": "11.1.2.3"}, False),
    ("fd.snet = '2001:db8::/32'", {"fd.snet": "2001:db8::1"}, True),
    ("fd.sport in (22, 2222)", {"fd.sport": 2222}, True),
    ("fd.sport in (22, 2222)", {"fd.sport": 80}, False),
    # transformers, nested, either side
    ("tolower(proc.name) = bash", {"proc.name": "BaSh"}, True),
    ("toupper(proc.name) = BASH", {"proc.name": "bash"}, True),
    ("toupper(tolower(proc.name)) = BASH", {"proc.name": "BaSh"}, True),
    ("basename(proc.exepath) = ls", {"proc.exepath": "/usr/bin/ls"}, True),
    ("b64(proc.cmdline) = hello", {"proc.cmdline": "aGVsbG8="}, True),
    ("len(proc.cmdline) > 3", {"proc.cmdline": "abcd"}, True),
    ("len(proc.cmdline) > 3", {"proc.cmdline": "abc"}, False),
    ("len(proc.aname) = 2", {"proc.aname": ["a", "b"]}, True),
    ('join(",", proc.aname) = "a,b"', {"proc.aname": ["a", "b"]}, True),
    ('concat(proc.name, "-", proc.pname) = a-b', {"proc.name": "a", "proc.pname": "b"}, True),
    ("proc.name = tolower(proc.pname)", {"proc.name": "x", "proc.pname": "X"}, True),
    # val(): field-to-field comparison
    ("proc.name = val(proc.pname)", {"proc.name": "x", "proc.pname": "x"}, True),
    ("proc.name = val(proc.pname)", {"proc.name": "x", "proc.pname": "y"}, False),
    ("proc.name = val(proc.pname)", {"proc.name": "x"}, False),
    ("proc.pid > val(proc.ppid)", {"proc.pid": 5, "proc.ppid": 1}, True),
    ("fd.name startswith val(proc.cwd)", {"fd.name": "/h/a", "proc.cwd": "/h/"}, True),
    # ancestors: without index any ancestor; [0] self, [1] parent, [N] N-th
    ("proc.aname = systemd", {"proc.aname": ["bash", "sshd", "systemd"]}, True),
    ("proc.aname = nginx", {"proc.aname": ["bash", "sshd", "systemd"]}, False),
    ("proc.aname in (sshd, x)", {"proc.aname": ["bash", "sshd"]}, True),
    ("proc.aname startswith ssh", {"proc.aname": ["bash", "sshd"]}, True),
    ("proc.aname[1] = bash", {"proc.aname": ["bash", "sshd"]}, True),
    ("proc.aname[2] = sshd", {"proc.aname": ["bash", "sshd"]}, True),
    ("proc.aname[3] = sshd", {"proc.aname": ["bash", "sshd"]}, False),
    ("proc.aname[0] = me", {"proc.name": "me", "proc.aname": ["bash"]}, True),
    ("proc.aname[2] = given", {"proc.aname[2]": "given"}, True),
    ("evt.arg[flags] contains O_RDWR", {"evt.arg.flags": "O_RDWR"}, True),
]


@pytest.mark.parametrize(("condition", "fields", "expected"), CASES)
def test_operator(tmp_path: Path, condition: str, fields: dict[str, object], expected: bool):
    engine = cond_engine(tmp_path, condition)
    assert matches(engine, **fields) is expected


@pytest.mark.parametrize(
    "condition",
    [
        "proc.name = bash",
        "proc.name != bash",
        "fd.num < 3",
        "proc.name contains a",
        "proc.name in (a, b)",
        "fd.name pmatch (/etc)",
        "fd.name glob '*'",
        "proc.name regex '.*'",
        "tolower(proc.name) = a",
        "proc.aname = a",
        "fd.snet in (10.0.0.0/8)",
        "proc.name = val(proc.pname)",
        "evt.is_open_write = true",
    ],
)
def test_check_on_missing_field_is_false_and_its_negation_true(tmp_path: Path, condition: str):
    assert matches(cond_engine(tmp_path, condition)) is False
    assert matches(cond_engine(tmp_path, f"not ({condition})")) is True


def test_precedence_not_binds_tighter_than_and_than_or(tmp_path: Path):
    e = cond_engine(tmp_path, "proc.name = a or proc.name = b and not proc.pname = c")
    assert matches(e, proc__name="a", proc__pname="c")  # a or (b and not c)
    assert not matches(e, proc__name="b", proc__pname="c")
    assert matches(e, proc__name="b", proc__pname="d")
    e2 = cond_engine(tmp_path, "(proc.name = a or proc.name = b) and not proc.pname = c")
    assert not matches(e2, proc__name="a", proc__pname="c")


def test_not_not_and_not_paren(tmp_path: Path):
    assert matches(cond_engine(tmp_path, "not not proc.name = a"), proc__name="a")
    assert matches(cond_engine(tmp_path, "not(proc.name = a)"), proc__name="b")


def test_evt_type_checks_are_folded_and_indexed(tmp_path: Path):
    e = engine_for(
        tmp_path,
        """
        - rule: Exec
          desc: d
          condition: evt.type in (execve, execveat) and proc.name = sh
          output: x
          priority: INFO
        - rule: Open
          desc: d
          condition: evt.type = openat and fd.name = /x
          output: x
          priority: INFO
        - rule: NotExec
          desc: d
          condition: not evt.type = execve and proc.name = sh
          output: x
          priority: INFO
        """,
        matching="all",
    )
    assert [r.name for r in e.candidates("execve")] == ["Exec"]
    assert [r.name for r in e.candidates("openat")] == ["Open", "NotExec"]
    assert [r.name for r in e.candidates("made_up_type")] == ["NotExec"]
    assert [r.name for r in e.match(ev(evt__type="execve", proc__name="sh"))] == ["Exec"]
    got = e.match(ev(evt__type="made_up_type", proc__name="sh"))
    assert [r.name for r in got] == ["NotExec"]
    assert "execve" in e.event_types() and "openat" in e.event_types()
    src = e._matchers["execve"].__sentinel_source__  # type: ignore[attr-defined]
    assert "evt.type" not in src  # the type test was folded into the index


RULES_AB = """
- rule: A
  desc: d
  condition: proc.name = x
  output: "A %proc.name %proc.pname %proc.aname[2] %fd.name"
  priority: info
  tags: [zeta, alpha]
- rule: B
  desc: d
  condition: proc.name startswith x
  output: "B"
  priority: CRITICAL
"""


def test_matching_first_and_all(tmp_path: Path):
    first = engine_for(tmp_path, RULES_AB)
    assert [a.rule for a in first.process(ev(evt__type="execve", proc__name="x"))] == ["A"]
    every = engine_for(tmp_path, RULES_AB, matching="all")
    names = [a.rule for a in every.process(ev(evt__type="execve", proc__name="x"))]
    assert names == ["A", "B"]


def test_alert_format(tmp_path: Path):
    import json

    e = engine_for(tmp_path, RULES_AB)
    event = ev(
        evt__type="execve",
        evt__time=1_700_000_000_123_456_789,
        proc__name="x",
        proc__aname=["p", "gp"],
    )
    [alert] = e.process(event)
    d = json.loads(alert.to_json())
    assert d["time"] == "2023-11-14T22:13:20.123456789Z"
    assert d["rule"] == "A"
    assert d["priority"] == "Informational"
    assert d["tags"] == ["alpha", "zeta"]
    assert d["source"] == "syscall"
    assert d["action"] == "alert"
    # Falco's append_output (container plugin): container fields follow every syscall alert
    assert d["output"] == (
        "A x <NA> gp <NA> container_id=<NA> container_name=<NA> container_image=<NA>"
    )
    assert d["output_fields"] == {
        "proc.name": "x",
        "proc.pname": None,
        "proc.aname[2]": "gp",
        "fd.name": None,
        "container.id": None,
        "container.name": None,
        "container.image": None,
    }
    assert d["hostname"]
    [again] = e.process(event)
    assert again.id != alert.id  # unique per alert, for SIEM de-duplication


def test_append_output_skips_fields_the_rule_names_and_can_be_off(tmp_path: Path):
    from sentinel.compiler import compile_rules
    from sentinel.engine import Engine
    from sentinel.loader import load_ruleset
    from tests.helpers import write_rules

    text = RULES_AB.replace('"A %proc.name', '"A %container.id %proc.name')
    rs = load_ruleset([write_rules(tmp_path, text)])
    compiled = compile_rules(rs)
    event = ev(evt__type="execve", proc__name="x", container__id="abc", container__name="web")
    [a] = Engine(compiled).process(event)
    assert a.output.startswith("A abc x") and a.output.endswith(
        "container_name=web container_image=<NA>"
    )
    assert "container_id=" not in a.output
    [b] = Engine(compiled, append_output=()).process(event)
    assert "container_name" not in b.output and "container.name" not in b.output_fields


def test_minimum_priority_filters_rules(tmp_path: Path):
    from sentinel.compiler import compile_rules
    from sentinel.engine import Engine
    from sentinel.loader import load_ruleset
    from tests.helpers import write_rules

    rs = load_ruleset([write_rules(tmp_path, RULES_AB)])
    e = Engine(compile_rules(rs), min_priority="warning".capitalize())
    assert [a.rule for a in e.process(ev(evt__type="execve", proc__name="x"))] == ["B"]


def test_wrong_value_type_in_event_silences_only_that_check(tmp_path: Path):
    e = engine_for(
        tmp_path,
        """
        - rule: Num
          desc: d
          condition: fd.num > 3
          output: x
          priority: INFO
          warn_evttypes: false
        - rule: Name
          desc: d
          condition: proc.name = x
          output: x
          priority: INFO
          warn_evttypes: false
        """,
    )
    # bypass normalisation to feed a raw string where an int belongs
    hits = e.match({"evt.type": "openat", "fd.num": "oops", "proc.name": "x"})
    assert [r.name for r in hits] == ["Name"]
    assert e.type_errors == 1
