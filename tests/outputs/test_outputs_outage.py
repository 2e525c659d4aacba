"""Outage: receiver down, N alerts emitted, Sentinel killed with SIGKILL, Sentinel restarted,
receiver restarted: all N alerts arrive (duplicates allowed, de-duplicable by ``id``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from .conftest import (
    FAST_RETRY,
    HttpReceiver,
    Rsyslog,
    bulk_ok,
    free_port,
    serve_http,
    spool_cfg,
    wait_until,
)

EMITTER = Path(__file__).with_name("emitter.py")
N = 200


def _spawn(config: Path, count: int, prefix: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(config.with_name(f"emitter-{prefix}.log"), "a")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, str(EMITTER), str(config), str(count), prefix],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
    )


def _crash_and_recover(tmp_path: Path, outputs: list[dict[str, Any]]) -> subprocess.Popen[str]:
    """Emit N with the receiver down, SIGKILL, restart Sentinel; returns the new process."""
    config = tmp_path / "outputs.json"
    config.write_text(json.dumps({"outputs": outputs, "spool": spool_cfg(tmp_path)}))
    first = _spawn(config, N, "a")
    assert first.stdout is not None
    assert first.stdout.readline().strip() == f"EMITTED {N}"
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert first.returncode == -signal.SIGKILL
    second = _spawn(config, 0, "unused")
    assert second.stdout is not None
    assert second.stdout.readline().strip() == "EMITTED 0"
    return second


def _finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    line = out.strip().splitlines()[-1]
    assert line.startswith("DRAINED ")
    metrics: dict[str, Any] = json.loads(line.removeprefix("DRAINED "))
    return metrics


def test_http_bulk_outage_with_sigkill(tmp_path: Path) -> None:
    port = free_port()  # receiver is down: nothing listens yet
    out = {
        "type": "http",
        "flavor": "elasticsearch",
        "url": f"http://127.0.0.1:{port}",
        "batch": {"max_count": 50, "max_wait": 0.1},
        "retry": FAST_RETRY,
    }
    proc = _crash_and_recover(tmp_path, [out])
    receiver = HttpReceiver(respond=bulk_ok)
    server = serve_http(receiver, port=port)
    try:
        metrics = _finish(proc)
    finally:
        server.shutdown()
        server.server_close()
    ids = [
        json.loads(line)["create"]["_id"]
        for r in receiver.requests
        for line in r.body.decode().splitlines()[0::2]
    ]
    assert set(ids) == {f"a-{i}" for i in range(N)}  # all arrived; duplicates are allowed
    assert metrics["http"]["sent"] == len(ids) and metrics["http"]["queue_depth"] == 0


def test_syslog_tcp_outage_with_sigkill(tmp_path: Path, rsyslog: Rsyslog) -> None:
    rsyslog.stop()
    out = {"type": "syslog", "port": rsyslog.tcp_port, "retry": FAST_RETRY}
    proc = _crash_and_recover(tmp_path, [out])
    rsyslog.start()
    _finish(proc)
    wait_until(lambda: len(rsyslog.lines()) >= N, what="rsyslog to write everything")
    bodies = [json.loads(m["msg"]) for m in rsyslog.messages()]
    assert {b["id"] for b in bodies} == {f"a-{i}" for i in range(N)}
    assert all(b["output"].endswith("ü\nline 2") for b in bodies)
