"""Write the compiler's filter tables into the BPF maps of ``bpf/prefilter/filter.h``.

The layout of every key is defined once, here (ctypes mirrors of the C structs) and in
filter.h, and checked by the real-kernel tests against the Python model in
:mod:`sentinel.prefilter.tables`. Maps are written by file descriptor with the ``bpf(2)``
syscall, so this works in the sensor's process, which never imports bcc (the programs are
loaded in a child, see :mod:`sentinel.kernel.loader`).

Loading is atomic from the BPF programs' point of view: the new tables go into the inactive
slot, then the generation counter is published; programs that read the old generation keep
consistent old tables (filter.h carries the generation from a call's enter to its exit).
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
from collections.abc import Iterator
from typing import Any

from sentinel.events import EVENT_TYPES, PREFILTER_CODES
from sentinel.events.cgen import defines as event_defines
from sentinel.events.dims import BOOL_DIMS, DIM_CODES, Dim
from sentinel.kernel.loader import (
    BPF_MAP_DELETE_ELEM,
    BPF_MAP_GET_NEXT_KEY,
    BPF_MAP_LOOKUP_ELEM,
    BPF_MAP_UPDATE_ELEM,
    bpf_map_op,
    percpu_u64,
    possible_cpus,
)
from sentinel.paths import BPF_DIR
from sentinel.prefilter.layout import F_LPM_DATA, F_PATH, NWORDS, defines
from sentinel.prefilter.tables import KernelTables, TypeTables

FAMILY_CODES = PREFILTER_CODES  # event type -> its code: the maps' "family" of its entries
NFAM, NDIM = len(EVENT_TYPES), len(DIM_CODES)
MAP_NAMES = ("f_active", "f_fam", "f_comm", "f_num", "f_path", "f_lpm", "f_stats")


def nwords_for(tables: KernelTables) -> int:
    """Mask words the BPF programs are compiled with: enough for these rules, and headroom
    for reloads (a family that outgrows it is left unfiltered, and that is logged)."""
    most = max((ft.nterms for ft in tables.types.values()), default=0) + 32  # headroom
    need = max(1, -(-most // 64))
    return min(NWORDS, 1 << (need - 1).bit_length()) if need > 1 else 1


# ---- the byte format of every map (mirrors of the structs in bpf/prefilter/filter.h) -----------
#
# A *mask* is ``nwords`` little-endian u64 words; bit i is term i of the family (a term is one
# DNF conjunction of one rule's kernel part; tables.py numbers them). A *family* of the maps is
# one event type: its code (the event table's) is the ``family`` byte of every key. ``slot`` is
# ``generation & 1``: every key carries the slot it belongs to, a reload fills the other slot
# and then flips ``f_active``.
#
# f_active  u32 0 -> u32 generation (0: nothing loaded, every event passes)
# f_fam     u32 slot * NFAM + family -> { u32 filter (0: pass all), u32 pad,
#                                         mask all (every term), mask wild[NDIM] (per
#                                         dimension, the terms it does not constrain),
#                                         mask bval[NDIM][2] (per boolean dimension,
#                                         BOOL_DIMS: the terms value 0 / 1 satisfies, wild
#                                         ones included; zero for the other dimensions),
#                                         mask miss[NDIM] (per dimension, the terms a
#                                         lookup that finds no entry satisfies: negative
#                                         constraints, see tables) }
# f_comm    { u32 gf = slot << 8 | family, char comm[16] (NUL-padded) } -> mask
# f_num     { u32 gf, u32 dim (D_*), u64 value } -> mask     uid, port, family char, arg
# f_path    { u32 gf, char path[F_PATH] (NUL-padded) } -> mask    the family's exact path
# f_lpm     { u32 prefixlen (bits), u8 data[F_LPM_DATA] } -> mask, LPM trie:
#             data = slot, family, dim, then for D_PATH_PREFIX the path's first bytes, for
#             D_PATH_SUFFIX the path's last bytes reversed, for D_DADDR the IP version (4 or 6)
#             then the address in network order; prefixlen counts the header bytes too. An LPM
#             lookup returns only the longest stored prefix, so tables.py folds the masks of
#             shorter stored prefixes into longer ones.
# f_stats   per-CPU u64 [family * 2 + kept]: events dropped / kept (kept only for tests)


def _fam_cfg_type(nwords: int) -> type[ctypes.Structure]:
    words = ctypes.c_uint64 * nwords

    class FamCfg(ctypes.Structure):
        _fields_ = [
            ("filter", ctypes.c_uint32),
            ("pad", ctypes.c_uint32),
            ("all", words),
            ("wild", words * NDIM),
            ("bval", (words * 2) * NDIM),
            ("miss", words * NDIM),
        ]

    return FamCfg


class CommKey(ctypes.Structure):
    _fields_ = [("gf", ctypes.c_uint32), ("comm", ctypes.c_char * 16)]


class NumKey(ctypes.Structure):
    _fields_ = [("gf", ctypes.c_uint32), ("dim", ctypes.c_uint32), ("val", ctypes.c_uint64)]


class PathKey(ctypes.Structure):
    _fields_ = [("gf", ctypes.c_uint32), ("path", ctypes.c_char * F_PATH)]


class LpmKey(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("data", ctypes.c_ubyte * F_LPM_DATA)]


def source(nwords: int = NWORDS) -> str:
    """The C text of ``filter.h`` with every constant it needs, to put before a program that
    calls it (bcc rewrites map calls only in the main source, so it cannot be #included)."""
    return event_defines() + filter_source(nwords)


def filter_source(nwords: int = NWORDS) -> str:
    """``filter.h`` with its own sizes, for a program that already has the event table's
    constants (the sensor: sentinel.events.cgen.header)."""
    return defines(nwords) + (BPF_DIR / "prefilter" / "filter.h").read_text()


# The sensor's prefilter hooks (their defaults are in bpf/sensor/common.h).
SENSOR_HOOKS = r"""
#define PREFILTER_EXEC 1
#define PREFILTER_FILE 1
#define PREFILTER_SOCK 1
#define PREFILTER_SYS 1
#define PREFILTER_PLAIN 1
// (clone and procexit are never filtered: they keep the process table exact)
#define pf_exec_state f_state
static __always_inline int prefilter_exec_pre(struct f_state *st, u32 t) {
    return f_exec_pre(st, t);
}
static __always_inline int prefilter_exec_path(struct f_state *st, const char *exe, u32 len) {
    return f_exec_path(st, exe, len);
}
static __always_inline int prefilter_file(u32 t, u32 oflags, const char *path, long ret) {
    struct f_state st = {};
    int keep = f_file_enter(&st, t, oflags, path);
    if (!keep)
        return 0;
    return f_file_exit(&st, ret) != 0;  // F_NEED_BASE: prefilter_file_base decides
}
static __always_inline int prefilter_file_opened_pre(u32 t, u32 oflags, const char *raw,
                                                     long ret) {
    struct f_state st = {};
    return f_file_opened_pre(&st, t, oflags, raw, ret);
}
static __always_inline int prefilter_file_opened_path(const char *kpath, u32 klen) {
    struct f_state st = {};
    return f_file_opened_path(&st, kpath, klen);
}
static __always_inline int prefilter_file_base(const char *walk, const u16 *at, u32 nc, u32 bad) {
    return f_file_base(walk, at, nc, bad);
}
static __always_inline int prefilter_plain(u32 t, long ret) {
    struct f_state st = {};
    return f_plain(&st, t, ret);
}
static __always_inline int prefilter_sys(u32 t, u64 key, long ret) {
    struct f_state st = {};
    return f_sys(&st, t, key, ret);
}
static __always_inline int prefilter_sock(u32 t, u64 key, u32 famc, u32 port, const u8 *addr,
                                          u32 ver, u32 connected, long ret) {
    struct f_state st = {};
    return f_sock(&st, t, key, famc, port, addr, ver, connected, ret);
}
"""


def sensor_prelude(nwords: int = NWORDS) -> str:
    """filter.h plus the sensor's prefilter hooks, placed after the event table's header."""
    return filter_source(nwords) + SENSOR_HOOKS


# ---- bpf(2), through the loader's wrapper ----------------------------------------------------

_LOOKUP, _UPDATE, _DELETE, _NEXT_KEY = (
    BPF_MAP_LOOKUP_ELEM,
    BPF_MAP_UPDATE_ELEM,
    BPF_MAP_DELETE_ELEM,
    BPF_MAP_GET_NEXT_KEY,
)
_bpf = bpf_map_op


def _check(err: int, what: str) -> None:
    if err:
        raise OSError(err, f"{what}: {os.strerror(err)}")


def map_update(fd: int, key: Any, value: Any) -> None:
    _check(_bpf(_UPDATE, fd, key, value), "bpf map update")


def map_keys(fd: int, key_type: type[Any]) -> Iterator[Any]:
    """Every key of a hash/LPM map (a snapshot taken as we go)."""
    prev = None
    while True:
        nxt = key_type()
        err = _bpf(_NEXT_KEY, fd, prev, nxt)
        if err:
            return
        yield nxt
        prev = nxt


def map_delete(fd: int, key: Any) -> None:
    err = _bpf(_DELETE, fd, key)
    if err and err != 2:  # ENOENT: already gone
        _check(err, "bpf map delete")


def _u64s(mask: int, nwords: int) -> Any:
    out = (ctypes.c_uint64 * nwords)()
    for i in range(nwords):
        out[i] = (mask >> (64 * i)) & 0xFFFFFFFFFFFFFFFF
    return out


def _num_value(dim: Dim, v: Any) -> int:
    if dim is Dim.FAMILY:
        return ord(str(v))
    return int(v)


class Prefilter:
    """Owns the contents of the filter maps, given their fds (``name -> fd``)."""

    def __init__(self, fds: dict[str, int], nwords: int = NWORDS) -> None:
        missing = [m for m in MAP_NAMES if m not in fds]
        if missing:
            raise ValueError(f"prefilter maps missing: {', '.join(missing)}")
        self.fds = fds
        self.nwords = nwords
        self._fam_cfg = _fam_cfg_type(nwords)
        self._ncpus = possible_cpus()
        key, val = ctypes.c_uint32(0), ctypes.c_uint32(0)
        _check(_bpf(_LOOKUP, fds["f_active"], key, val), "bpf map lookup")
        self.gen = int(val.value)

    @classmethod
    def from_bcc(cls, bpf: Any, nwords: int = NWORDS) -> Prefilter:
        """For a program loaded in this process with bcc (tests)."""
        return cls({m: bpf[m.encode()].map_fd for m in MAP_NAMES}, nwords)

    def load(self, tables: KernelTables) -> dict[str, int]:
        """Publish ``tables`` as the next generation; returns entry counts."""
        gen = self.gen + 1
        slot = gen & 1
        self._clear_slot(slot)
        counts = {"comm": 0, "num": 0, "path": 0, "lpm": 0}
        n = self.nwords
        self.overflow: list[str] = []
        for name, code in FAMILY_CODES.items():
            ft = tables.types.get(name) or TypeTables(name, pass_all=True)
            if not ft.pass_all and ft.nterms > 64 * n:
                # compiled for fewer mask words: this family is not filtered until a restart
                self.overflow.append(name)
                ft = TypeTables(name, pass_all=True)
            cfg = self._fam_cfg()
            cfg.filter = 0 if ft.pass_all else 1
            cfg.all = _u64s(ft.all_bits, n)
            for dim, dcode in DIM_CODES.items():
                cfg.wild[dcode] = _u64s(ft.wild.get(dim, 0), n)
                cfg.miss[dcode] = _u64s(ft.miss.get(dim, 0), n)
            for dim in BOOL_DIMS:  # both answers of a boolean dimension, in the config
                for v in (0, 1):
                    terms = ft.wild.get(dim, 0)
                    for value, mask in ft.exact.get(dim, {}).items():
                        if _num_value(dim, value) == v:
                            terms |= mask
                    cfg.bval[DIM_CODES[dim]][v] = _u64s(terms, n)
            map_update(self.fds["f_fam"], ctypes.c_uint32(slot * NFAM + code), cfg)
            if not ft.pass_all:
                self._write_family(ft, (slot << 8) | code, slot, code, counts)
        map_update(self.fds["f_active"], ctypes.c_uint32(0), ctypes.c_uint32(gen))
        self.gen = gen
        return counts

    def _write_family(
        self, ft: TypeTables, gf: int, slot: int, code: int, counts: dict[str, int]
    ) -> None:
        for dim, entries in ft.exact.items():
            if dim in BOOL_DIMS:
                continue  # in the family's config (load)
            for value, mask in entries.items():
                leaf = _u64s(mask, self.nwords)
                if dim is Dim.COMM:
                    map_update(self.fds["f_comm"], CommKey(gf, str(value).encode()[:15]), leaf)
                    counts["comm"] += 1
                elif dim is Dim.PATH:
                    raw = str(value).encode("utf-8", "surrogateescape")[: F_PATH - 1]
                    map_update(self.fds["f_path"], PathKey(gf, raw), leaf)
                    counts["path"] += 1
                else:
                    key = NumKey(gf, DIM_CODES[dim], _num_value(dim, value))
                    map_update(self.fds["f_num"], key, leaf)
                    counts["num"] += 1
        for dim, prefixes in ft.lpm.items():
            for payload, mask in prefixes.items():
                data = bytes([slot, code, DIM_CODES[dim]]) + payload
                self._lpm_put(data, len(data) * 8, mask)
                counts["lpm"] += 1
        for ver, nets in ft.nets.items():
            for (addr, plen), mask in nets.items():
                net = ipaddress.ip_network((addr, plen))  # bits past the prefix are zero
                head = bytes([slot, code, DIM_CODES[Dim.DADDR], ver])
                self._lpm_put(head + net.network_address.packed, 32 + plen, mask)
                counts["lpm"] += 1

    def _lpm_put(self, data: bytes, prefixlen: int, mask: int) -> None:
        key = LpmKey()
        if len(data) > ctypes.sizeof(key.data):  # memmove below would write past the key
            raise ValueError(f"LPM key of {len(data)} bytes exceeds {ctypes.sizeof(key.data)}")
        key.prefixlen = prefixlen
        ctypes.memmove(ctypes.addressof(key.data), data, len(data))
        map_update(self.fds["f_lpm"], key, _u64s(mask, self.nwords))

    def _clear_slot(self, slot: int) -> None:
        for name, ktype in (("f_comm", CommKey), ("f_num", NumKey), ("f_path", PathKey)):
            fd = self.fds[name]
            for k in [k for k in map_keys(fd, ktype) if (k.gf >> 8) == slot]:
                map_delete(fd, k)
        fd = self.fds["f_lpm"]
        for lk in [k for k in map_keys(fd, LpmKey) if k.data[0] == slot]:
            map_delete(fd, lk)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per family: events dropped in the kernel and events kept, since load."""
        fd = self.fds["f_stats"]
        out: dict[str, dict[str, int]] = {}
        for name, code in FAMILY_CODES.items():
            dropped = sum(percpu_u64(fd, code * 2, self._ncpus))
            kept = sum(percpu_u64(fd, code * 2 + 1, self._ncpus))
            out[name] = {"dropped": dropped, "kept": kept}
        return out
