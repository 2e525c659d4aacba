"""Domain names for ``fd.sip.name``, ``fd.cip.name``, ``fd.lip.name`` and ``fd.rip.name``.

Falco's rules name servers by domain (``fd.sip.name in (miner_domains)``,
``fd.sip.name = "kubernetes.default.svc.cluster.local"``): libsinsp resolves every name a rule
mentions and compares the event's address against the answers, refreshing them in the
background (10 s, doubling to 320 s while the answer stays the same). Sentinel does the same
with the system resolver (``getaddrinfo``: /etc/hosts, DNS, whatever nsswitch.conf says), in a
thread of its own, so an event never waits on DNS: until a name's first answer arrives, no
address has that name. The field's value is the list of watched names whose latest answer
holds the address (``=``/``in`` hold when one of them is the rule's, ``!=`` when none is),
which is libsinsp's comparison; an address no rule's name resolves to has no name (libsinsp
would print a reverse lookup of its cache, which holds the same names).

A name that stops resolving keeps its last answer (a resolver outage must not blind a rule);
a changed answer replaces the old one at the next refresh.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog

log = structlog.get_logger("sentinel.dns")

BASE_REFRESH_S = 10.0
MAX_REFRESH_S = 320.0
# The fields, and the address field each names.
NAME_FIELDS = {
    "fd.sip.name": "fd.sip",
    "fd.cip.name": "fd.cip",
    "fd.lip.name": "fd.lip",
    "fd.rip.name": "fd.rip",
}

Resolve = Callable[[str], frozenset[str]]


def system_resolve(name: str) -> frozenset[str]:
    """The addresses the system resolver gives for ``name`` (raises OSError on failure)."""
    infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    return frozenset(_norm(str(info[4][0])) for info in infos)


def _norm(ip: str) -> str:
    a = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return str(a)


class DomainNames:
    """The watched names and their latest answers; ``names_of(ip)`` for the fields."""

    def __init__(
        self,
        resolve: Resolve = system_resolve,
        base_refresh_s: float = BASE_REFRESH_S,
        max_refresh_s: float = MAX_REFRESH_S,
    ) -> None:
        self._resolve = resolve
        self._base = base_refresh_s
        self._max = max_refresh_s
        self._lock = threading.Lock()
        self._answers: dict[str, frozenset[str]] = {}
        self._due: dict[str, tuple[float, float]] = {}  # name -> (next refresh, interval)
        self._by_ip: dict[str, tuple[str, ...]] = {}
        self._failing: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, names: Iterable[str]) -> None:
        """Resolve these names (lower case, as DNS compares) from now on."""
        with self._lock:
            for n in names:
                n = n.lower().rstrip(".")
                if n and n not in self._due:
                    self._due[n] = (0.0, self._base)
        self._wake.set()

    @property
    def watched(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._due)

    def names_of(self, ip: Any) -> list[str]:
        """The watched names whose latest answer holds ``ip`` (sorted)."""
        if not isinstance(ip, str) or not self._by_ip:
            return []
        try:
            key = _norm(ip)
        except ValueError:
            return []
        return list(self._by_ip.get(key, ()))

    def refresh_due(self, now: float | None = None) -> float:
        """Resolve the names that are due; returns seconds until the next is."""
        now = time.monotonic() if now is None else now
        with self._lock:
            due = [(n, iv) for n, (at, iv) in self._due.items() if at <= now]
        for name, interval in due:
            try:
                got = self._resolve(name)
                self._failing.discard(name)
            except OSError as exc:
                if name not in self._failing:  # once per failure streak, not every refresh
                    log.warning("dns_resolve_failed", name=name, error=str(exc))
                    self._failing.add(name)
                got = None
            with self._lock:
                old = self._answers.get(name)
                if got is not None and got != old:
                    self._answers[name] = got
                    interval = self._base
                elif old is not None or got is not None:
                    interval = min(interval * 2, self._max)
                self._due[name] = (now + interval, interval)
            if got is not None and got != old:
                self._reindex()
        with self._lock:
            nxt = min((at for at, _ in self._due.values()), default=now + self._max)
        return max(nxt - now, 0.0)

    def _reindex(self) -> None:
        with self._lock:
            by_ip: dict[str, list[str]] = {}
            for name, ips in self._answers.items():
                for ip in ips:
                    by_ip.setdefault(ip, []).append(name)
            self._by_ip = {ip: tuple(sorted(ns)) for ip, ns in by_ip.items()}

    # -- the background thread --------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sentinel-dns", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self.refresh_due()
            self._wake.wait(wait)
            self._wake.clear()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


# The process's one set of names: the compiler's rules register theirs (sentinel.app), the
# fields read it.
NAMES = DomainNames()


def name_getters(getters: dict[str, Any]) -> dict[str, Any]:
    """``fd.*ip.name`` getters for an event type whose getters have the address fields."""
    out: dict[str, Any] = {}
    for name, ip_field in NAME_FIELDS.items():
        ip_get = getters.get(ip_field)
        if ip_get is not None:
            out[name] = _named(ip_get)
    return out


def _named(ip_get: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda e: NAMES.names_of(ip_get(e))
