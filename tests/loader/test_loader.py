"""Rules files: items, lists, macros, exceptions, append/override, and where errors point."""

from __future__ import annotations

from pathlib import Path

import pytest

from sentinel.compiler import compile_rules
from sentinel.engine import Engine
from sentinel.loader import RulesError, load_rules, load_ruleset
from tests.helpers import engine_for, ev, matches, write_rules

BASE = """
- list: shells
  items: [bash, sh]
- list: more_shells
  items: [shells, zsh, '"(quoted)"']
- macro: spawned
  condition: evt.type = execve
- macro: shell
  condition: proc.name in (more_shells)
- rule: Shell
  desc: a shell
  condition: spawned and shell
  output: "shell %proc.name"
  priority: Warning
"""


def problems(tmp_path: Path, text: str) -> list[str]:
    rs = load_ruleset([write_rules(tmp_path, text)])
    compile_rules(rs, strict=False)
    return [p.format() for p in rs.diagnostics.errors]


def test_lists_macros_and_list_in_list(tmp_path: Path):
    e = engine_for(tmp_path, BASE)
    for name in ("bash", "sh", "zsh", "(quoted)"):
        assert matches(e, evt__type="execve", proc__name=name), name
    assert not matches(e, evt__type="execve", proc__name="fish")
    assert not matches(e, evt__type="openat", proc__name="bash")


def test_priorities_are_case_insensitive(tmp_path: Path):
    for spelling, expected in [("WARNING", "Warning"), ("info", "Informational")]:
        text = BASE.replace("priority: Warning", f"priority: {spelling}")
        e = engine_for(tmp_path, text)
        assert e.rules[0].priority == expected
    assert any("invalid priority" in p for p in problems(tmp_path, BASE.replace("Warning", "Loud")))


def test_append_and_override_on_lists_macros_rules(tmp_path: Path):
    text = (
        BASE
        + """
- list: shells
  items: [ksh]
  append: true
- list: more_shells
  items: [fish]
  override:
    items: append
- macro: shell
  condition: or proc.name = tcsh
  override:
    condition: append
- rule: Shell
  condition: and not proc.pname = sshd
  output: "(parent %proc.pname)"
  tags: [t2]
  override:
    condition: append
    output: append
    tags: append
- rule: Shell
  priority: CRITICAL
  override:
    priority: replace
"""
    )
    e = engine_for(tmp_path, text)
    rule = e.rules[0]
    assert rule.priority == "Critical"
    assert rule.output.text == "shell %proc.name (parent %proc.pname)"
    assert rule.tags == ["t2"]
    # ksh was appended to 'shells' after 'more_shells' had copied it: Falco expands lists
    # into lists when they are defined, so ksh is not in more_shells
    assert not matches(e, evt__type="execve", proc__name="ksh")
    assert matches(e, evt__type="execve", proc__name="fish")
    assert matches(e, evt__type="execve", proc__name="tcsh")
    assert not matches(e, evt__type="execve", proc__name="bash", proc__pname="sshd")


def test_replace_and_disable(tmp_path: Path):
    text = (
        BASE
        + """
- macro: shell
  condition: proc.name = only
  override:
    condition: replace
- rule: Shell
  enabled: false
"""
    )
    rs = load_ruleset([write_rules(tmp_path, text)])
    compiled = compile_rules(rs)
    assert compiled.rules[0].enabled is False
    assert Engine(compiled).rules == []


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("- rule: Nope\n  condition: a\n  append: true\n", "no rule by that name"),
        ("- macro: nope\n  condition: a\n  override:\n    condition: append\n", "no macro"),
        ("- list: nope\n  items: [a]\n  append: true\n", "no list by that name"),
        (
            "- rule: Shell\n  priority: INFO\n  override:\n    priority: append\n",
            "key 'priority' cannot be appended to, use 'replace' instead",
        ),
        (
            "- rule: Shell\n  condition: x\n  append: true\n  override:\n    condition: append\n",
            "cannot be used together",
        ),
        (
            "- rule: Shell\n  condition: x\n  desc: y\n  override:\n    condition: append\n",
            "key 'desc' must be listed in 'override'",
        ),
        (
            "- rule: New\n  condition: a\n  desc: d\n  priority: INFO\n",
            "no mapping for key 'output'",
        ),
        (
            "- rule: New\n  condition: a\n  desc: d\n  output: o\n  priority: INFO\n"
            "  action: kill\n",
            "action",
        ),
    ],
)
def test_override_errors(tmp_path: Path, item: str, message: str):
    errs = problems(tmp_path, BASE + item)
    assert any(message in e for e in errs), errs


