"""Write the compiler's filter tables into the BPF maps of ``bpf/filter.h``.

The layout of every key is defined once, here and in filter.h, and checked by the real-kernel
tests against the Python model in :mod:`sentinel.compiler.kernelmaps`. Loading is atomic from
the BPF programs' point of view: the new tables go into the inactive slot, then the generation
counter is published; programs that read the old generation keep consistent old tables.
"""

from __future__ import annotations

import ctypes
import ipaddress
from typing import Any

from sentinel.compiler.kernelmaps import NWORDS, FamilyTables, KernelTables
from sentinel.compiler.kernelplan import Dim
from sentinel.paths import BPF_DIR

FAMILY_CODES = {"exec": 0, "open": 1, "connect": 2}
DIM_CODES = {
    Dim.COMM: 0,
    Dim.UID: 1,
    Dim.PATH: 2,
    Dim.PATH_PREFIX: 3,
    Dim.PATH_SUFFIX: 4,
    Dim.OPEN_WRITE: 5,
    Dim.OPEN_READ: 6,
    Dim.DPORT: 7,
    Dim.DADDR: 8,
    Dim.FAMILY: 9,
    Dim.FAILED: 10,
    Dim.RAW_DOTDOT: 11,
}
NFAM, NDIM, F_PATH = 3, 12, 256
NUM_DIMS = (
    Dim.UID,
    Dim.OPEN_WRITE,
    Dim.OPEN_READ,
    Dim.DPORT,
    Dim.FAMILY,
    Dim.FAILED,
    Dim.RAW_DOTDOT,
)


def source() -> str:
    """The C text of ``bpf/filter.h``, to put before a program that calls it (bcc rewrites map
    calls only in the main source, so the header cannot simply be #included)."""
    return (BPF_DIR / "filter.h").read_text()


def cflags(nwords: int = NWORDS) -> list[str]:
    return [f"-DF_NWORDS={nwords}"]


def _num_value(dim: Dim, v: Any) -> int:
    if dim is Dim.FAMILY:
        return ord(str(v))
    return int(v)


def _int(v: Any) -> int:
    return int(getattr(v, "value", v))


def _set_mask(leaf: Any, mask: int) -> None:
    for i in range(NWORDS):
        leaf.w[i] = (mask >> (64 * i)) & 0xFFFFFFFFFFFFFFFF


class Prefilter:
    """Owns the filter maps of one loaded ``bcc.BPF`` object."""

    def __init__(self, bpf: Any) -> None:
        self.bpf = bpf
        self.gen = _int(self._active()[ctypes.c_int(0)])

    def _active(self) -> Any:
        return self.bpf[b"f_active"]

    def load(self, tables: KernelTables) -> dict[str, int]:
        """Publish ``tables`` as the next generation; returns entry counts."""
        gen = self.gen + 1
        slot = gen & 1
        self._clear_slot(slot)
        counts = {"comm": 0, "num": 0, "path": 0, "lpm": 0}
        fam_map, wild_map = self.bpf[b"f_fam"], self.bpf[b"f_wild"]
        for name, code in FAMILY_CODES.items():
            ft = tables.families.get(name) or FamilyTables(name, pass_all=True)
            cfg = fam_map.Leaf()
            cfg.filter = 0 if ft.pass_all else 1
            _set_mask(cfg.all, ft.all_bits)
            fam_map[ctypes.c_int(slot * NFAM + code)] = cfg
            for dim, dcode in DIM_CODES.items():
                w = wild_map.Leaf()
                _set_mask(w, ft.wild.get(dim, 0))
                wild_map[ctypes.c_int((slot * NFAM + code) * NDIM + dcode)] = w
            if ft.pass_all:
                continue
            gf = (slot << 8) | code
            self._write_family(ft, gf, slot, code, counts)
        self._active()[ctypes.c_int(0)] = ctypes.c_uint32(gen)
        self.gen = gen
        return counts

    def _write_family(
        self, ft: FamilyTables, gf: int, slot: int, code: int, counts: dict[str, int]
    ) -> None:
        comm_map, num_map = self.bpf[b"f_comm"], self.bpf[b"f_num"]
        path_map, lpm = self.bpf[b"f_path"], self.bpf[b"f_lpm"]
        for dim, entries in ft.exact.items():
            table = comm_map if dim is Dim.COMM else path_map if dim is Dim.PATH else num_map
            for value, mask in entries.items():
                leaf = table.Leaf()
                _set_mask(leaf, mask)
                k = table.Key()
                k.gf = gf
                if dim is Dim.COMM:
                    k.comm = str(value).encode()[:15]
                    counts["comm"] += 1
                elif dim is Dim.PATH:
                    k.path = str(value).encode("utf-8", "surrogateescape")[: F_PATH - 1]
                    counts["path"] += 1
                else:
                    k.dim = DIM_CODES[dim]
                    k.val = _num_value(dim, value)
                    counts["num"] += 1
                table[k] = leaf
        for dim, prefixes in ft.lpm.items():
            for payload, mask in prefixes.items():
                self._lpm_put(lpm, bytes([slot, code, DIM_CODES[dim]]) + payload, mask)
                counts["lpm"] += 1
        for ver, nets in ft.nets.items():
            for (addr, plen), mask in nets.items():
                head = bytes([slot, code, DIM_CODES[Dim.DADDR], ver])
                # the stored bits beyond the prefix must be zero
                net = ipaddress.ip_network((addr, plen))
                data = head + net.network_address.packed
                self._lpm_put(lpm, data, mask, prefixlen=32 + plen)
                counts["lpm"] += 1

    @staticmethod
    def _lpm_put(lpm: Any, data: bytes, mask: int, prefixlen: int | None = None) -> None:
        k = lpm.Key()
        k.prefixlen = len(data) * 8 if prefixlen is None else prefixlen
        ctypes.memmove(ctypes.addressof(k.data), data, len(data))
        leaf = lpm.Leaf()
        _set_mask(leaf, mask)
        lpm[k] = leaf

    def _clear_slot(self, slot: int) -> None:
        for name in (b"f_comm", b"f_num", b"f_path"):
            table = self.bpf[name]
            stale = [k for k in table if (k.gf >> 8) == slot]
            for k in stale:
                del table[k]
        lpm = self.bpf[b"f_lpm"]
        stale_lpm = [k for k in lpm if k.data[0] == slot]
        for k in stale_lpm:
            del lpm[k]

    def stats(self) -> dict[str, dict[str, int]]:
        """Per family: events dropped in the kernel and events kept, since load."""
        table = self.bpf[b"f_stats"]
        out: dict[str, dict[str, int]] = {}
        for name, code in FAMILY_CODES.items():
            dropped = sum(_int(v) for v in table[ctypes.c_int(code * 2)])
            kept = sum(_int(v) for v in table[ctypes.c_int(code * 2 + 1)])
            out[name] = {"dropped": dropped, "kept": kept}
        return out
