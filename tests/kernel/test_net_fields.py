"""fd.ip, fd.net and fd.port on live connects, through Falco's own ``outbound`` macro.

``outbound`` (falco_rules.yaml, loaded unmodified) holds for a connect whose ends are not both
0.0.0.0 or loopback (``fd.ip != "0.0.0.0" and fd.net != "127.0.0.0/8"``: either end counts) and
whose server is not RFC 1918. Before the event table these fields had no getter on live events,
so the macro never held live and six enabled Falco rules could never fire.

The connects happen in a network namespace of their own, with TEST-NET addresses on its
loopback, so nothing leaves the machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import CORPUS, log_event, sentinel_env
from tests.kernel.conftest import require_root

pytestmark = pytest.mark.kernel
REPO = Path(__file__).resolve().parents[2]
SENTINEL = [sys.executable, "-m", "sentinel", "run", "--matching", "all"]

RULE = """
- rule: Test outbound
  desc: a connect Falco's outbound macro calls outbound
  condition: outbound and proc.name = {comm}
  output: out %fd.name ip=%fd.ip net=%fd.net port=%fd.port sip=%fd.sip
  priority: INFO
"""

# In the namespace: servers on a public-looking, a private and the loopback address; one
# client connect to each, from the matching local address.
CLIENT = """
import socket, sys
targets = [("198.51.100.7", "198.51.100.1"), ("10.9.9.7", "10.9.9.1"), ("127.0.0.1", "127.0.0.1")]
servers = []
for ip, _ in targets:
    s = socket.socket(); s.bind((ip, 8443)); s.listen(); servers.append(s)
for ip, local in targets:
    c = socket.socket(); c.bind((local, 0)); c.connect((ip, 8443))
    print(ip, c.getsockname()[1], flush=True); c.close()
"""


def test_outbound_macro_holds_on_a_live_connect(tmp_path: Path) -> None:
    require_root()
    if shutil.which("ip") is None:
        raise AssertionError("iproute2 is missing: run scripts/setup.sh")
    comm = f"ob{uuid.uuid4().hex[:6]}"
    exe = tmp_path / comm  # a copy of the interpreter, so its comm names this test's process
    shutil.copy(sys.executable, exe)
    rules = tmp_path / "outbound.yaml"
    rules.write_text(RULE.format(comm=comm))
    falco = str(CORPUS / "falco_rules.yaml")
    proc = subprocess.Popen(
        [*SENTINEL, "--rules", falco, "--rules", str(rules)],
        cwd=REPO,
        env=sentinel_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    alerts: list[dict[str, Any]] = []
    stderr: list[str] = []
    armed = threading.Event()

    def read_out() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            alerts.append(json.loads(line))

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr.append(line)
            if log_event(line, "armed"):
                armed.set()

    threading.Thread(target=read_out, daemon=True).start()
    threading.Thread(target=read_err, daemon=True).start()
    ns = f"snob{uuid.uuid4().hex[:6]}"
    try:
        assert armed.wait(90), "".join(stderr)
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        for addr in ("198.51.100.7", "198.51.100.1", "10.9.9.7", "10.9.9.1"):
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{addr}/32", "dev", "lo"], check=True)
        res = subprocess.run(
            ["ip", "netns", "exec", ns, str(exe), "-c", CLIENT],
            capture_output=True,
            text=True,
            check=True,
        )
        ports = dict(line.split() for line in res.stdout.splitlines())
        deadline = time.monotonic() + 10
        mine: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not mine:
            mine = [a for a in alerts if a["rule"] == "Test outbound"]
            time.sleep(0.1)
        time.sleep(1.0)  # the two connects that must not match would have arrived by now
        mine = [a for a in alerts if a["rule"] == "Test outbound"]
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        proc.terminate()
        proc.wait(30)
    assert len(mine) == 1, (mine, "".join(stderr[-20:]))
    f = mine[0]["output_fields"]
    port = int(ports["198.51.100.7"])
    assert f["fd.sip"] == "198.51.100.7"
    assert f["fd.name"] == f"198.51.100.1:{port}->198.51.100.7:8443"
    assert f["fd.ip"] == ["198.51.100.1", "198.51.100.7"]
    assert f["fd.net"] == ["198.51.100.1", "198.51.100.7"]
    assert f["fd.port"] == [port, 8443]
