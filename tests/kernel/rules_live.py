"""What the live tests of the default rules share: one ``sentinel run`` of rules/, real podman +
runc containers, and network namespaces with TEST-NET addresses.

One ``sentinel run`` serves a whole test module (arming compiles and attaches every tracepoint
the rules use, several seconds); each test triggers its attack in a child process, checks that
the attack really changed something (a file written, memory poked, a command run by the remote
end) and finds its alert by a value only that attack has (a unique path, pid or marker).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.kernel.conftest import require_root
from tests.kernel.podman_kit import Podman
from tests.live import REPO, Alert, LiveRun, netns_with
from tests.live import sentinel_run as live_run

__all__ = ["REPO", "Alert", "LiveRun", "netns_with"]


@contextlib.contextmanager
def sentinel_run(*extra: str) -> Iterator[LiveRun]:
    """``sentinel run`` of the default rules (``--matching all``: every rule that matches an
    event alerts, so a test sees all the rules its attack trips), armed."""
    require_root()
    with live_run("--matching", "all", *extra) as r:
        yield r


def wait_for(run: LiveRun, pred: Callable[[Alert], bool], timeout: float = 15.0) -> list[Alert]:
    """The alerts matching ``pred``, once there is one (or after ``timeout``), plus those that
    arrive until the stream has been quiet half a second (one action may raise several)."""
    run.wait(pred, timeout=timeout)
    run.settle(0.5)
    return run.matching(pred)


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
    """podman + runc with a private configuration (podman_kit: runc, cgroupfs, see
    ../shared/KERNEL.md), running shell scripts on one root file system."""

    def __init__(self, rootfs: Path, conf_dir: Path) -> None:
        self.podman = Podman(conf_dir)
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
        argv = self.podman.argv("run", "--rm", "--name", f"sentinel-rules-{marker()}")
        argv += ["--network", network, *options, "--rootfs", root, "/bin/sh", "-c", script]
        return subprocess.run(
            argv, env=self.podman.env, capture_output=True, text=True, timeout=timeout
        )


# ---- network ------------------------------------------------------------------------------------


def in_netns(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]
