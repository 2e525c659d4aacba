"""What the live tests of the default rules share: one ``sentinel run`` of rules/, real podman +
runc containers, and network namespaces with TEST-NET addresses.

One ``sentinel run`` serves a whole test module (arming compiles and attaches every tracepoint
the rules use, several seconds); each test triggers its attack in a child process, checks that
the attack really changed something (a file written, memory poked, a command run by the remote
end) and finds its alert by a value only that attack has (a unique path, pid or marker).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.containers.conftest import CONF as PODMAN_CONF
from tests.helpers import log_event, sentinel_env
from tests.kernel.conftest import require_root

REPO = Path(__file__).resolve().parents[2]
SENTINEL = [sys.executable, "-m", "sentinel"]
Alert = dict[str, Any]


class SentinelRun:
    """``sentinel run`` of the default rules (``--matching all``: every rule that matches an
    event alerts, so a test sees all the rules its attack trips), alerts collected."""

    def __init__(self, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [*SENTINEL, "run", "--matching", "all", *extra],
            cwd=REPO,
            env=sentinel_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.q: queue.Queue[Alert] = queue.Queue()
        self.seen: list[Alert] = []
        self.stderr: list[str] = []
        self.armed = threading.Event()
        self._threads = [
            threading.Thread(target=self._out, daemon=True),
            threading.Thread(target=self._err, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.q.put(json.loads(line))
            except ValueError:
                self.stderr.append(f"non-JSON on stdout: {line!r}")

    def _err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip())
            if log_event(line, "armed"):
                self.armed.set()

    def _drain(self, timeout: float) -> bool:
        try:
            self.seen.append(self.q.get(timeout=timeout))
            return True
        except queue.Empty:
            return False

    def wait_for(self, pred: Callable[[Alert], bool], timeout: float = 15.0) -> list[Alert]:
        """The alerts matching ``pred``, once there is one (or after ``timeout``), plus those
        that arrive within half a second after it (one action may raise several)."""
        deadline = time.monotonic() + timeout
        while not any(pred(a) for a in self.seen) and time.monotonic() < deadline:
            self._drain(0.05)
        self.settle(0.5)
        return [a for a in self.seen if pred(a)]

    def settle(self, quiet: float = 1.0) -> list[Alert]:
        """Every alert so far, after ``quiet`` seconds without a new one."""
        while self._drain(quiet):
            pass
        return list(self.seen)

    def stop(self) -> None:
        """Stop sentinel (SIGTERM: it drains and logs its totals) and read all it wrote."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self._threads:
            t.join(10)
        while self._drain(0):
            pass


@contextlib.contextmanager
def sentinel_run(*extra: str) -> Iterator[SentinelRun]:
    require_root()
    r = SentinelRun(*extra)
    if not r.armed.wait(120):
        r.proc.kill()
        pytest.fail(f"sentinel did not arm: {r.stderr}")
    try:
        yield r
    finally:
        r.stop()


def fields(a: Alert) -> dict[str, Any]:
    out: dict[str, Any] = a["output_fields"]
    return out


def by_rule(alerts: list[Alert], rule: str) -> list[Alert]:
    return [a for a in alerts if a["rule"] == rule]


def mentions(a: Alert, text: str) -> bool:
    """Whether any output field of the alert contains ``text``."""
    return any(text in str(v) for v in fields(a).values())


def check_rule_metadata(a: Alert) -> None:
    """What every default rule's alert carries: a priority and MITRE ATT&CK tags."""
    assert a["priority"] in ("Emergency", "Alert", "Critical", "Error", "Warning", "Notice")
    assert any(t.startswith("mitre_") for t in a["tags"]), a["tags"]
    assert any(t.startswith("T") and t[1:5].isdigit() for t in a["tags"]), a["tags"]


def marker() -> str:
    return uuid.uuid4().hex[:10]


# ---- containers ---------------------------------------------------------------------------------


def busybox_rootfs(root: Path, applets: tuple[str, ...]) -> Path:
    """A root file system with busybox-static and the given applets linked to it."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(busybox):
        raise AssertionError("busybox-static is missing: run scripts/setup.sh")
    (root / "bin").mkdir(parents=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in applets:
        (root / "bin" / applet).symlink_to("busybox")
    for d in ("proc", "sys", "dev", "etc", "tmp", "mnt"):
        (root / d).mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    return root


class Containers:
    """podman + runc with a private configuration (runc, cgroupfs: see ../shared/KERNEL.md)."""

    def __init__(self, rootfs: Path, conf_dir: Path) -> None:
        for tool in ("podman", "runc"):
            if shutil.which(tool) is None:
                raise AssertionError(f"{tool} is missing: run scripts/setup.sh")
        conf = conf_dir / "containers.conf"
        conf.write_text(PODMAN_CONF)
        self.env = dict(os.environ, CONTAINERS_CONF=str(conf))
        self.rootfs = rootfs

    def run(
        self,
        script: str,
        *options: str,
        overlay: bool = False,
        network: str = "none",
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """``sh -c script`` in a new container (removed afterwards). ``overlay``: the rootfs is
        the lower layer of an overlay (``--rootfs DIR:O``), so what the container writes lands
        in an upper layer, as with an image."""
        root = f"{self.rootfs}:O" if overlay else str(self.rootfs)
        argv = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "run", "--rm"]
        argv += ["--name", f"sentinel-rules-{marker()}", "--network", network, *options]
        argv += ["--rootfs", root, "/bin/sh", "-c", script]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)


# ---- network ------------------------------------------------------------------------------------


@contextlib.contextmanager
def netns_with(*addrs: str) -> Iterator[str]:
    """A network namespace of its own whose loopback carries ``addrs`` (TEST-NET addresses):
    connections to them never leave the machine."""
    if shutil.which("ip") is None:
        raise AssertionError("iproute2 is missing: run scripts/setup.sh")
    ns = f"snrules{marker()[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        for a in addrs:
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{a}/32", "dev", "lo"], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def in_netns(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]
