"""A cache of the sensor's compiled BPF programs, so that a start with nothing changed skips
the clang compile (most of start-up: ~3 s of ~4 s with every event type attached).

Why this way: bcc has no way to reuse a compile (it is "by design", iovisor/bcc#534), but its
libbpf half, ``libbcc_bpf.so`` (no LLVM in it), has the loading primitives
(``bcc_create_map``, ``bcc_prog_load``, ``bpf_attach_tracepoint``...). So after a compile the
loader child records what bcc produced: each program's instructions (``BPF.dump_func``), each
map's attributes, the tail calls and the attachments; a later start with the same key creates
the maps, relinks the instructions to the new map fds and loads them through those primitives,
in this process (no LLVM, no child). The kernel still verifies every program.

The key is everything that determines the bytecode: the whole program text (event table,
prefilter sizes, family sources, stubs), the cflags (struct offsets from BTF, ring size), the
requested tail calls, bcc's version, the kernel (release, build, a digest of its BTF) and the
kernel headers bcc compiled against. A per-run value (Sentinel's own pid) is a map value set
at load time, not a cflag. An entry that does not parse, fails its digest, or names a map fd
it does not define is deleted and rebuilt, never loaded; a cache directory or entry that is
writable by anyone but its owner (root) is not trusted (loading it would run its bytes in the
kernel). Entries are written atomically (temporary file, rename) and the oldest are pruned.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import importlib.util
import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sentinel.kernel.pins import PinSet

FORMAT = 1
DEFAULT_DIR = Path("/var/cache/sentinel/bpf")
ENV = "SENTINEL_BPF_CACHE"  # a directory, or "" to turn the cache off
AUTO = Path("<auto>")  # "the default directory, or $SENTINEL_BPF_CACHE's" (compared by identity)
KEEP = 8  # entries kept (rule sets with different prefilter sizes, kernels after an upgrade)

# struct bpf_insn: opcode, dst:4|src:4, s16 off, s32 imm; ld_imm64 takes two slots.
BPF_LD_IMM64 = 0x18
PSEUDO_MAP_FD = 1
PSEUDO_MAP_VALUE = 2


class CacheError(Exception):
    """An entry that must not be loaded (it is rebuilt)."""


def default_dir() -> Path | None:
    """The cache directory: ``$SENTINEL_BPF_CACHE`` ("" turns it off), else /var/cache."""
    value = os.environ.get(ENV)
    if value is None:
        return DEFAULT_DIR
    return Path(value) if value else None


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with contextlib.suppress(OSError), open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def kernel_identity() -> dict[str, str]:
    """What identifies the running kernel and the headers bcc compiles against."""
    uts = os.uname()
    build = Path("/lib/modules") / uts.release / "build"
    return {
        "release": uts.release,
        "version": uts.version,
        "machine": uts.machine,
        "btf": _file_digest(Path("/sys/kernel/btf/vmlinux")),
        "headers": str(build.resolve()) if build.exists() else "",
    }


def bcc_version() -> str:
    """bcc's version, read without importing bcc (that would load LLVM into this process)."""
    spec = importlib.util.find_spec("bcc")
    for d in (spec.submodule_search_locations or []) if spec is not None else []:
        with contextlib.suppress(OSError):
            return (Path(d) / "version.py").read_text().strip()
    return ""


