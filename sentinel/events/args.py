"""``evt.arg.*``, ``evt.args``, ``evt.rawres``/``evt.res``/``evt.failed``, from each event
type's parameter list, rendered as libsinsp renders them.

libsinsp gives each argument a raw text and, for some types, a *resolved* text: an fd's file
("<f>/etc/passwd"), an errno's name, flag names, a relative path joined to its directory.
``evt.arg.<name>`` is the resolved text when there is one, else the raw text; ``evt.args``
joins ``name=raw`` or ``name=raw(resolved)``. The result of the syscall is the event type's
first parameter when it is an ERRNO, FD or PID (Falco's ``evt.rawres``).
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Any

from sentinel.events.common import AT_FDCWD, group_name, res_text, user_name
from sentinel.events.schema import EventType, Getters, Param, ParamType

RESULT_TYPES = (ParamType.ERRNO, ParamType.FD, ParamType.PID)
L4_CHAR = {"tcp": "t", "udp": "u", "icmp": "i", "raw": "r"}


# libsinsp's mode_flags (PT_MODE), in its order.
MODE_NAMES = [
    (0o1, "S_IXOTH"), (0o2, "S_IWOTH"), (0o4, "S_IROTH"), (0o10, "S_IXGRP"), (0o20, "S_IWGRP"),
    (0o40, "S_IRGRP"), (0o100, "S_IXUSR"), (0o200, "S_IWUSR"), (0o400, "S_IRUSR"),
    (0o1000, "S_ISVTX"), (0o2000, "S_ISGID"), (0o4000, "S_ISUID"),
]  # fmt: skip


def _octal(v: int) -> str:
    """C's %#o: "0755", "0"."""
    return f"0{v:o}" if v else "0"


def flags_text(value: int, names: Sequence[tuple[int, str]]) -> str:
    """libsinsp's flag rendering: each named bit set, in table order, "A|B"; a name whose
    value is 0 only when the whole value is 0; multi-bit names consume their bits."""
    parts: list[str] = []
    rest = value
    for bit, name in names:
        if (bit == 0 and value == 0) or (bit and rest & bit == bit and rest):
            parts.append(name)
            rest &= ~bit
            if bit == value:
                break
    return "|".join(parts)


def enum_text(value: int, names: Sequence[tuple[int, str]]) -> str:
    """libsinsp's enum rendering: every name of the value ("AF_LOCAL|AF_UNIX"), or ""."""
    return "|".join(n for v, n in names if v == value)


def render(p: Param, e: Any) -> tuple[str, str] | None:
    """(raw text, resolved text or "") of a parameter, or None when its value is unknown."""
    value = p.get(e)
    if value is None:
        return None
    t = p.type
    if t in (ParamType.PATH, ParamType.RELPATH):
        text = str(value)
        if not text or text.startswith("/"):
            return text, ""
        full = p.resolve(e) if p.resolve is not None else None
        return text, full or ""
    if t is ParamType.FD:
        fd = int(value)
        if fd == AT_FDCWD:
            return str(fd), "AT_FDCWD"
        if fd < 0:
            return str(fd), errno.errorcode.get(-fd, "")
        if fd == e.get("fd.num") and e.get("fd.name") is not None:
            # "<typechar[l4 char]>name", as libsinsp's render_fd: "<4t>1.2.3.4:5->6.7.8.9:80"
            proto = L4_CHAR.get(e.get("fd.l4proto") or "", "")
            return str(fd), f"<{e.get('fd.typechar') or ''}{proto}>{e.get('fd.name')}"
        return str(fd), ""
    if t is ParamType.ERRNO:
        v = int(value)
        return str(v), (errno.errorcode.get(-v, "") if v < 0 else "")
    if t is ParamType.PID:
        v = int(value)
        proc = e.table.get(v) if v > 0 else None
        return str(v), (proc.comm if proc is not None else "")
    if t in (ParamType.UID, ParamType.GID):
        v = int(value) & 0xFFFFFFFF
        name = user_name(v) if t is ParamType.UID else group_name(v)
        return str(v), name or ""
    if t is ParamType.OCTAL:
        return _octal(int(value)), ""
    if t is ParamType.MODE:
        v = int(value)
        return _octal(v), flags_text(v, MODE_NAMES)
    if t is ParamType.HEX:
        return f"{int(value):#x}", ""
    if t is ParamType.FLAGS:
        v = int(value)
        return str(v), (p.text(v) if p.text is not None else flags_text(v, p.names))
    if t is ParamType.ENUM:
        return str(int(value)), enum_text(int(value), p.names)
    return str(value), ""


def arg_text(p: Param, e: Any) -> str | None:
    """``evt.arg.<name>``: the resolved text when there is one, else the raw text."""
    r = render(p, e)
    if r is None:
        return None
    return r[1] or r[0]


def args_text(params: Sequence[Param], e: Any) -> str:
    """``evt.args``: ``name=raw`` or ``name=raw(resolved)``, space-separated."""
    out = []
    for p in params:
        r = render(p, e)
        if r is None:
            continue
        raw, resolved = r
        out.append(f"{p.name}={raw}({resolved})" if resolved else f"{p.name}={raw}")
    return " ".join(out)


def _arg_getter(p: Param) -> Any:
    return lambda e: arg_text(p, e)


def arg_getters(t: EventType) -> Getters:
    """The argument fields of one event type (its parameters decide them all)."""
    g = Getters()
    params = tuple(t.params)
    for p in params:
        g.add(f"evt.arg.{p.name}", _arg_getter(p))
    g.add("evt.args", lambda e: args_text(params, e))
    if t.returns and params and params[0].type in RESULT_TYPES:
        res = params[0]
        g.add("evt.rawres", lambda e: _int_or_none(res.get(e)))
        g.add("evt.res", lambda e: None if (v := res.get(e)) is None else res_text(int(v)))
        g.add("evt.failed", lambda e: None if (v := res.get(e)) is None else int(v) < 0)
    return g


def indexed_arg(t: EventType, e: Any, arg: str) -> str | None:
    """``evt.arg[N]`` (by position) or ``evt.arg[name]``."""
    params = list(t.params)
    if arg.isdigit():
        i = int(arg)
        return arg_text(params[i], e) if i < len(params) else None
    p = next((p for p in params if p.name == arg), None)
    return None if p is None else arg_text(p, e)


def _int_or_none(v: Any) -> int | None:
    return None if v is None else int(v)
