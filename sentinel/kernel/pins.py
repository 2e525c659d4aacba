"""Keep the sensor's loaded programs and maps alive between runs, pinned in bpffs, so that a
start with nothing changed reuses them instead of loading them again.

Why: a start from the program cache (:mod:`.bpfcache`) no longer compiles, but the kernel
still verifies every program (~1.5 s of a ~2.4 s warm start with Falco's rules). A program
the kernel has verified can be kept alive by pinning it in bpffs, and a later process opens it
again with ``BPF_OBJ_GET``, as Tetragon and Cilium do across restarts. Only programs and maps
are pinned, never attachments: while Sentinel is stopped nothing runs, it only costs memory
(the maps' preallocated memory: the 16 MiB ring buffer, the LRU tables).

The rules, designed so that a reused set behaves exactly like a fresh load:

- **Same objects only.** A pin set is named by the program cache key (kernel, BTF digest,
  program text with the prefilter's sizes, cflags, tail calls) and is only used together with
  that key's cache entry: each map's type, sizes and flags must equal the entry's, each
  program's type and kernel tag (the SHA-1 the kernel computes over the instructions with map
  references zeroed) must equal those of the entry's instructions, and the maps each program
  uses (their kernel ids) must be the pinned maps its instructions name. Anything else, or an
  incomplete set (a crash while pinning), is unpinned and loaded fresh: a note, never fatal.
- **No state carried over.** Every map is reset to what a freshly created one holds before
  anything is attached (programs that are not attached do not run, so this cannot race):
  arrays and per-CPU arrays zeroed (scratch space, counters: lost counts start at zero,
  exec_opts, self_tgid, the prefilter's active generation and family table), hash, LRU and LPM
  maps emptied (the prefilter's entries, exec_comm, io_uring requests), program arrays emptied
  and refilled with this set's programs, and the ring buffer's leftovers skipped (consumer
  position set to the producer's). The prefilter's plan is then written as on a fresh load, so
  a reuse under another plan of the same sizes keeps nothing of the old plan.
- **One user at a time.** A running Sentinel holds an exclusive ``flock`` on its set's
  directory; a second one finds it held and loads fresh without pins (two processes must
  never share one ring buffer).
- **Trust.** The root directory and each set's directory must be owned by root and not
  writable by others (the program cache's rule); the root must be on bpffs. Only the newest
  set is kept: pinning a set removes the others that no running Sentinel holds.
- **Off switch.** ``SENTINEL_BPF_PINS=""`` (or the program cache off: ``SENTINEL_BPF_CACHE=""``)
  pins nothing; ``sentinel unpin`` (or ``rm -r /sys/fs/bpf/sentinel``) frees the memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import mmap
import os
import re
import shutil
import struct
from pathlib import Path

from sentinel.kernel import bpfcache
from sentinel.kernel.bpfstats import _ProgInfo
from sentinel.kernel.loader import (
    BPF_MAP_DELETE_ELEM,
    BPF_MAP_GET_NEXT_KEY,
    BPF_MAP_LOOKUP_ELEM,
    BPF_MAP_UPDATE_ELEM,
    BPF_OBJ_GET_INFO_BY_FD,
    _InfoAttr,
    bpf_call,
    bpf_map_op,
    map_info,
    possible_cpus,
)
from sentinel.kernel.ringbuf import position

DEFAULT_ROOT = Path("/sys/fs/bpf/sentinel")
ENV = "SENTINEL_BPF_PINS"  # a directory on bpffs, or "" to pin nothing
BPF_FS_MAGIC = 0xCAFE4A11
BPF_OBJ_PIN, BPF_OBJ_GET = 6, 7
_KEY = re.compile(r"^[0-9a-f]{64}$")

# map types (include/uapi/linux/bpf.h)
ARRAY, PROG_ARRAY, PERCPU_ARRAY, RINGBUF = 2, 3, 6, 27
HASHES = frozenset({1, 5, 9, 10, 11})  # hash, percpu hash, LRU, LRU percpu, LPM trie
PERCPU = frozenset({5, 6, 10})


def default_root() -> Path | None:
    """Where sets are pinned: ``$SENTINEL_BPF_PINS`` ("" pins nothing), else /sys/fs/bpf."""
    value = os.environ.get(ENV)
    if value is None:
        return DEFAULT_ROOT
    return Path(value) if value else None


class PinError(Exception):
    """A pinned set that is not exactly what this start would load (it is unpinned)."""


class _ObjAttr(ctypes.Structure):
    _fields_ = [
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
    ]


def obj_pin(fd: int, path: Path) -> None:
    name = ctypes.create_string_buffer(os.fsencode(path))
    bpf_call(BPF_OBJ_PIN, _ObjAttr(ctypes.addressof(name), fd, 0), f"pinning {path}")


def obj_get(path: Path) -> int:
    name = ctypes.create_string_buffer(os.fsencode(path))
    return bpf_call(BPF_OBJ_GET, _ObjAttr(ctypes.addressof(name), 0, 0), f"opening {path}")


def prog_info(fd: int) -> tuple[int, int, bytes, set[int]]:
    """A loaded program's type, kernel id, kernel tag and the ids of the maps it uses."""
    ids = (ctypes.c_uint32 * 64)()
    info = _ProgInfo(nr_map_ids=len(ids), map_ids=ctypes.addressof(ids))
    attr = _InfoAttr(fd, ctypes.sizeof(info), ctypes.addressof(info))
    bpf_call(BPF_OBJ_GET_INFO_BY_FD, attr, "reading a program's info")
    if info.nr_map_ids > len(ids):
        raise PinError("a program uses more maps than expected")
    return info.type, info.id, bytes(info.tag), set(ids[: info.nr_map_ids])


