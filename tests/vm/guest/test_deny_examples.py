"""The deny examples shipped in rules/sentinel_deny_examples.yaml, enabled the documented way (a
later file with ``enabled: true``), enforced by ``sentinel run`` inside the BPF LSM VM.

Each blocked action is first done once before Sentinel starts, to show it works and changes
something (the payload runs and prints, the metadata listener accepts); under Sentinel it
fails with EPERM, its neighbour still works, and one alert with ``"action": "deny"`` names the
example. (The shadow-file example is not enabled here: the guest's /etc is an overlayfs, where
the enforcer refuses protected paths (README, Limits: stat() identities are not the inodes the
hooks see) and sentinel would not start; and the guest's root is the host's, read-only, so every
write to /etc fails anyway. File-tree enforcement is proven by test_run_deny.py,
test_enforcement.py and test_bypass.py; the example's compilation by the host's
tests/enforcement/test_deny_examples.py.)
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_armed
from tests.vm.guest.conftest import denials, follow

REPO = Path(__file__).resolve().parents[3]
BASE = Path(os.environ.get("TMPDIR", "/run/sentinel-vm")) / "deny-examples"
NETNS = "sn-metadata"
METADATA = "169.254.169.254"
ENABLE = """
- rule: Deny Program Execution from /dev/shm
  enabled: true
- rule: Deny Connections to the Cloud Metadata Service
  enabled: true
"""
# Listens on the metadata address, ports 80 and 8080, in the namespace; prints each accept.
LISTENER = """
import select, socket, sys
socks = []
for port in (80, 8080):
    s = socket.socket(); s.bind((sys.argv[1], port)); s.listen(8); socks.append(s)
print("ready", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        c, _ = s.accept(); print("accepted", s.getsockname()[1], flush=True); c.close()
"""
CONNECT = """
import socket, sys
s = socket.socket()
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except OSError as e:
    print(type(e).__name__)
"""


@dataclass
class Run:
    proc: subprocess.Popen[str]
    payload: Path
    accepted: queue.Queue[str]
    alerts: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    stderr: list[str] = field(default_factory=list)

    def deny_alerts(self, wait: float = 3.0) -> list[dict[str, Any]]:
        return denials(self.alerts, wait)


def connect(port: int) -> str:
    argv = ["ip", "netns", "exec", NETNS, sys.executable, "-c", CONNECT, METADATA, str(port)]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def lines_of(stream: Any, into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line.strip())


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    shutil.rmtree(BASE, ignore_errors=True)
    BASE.mkdir(parents=True)
    shm = Path("/dev/shm")
    shm.mkdir(exist_ok=True)
    if subprocess.run(["mountpoint", "-q", str(shm)], check=False).returncode != 0:
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(shm)], check=True)
    payload = shm / "payload"
    shutil.copy2("/bin/echo", payload)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    subprocess.run(["ip", "-n", NETNS, "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "-n", NETNS, "addr", "add", f"{METADATA}/32", "dev", "lo"], check=True)
    listener = subprocess.Popen(
        ["ip", "netns", "exec", NETNS, sys.executable, "-c", LISTENER, METADATA],
        stdout=subprocess.PIPE,
        text=True,
    )
    accepted: queue.Queue[str] = queue.Queue()
    assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
    threading.Thread(target=lines_of, args=(listener.stdout, accepted), daemon=True).start()
    # Without Sentinel: both actions work.
    out = subprocess.run([str(payload), "ran"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ran"
    assert connect(80) == "connected"
    assert accepted.get(timeout=10) == "accepted 80"

    enable = BASE / "enable.yaml"
    enable.write_text(ENABLE)
    cfg = BASE / "sentinel.yaml"
    examples = REPO / "rules" / "sentinel_deny_examples.yaml"
    cfg.write_text(
        f'rules: [{examples}, {enable}]\nmetrics_address: ""\nspool:\n  dir: {BASE / "spool"}\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "sentinel", "run", "--config", str(cfg)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    r = Run(proc, payload, accepted)
    armed = follow(proc, r.alerts, r.stderr)
    try:
        wait_armed(proc, armed, 1200, r.stderr)  # bcc compiles twice (sensor, LSM) under TCG
        yield r
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(120)
        listener.kill()
        subprocess.run(["ip", "netns", "del", NETNS], check=False)
        payload.unlink(missing_ok=True)


def test_program_in_dev_shm_is_denied(run: Run) -> None:
    with pytest.raises(PermissionError):
        subprocess.run([str(run.payload), "ran"], capture_output=True, check=False)
    out = subprocess.run(["/bin/echo", "ok"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"  # a program elsewhere runs
    alerts = run.deny_alerts()
    assert [a["rule"] for a in alerts] == ["Deny Program Execution from /dev/shm"], alerts
    assert alerts[0]["output_fields"]["proc.exepath"] == str(run.payload)


def test_connect_to_metadata_service_is_denied(run: Run) -> None:
    assert connect(80) == "PermissionError"
    assert connect(8080) == "connected"  # another port of the same address still works
    assert run.accepted.get(timeout=10) == "accepted 8080"
    assert run.accepted.empty()  # port 80 accepted nothing
    alerts = run.deny_alerts()
    assert [a["rule"] for a in alerts] == ["Deny Connections to the Cloud Metadata Service"]
