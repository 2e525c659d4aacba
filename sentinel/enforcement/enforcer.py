"""What the two enforcers share: the policy maps, the event ring, and turning events into
:class:`DenyEvent`.

:class:`~sentinel.enforcement.lsm.LsmEnforcer` (BPF LSM hooks that deny) and
:class:`~sentinel.enforcement.kill.KillEnforcer` (tracepoint programs that kill, where BPF
LSM is missing) load different programs over the same maps and the same event struct
(:mod:`.abi`), both in a short-lived loader child (:mod:`sentinel.kernel.loader`), so this
process holds map and link fds only and never imports bcc.
"""

from __future__ import annotations

import ctypes
import ipaddress
import mmap
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import structlog

from sentinel.enforcement.abi import ACTIONS, DEV_BLOCK, DEV_CHAR, HOOKS, NAME_LEN, OPERATIONS
from sentinel.enforcement.abi import DenyEvent as RawEvent
from sentinel.enforcement.lsm_maps import POLICY_MAPS, MapsError, PolicyMaps, check_size
from sentinel.enforcement.policy import DenyPolicy, Ident, MapPlan, build_plan
from sentinel.kernel.loader import Loaded, percpu_u64, possible_cpus
from sentinel.kernel.ringbuf import RingBufferReader

_log = structlog.get_logger("sentinel.lsm")

OP_NAMES = {i: name for i, name in enumerate(OPERATIONS, start=1)}
NET_OPS = ("connect", "sendmsg", "sctp_connect")
# Maps whose fds an enforcer keeps: the policy, the events, the counters.
CHILD_MAPS = (*POLICY_MAPS, "deny_events", "counters")


class EnforcerError(RuntimeError):
    """Enforcement cannot be set up (the message says why and what to do)."""


@dataclass(frozen=True, slots=True)
class DenyEvent:
    """One operation stopped in the kernel. ``path`` for files, devices and execs, the address
    for network denials. ``action``: ``deny`` (BPF LSM: it did not happen) or ``kill`` (the
    process was sent SIGKILL; see sentinel.enforcement.kill for what that guarantees)."""

    rule: str
    hook: str
    operation: str
    pid: int
    tid: int
    ppid: int
    uid: int
    comm: str
    time_ns: int
    path: str | None = None
    address: str | None = None
    port: int | None = None
    action: str = "deny"

    def fields(self) -> dict[str, Any]:
        """The denial as a flat Falco-style event (what the engine and alerts consume)."""
        out: dict[str, Any] = {
            "evt.type": OPERATIONS.get(self.operation, self.operation),
            "evt.time": self.time_ns,
            "proc.pid": self.pid,
            "thread.tid": self.tid,
            "proc.ppid": self.ppid,
            "proc.name": self.comm,
            "user.uid": self.uid,
            "sentinel.lsm.hook": self.hook,
            "sentinel.lsm.operation": self.operation,
        }
        if self.path is not None:
            out["fd.name"] = self.path
            if self.operation.startswith("exec"):
                out["proc.exepath"] = self.path
        if self.address is not None:
            out["fd.sip"] = self.address
            out["fd.sport"] = self.port
            out["fd.name"] = (
                f"[{self.address}]:{self.port}"
                if ":" in self.address
                else f"{self.address}:{self.port}"
            )
        return out