def test_exceptions_compile_like_falco(tmp_path: Path):
    text = """
- list: trusted
  items: [good1, good2]
- rule: R
  desc: d
  condition: evt.type = openat and fd.name startswith /etc
  output: o
  priority: INFO
  exceptions:
    - name: by_proc_and_file
      fields: [proc.name, fd.name]
      comps: [=, startswith]
      values:
        - [vim, /etc/vim]
        - [apt, /etc/apt]
    - name: by_list
      fields: [proc.name, proc.pname]
      comps: [in, =]
      values:
        - [[a1, a2], parent]
        - [trusted, anyparent]
    - name: single
      fields: proc.name
      values: [solo1, solo2]
    - name: empty
      fields: [proc.name]
"""
    e = engine_for(tmp_path, text)
    base = {"evt__type": "openat", "fd__name": "/etc/passwd"}
    assert matches(e, proc__name="cat", **base)
    assert not matches(e, evt__type="openat", proc__name="vim", fd__name="/etc/vim/rc")
    assert matches(e, proc__name="vim", **base)  # both fields must match
    assert not matches(e, proc__name="a2", proc__pname="parent", **base)
    assert matches(e, proc__name="a2", proc__pname="other", **base)
    assert not matches(e, proc__name="good2", proc__pname="anyparent", **base)
    assert not matches(e, proc__name="solo2", **base)


def test_exception_values_appended(tmp_path: Path):
    text = """
- rule: R
  desc: d
  condition: evt.type = openat
  output: o
  priority: INFO
  exceptions:
    - name: procs
      fields: [proc.name]
      values: [[a]]
- rule: R
  exceptions:
    - name: procs
      values: [[b]]
  override:
    exceptions: append
"""
    e = engine_for(tmp_path, text)
    assert not matches(e, evt__type="openat", proc__name="a")
    assert not matches(e, evt__type="openat", proc__name="b")
    assert matches(e, evt__type="openat", proc__name="c")


def test_bad_exception_shape(tmp_path: Path):
    text = (
        BASE
        + """
- rule: R2
  desc: d
  condition: spawned
  output: o
  priority: INFO
  exceptions:
    - name: bad
      fields: [proc.name, proc.pname]
      values: [[only_one]]
"""
    )
    errs = problems(tmp_path, text)
    assert any("each value must be a list of 2 items" in e and "R2" in e for e in errs), errs


def test_macro_loop_and_undefined_macro(tmp_path: Path):
    loop = """
- macro: a
  condition: b and proc.name = x
- macro: b
  condition: a
- rule: R
  desc: d
  condition: a
  output: o
  priority: INFO
"""
    errs = problems(tmp_path, loop)
    assert any("macro loop: a -> b -> a" in e for e in errs), errs
    errs = problems(tmp_path, BASE.replace("spawned and shell", "spawned and nosuch"))
    assert any("undefined macro 'nosuch'" in e for e in errs), errs


