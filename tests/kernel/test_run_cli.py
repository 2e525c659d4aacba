"""``sentinel capture`` (= ``run`` + recording) for real: rules in, kernel actions, alerts out.

One sentinel process for the whole module (one BPF compile). The rules are written for this
run (unique marker, the listener's port, the temp dir), so the machine's other activity cannot
match them; the test then asserts the EXACT set of alerts, which also proves that the actions of
processes no rule mentions produced none. Finally the capture is replayed offline and must give
the same alerts.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import log_records, sentinel_env
from tests.kernel.conftest import require_root

pytestmark = pytest.mark.kernel

SENTINEL = [sys.executable, "-m", "sentinel"]


@dataclass
class Session:
    proc: subprocess.Popen[str]
    rules: Path
    capture: Path
    workdir: Path
    marker: str
    port: int
    listener: socket.socket
    alerts: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    seen: list[dict[str, Any]] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def _pull(self, timeout: float) -> bool:
        try:
            self.seen.append(self.alerts.get(timeout=timeout))
        except queue.Empty:
            return False
        return True

    def wait_for(self, pred: Any, n: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Alerts matching ``pred``, waiting until ``n`` exist (or timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            got = [a for a in self.seen if pred(a)]
            if len(got) >= n or time.monotonic() > deadline:
                return got
            self._pull(0.05)

    def settle(self, quiet: float = 0.5) -> list[dict[str, Any]]:
        """All alerts so far, after none arrived for ``quiet`` seconds."""
        while self._pull(quiet):
            pass
        return list(self.seen)


RULES = """
- rule: Test Shell
  desc: a shell with this run's marker
  condition: evt.type = execve and proc.name = sh and proc.args contains "{marker}"
  output: shell %proc.pid parent %proc.pname
  priority: Warning
  tags: [test]

- rule: Test Write
  desc: a write-open under this run's directory
  condition: >
    evt.type in (open, openat, openat2) and evt.is_open_write = true and fd.num >= 0
    and fd.name startswith "{workdir}/"
  output: write %fd.name by %proc.name
  priority: Error

- rule: Test Connect
  desc: a connect to this run's listener
  condition: evt.type = connect and fd.sip = 127.0.0.1 and fd.sport = {port}
  output: connect %fd.name by %proc.name
  priority: Notice
