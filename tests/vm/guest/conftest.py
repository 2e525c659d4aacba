"""Fixtures for the enforcement suite that runs INSIDE the BPF LSM VM (never on the host).

One LsmEnforcer (one bcc compile: ~25 s under emulation) serves the whole module; every test
clears the event list, does one operation, and checks the result and the events it caused.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sentinel.enforcement.lsm import ConnectDeny, DenyEvent, DenyPolicy, LsmEnforcer, lsm_available

CONTENT = b"protected content\n" * 64


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Events:
    """Thread-safe collector of DenyEvents delivered by the enforcer's poll thread."""

    items: list[DenyEvent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    total: int = 0  # never cleared: compared with the kernel's denial counter

    def __call__(self, ev: DenyEvent) -> None:
        with self.lock:
            self.items.append(ev)
            self.total += 1

    def clear(self) -> None:
        with self.lock:
            self.items.clear()

    def wait(self, n: int, timeout: float = 5.0, settle: float = 0.4) -> list[DenyEvent]:
        """Wait for at least ``n`` events, then a little longer so that extras show up too."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.items) >= n:
                    break
            time.sleep(0.02)
        time.sleep(settle)
        with self.lock:
            return list(self.items)


@dataclass
class Layout:
    base: Path  # on tmpfs; an ancestor of the protected directory
    prot: Path  # protected directory
    target: Path  # a protected file
    sub: Path  # protected subdirectory (empty)
    outside: Path  # writable, not protected
    prelink: Path  # hard link to target made BEFORE the policy, outside prot
    denied_exe: Path
    allowed_exe: Path
    badbin_exe: Path  # under an exec-denied directory
    pre_fd: int  # O_RDWR descriptor on target opened before the policy
    ports: dict[str, int]
    listeners: list[socket.socket]


def _listen(host: str, family: int = socket.AF_INET) -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    s.listen(16)
    return s


@pytest.fixture(scope="session")
def layout() -> Iterator[Layout]:
    assert os.environ.get("SENTINEL_IN_VM") == "1", "guest tests run only inside the VM"
    tmp = Path(os.environ.get("TMPDIR", "/run/sentinel-vm"))
    base = tmp / "lsm-base"
    shutil.rmtree(base, ignore_errors=True)
    prot = base / "prot"
    (prot / "sub").mkdir(parents=True)
    (prot / "deeper" / "a" / "b").mkdir(parents=True)
    (prot / "deeper" / "a" / "b" / "leaf.txt").write_bytes(CONTENT)
    target = prot / "target.txt"
    target.write_bytes(CONTENT)
    os.setxattr(target, "trusted.sentinel", b"before")
    outside = base / "outside"
    outside.mkdir()
    prelink = outside / "prelink.txt"
    os.link(target, prelink)
    bindir = base / "bin"
    bindir.mkdir()
    true = shutil.which("true") or "/bin/true"
    denied_exe, allowed_exe = bindir / "denied-true", bindir / "allowed-true"
    shutil.copy2(true, denied_exe)
    shutil.copy2(true, allowed_exe)
    badbin = base / "badbin"
    badbin.mkdir()
    badbin_exe = badbin / "tool"
    shutil.copy2(true, badbin_exe)
    pre_fd = os.open(target, os.O_RDWR)
    listeners = [
        _listen("127.0.0.1"),  # denied port
        _listen("127.0.0.1"),  # allowed port
        _listen("127.77.0.1"),  # inside denied CIDR
        _listen("127.78.0.1"),  # outside it
        _listen("::1", socket.AF_INET6),  # denied IPv6 address + port
    ]
    ports = {
        "denied": listeners[0].getsockname()[1],
        "allowed": listeners[1].getsockname()[1],
        "cidr_in": listeners[2].getsockname()[1],
        "cidr_out": listeners[3].getsockname()[1],
        "v6": listeners[4].getsockname()[1],
    }
    yield Layout(
        base,
        prot,
        target,
        prot / "sub",
        outside,
        prelink,
        denied_exe,
        allowed_exe,
        badbin_exe,
        pre_fd,
        ports,
        listeners,
    )
    os.close(pre_fd)
    for s in listeners:
        s.close()


def make_policy(lay: Layout) -> DenyPolicy:
    return DenyPolicy(
        protect={str(lay.prot): "protect-dir"},
        exec_exact={str(lay.denied_exe): "deny-exec"},
        exec_prefix={str(lay.badbin_exe.parent): "deny-badbin"},
        connect=[
            ConnectDeny("deny-port", "127.0.0.1/32", (lay.ports["denied"],)),
            ConnectDeny("deny-cidr", "127.77.0.0/16"),
            ConnectDeny("deny-v6", "::1/128", (lay.ports["v6"],)),
        ],
    )


@pytest.fixture(scope="session")
def events() -> Events:
    return Events()


@pytest.fixture(scope="session")
def enforcer(layout: Layout, events: Events) -> Iterator[LsmEnforcer]:
    ok, why = lsm_available()
    # Must fail, not skip: the whole point of the VM is that BPF LSM works there.
    assert ok, why
    t0 = time.monotonic()
    enf = LsmEnforcer(make_policy(layout), events)
    print(f"\nLsmEnforcer loaded in {time.monotonic() - t0:.1f} s; hooks: {enf.attached_hooks}")
    print(f"hooks this kernel lacks: {enf.missing_hooks}")
    yield enf
    enf.close()


@pytest.fixture
def ev(enforcer: LsmEnforcer, events: Events) -> Events:
    events.wait(0, timeout=0, settle=0.2)  # let stragglers from the previous test arrive
    events.clear()
    return events


Op = Callable[[], object]


def denials(alerts: queue.Queue[dict[str, Any]], wait: float = 3.0) -> list[dict[str, Any]]:
    """The alerts of ``sentinel run`` (parsed stdout lines) that arrive within ``wait`` seconds,
    keeping the denials (``"action": "deny"``)."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            out.append(alerts.get(timeout=0.2))
        except queue.Empty:
            continue
    return [a for a in out if a.get("action") == "deny"]


def follow(
    proc: subprocess.Popen[str], alerts: queue.Queue[dict[str, Any]], stderr: list[str]
) -> threading.Event:
    """Read a ``sentinel run``'s stdout (alerts, into ``alerts``) and stderr (into ``stderr``)
    in two threads; the returned event is set once it logs that it is armed."""
    armed = threading.Event()

    def read_out() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                alerts.put(json.loads(line))

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr.append(line)
            if '"armed"' in line:  # the structlog JSON record {"event": "armed", ...}
                armed.set()

    threading.Thread(target=read_out, daemon=True).start()
    threading.Thread(target=read_err, daemon=True).start()
    return armed