def test_error_names_file_line_column_item_and_shows_caret(tmp_path: Path):
    text = """
- macro: m
  condition: proc.name = a
- rule: Broken rule
  desc: d
  condition: >
    evt.type = execve and
    proc.name in (a, b) and fd.num > abc
  output: o
  priority: INFO
"""
    path = write_rules(tmp_path, text)
    with pytest.raises(RulesError) as info:
        compile_rules(load_rules([path]))
    [p] = info.value.problems
    assert p.location is not None
    assert (p.location.file, p.location.line, p.location.column) == (path, 7, 38)
    formatted = p.format()
    assert "rule 'Broken rule'" in formatted
    assert f"{path}:7:38" in formatted
    assert "    proc.name in (a, b) and fd.num > abc\n" + " " * 41 + "^" in formatted


def test_errors_inside_macros_point_at_the_macro(tmp_path: Path):
    text = """
- macro: bad_macro
  condition: (proc.nam = x)
- rule: R
  desc: d
  condition: bad_macro
  output: o
  priority: INFO
"""
    path = write_rules(tmp_path, text)
    errs = problems(tmp_path, text)
    assert any(
        f"{path}:2:15" in e and "macro 'bad_macro'" in e and "unknown field 'proc.nam'" in e
        for e in errs
    ), errs


def test_type_errors_are_load_errors(tmp_path: Path):
    for cond, msg in [
        ("fd.num > abc", "unexpected token"),
        ("fd.num = abc", "is not a number"),
        ("proc.name > 3", "needs a numeric field"),
        ("fd.snet in (999.1.1.1/8)", "not an IP network"),
        ("proc.name regex '('", "invalid value"),
        ("proc.aname[x] = a", "numeric index"),
        ("proc.name[1] = a", "does not take an argument"),
        ("evt.arg = a", "requires an argument"),
        ("val(proc.name) = a", "right side"),
        ("proc.name in nosuchlist", "undefined list"),
    ]:
        text = f"""
- rule: R
  desc: d
  condition: {cond}
  output: o
  priority: INFO
"""
        errs = problems(tmp_path, text)
        assert any(msg in e for e in errs), (cond, errs)


def test_yaml_errors_have_positions(tmp_path: Path):
    errs = problems(tmp_path, "- rule: x\n  desc: [unclosed\n")
    assert errs and "invalid YAML" in errs[0] and "rules.yaml:" in errs[0]
    errs = problems(tmp_path, "rule: not-a-list\n")
    assert errs and "must be a YAML list" in errs[0]


def test_unknown_keys_warn_and_skip_if_unknown_filter(tmp_path: Path):
    text = """
- rule: R
  desc: d
  condition: proc.nosuch = 1
  output: o
  priority: INFO
  skip-if-unknown-filter: true
  colour: red
- rule: S
  desc: d
  condition: evt.type = execve
  output: o
  priority: INFO
  action: deny
"""
    rs = load_ruleset([write_rules(tmp_path, text)])
    compiled = compile_rules(rs)
    assert [r.name for r in compiled.rules] == ["S"]
    assert compiled.rules[0].action == "deny"
    codes = {w.code for w in rs.diagnostics.warnings}
    assert {"unknown-key", "skipped"} <= codes


def test_several_files_load_in_order(tmp_path: Path):
    first = write_rules(tmp_path, BASE, "a.yaml")
    second = write_rules(
        tmp_path, "- list: shells\n  items: [dash]\n  override:\n    items: replace\n", "b.yaml"
    )
    rs = load_rules([first, second])
    assert rs.lists["shells"].items == ["dash"]
    assert [f.name for f in rs.files] == ["a.yaml", "b.yaml"]
    # a directory loads its YAML files in name order
    assert [f.name for f in load_rules([tmp_path]).files] == ["a.yaml", "b.yaml", "rules.yaml"][
        : len(list(tmp_path.glob("*.yaml")))
    ]


def test_replay_event_normalisation():
    e = ev(fd__num="3", evt__is_open_write="true", proc__aname="solo")
    assert e["fd.num"] == 3 and e["evt.is_open_write"] is True
    assert e["proc.aname"] == ["solo"] and e["evt.dir"] == "<"
    with pytest.raises(ValueError, match="needs a number"):
        ev(fd__num="three")