def prog_tags(insns: bytes) -> set[bytes]:
    """The tags the kernel gives a program of these instructions (bpf_prog_calc_tag: the
    first 8 bytes of a hash of the instructions with the map references' immediates zeroed;
    SHA-1 until Linux 6.17, SHA-256 since)."""
    raw = bytearray(insns)
    for i in bpfcache.map_slots(raw):
        raw[i + 4 : i + 8] = bytes(4)
        raw[i + 12 : i + 16] = bytes(4)
    return {
        hashlib.sha1(raw, usedforsecurity=False).digest()[:8],
        hashlib.sha256(raw).digest()[:8],
    }


def _owned_privately(path: Path) -> bool:
    try:
        return bpfcache._owned_privately(path.stat())
    except OSError:
        return False


def _on_bpffs(path: Path) -> bool:
    """statfs(2)'s f_type of ``path`` is bpffs'."""
    buf = ctypes.create_string_buffer(256)  # struct statfs: f_type is its first long
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.statfs(os.fsencode(path), buf) != 0:
        return False
    return bool(struct.unpack_from("l", buf.raw)[0] == BPF_FS_MAGIC)


def _map_pin(name: str) -> str:
    return f"m_{name}"  # bpffs refuses dots in names


def _prog_pin(func: str) -> str:
    return f"p_{func}"


