"""Records as the BPF side would emit them, built in Python: the sensor's decoding, field by
field, is testable on any machine, without root or a kernel (libsinsp's ``events_*.ut.cpp``
build their events the same way).

``build("openat", pid=42, path="shadow", base="/etc", res=3)`` gives the bytes of a ``file_ev``
record; header members (``pid``, ``comm``, ``uid``...; the header's flag word is ``hdr_flags``)
and the family's scalar members are named as in the layout, and each family's ``encode`` turns
readable values (a path, a walk, argv, an address) into its raw members.
"""

from __future__ import annotations

import struct
from typing import Any

from sentinel.events import BY_NAME
from sentinel.events.common import HDR
from sentinel.events.schema import C_TYPES, Layout

HEADER_DEFAULTS: dict[str, Any] = {
    "ts": 1_000_000_000,
    "pid": 4242,
    "tid": 4242,
    "ppid": 1,
    "uid": 0,
    "gid": 0,
    "loginuid": 1000,
    "hdr_flags": 0,
    "cgroup_id": 1,
    "comm": "tester",
    "tcomm": "tester",
}


def _pack(layout: Layout, values: dict[str, Any], out: bytearray) -> None:
    for m in layout.members:
        off = layout.offsets[m.name]
        v = values.pop(m.name, None)
        if v is None:
            continue
        if m.ctype == "char":
            raw = v.encode("utf-8", "surrogateescape") if isinstance(v, str) else bytes(v)
            if len(raw) > m.size:
                raise ValueError(f"{layout.name}.{m.name}: {len(raw)} bytes do not fit {m.size}")
            out[off : off + len(raw)] = raw
        else:
            struct.pack_into("<" + C_TYPES[m.ctype][0], out, off, v)


def build(evt_type: str, **values: Any) -> bytes:
    """The bytes of one record of ``evt_type`` (unknown names raise, so a typo fails)."""
    t = BY_NAME[evt_type]
    fam = t.family
    assert fam is not None
    hdr = {**HEADER_DEFAULTS, "type": t.code}
    for k in list(values):
        if k in hdr:
            hdr[k] = values.pop(k)
    hdr["flags"] = hdr.pop("hdr_flags")
    if fam.encode is not None:
        values = fam.encode(values)
    out = bytearray(fam.layout.size)
    _pack(HDR, hdr, out)
    _pack(fam.layout, values, out)
    if values:
        raise ValueError(f"{evt_type}: unknown record values {sorted(values)}")
    return bytes(out)