def _names(ev: RawEvent) -> Iterator[str]:
    raw = bytes(ev.names)
    for i in range(min(ev.nnames, len(raw) // NAME_LEN)):
        chunk = raw[i * NAME_LEN : (i + 1) * NAME_LEN]
        yield chunk.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def decode(ev: RawEvent, plan: MapPlan, time_ns: int | None = None) -> DenyEvent:
    """An event of ``plan``'s generation as a DenyEvent (paths from the plan's identities)."""
    rules = plan.rules
    rule = rules[ev.rule - 1] if 0 < ev.rule <= len(rules) else f"#{ev.rule}"
    op = OP_NAMES.get(ev.op, f"op{ev.op}")
    common: dict[str, Any] = {
        "rule": rule,
        "hook": HOOKS.get(ev.hook, f"hook{ev.hook}"),
        "operation": op,
        "pid": ev.pid,
        "tid": ev.tid,
        "ppid": ev.ppid,
        "uid": ev.uid,
        "comm": ev.comm.decode("utf-8", "replace"),
        "time_ns": time_ns if time_ns is not None else time.time_ns(),
        "action": ACTIONS.get(ev.action, f"action{ev.action}"),
    }
    if op in NET_OPS:
        if not ev.family:  # failed closed: too many addresses to check
            return DenyEvent(**common)
        addr = ipaddress.IPv6Address(bytes(ev.addr))
        mapped = addr.ipv4_mapped
        if mapped:
            # An AF_INET6 socket's IPv4-mapped target, written the same on every Python
            # (3.13 prints ::ffff:127.0.0.1, older ones ::ffff:7f00:1).
            shown = str(mapped) if ev.family == socket.AF_INET else f"::ffff:{mapped}"
        else:
            shown = str(addr)
        return DenyEvent(**common, address=shown, port=ev.port)
    below = list(reversed(list(_names(ev))))
    if op == "exec_memfd":
        return DenyEvent(**common, path=below[-1] if below else "memfd:")
    if ev.ident_ino == 0:
        dev = plan.dev_paths.get((DEV_BLOCK, ev.ident_dev)) or plan.dev_paths.get(
            (DEV_CHAR, ev.ident_dev)
        )
        if dev is not None:
            return DenyEvent(**common, path=dev)
        # No identity: an exec the walk could not place, or a file no policy path names
        # (in a container's writable layer): what the walk saw, from where it stopped.
        base = "/..." if ev.truncated or (op == "exec" and not below) else "/"
        return DenyEvent(**common, path=os.path.join(base, *below))
    known = plan.ident_paths.get(Ident(ev.ident_dev, ev.ident_ino))
    base = known or f"<{ev.ident_dev >> 20}:{ev.ident_dev & 0xFFFFF} inode {ev.ident_ino}>"
    if ev.truncated:
        below.insert(0, "...")
    return DenyEvent(**common, path=os.path.join(base, *below) if below else base)


class Enforcer:
    """Policy maps + event ring of one loaded program set; subclasses load and attach.

    Events are delivered to ``on_deny`` from a background thread unless ``thread=False``,
    in which case the caller calls :meth:`poll`. ``lost_events`` counts stops whose event did
    not fit the ring buffer (the operation was still stopped).
    """

    def __init__(
        self,
        policy: DenyPolicy | MapPlan,
        on_deny: Callable[[DenyEvent], None],
        *,
        thread: bool = True,
        ring_pages: int = 64,
    ) -> None:
        self.plan: MapPlan = policy if isinstance(policy, MapPlan) else build_plan(policy)
        try:
            check_size(self.plan)
        except MapsError as exc:
            raise self.error(str(exc)) from None
        self._on_deny = on_deny
        self._ring_pages = ring_pages
        self._closed = False
        self.callback_errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reader: RingBufferReader | None = None
        self._thread: threading.Thread | None = None
        self._want_thread = thread
        self._loaded: Loaded | None = None

    error: type[Exception] = EnforcerError

    def _start(self, loaded: Loaded, attach: Callable[[], list[str]]) -> None:
        """Fill the maps of ``loaded``, then ``attach`` (all programs or none), then scan
        again and start delivering events."""
        self._loaded = loaded
        try:
            self.maps = PolicyMaps({m: loaded.maps[m] for m in POLICY_MAPS})
            self.maps.install(self.plan)
            self._reader = RingBufferReader(
                loaded.maps["deny_events"], self._ring_pages * mmap.PAGESIZE
            )
            self._ncpus = possible_cpus()
            self.attached = attach()
            self.maps.after_attach()
        except MapsError as exc:
            self._abort()
            raise self.error(str(exc)) from None
        except BaseException:
            self._abort()
            raise
        if self._want_thread:
            self._thread = threading.Thread(target=self._run, name="sentinel-enforce", daemon=True)
            self._thread.start()

    def _abort(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._loaded is not None:
            self._loaded.close()  # closing the link fds detaches, the last fds unload

    # -- maps ------------------------------------------------------------------------------

    def update(self, policy: DenyPolicy | MapPlan) -> None:
        """Replace the enforced policy live (see :class:`.lsm_maps.PolicyMaps`).

        Raises PolicyError (a path that cannot be resolved) or the enforcer's error (too
        large, or a map refused an entry); either way the old policy is still enforced. An
        empty policy is allowed: the programs stay attached and return at once.
        """
        plan = policy if isinstance(policy, MapPlan) else build_plan(policy)
        # Not under self._lock: the poll thread holds it while delivering events, and under a
        # storm of denials it would hardly ever let go (measured: a reload waited > 5 min).
        if self._closed:
            raise self.error("the enforcer is closed")
        try:
            self.maps.update(plan)
        except MapsError as exc:
            raise self.error(str(exc)) from None
        self.plan = plan

    @property
    def generation(self) -> int:
        """How many times the policy was replaced since load."""
        return self.maps.gen

    # -- events ----------------------------------------------------------------------------

    def _handle(self, raw: bytes) -> None:
        if len(raw) < ctypes.sizeof(RawEvent):
            self.callback_errors += 1
            _log.error("deny event too short", size=len(raw))
            return
        ev = RawEvent.from_buffer_copy(raw)
        # The event names a rule index of the generation that stopped it (maybe not current).
        decoded = decode(ev, self.maps.plan_for(ev.gen))
        try:
            self._on_deny(decoded)
        except Exception:
            # A failing consumer must not stop delivery (the kernel keeps stopping regardless).
            self.callback_errors += 1
            _log.exception("deny callback failed", rule=decoded.rule, hook=decoded.hook)

    def poll(self, timeout_ms: int = 100) -> None:
        """Deliver pending events to ``on_deny`` (only needed with ``thread=False``)."""
        reader = self._reader
        if reader is None or self._closed:
            return
        reader.wait(timeout_ms)
        self._consume()

    def _consume(self) -> None:
        with self._lock:
            if self._closed or self._reader is None:
                return
            batch = self._reader.read_batch()
        for raw in batch:
            self._handle(raw)

    def _run(self) -> None:
        reported = 0
        next_check = time.monotonic() + 1.0
        while not self._stop.is_set():
            self.poll(100)
            if time.monotonic() >= next_check:
                # Lost events are never silent: the operations were stopped, their alerts not.
                next_check = time.monotonic() + 1.0
                lost = self.lost_events
                if lost > reported:
                    _log.warning(
                        "deny events lost (ring buffer full); the operations were stopped",
                        lost_since_last=lost - reported,
                        lost_total=lost,
                    )
                    reported = lost

    def _counter(self, idx: int) -> int:
        assert self._loaded is not None
        return sum(percpu_u64(self._loaded.maps["counters"], idx, self._ncpus))

    @property
    def lost_events(self) -> int:
        """Stops whose event could not be reserved in the ring buffer."""
        return self._counter(0)

    @property
    def denials(self) -> int:
        """Operations stopped in the kernel since load."""
        return self._counter(1)

    def programs(self) -> dict[str, int]:
        """The programs' fds (LSM: by hook; kill: by function), for their kernel statistics
        (sentinel.kernel.bpfstats); empty once closed."""
        loaded = self._loaded
        return {} if loaded is None or self._closed else dict(loaded.progs)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Detach and unload every program: enforcement stops. Idempotent."""
        if self._closed:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with suppress(Exception):
            self._consume()
        with self._lock:
            self._closed = True
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            if self._loaded is not None:
                self._loaded.close()  # link fds first: detaches every program

    def __enter__(self) -> Enforcer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