class PinSet:
    """One key's pinned programs and maps. ``acquire`` takes the set's lock (held until
    ``release``); ``reuse`` opens, verifies and resets a pinned set; ``pin`` pins a fresh load.
    Every problem is a note (the sensor passes them on as warnings) and a fresh load."""

    def __init__(self, root: Path, key: str) -> None:
        self.root = root
        self.dir = root / key
        self.notes: list[str] = []
        self.reused = False
        self._lock: int | None = None

    def acquire(self) -> bool:
        """Take the set's lock; False (with a note unless pinning is impossible here) when the
        root is not a trusted directory on bpffs or another Sentinel holds the set."""
        try:
            if not _on_bpffs(self.root.parent) and not _on_bpffs(self.root):
                self.notes.append(f"{self.root.parent} is not bpffs: programs not pinned")
                return False
            self.root.mkdir(mode=0o700, exist_ok=True)
            self.dir.mkdir(mode=0o700, exist_ok=True)
            for d in (self.root, self.dir):
                if not _on_bpffs(d) or not _owned_privately(d):
                    self.notes.append(f"{d} is writable by others or not bpffs: not pinned")
                    return False
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            self.notes.append(f"pinned programs not usable ({exc}): loaded without")
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            self.notes.append("another Sentinel holds the pinned programs: loaded without pins")
            return False
        self._lock = fd
        return True

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None

    # ---- reuse --------------------------------------------------------------------------

    def reuse(self, entry: bpfcache.Entry) -> tuple[dict[str, int], dict[str, int]] | None:
        """The pinned set's maps (by name) and programs (by function), opened, verified
        against ``entry`` and reset; None when nothing is pinned or it does not check out
        (then it is unpinned)."""
        assert self._lock is not None, "acquire first"
        names = sorted(os.listdir(self.dir))
        if not names:
            return None
        maps: dict[str, int] = {}
        progs: dict[str, int] = {}
        try:
            want = sorted(
                [_map_pin(m.name) for m in entry.maps] + [_prog_pin(p.name) for p in entry.progs]
            )
            if names != want:
                raise PinError("the pinned set is incomplete or holds other objects")
            for m in entry.maps:
                maps[m.name] = obj_get(self.dir / _map_pin(m.name))
            for p in entry.progs:
                progs[p.name] = obj_get(self.dir / _prog_pin(p.name))
            verify(entry, maps, progs)
            for m in entry.maps:
                reset_map(maps[m.name], m)
            tail_calls(entry, maps, progs)
        except (OSError, PinError) as exc:
            for fd in [*maps.values(), *progs.values()]:
                os.close(fd)
            self.notes.append(f"pinned programs not reused ({exc}): unpinned, loaded fresh")
            self.clear()
            return None
        self.reused = True
        return maps, progs

    # ---- pinning ------------------------------------------------------------------------

    def pin(self, entry: bpfcache.Entry, maps: dict[str, int], progs: dict[str, int]) -> None:
        """Pin a freshly loaded set (before anything is attached), then drop the older sets
        no running Sentinel holds. A failure unpins what was pinned (a note)."""
        assert self._lock is not None, "acquire first"
        try:
            self.clear()
            verify(entry, maps, progs)  # what a reuse will check: pin only what passes
            for m in entry.maps:
                obj_pin(maps[m.name], self.dir / _map_pin(m.name))
            for p in entry.progs:
                obj_pin(progs[p.name], self.dir / _prog_pin(p.name))
        except (OSError, PinError) as exc:
            self.notes.append(f"programs not pinned ({exc})")
            self.clear()
            return
        prune(self.root, keep=self.dir.name)

    def clear(self) -> None:
        """Unpin everything in this set's directory (the directory and its lock stay)."""
        with contextlib.suppress(OSError):
            for name in os.listdir(self.dir):
                with contextlib.suppress(OSError):
                    os.unlink(self.dir / name)


def verify(entry: bpfcache.Entry, maps: dict[str, int], progs: dict[str, int]) -> None:
    """Raise :class:`PinError` unless the opened objects are exactly ``entry``'s: each map's
    attributes, each program's type and tag, and the maps each program uses."""
    ids: dict[int, int] = {}  # the entry's map fd -> the pinned map's kernel id
    for m in entry.maps:
        info = map_info(maps[m.name])
        want = {
            "type": m.type,
            "key_size": m.key_size,
            "value_size": m.value_size,
            "max_entries": m.max_entries,
            "flags": m.flags,
        }
        if {k: info[k] for k in want} != want:
            raise PinError(f"map {m.name} differs ({info} != {want})")
        ids[m.fd] = info["id"]
    for p in entry.progs:
        ptype, _id, tag, used = prog_info(progs[p.name])
        if ptype != p.type or tag not in prog_tags(p.insns):
            raise PinError(f"program {p.name} is not this set's (type or tag differs)")
        refs = {ids.get(fd, -1) for fd in bpfcache.map_refs(p.insns)}
        if used != refs:
            raise PinError(f"program {p.name} uses other maps than this set's")