def cache_key(text: str, cflags: list[str], tail_calls: list[list[Any]]) -> str:
    """The hex key of a compile: equal keys give equal bytecode."""
    material = {
        "format": FORMAT,
        "text": hashlib.sha256(text.encode()).hexdigest(),
        "cflags": cflags,
        "tail_calls": tail_calls,
        "bcc": bcc_version(),
        "kernel": kernel_identity(),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


@dataclass
class MapSpec:
    name: str  # bcc's table name (the fd the parent asks for by name)
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    fd: int  # its fd in the compiling process: what the instructions reference


@dataclass
class ProgSpec:
    name: str  # bcc's function name
    type: int  # BPF_PROG_TYPE_*
    insns: bytes


@dataclass
class Entry:
    license: str
    kern_version: int
    maps: list[MapSpec] = field(default_factory=list)
    progs: list[ProgSpec] = field(default_factory=list)
    tail_calls: list[tuple[str, int, str]] = field(default_factory=list)  # array, index, prog
    attach: list[tuple[str, str, str]] = field(default_factory=list)  # kind, tracepoint, prog

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        for p in body["progs"]:
            p["insns"] = base64.b64encode(p["insns"]).decode()
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Entry:
        try:
            return cls(
                license=str(body["license"]),
                kern_version=int(body["kern_version"]),
                maps=[MapSpec(**m) for m in body["maps"]],
                progs=[
                    ProgSpec(str(p["name"]), int(p["type"]), base64.b64decode(p["insns"]))
                    for p in body["progs"]
                ],
                tail_calls=[(str(a), int(i), str(p)) for a, i, p in body["tail_calls"]],
                attach=[(str(k), str(t), str(p)) for k, t, p in body["attach"]],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CacheError(f"malformed entry: {exc!r}") from None


def map_slots(insns: bytes | bytearray) -> list[int]:
    """The byte offsets of the instructions that load a map reference (``ld_imm64`` of a map
    fd or a map value: the first of its two slots)."""
    if len(insns) % 8:
        raise CacheError("instructions are not a whole number of 8-byte slots")
    out = []
    i = 0
    while i < len(insns):
        if insns[i] == BPF_LD_IMM64:
            if insns[i + 1] >> 4 in (PSEUDO_MAP_FD, PSEUDO_MAP_VALUE):
                out.append(i)
            i += 16
        else:
            i += 8
    return out


def _map_fd_at(insns: bytes | bytearray, i: int) -> int:
    return int.from_bytes(insns[i + 4 : i + 8], "little", signed=True)


def map_refs(insns: bytes) -> set[int]:
    """The map fds (as recorded) the instructions reference."""
    return {_map_fd_at(insns, i) for i in map_slots(insns)}


def relink(insns: bytes, fds: dict[int, int]) -> bytes:
    """The instructions with every map reference (``ld_imm64`` of a map fd or map value)
    pointing at the new map fds (old fd -> new fd)."""
    out = bytearray(insns)
    for i in map_slots(out):
        old = _map_fd_at(out, i)
        if old not in fds:
            raise CacheError(f"an instruction references map fd {old}, not recorded")
        out[i + 4 : i + 8] = fds[old].to_bytes(4, "little", signed=True)
    return bytes(out)


def _owned_privately(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


class ProgramCache:
    """Entries in one directory, one file per key. Every problem is reported in ``notes``
    (the loader passes them on as warnings) and treated as a miss."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.notes: list[str] = []

    def _path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def _trusted_dir(self) -> bool:
        try:
            st = self.dir.stat()
        except OSError:
            return False
        if not _owned_privately(st):
            self.notes.append(f"BPF cache {self.dir} is writable by others: not used")
            return False
        return True

    def load(self, key: str) -> Entry | None:
        path = self._path(key)
        if not path.exists() or not self._trusted_dir():
            return None
        try:
            if not _owned_privately(path.stat()):
                self.notes.append(f"BPF cache entry {path} is writable by others: not used")
                return None
            doc = json.loads(path.read_bytes())
            body = doc["entry"]
            digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
            if doc.get("format") != FORMAT or doc.get("key") != key or doc.get("digest") != digest:
                raise CacheError("digest or key mismatch")
            return Entry.from_json(body)
        except (OSError, ValueError, KeyError, TypeError, CacheError) as exc:
            self.notes.append(f"BPF cache entry {path.name} is corrupt ({exc}): rebuilt")
            with contextlib.suppress(OSError):
                path.unlink()
            return None

    def store(self, key: str, entry: Entry) -> None:
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self._trusted_dir():
                return
            body = entry.to_json()
            digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
            doc = {"format": FORMAT, "key": key, "digest": digest, "entry": body}
            tmp = self.dir / f".{key}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, self._path(key))
            self._prune()
        except OSError as exc:
            self.notes.append(f"BPF cache not written ({exc})")

    def _prune(self) -> None:
        entries = sorted(
            self.dir.glob("[0-9a-f]*.json"), key=lambda p: p.stat().st_mtime, reverse=True
        )
        for old in entries[KEEP:]:
            with contextlib.suppress(OSError):
                old.unlink()


# ---- loading an entry -----------------------------------------------------------------------

# "raw:<tp>" / "tp:<cat>:<tp>" -> ("link", fd); map -> ("map", fd); "prog:<func>" -> ("prog", fd)
Handles = dict[str, tuple[str, int]]


def _libbpf() -> Any:
    """bcc's libbpf half (no LLVM), with the prototypes used here."""
    lib = ctypes.CDLL("libbcc_bpf.so.0", use_errno=True)
    lib.bcc_create_map.restype = ctypes.c_int
    lib.bcc_create_map.argtypes = [ctypes.c_int, ctypes.c_char_p, *[ctypes.c_int] * 4]
    lib.bcc_prog_load.restype = ctypes.c_int
    lib.bcc_prog_load.argtypes = [
        ctypes.c_int,  # prog type
        ctypes.c_char_p,  # name
        ctypes.c_void_p,  # instructions
        ctypes.c_int,  # their size in bytes
        ctypes.c_char_p,  # license
        ctypes.c_uint,  # kernel version
        ctypes.c_int,  # log level
        ctypes.c_char_p,  # log buffer
        ctypes.c_uint,  # its size
    ]
    lib.bpf_attach_tracepoint.restype = ctypes.c_int
    lib.bpf_attach_tracepoint.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p]
    lib.bpf_attach_raw_tracepoint.restype = ctypes.c_int
    lib.bpf_attach_raw_tracepoint.argtypes = [ctypes.c_int, ctypes.c_char_p]
    return lib


# Handles' key of a program fd: "prog:<function>" (maps and links are keyed by their own names).
PROG_PREFIX = "prog:"

_BCC_PREFIXES = ("raw_tracepoint__", "tracepoint__syscalls__", "tracepoint__")


def short_name(func: str) -> str:
    """A program's function name without bcc's section prefix ("sys_exit_openat" for
    "tracepoint__syscalls__sys_exit_openat"): what tells the programs apart."""
    for prefix in _BCC_PREFIXES:
        if func.startswith(prefix):
            return func[len(prefix) :]
    return func


def kernel_name(func: str) -> bytes:
    """The name a cached program is loaded under. The kernel keeps 15 bytes, and a program
    loaded without BTF (as these are) is listed by it (bpftool, bpf_stats): the END of the
    function's name without bcc's prefix ("sys_exit_openat", not bcc's "syscalls__sys_e",
    which every syscall program shares), so that each program can be told apart."""
    return short_name(func)[-15:].encode()


def _create(lib: Any, entry: Entry, made: list[int]) -> tuple[dict[str, int], dict[str, int]]:
    """Create ``entry``'s maps and load its programs relinked to them: (maps by name, programs
    by function). Every fd made is appended to ``made`` (the caller closes them on failure)."""

    def check(fd: int, what: str) -> int:
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")
        made.append(fd)
        return fd

    by_name: dict[str, int] = {}
    relocs: dict[int, int] = {}
    for m in entry.maps:
        fd = lib.bcc_create_map(
            m.type, m.name.encode(), m.key_size, m.value_size, m.max_entries, m.flags
        )
        by_name[m.name] = relocs[m.fd] = check(fd, f"creating map {m.name}")
    license_ = entry.license.encode()

    def load(p: ProgSpec) -> tuple[int, int]:
        insns = ctypes.create_string_buffer(relink(p.insns, relocs), len(p.insns))
        fd = lib.bcc_prog_load(
            p.type, kernel_name(p.name), insns, len(p.insns), license_, entry.kern_version,
            0, None, 0,
        )  # fmt: skip
        return fd, ctypes.get_errno()  # ctypes' errno is per thread

    # The kernel verifies each program (most of a warm start without pins: ~1.4 s of ~2, a
    # few large programs taking most of it); the calls release the GIL, so one thread per CPU
    # verifies in parallel, the largest programs first.
    order = sorted(entry.progs, key=lambda p: -len(p.insns))
    with ThreadPoolExecutor(max_workers=max(1, len(os.sched_getaffinity(0)))) as pool:
        results = list(pool.map(load, order))
    progs: dict[str, int] = {}
    for p, (fd, _err) in zip(order, results, strict=True):
        if fd >= 0:
            made.append(fd)
            progs[p.name] = fd
    for p, (fd, err) in zip(order, results, strict=True):
        if fd < 0:
            raise OSError(err, f"loading {p.name}: {os.strerror(err)}")
    return by_name, progs


def load_entry(
    entry: Entry, maps: list[str], self_tgid: int | None, pins: PinSet | None = None
) -> Handles:
    """Create the maps, load the programs relinked to them, install the tail calls, attach.
    With ``pins`` (a :class:`sentinel.kernel.pins.PinSet` whose lock is held): reuse the set
    pinned there when it is exactly this entry's (verified and reset: no verifier run), else
    load fresh and pin what was loaded. Returns the attachments, the programs (held for their
    statistics: sentinel.kernel.bpfstats) and the maps asked for (and the tail calls' program
    arrays, which the kernel empties when their last fd closes). Any failure closes what was
    made and raises (:class:`CacheError` or OSError): the caller compiles instead."""
    from sentinel.kernel.loader import BPF_MAP_UPDATE_ELEM, bpf_map_op, set_self

    lib = _libbpf()
    made: list[int] = []
    try:
        reused = pins.reuse(entry) if pins is not None else None
        if reused is not None:
            by_name, progs = reused
            made += [*by_name.values(), *progs.values()]
        else:
            by_name, progs = _create(lib, entry, made)
        if "self_tgid" not in by_name:
            raise CacheError("no self_tgid map")
        set_self(by_name["self_tgid"], self_tgid)
        for array, index, func in entry.tail_calls if reused is None else ():  # (reuse: set)
            err = bpf_map_op(
                BPF_MAP_UPDATE_ELEM, by_name[array], ctypes.c_int(index), ctypes.c_int(progs[func])
            )
            if err:
                raise OSError(err, f"installing tail call {func}: {os.strerror(err)}")
        if pins is not None and reused is None:
            pins.pin(entry, by_name, progs)  # before attaching: nothing has run in them
        out: Handles = {}
        for kind, tp, func in entry.attach:
            if kind == "raw":
                fd = lib.bpf_attach_raw_tracepoint(progs[func], tp.encode())
            else:
                cat, _, event = tp.partition(":")
                fd = lib.bpf_attach_tracepoint(progs[func], cat.encode(), event.encode())
            if fd < 0:
                err = ctypes.get_errno()
                raise OSError(err, f"attaching {tp}: {os.strerror(err)}")
            made.append(fd)
            out[f"{kind}:{tp}"] = ("link", fd)
        for name in [*maps, *sorted({a for a, _i, _f in entry.tail_calls})]:
            if name not in by_name:
                raise CacheError(f"no map {name}")
            out[name] = ("map", by_name[name])
    except BaseException:
        for fd in made:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise
    for func, fd in progs.items():  # kept for their kernel statistics (bpfstats)
        out[PROG_PREFIX + func] = ("prog", fd)
    keep = {fd for _k, fd in out.values()}
    for fd in made:
        if fd not in keep:
            os.close(fd)
    return out


# ---- struct offsets from BTF ----------------------------------------------------------------


def cached_cflags(
    directory: Path | None, btf_path: Path, compute: Any, tag: str = "offsets"
) -> list[str] | None:
    """``compute()`` (-D flags from BTF, or None when BTF lacks what they need: parsing 5 MB
    takes ~0.3 s), or what a previous start computed, under ``tag``, from a BTF with the same
    digest."""
    if directory is None:
        result: list[str] | None = compute()
        return result
    digest = _file_digest(btf_path)
    path = directory / f"{tag}-{digest}.json"
    cache = ProgramCache(directory)
    with contextlib.suppress(OSError, ValueError, TypeError):
        if path.exists() and cache._trusted_dir() and _owned_privately(path.stat()):
            flags = json.loads(path.read_text())
            if flags is None:
                return None
            if isinstance(flags, list) and all(isinstance(f, str) for f in flags):
                return [str(f) for f in flags]
    result = compute()
    with contextlib.suppress(OSError):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if cache._trusted_dir():
            tmp = directory / f".{tag}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(result, f)
            os.replace(tmp, path)
    return result
