"""Typing of right-hand values: text as written in a rule -> the Python value compared.

Done once at compile time, so ``fd.num >= abc`` fails when the rules load, with the rule's
position, and the per-event code compares ready-made ints, sets, networks and regexes.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from sentinel.fields import FieldType
from sentinel.fields.registry import NUMERIC

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_number(text: str) -> int | float:
    t = text.strip()
    try:
        if t.lower().startswith(("0x", "-0x", "+0x")):
            return int(t, 16)
        return int(t, 10)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("true", "1"):
        return True
    if t in ("false", "0"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true or false)")


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def parse_net(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP network (CIDR) or address") from None


def parse_hex_bytes(text: str) -> bytes:
    try:
        return bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a hex byte string") from None


def convert(text: str, ftype: FieldType, op: str) -> Any:
    """One value for a check ``<field of ftype> op <text>``. Raises ValueError."""
    if op in ("bcontains", "bstartswith"):
        return parse_hex_bytes(text)
    if op in ("glob", "iglob", "regex", "contains", "icontains", "startswith", "endswith"):
        return text
    if op == "pmatch":
        return text
    if ftype in NUMERIC:
        return parse_number(text)
    if ftype is FieldType.BOOL:
        return parse_bool(text)
    if ftype is FieldType.IPADDR:
        if "/" in text:
            return parse_net(text)
        return parse_ip(text)
    if ftype is FieldType.IPNET:
        return parse_net(text)
    return text


def glob_to_regex(pattern: str, ignore_case: bool = False) -> re.Pattern[str]:
    """fnmatch(3) without FNM_PATHNAME: ``*`` and ``?`` also match ``/``; ``[!..]`` and
    ``[^..]`` negate; a backslash escapes the next character."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\" and i < n:
            out.append(re.escape(pattern[i]))
            i += 1
        elif c == "[":
            j = i
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append("\\[")
                continue
            body = pattern[i:j]
            i = j + 1
            neg = body[:1] in ("!", "^")
            if neg:
                body = body[1:]
            body = body.replace("\\", "\\\\")
            out.append(f"[{'^' if neg else ''}{body}]")
        else:
            out.append(re.escape(c))
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.compile("".join(out) + r"\Z", flags)
