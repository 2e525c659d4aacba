"""Issue 7 acceptance: "Terminal shell in container" on real podman + runc containers.

One live ``sentinel run`` per rule set watches a fixed sequence of scenarios, each in its own
time window: shells with a terminal started by ``podman run -it`` (rootfs and image) and
``podman exec -it``, shells without a terminal in a container, and a shell with a terminal on
the host. ``podman ... -t`` needs a terminal on the host side too, so each runs under a real
pseudo-terminal (``pty.fork``), and the test types ``exit`` at the shell's prompt. Alerts are
assigned to scenarios by their event time, so other activity on the machine between windows
does not count. Metadata comes from a private ``podman system service`` named through
CONTAINER_HOST, not from the system socket.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sentinel.enrichment.container_docker import parse_rfc3339_ns
from sentinel.paths import RULES_DIR
from tests.helpers import CORPUS, sentinel_env

from .conftest import IMAGE, Podman

pytestmark = pytest.mark.container

FALCO_RULES = CORPUS / "falco_rules.yaml"
FALCO_RULE = "Terminal shell in container"
SENTINEL_RULE = "Terminal Shell in a Container"
# Falco's container_entrypoint macro: the parents a shell entrypoint may have.
ENTRYPOINT_PARENTS = {
    None, "runc:[0:PARENT]", "runc:[1:CHILD]", "runc", "docker-runc", "exe", "docker-runc-cur",
    "containerd-shim", "systemd", "crio", "conmon",
}  # fmt: skip


def drive_pty(
    argv: list[str], env: dict[str, str], timeout: float = 30.0
) -> tuple[int, bytes, int]:
    """Run ``argv`` on a new pseudo-terminal, type ``exit`` at the first prompt, return
    (exit status, everything it printed, its pid)."""
    pid, fd = pty.fork()
    if pid == 0:  # child: becomes the session leader with the pty as controlling terminal
        try:
            os.execvpe(argv[0], argv, env)
        finally:
            os._exit(127)
    out = b""
    sent = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:  # EIO: the other side closed
                    break
                if not data:
                    break
                out += data
            if not sent and (b"# " in out or b"$ " in out):
                time.sleep(0.2)
                os.write(fd, b"exit\r")
                sent = True
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out, pid


class SentinelRun:
    """``sentinel run`` as a subprocess; collects its JSON alert lines."""

    def __init__(self, rules: list[Path], env: dict[str, str]) -> None:
        argv = [sys.executable, "-m", "sentinel", "run"]
        for r in rules:
            argv += ["--rules", str(r)]
        self.proc = subprocess.Popen(
            argv, env=sentinel_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.alerts: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self.armed = threading.Event()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._read_out, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                self.alerts.append(json.loads(line))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            if "armed" in line:
                self.armed.set()

    def wait_armed(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.armed.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("sentinel run did not arm:\n" + "".join(self.stderr))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for t in self._threads:
            t.join(timeout=10)


@dataclass
class Scenario:
    name: str
    container_id: str | None  # full id; None on the host
    container_name: str | None
    image: str | None
    start_ns: int = 0
    end_ns: int = 0
    status: int = 0
    output: str = ""
    pid: int = 0
    alerts: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Outcome:
    scenarios: dict[str, Scenario]
    stderr: str


def _run_scenarios(podman: Podman, image: str, api_socket: str, rules: list[Path]) -> Outcome:
    # CONTAINER_HOST is for the sensor only: it would turn the podman CLI into a remote client.
    env = podman.env
    sleeper_name, sleeper_id, _ = podman.start_sleeper(image=image)
    sensor = SentinelRun(rules, dict(env, CONTAINER_HOST=f"unix://{api_socket}"))
    sensor.wait_armed()
    time.sleep(1.0)  # let the sensor's first poll settle
    scenarios: dict[str, Scenario] = {}
    cidfiles = Path(podman.rootfs).parent / f"cid-{os.getpid()}-{time.monotonic_ns()}"
    cidfiles.mkdir()
    try:

        def window(sc: Scenario, argv: list[str], with_tty: bool) -> None:
            sc.start_ns = time.time_ns()
            if with_tty:
                sc.status, out, sc.pid = drive_pty(argv, env)
                sc.output = out.decode(errors="replace")[-2000:]
            else:
                proc = subprocess.run(argv, env=env, capture_output=True, timeout=60)
                sc.status = proc.returncode
                sc.output = (proc.stdout + proc.stderr).decode(errors="replace")[-2000:]
            sc.end_ns = time.time_ns()
            scenarios[sc.name] = sc
            time.sleep(0.7)  # a gap between windows

        def podman_run(sc_name: str, tty: bool, use_image: bool, cmd: list[str]) -> None:
            name = podman.name()
            cidfile = cidfiles / name
            source = [image] if use_image else ["--rootfs", str(podman.rootfs)]
            argv = podman.argv(
                "run", "--rm", "-it" if tty else "-i", "--network", "none", "--name", name,
                "--cidfile", str(cidfile), *source, *cmd,
            )  # fmt: skip
            sc = Scenario(sc_name, None, name, image if use_image else None)
            window(sc, argv, tty)
            sc.container_id = cidfile.read_text().strip() if cidfile.exists() else None

        podman_run("run_tty_rootfs", True, False, ["/bin/sh"])
        podman_run("run_tty_image", True, True, ["/bin/sh"])
        window(
            Scenario("exec_tty", sleeper_id, sleeper_name, image),
            podman.argv("exec", "-it", sleeper_name, "/bin/sh"),
            True,
        )
        podman_run("run_notty", False, False, ["/bin/sh", "-c", "echo no terminal"])
        window(
            Scenario("exec_notty", sleeper_id, sleeper_name, image),
            podman.argv("exec", "-i", sleeper_name, "/bin/sh", "-c", "echo no terminal"),
            False,
        )
        window(Scenario("host_tty", None, None, None), ["/bin/sh"], True)
        time.sleep(1.0)
    finally:
        sensor.stop()
    margin = 50_000_000  # 50 ms either side: event stamps vs. our wall clock
    for sc in scenarios.values():
        for alert in sensor.alerts:
            ts = parse_rfc3339_ns(alert["time"])
            assert ts is not None
            if sc.start_ns - margin <= ts <= sc.end_ns + margin:
                sc.alerts.append(alert)
    return Outcome(scenarios, "".join(sensor.stderr))


@pytest.fixture(scope="module")
def falco_outcome(podman: Podman, image: str, api_socket: str) -> Iterator[Outcome]:
    assert FALCO_RULES.exists(), FALCO_RULES
    yield _run_scenarios(podman, image, api_socket, [FALCO_RULES])
    podman.cleanup()


@pytest.fixture(scope="module")
def sentinel_outcome(podman: Podman, image: str, api_socket: str) -> Iterator[Outcome]:
    yield _run_scenarios(podman, image, api_socket, [RULES_DIR])
    podman.cleanup()


def _ours(sc: Scenario, alert: dict[str, Any]) -> bool:
    """Whether an alert is about this scenario's container or process, when the alert says
    (Sentinel's rule names container.id and proc.pid; Falco's output names neither)."""
    f = alert["output_fields"]
    if "container.id" in f and sc.container_id is not None:
        return bool(f["container.id"] == sc.container_id[:12])
    if "proc.pid" in f and sc.container_id is None and sc.pid:
        return bool(f["proc.pid"] == sc.pid)
    return True


def _hits(sc: Scenario, rule: str) -> list[dict[str, Any]]:
    return [a for a in sc.alerts if a["rule"] == rule and _ours(sc, a)]


def _only(sc: Scenario, rule: str) -> dict[str, Any]:
    hits = _hits(sc, rule)
    assert len(hits) == 1, (sc.name, sc.alerts)
    return hits[0]


TTY_SCENARIOS = ["run_tty_rootfs", "run_tty_image", "exec_tty"]
QUIET_SCENARIOS = ["run_notty", "exec_notty", "host_tty"]


@pytest.mark.parametrize("name", TTY_SCENARIOS)
def test_falco_terminal_shell_alerts_once(falco_outcome: Outcome, name: str) -> None:
    sc = falco_outcome.scenarios[name]
    assert sc.status == 0, sc
    alert = _only(sc, FALCO_RULE)
    f = alert["output_fields"]
    assert f["proc.name"] == "sh"
    assert f["proc.tty"] not in (0, None)
    assert f["proc.pname"] in ENTRYPOINT_PARENTS
    assert f["evt.type"] == "execve"
    assert alert["priority"] == "Notice"


@pytest.mark.parametrize("name", QUIET_SCENARIOS)
def test_falco_no_alert_without_terminal_or_on_host(falco_outcome: Outcome, name: str) -> None:
    sc = falco_outcome.scenarios[name]
    assert sc.status == 0, sc
    assert _hits(sc, FALCO_RULE) == []


@pytest.mark.parametrize(
    "name",
    [
        "run_tty_rootfs",
        "run_tty_image",
        "exec_tty",
    ],
)
def test_falco_alert_names_the_container(falco_outcome: Outcome, name: str) -> None:
    sc = falco_outcome.scenarios[name]
    f = _only(sc, FALCO_RULE)["output_fields"]
    assert sc.container_id is not None
    assert f.get("container.id") == sc.container_id[:12]
    assert f.get("container.name") == sc.container_name
    if sc.image:
        assert f.get("container.image") == IMAGE


@pytest.mark.parametrize("name", TTY_SCENARIOS)
def test_sentinel_rules_terminal_shell_alerts_once(sentinel_outcome: Outcome, name: str) -> None:
    sc = sentinel_outcome.scenarios[name]
    assert sc.status == 0, sc
    f = _only(sc, SENTINEL_RULE)["output_fields"]
    assert sc.container_id is not None
    assert f["container.id"] == sc.container_id[:12]
    assert f["proc.tty"] not in (0, None)


@pytest.mark.parametrize(
    "name",
    [
        "run_tty_rootfs",
        "run_tty_image",
        "exec_tty",
    ],
)
def test_sentinel_rules_alert_carries_container_metadata(
    sentinel_outcome: Outcome, name: str
) -> None:
    sc = sentinel_outcome.scenarios[name]
    f = _only(sc, SENTINEL_RULE)["output_fields"]
    assert f["container.name"] == sc.container_name
    assert f["container.image"] == sc.image


@pytest.mark.parametrize("name", ["run_notty", "exec_notty"])
def test_sentinel_rules_no_alert_without_terminal(sentinel_outcome: Outcome, name: str) -> None:
    sc = sentinel_outcome.scenarios[name]
    assert _hits(sc, SENTINEL_RULE) == []


def test_sentinel_rules_no_alert_for_host_terminal(sentinel_outcome: Outcome) -> None:
    sc = sentinel_outcome.scenarios["host_tty"]
    assert sc.pid > 0
    assert _hits(sc, SENTINEL_RULE) == []
