"""Hot reload with real files and real signals, against a small in-process loop.

The loop stands in for ``sentinel run``: it evaluates events with the current engine and calls
``reloader.poll()`` between events, exactly where run's loop would.
"""

from __future__ import annotations

import io
import json
import os
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

from sentinel.compiler import CompiledRules
from sentinel.engine import Engine
from sentinel.logging import configure_logging, get_logger
from sentinel.reload import RulesReloader, load_compiled_rules

RULE = """
- rule: {name}
  desc: test rule
  condition: evt.type = execve and proc.name = "{proc}"
  output: "{name} %proc.name"
  priority: WARNING
"""

BAD = """
- rule: Broken
  desc: has a syntax error
  condition: evt.type = execve and and proc.name = "x"
  output: "x"
  priority: WARNING
"""


def rules(path: Path, name: str, proc: str) -> Path:
    path.write_text(textwrap.dedent(RULE.format(name=name, proc=proc)).lstrip())
    return path


class Loop:
    """A minimal event loop: one engine, swapped by the reloader."""

    def __init__(self, paths: list[Path], **kw: Any) -> None:
        self.engine = Engine(load_compiled_rules(paths))
        self.reloader: RulesReloader[CompiledRules] = RulesReloader(paths, self.swap, **kw)
        self.swaps = 0

    def swap(self, compiled: CompiledRules) -> None:
        self.engine = Engine(compiled)
        self.swaps += 1

    def alerts_for(self, proc: str) -> list[str]:
        return [a.rule for a in self.engine.process({"evt.type": "execve", "proc.name": proc})]

    def run_until(self, cond: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond() and time.monotonic() < deadline:
            self.alerts_for("idle")
            self.reloader.poll()
            time.sleep(0.005)


def log_buffer() -> io.StringIO:
    buf = io.StringIO()
    configure_logging("json", "info", stream=buf)
    return buf


def test_sighup_swaps_in_new_rules(tmp_path: Path) -> None:
    log_buffer()
    f = rules(tmp_path / "r.yaml", "Old", "alpha")
    loop = Loop([f], logger=get_logger("t"))
    loop.reloader.install()
    try:
        assert loop.alerts_for("alpha") == ["Old"]
        rules(f, "New", "beta")
        assert loop.alerts_for("beta") == []  # nothing changes until asked
        os.kill(os.getpid(), signal.SIGHUP)
        loop.run_until(lambda: loop.swaps == 1)
        assert loop.swaps == 1
        assert loop.alerts_for("beta") == ["New"]
        assert loop.alerts_for("alpha") == []
    finally:
        loop.reloader.close()
    assert signal.getsignal(signal.SIGHUP) is not loop.reloader._on_signal


def test_bad_file_is_rejected_and_old_rules_keep_running(tmp_path: Path) -> None:
    buf = log_buffer()
    f = rules(tmp_path / "r.yaml", "Old", "alpha")
    loop = Loop([f], logger=get_logger("t"))
    loop.reloader.install()
    try:
        f.write_text(textwrap.dedent(BAD).lstrip())
        os.kill(os.getpid(), signal.SIGHUP)
        loop.run_until(lambda: loop.reloader.failures == 1)
    finally:
        loop.reloader.close()
    assert loop.reloader.failures == 1
    assert loop.swaps == 0
    assert loop.alerts_for("alpha") == ["Old"]
    entries = [json.loads(ln) for ln in buf.getvalue().splitlines()]
    rejected = [e for e in entries if e["event"] == "rules_reload_rejected"]
    assert len(rejected) == 1
    assert rejected[0]["level"] == "error"
    prob = rejected[0]["problems"][0]
    assert prob["file"] == str(f)
    assert prob["line"] == 3  # the condition line
    assert "Broken" in (prob["item"] or "")
    assert str(f) in (loop.reloader.last_error or "")

    # Fixing the file and signalling again recovers.
    rules(f, "Fixed", "gamma")
    loop.reloader.request()
    loop.run_until(lambda: loop.swaps == 1)
    assert loop.alerts_for("gamma") == ["Fixed"]
    assert loop.reloader.last_error is None


def test_watched_directory_picks_up_added_changed_and_removed_files(tmp_path: Path) -> None:
    log_buffer()
    d = tmp_path / "rules.d"
    d.mkdir()
    rules(d / "a.yaml", "A", "alpha")
    loop = Loop([d], watch=True, interval=0.05, logger=get_logger("t"))
    rules(d / "b.yaml", "B", "beta")
    loop.run_until(lambda: loop.swaps == 1)
    assert loop.alerts_for("beta") == ["B"]
    (d / "a.yaml").unlink()
    loop.run_until(lambda: loop.swaps == 2)
    assert loop.alerts_for("alpha") == []
    time.sleep(0.01)  # a rewrite within the same mtime tick still differs in size
    rules(d / "b.yaml", "B2", "betamax")
    loop.run_until(lambda: loop.swaps == 3)
    assert loop.alerts_for("betamax") == ["B2"]
    assert loop.swaps == 3


def test_configmap_style_symlink_swap_is_seen(tmp_path: Path) -> None:
    """Kubernetes updates a ConfigMap volume by pointing ``..data`` at a new directory."""
    log_buffer()
    d = tmp_path / "cm"
    d.mkdir()
    v1, v2 = d / "..v1", d / "..v2"
    v1.mkdir()
    v2.mkdir()
    rules(v1 / "rules.yaml", "V1", "one")
    rules(v2 / "rules.yaml", "V2", "two")
    (d / "..data").symlink_to("..v1")
    (d / "rules.yaml").symlink_to("..data/rules.yaml")
    loop = Loop([d], watch=True, interval=0.05, logger=get_logger("t"))
    assert loop.alerts_for("one") == ["V1"]
    tmp = d / "..data_tmp"
    tmp.symlink_to("..v2")
    os.replace(tmp, d / "..data")
    loop.run_until(lambda: loop.swaps == 1)
    assert loop.alerts_for("two") == ["V2"]


def test_no_reload_without_a_change_or_signal(tmp_path: Path) -> None:
    log_buffer()
    f = rules(tmp_path / "r.yaml", "Old", "alpha")
    loop = Loop([f], watch=True, interval=0.02, logger=get_logger("t"))
    loop.run_until(lambda: False, timeout=0.3)
    assert loop.swaps == 0 and loop.reloader.failures == 0


def test_signals_during_a_reload_coalesce(tmp_path: Path) -> None:
    log_buffer()
    f = rules(tmp_path / "r.yaml", "Old", "alpha")
    started = []

    def slow_load(paths: list[Path]) -> CompiledRules:
        started.append(time.monotonic())
        time.sleep(0.2)
        return load_compiled_rules(paths)

    loop = Loop([f], load=slow_load, logger=get_logger("t"))
    loop.reloader.install()
    try:
        for _ in range(5):
            os.kill(os.getpid(), signal.SIGHUP)
            loop.reloader.poll()
            time.sleep(0.01)
        loop.run_until(lambda: loop.swaps == 2, timeout=3)
        time.sleep(0.3)
        loop.reloader.poll()
    finally:
        loop.reloader.close()
    # The first signal starts a reload; the four during it are one pending request.
    assert len(started) == 2
    assert loop.swaps == 2