def reset_map(fd: int, m: bpfcache.MapSpec) -> None:
    """Give a reused map the contents of a freshly created one (see the module's docstring)."""
    if m.type == RINGBUF:
        skip_ring(fd)
    elif m.type in (ARRAY, PERCPU_ARRAY):
        stride = (m.value_size + 7) // 8 * 8 * possible_cpus() if m.type in PERCPU else 0
        zero = ctypes.create_string_buffer(stride or m.value_size)
        for i in range(m.max_entries):
            _check(bpf_map_op(BPF_MAP_UPDATE_ELEM, fd, ctypes.c_uint32(i), zero), m.name)
    elif m.type == PROG_ARRAY:
        pass  # made exactly this set's by tail_calls() (its slots are programs, not state)
    elif m.type in HASHES:
        keys = []
        prev = None
        while True:
            key = ctypes.create_string_buffer(m.key_size)
            if bpf_map_op(BPF_MAP_GET_NEXT_KEY, fd, prev, key):
                break
            keys.append(key)
            prev = key
        for key in keys:
            err = bpf_map_op(BPF_MAP_DELETE_ELEM, fd, key)
            if err not in (0, 2):  # ENOENT: an LRU map may have evicted it meanwhile
                _check(err, m.name)
    else:
        raise PinError(f"map {m.name}: no way to reset a map of type {m.type}")


def tail_calls(entry: bpfcache.Entry, maps: dict[str, int], progs: dict[str, int]) -> None:
    """Make every program array hold exactly ``entry``'s tail calls, touching only the slots
    that differ: a pinned array keeps its programs, and each change of a slot costs the kernel
    a patch of the callers' code (~40 ms on this machine), so rewriting them all would cost
    more than the reuse saves. A lookup from user space gives the slot's program id."""
    want = {(a, i): prog_info(progs[f])[1] for a, i, f in entry.tail_calls}
    for m in entry.maps:
        if m.type != PROG_ARRAY:
            continue
        fd = maps[m.name]
        for i in range(m.max_entries):
            got = ctypes.c_uint32()
            err = bpf_map_op(BPF_MAP_LOOKUP_ELEM, fd, ctypes.c_uint32(i), got)
            if err not in (0, 2):  # ENOENT: an empty slot
                _check(err, m.name)
            have = int(got.value) if err == 0 else None
            func = next((f for a, j, f in entry.tail_calls if (a, j) == (m.name, i)), None)
            if have == want.get((m.name, i)):
                continue
            if func is None:
                err = bpf_map_op(BPF_MAP_DELETE_ELEM, fd, ctypes.c_uint32(i))
            else:
                value = ctypes.c_uint32(progs[func])
                err = bpf_map_op(BPF_MAP_UPDATE_ELEM, fd, ctypes.c_uint32(i), value)
            _check(err, m.name)


def skip_ring(fd: int) -> None:
    """Mark everything a ring buffer holds as read: consumer position = producer position."""
    page = mmap.PAGESIZE
    cons = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    prod = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
    try:
        # the reader's own accessors: one aligned 8-byte access each (ringbuf.position)
        cons_pos, prod_pos = position(cons), position(prod)
        cons_pos[0] = prod_pos[0]
        cons_pos.release()
        prod_pos.release()
    finally:
        cons.close()
        prod.close()


def _check(err: int, name: str) -> None:
    if err:
        raise OSError(err, f"resetting map {name}: {os.strerror(err)}")


def prune(root: Path, keep: str = "") -> list[str]:
    """Remove every pinned set under ``root`` but ``keep`` that no running Sentinel holds;
    returns the removed sets' names. Only directories named like a key are touched."""
    removed = []
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(root)):
            path = root / name
            if name == keep or not _KEY.match(name) or not path.is_dir():
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # in use
            try:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(name)
            finally:
                os.close(fd)
    return removed


def unpin_all(root: Path | None = None) -> tuple[list[str], list[str]]:
    """Drop every pinned set no running Sentinel holds (``sentinel unpin``): (removed, in use)."""
    root = root or default_root() or DEFAULT_ROOT
    if not root.is_dir() or not _on_bpffs(root):
        return [], []
    removed = prune(root)
    in_use = sorted(n for n in os.listdir(root) if _KEY.match(n))
    return removed, in_use
