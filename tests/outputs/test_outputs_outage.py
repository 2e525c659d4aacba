"""Outage, through the real CLI (``sentinel replay --config C --rules R -``): the receiver is
down, N alerts are emitted, Sentinel is killed with SIGKILL, Sentinel is restarted, then the
receiver: all N alerts arrive (duplicates allowed, de-duplicable by ``id``)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import yaml

from sentinel.outputs.spool import HEADER

from .conftest import (
    FAST_RETRY,
    HttpReceiver,
    Rsyslog,
    bulk_ok,
    free_port,
    serve_http,
    wait_until,
)

N = 200
RULES = """
- rule: Any exec
  desc: test
  condition: evt.type = execve
  output: "exec %proc.name (cmd=%proc.cmdline)"
  priority: WARNING
"""


def _event(i: int) -> str:
    cmd = f'bash -c "echo {i}"\nü 日本'
    return json.dumps({"evt.type": "execve", "proc.name": "bash", "proc.cmdline": cmd}) + "\n"


def _spooled(spool: Path) -> int:
    """Complete records in the spool (read while another process appends to it)."""
    count = 0
    for seg in spool.glob("*.seg"):
        data, off = seg.read_bytes(), 0
        while off + HEADER.size <= len(data):
            length = HEADER.unpack_from(data, off)[0]
            if off + HEADER.size + length > len(data):
                break
            off += HEADER.size + length
            count += 1
    return count


def _sentinel(tmp_path: Path, tag: str) -> subprocess.Popen[bytes]:
    log: IO[bytes] = open(tmp_path / f"sentinel-{tag}.log", "ab")  # noqa: SIM115
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sentinel",
            "replay",
            "--config",
            str(tmp_path / "sentinel.yaml"),
            "--rules",
            str(tmp_path / "rules.yaml"),
            "-",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


def _crash_and_restart(tmp_path: Path, out: dict[str, Any]) -> subprocess.Popen[bytes]:
    """Emit N alerts with the receiver down, SIGKILL Sentinel, start it again (its stdin left
    open so that it keeps running); returns the new process."""
    spool = tmp_path / "spool"
    config = {"outputs": [out], "spool": {"dir": str(spool)}, "metrics_address": ""}
    (tmp_path / "sentinel.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "rules.yaml").write_text(RULES)
    first = _sentinel(tmp_path, "first")
    assert first.stdin is not None
    first.stdin.write("".join(_event(i) for i in range(N)).encode())
    first.stdin.flush()
    wait_until(lambda: _spooled(spool) == N, what="N alerts in the spool")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert first.returncode == -signal.SIGKILL
    return _sentinel(tmp_path, "second")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()  # end of events: replay closes its outputs and exits
    assert proc.wait(30) == 0


def _check(alerts: list[dict[str, Any]]) -> None:
    by_cmd: dict[str, set[str]] = {}
    for a in alerts:
        by_cmd.setdefault(a["output_fields"]["proc.cmdline"], set()).add(a["id"])
    assert set(by_cmd) == {f'bash -c "echo {i}"\nü 日本' for i in range(N)}  # none lost
    assert all(len(ids) == 1 for ids in by_cmd.values())  # any duplicate has the same id


def test_http_bulk_outage_with_sigkill(tmp_path: Path) -> None:
    port = free_port()  # the receiver is down: nothing listens there yet
    out = {
        "type": "http",
        "flavor": "elasticsearch",
        "url": f"http://127.0.0.1:{port}",
        "batch": {"max_count": 50, "max_wait": 0.1},
        "retry": FAST_RETRY,
    }
    proc = _crash_and_restart(tmp_path, out)
    receiver = HttpReceiver(respond=bulk_ok)
    server = serve_http(receiver, port=port)
    try:
        docs: list[dict[str, Any]] = []

        def arrived() -> int:
            docs[:] = [
                json.loads(line)
                for r in list(receiver.requests)
                for line in r.body.decode().splitlines()[1::2]
            ]
            return len({d["id"] for d in docs})

        wait_until(lambda: arrived() >= N, timeout=60, what="every alert at the receiver")
        _stop(proc)
    finally:
        server.shutdown()
        server.server_close()
    _check(docs)


def test_syslog_tcp_outage_with_sigkill(tmp_path: Path, rsyslog: Rsyslog) -> None:
    rsyslog.stop()
    out = {"type": "syslog", "port": rsyslog.tcp_port, "retry": FAST_RETRY}
    proc = _crash_and_restart(tmp_path, out)
    rsyslog.start()
    wait_until(
        lambda: len({json.loads(m["msg"])["id"] for m in rsyslog.messages()}) >= N,
        timeout=60,
        what="every alert in rsyslog's file",
    )
    _stop(proc)
    _check([json.loads(m["msg"]) for m in rsyslog.messages()])