"""


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    require_root()
    base = tmp_path_factory.mktemp("run")
    workdir = base / "work"
    workdir.mkdir()
    marker = f"mk{uuid.uuid4().hex[:10]}"
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    rules = base / "rules.yaml"
    rules.write_text(RULES.format(marker=marker, workdir=workdir, port=port))
    capture = base / "capture.jsonl"
    proc = subprocess.Popen(
        [*SENTINEL, "capture", "-o", str(capture), "--rules", str(rules), "--matching", "all"],
        env=sentinel_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    s = Session(proc, rules, capture, workdir, marker, port, listener)
    armed = threading.Event()

    def read_out() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            s.alerts.put(json.loads(line))

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            s.stderr.append(line.rstrip("\n"))
            if "armed" in line:
                armed.set()

    threading.Thread(target=read_out, daemon=True).start()
    threading.Thread(target=read_err, daemon=True).start()
    if not armed.wait(60):
        proc.kill()
        pytest.fail(f"sentinel did not arm: {s.stderr}")
    try:
        yield s
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()


def _comm() -> str:
    return Path("/proc/self/comm").read_text().strip()


def test_live_alerts_exact(session: Session) -> None:
    s = session
    # 1. a shell: exactly one 'Test Shell' alert with the right pid / parent.
    sh = subprocess.Popen(["/bin/sh", "-c", f"exit 0 # {s.marker}"])
    assert sh.wait() == 0
    # 2. an open for write of a temp file (from a child, so ppid is us).
    target = s.workdir / "written.txt"
    w = subprocess.Popen([sys.executable, "-c", f"open({str(target)!r}, 'w').close()"])
    assert w.wait() == 0
    # 3. a relative open, after the shell changed directory itself.
    sub = s.workdir / "sub"
    sub.mkdir()
    rel = subprocess.Popen(["/bin/sh", "-c", f"cd {sub} && : > rel.txt"])
    assert rel.wait() == 0
    # 4. a connect to our loopback listener.
    c = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import socket; s = socket.create_connection(('127.0.0.1', {s.port})); "
            "print(s.getsockname()[1], flush=True)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    conn, peer = s.listener.accept()
    conn.close()
    assert c.stdout is not None
    cport = int(c.stdout.readline())
    assert c.wait() == 0
    # 5. noise no rule mentions: other shells, reads in the work dir, writes elsewhere,
    #    a connect to another port.
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen()
    noise = (
        f"cat {target} > /dev/null; : > {s.workdir.parent}/elsewhere.txt; "
        f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', "
        f'{other.getsockname()[1]}))"; /bin/true'
    )
    subprocess.run(["/bin/sh", "-c", noise], check=True)
    other.close()

    s.wait_for(lambda a: a["rule"] == "Test Shell", timeout=20)
    s.wait_for(lambda a: a["rule"] == "Test Connect", timeout=20)
    s.wait_for(lambda a: a["rule"] == "Test Write", n=2, timeout=20)
    alerts = s.settle(1.0)
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for a in alerts:
        by_rule.setdefault(a["rule"], []).append(a)
    assert sorted((r, len(v)) for r, v in by_rule.items()) == [
        ("Test Connect", 1),
        ("Test Shell", 1),
        ("Test Write", 2),
    ], (alerts, s.stderr)

    shell = by_rule["Test Shell"][0]
    assert shell["output_fields"]["proc.pid"] == sh.pid
    assert shell["output_fields"]["proc.pname"] == _comm()
    assert shell["output"].startswith(f"shell {sh.pid} parent {_comm()}")
    assert shell["priority"] == "Warning"
    assert shell["tags"] == ["test"]
    assert shell["action"] == "alert"
    assert shell["time"].endswith("Z")

    writes = {a["output_fields"]["fd.name"]: a for a in by_rule["Test Write"]}
    assert set(writes) == {str(target), str(sub / "rel.txt")}
    assert writes[str(target)]["output_fields"]["proc.name"] == "python3" or writes[str(target)][
        "output_fields"
    ]["proc.name"].startswith("python")
    assert writes[str(sub / "rel.txt")]["output_fields"]["proc.name"] == "sh"

    conn_alert = by_rule["Test Connect"][0]
    assert conn_alert["output_fields"]["fd.name"] == f"127.0.0.1:{cport}->127.0.0.1:{s.port}"
    assert cport == peer[1]


def test_open_flags_alert(session: Session) -> None:
    s = session
    target = s.workdir / "flags.txt"
    code = (
        f"import os; os.close(os.open({str(target)!r}, "
        "os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640))"
    )
    w = subprocess.Popen([sys.executable, "-c", code])
    assert w.wait() == 0
    got = s.wait_for(lambda a: a["output_fields"].get("fd.name") == str(target), timeout=20)
    assert len(got) == 1
    assert got[0]["rule"] == "Test Write"


def test_stop_flush_and_replay_gives_same_alerts(session: Session) -> None:
    s = session
    s.settle()
    s.proc.send_signal(signal.SIGINT)
    assert s.proc.wait(30) == 0
    live = s.settle(0.3)
    stopped = [r for r in log_records(s.stderr) if r.get("event") == "stopped"]
    assert stopped, s.stderr
    assert stopped[-1]["lost"] == 0 and stopped[-1]["errors"] == 0, stopped[-1]

    events = [json.loads(x) for x in s.capture.read_text().splitlines()]
    target = str(s.workdir / "flags.txt")
    opens = [e for e in events if e.get("fd.name") == target]
    assert len(opens) == 1
    e = opens[0]
    assert e["evt.type"] == "openat"
    assert set(e["evt.arg.flags"].split("|")) >= {"O_WRONLY", "O_CREAT", "O_APPEND"}
    assert e["evt.arg.mode"] == "0640"  # C's %#o, as Falco prints it
    assert e["proc.ppid"] == os.getpid()
    assert e["proc.pname"] == _comm()

    res = subprocess.run(
        [*SENTINEL, "replay", "--rules", str(s.rules), "--matching", "all", str(s.capture)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    replayed = [json.loads(x) for x in res.stdout.splitlines()]

    def key(a: dict[str, Any]) -> tuple[str, str, str, str]:
        return (a["rule"], a["output"], a["time"], json.dumps(a["output_fields"], sort_keys=True))

    assert len(live) >= 5
    assert sorted(map(key, replayed)) == sorted(map(key, live))


def test_the_armed_line_says_where_the_start_up_went(session: Session) -> None:
    """Each step before arming, by name, with its seconds: what an operator reads to see why
    a start was slow (the BPF verifier, the rules' parse, the process table)."""
    armed = [r for r in log_records(session.stderr) if r.get("event") == "armed"]
    assert len(armed) == 1, session.stderr
    steps = armed[0]["step_seconds"]
    assert list(steps)[:3] == ["check_privileges", "load_config", "load_rules"]
    assert {"start_sensor", "arm"} <= set(steps)
    assert all(isinstance(v, float | int) and v >= 0 for v in steps.values())
    assert steps["start_sensor"] > 0  # a load, compiled or cached, takes the kernel some time
    before_arm = sum(v for k, v in steps.items() if k != "arm")
    assert before_arm <= armed[0]["seconds"] + 0.01
