"""Helpers the generated predicate code calls (jinja2 keeps the same split: a compiler that
writes Python, and a small runtime module the generated code imports names from).

Every helper takes ``None`` for "the field has no value" and returns ``None`` in turn, so a
check on a missing value is false however deep the transformers go.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import os
from collections.abc import Iterable, Mapping
from typing import Any

from sentinel.fields import FIELDS, Kind

# proc.aname[0] is the process itself: the field that holds its own value.
SELF_FIELD = {
    "proc.aname": "proc.name",
    "proc.aexe": "proc.exe",
    "proc.aexepath": "proc.exepath",
    "proc.acmdline": "proc.cmdline",
    "proc.apid": "proc.pid",
}


def field_arg(e: Mapping[str, Any], name: str, arg: str, key: str) -> Any:
    """Value of ``name[arg]``: the event's own ``name[arg]`` key wins, else derived."""
    v = e.get(key)
    if v is not None:
        return v
    info = FIELDS.get(name)
    if info is not None and info.kind is Kind.ANCESTORS:
        idx = int(arg)
        if idx == 0:
            return e.get(SELF_FIELD[name])
        chain = e.get(name)
        if chain is not None and len(chain) >= idx:
            return chain[idx - 1]
        return None
    if name == "evt.arg":
        return e.get(f"evt.arg.{arg}")
    if name in _MOUNT_PART:
        return _mount(e, name, arg)
    return None


# container.mount* fields -> the part of 'source:dest:mode:rdwr:propagation' they answer.
_MOUNT_PART = {
    "container.mount": -1,
    "container.mount.source": 0,
    "container.mount.dest": 1,
    "container.mount.mode": 2,
    "container.mount.rdwr": 3,
    "container.mount.propagation": 4,
}


def _split_mount(m: str) -> list[str] | None:
    """'src:dest:mode:rdwr:prop' -> its five parts. The last three never hold a colon, and the
    destination is an absolute path, so the source ends at the last ':/': a colon inside the
    source (a host path may have one) stays in it."""
    head = m.rsplit(":", 3)
    if len(head) != 4:
        return None
    cut = head[0].rfind(":/")
    if cut < 0:
        return None
    return [head[0][:cut], head[0][cut + 1 :], *head[1:]]


def _mount(e: Mapping[str, Any], name: str, arg: str) -> Any:
    """Falco's container.mount* fields: ``[N]`` the N-th mount; ``[glob]`` the first mount
    whose source matches (whose destination, for container.mount.source). container.mount
    answers ``none`` when no mount matches, the others have no value."""
    from sentinel.compiler.values import glob_to_regex

    mounts = e.get("container.mounts")
    if not isinstance(mounts, str):
        return None
    part = _MOUNT_PART[name]
    parsed = [p for p in (_split_mount(m) for m in mounts.split(",") if m) if p is not None]
    found: list[str] | None = None
    if arg.isdigit():
        idx = int(arg)
        found = parsed[idx] if idx < len(parsed) else None
    else:
        pat = glob_to_regex(arg)
        key = 1 if name == "container.mount.source" else 0
        found = next((p for p in parsed if pat.match(p[key])), None)
    if found is None:
        return "none" if name == "container.mount" else None
    return ":".join(found) if part < 0 else found[part]


def _each(v: Any, fn: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, list | tuple):
        return [fn(x) for x in v]
    return fn(v)


def t_tolower(v: Any) -> Any:
    return _each(v, lambda x: str(x).lower())


def t_toupper(v: Any) -> Any:
    return _each(v, lambda x: str(x).upper())


def t_basename(v: Any) -> Any:
    return _each(v, lambda x: os.path.basename(str(x)))


def _b64(x: Any) -> Any:
    try:
        return base64.b64decode(str(x), validate=False).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return None


def t_b64(v: Any) -> Any:
    return _each(v, _b64)


def t_len(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, list | tuple | str | bytes):
        return len(v)
    return len(str(v))


def t_join(sep: str, v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, list | tuple):
        return sep.join(str(x) for x in v)
    return str(v)


def t_concat(*vs: Any) -> Any:
    if any(v is None for v in vs):
        return None
    return "".join(str(v) for v in vs)


def pmatch(v: str, prefixes: tuple[str, ...]) -> bool:
    """Path-prefix match: /etc matches /etc and /etc/x, not /etcx."""
    for p in prefixes:
        if v == p:
            return True
        base = p if p.endswith("/") else p + "/"
        if v.startswith(base):
            return True
    return False


@functools.lru_cache(maxsize=4096)
def flags(v: str) -> frozenset[str]:
    return frozenset(f.strip() for f in v.split("|"))


@functools.lru_cache(maxsize=65536)
def ip(v: Any) -> Any:
    try:
        return ipaddress.ip_address(v)
    except ValueError:
        return None


def ip_eq(v: Any, want: Any) -> bool:
    """Equality of an IP field with an address, or membership when ``want`` is a network."""
    a = ip(v)
    if a is None:
        return False
    if isinstance(want, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return a.version == want.version and a in want
    return bool(a == want)


def ip_in(v: Any, wants: Iterable[Any]) -> bool:
    return any(ip_eq(v, w) for w in wants)


def as_bytes(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, bytearray | memoryview):
        return bytes(v)
    return str(v).encode("utf-8", "surrogateescape")


def as_list(v: Any) -> Any:
    if v is None or isinstance(v, list | tuple):
        return v
    return [v]
