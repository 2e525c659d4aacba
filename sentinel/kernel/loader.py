"""Compile, load and attach the sensor in a short-lived child process; keep only the fds.

Why: bcc brings LLVM into the process. Importing it costs ~65 MB of resident memory and a
compile peaks ~90 MB more, which would stay in the long-running sensor's peak RSS for its
whole life. A child does the bcc work, then hands the parent, over a Unix socket
(SCM_RIGHTS), the file descriptors that keep everything alive: one per attachment (perf event
or raw tracepoint) and the maps the parent reads. The child exits without cleanup, so the
attachments stay; the parent closing those fds (or dying) detaches everything, as the kernel
guarantees. The parent never imports bcc.

BPF LSM programs (request key ``lsm``: the hooks) are only loaded (verified) in the child, not
attached: their program fds come back, so the parent can fill the policy maps first and then
attach each program itself with one bpf(2) call (:func:`attach_lsm`).

Child: ``python -m sentinel.kernel.loader SOCKFD`` with a JSON request on the socket.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentinel.kernel.bpfcache import PROG_PREFIX, Handles

# The kernel passes at most SCM_MAX_FD (253) descriptors in one message: every attached
# program and map the sensor keeps must fit (all event types: ~70 today).
MAX_FDS = 253


class LoaderError(Exception):
    pass


def _deferred(bpf_cls: Any) -> Any:
    """bcc attaches its ``tracepoint__``/``raw_tracepoint__`` functions as it compiles them,
    but the sensor's programs tail-call others that are installed only afterwards: an event in
    between would find no program (an exec record lost, a syscall's handler skipped). This
    class defers the attaching (bcc's own ``_trace_autoload``, called once the tail calls are
    in); where bcc has no such method, it attaches at once, as before."""
    if not hasattr(bpf_cls, "_trace_autoload"):
        return bpf_cls

    class Deferred(bpf_cls):  # type: ignore[misc]
        def _trace_autoload(self) -> None:
            return None

    return Deferred


@dataclass
class Loaded:
    """What the parent holds: map fds by name, and the attachment fds (closing detaches)."""

    maps: dict[str, int]
    links: dict[str, int] = field(default_factory=dict)
    # by function name (``lsm``: by hook, loaded, not attached): read by sentinel.kernel.bpfstats
    progs: dict[str, int] = field(default_factory=dict)
    cached: bool = False  # loaded from the program cache (sentinel.kernel.bpfcache)
    notes: list[str] = field(default_factory=list)  # the cache's problems, to warn about

    def close(self) -> None:
        for fd in [*self.links.values(), *self.progs.values(), *self.maps.values()]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.links.clear()
        self.progs.clear()
        self.maps.clear()


def load_in_child(
    source: Path | str,
    cflags: list[str],
    maps: list[str],
    timeout: float = 120,
    prelude: str = "",
    lsm: list[str] | None = None,
    tail_calls: Sequence[tuple[str, int, str, str]] = (),
    cache_dir: Path | None = None,
    cache_key: str | None = None,
    self_tgid: int | None = None,
) -> Loaded:
    """Run the child, wait for its fds. Raises :class:`LoaderError` with the child's error.
    ``source``: a C file, or the program text itself (a ``str``: the sensor assembles its
    program, see sentinel.kernel.program). ``prelude`` is C source placed in front of it.
    ``lsm``: load the BPF LSM programs ``lsm__<hook>`` of these hooks, all or none, without
    attaching them (nothing else is autoloaded); their fds are in ``Loaded.progs``.
    ``tail_calls``: (program array, index, function) to load and install, for each program array
    the program defines (others are skipped); the array's fd comes back in ``maps``, since the
    kernel empties a program array when its last user-space fd closes. ``cache_dir`` and
    ``cache_key``: record the compile there (sentinel.kernel.bpfcache). ``self_tgid``: the
    process whose events the sensor drops."""
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    # The child's stderr goes to a file, not a pipe: a rejected program's verifier log is
    # often larger than a pipe holds, and the child would block writing it while we wait for
    # its fds (seen: a load "timing out" instead of naming the verifier's complaint).
    with parent_sock, child_sock, tempfile.TemporaryFile() as errf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sentinel.kernel.loader", str(child_sock.fileno())],
            # from the directory holding this sentinel package, so the child runs this very
            # loader whatever the caller's cwd (-m looks in the cwd first)
            cwd=Path(__file__).resolve().parents[2],
            pass_fds=[child_sock.fileno()],
            stdout=subprocess.DEVNULL,
            stderr=errf,
        )
        child_sock.close()
        request = {
            "source": str(source) if isinstance(source, Path) else None,
            "text": source if isinstance(source, str) else None,
            "cflags": cflags,
            "maps": maps,
            "prelude": prelude,
            "lsm": lsm,
            "tail_calls": [list(t) for t in tail_calls],
            "cache_dir": str(cache_dir) if cache_dir is not None else None,
            "cache_key": cache_key,
            "self_tgid": self_tgid,
        }
        parent_sock.sendall(json.dumps(request).encode() + b"\n")
        parent_sock.settimeout(timeout)
        try:
            msg, fds, _flags, _addr = socket.recv_fds(parent_sock, 1 << 20, MAX_FDS)
        except TimeoutError:
            proc.kill()
            proc.wait()
            raise LoaderError("the BPF loader timed out") from None
        proc.wait(timeout=timeout)
        errf.seek(0)
        err = errf.read()
    if not msg:
        text = err.decode("utf-8", "replace").strip().splitlines()
        last = next((x for x in reversed(text) if x.strip()), "no output")
        raise LoaderError(last)
    reply = json.loads(msg.decode())
    if "error" in reply:
        for fd in fds:
            os.close(fd)
        raise LoaderError(reply["error"])
    names: list[str] = reply["names"]
    kinds: list[str] = reply["kinds"]
    loaded = Loaded(maps={}, cached=bool(reply.get("cached")), notes=list(reply.get("notes", [])))
    for name, kind, fd in zip(names, kinds, fds, strict=True):
        if kind == "map":
            loaded.maps[name] = fd
        elif kind == "prog":
            loaded.progs[name.removeprefix(PROG_PREFIX)] = fd
        else:
            loaded.links[name] = fd
    return loaded


def _child(sock_fd: int) -> int:
    sock = socket.socket(fileno=sock_fd)
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            return 1
        buf += chunk
    req = json.loads(buf)
    names: list[str] = []
    kinds: list[str] = []
    fds: list[int] = []
    notes: list[str] = []
    cached = False
    try:
        from bcc import BPF

        body = req["text"].encode() if req.get("text") else Path(req["source"]).read_bytes()
        text = req.get("prelude", "").encode() + body
        if req.get("lsm") is not None:
            b = _load_lsm(BPF, text, req["cflags"], req["lsm"], names, kinds, fds)
            for m in req["maps"]:
                names.append(m)
                kinds.append("map")
                fds.append(b[m.encode()].map_fd)
        else:
            out, cached = _load_sensor(BPF, text, req, notes)
            for name, (kind, fd) in out.items():
                names.append(name)
                kinds.append(kind)
                fds.append(fd)
    except Exception as exc:  # the compile/verifier message is the useful part
        msg = str(exc) if req.get("lsm") is not None else f"loading the BPF sensor failed: {exc}"
        sock.sendall(json.dumps({"error": msg}).encode())
        sock.close()
        os._exit(0)
    if len(fds) > MAX_FDS:
        msg = (
            f"loading the BPF sensor failed: {len(fds)} descriptors exceed the {MAX_FDS} "
            "one message passes"
        )
        sock.sendall(json.dumps({"error": msg}).encode())
        sock.close()
        os._exit(0)
    reply = {"names": names, "kinds": kinds, "cached": cached, "notes": notes}
    socket.send_fds(sock, [json.dumps(reply).encode()], fds)
    sock.close()
    # No cleanup: bcc's atexit detach would undo what the parent now holds.
    os._exit(0)


def _load_sensor(
    bpf_cls: Any, text: bytes, req: dict[str, Any], notes: list[str]
) -> tuple[Handles, bool]:
    """Compile, load and attach the sensor; when the request names a cache key, record the
    result there (sentinel.kernel.bpfcache: the next start with the same key skips this).
    Returns (handles, cached=False)."""
    tails = [list(t) for t in req.get("tail_calls", [])]
    b = _deferred(bpf_cls)(text=text, cflags=req["cflags"])
    installed: list[tuple[str, int, str]] = []
    for array, index, func, kind in tails:
        try:
            table = b[array.encode()]
        except KeyError:
            continue  # not compiled in
        ptype = bpf_cls.RAW_TRACEPOINT if kind == "raw_tracepoint" else bpf_cls.TRACEPOINT
        prog = b.load_func(func.encode(), ptype)
        table[ctypes.c_int(index)] = ctypes.c_int(prog.fd)
        installed.append((array, index, func))
    try:
        self_map = b[b"self_tgid"]
    except KeyError:
        self_map = None  # a program set without one (the enforcement kill mode's)
    if self_map is not None:
        set_self(self_map.map_fd, req.get("self_tgid"))
    if hasattr(bpf_cls, "_trace_autoload"):
        bpf_cls._trace_autoload(b)  # attach, now that every tail call has its program
    out: Handles = {}
    for tp, fd in b.raw_tracepoint_fds.items():
        out["raw:" + tp.decode()] = ("link", fd)
    for tp, fd in b.tracepoint_fds.items():
        out["tp:" + tp.decode()] = ("link", fd)
    for m in [*req["maps"], *(a for a, _i, _f in installed)]:
        out[m] = ("map", b[m.encode()].map_fd)
    for fname, fn in b.funcs.items():  # held by the parent for their statistics (bpfstats)
        out[PROG_PREFIX + fname.decode()] = ("prog", fn.fd)
    if req.get("cache_dir") and req.get("cache_key"):
        from sentinel.kernel import bpfcache

        cache = bpfcache.ProgramCache(Path(req["cache_dir"]))
        cache.store(req["cache_key"], _entry_of(b, bpf_cls, tails, installed))
        notes += cache.notes
    return out, False


def set_self(map_fd: int, tgid: int | None) -> None:
    """The process whose events the sensor drops (its own; 0: none): a map value, not a
    cflag, so the program text stays the same from one start to the next."""
    err = bpf_map_op(BPF_MAP_UPDATE_ELEM, map_fd, ctypes.c_uint32(0), ctypes.c_uint32(tgid or 0))
    if err:
        raise OSError(err, f"setting the sensor's own pid: {os.strerror(err)}")


def _entry_of(
    b: Any, bpf_cls: Any, tails: list[list[Any]], installed: list[tuple[str, int, str]]
) -> Any:
    """What bcc produced, as a cache entry (the maps' attributes as the kernel has them)."""
    from bcc import lib

    from sentinel.kernel import bpfcache

    kinds = {func: kind for _a, _i, func, kind in tails}
    entry = bpfcache.Entry(
        license=lib.bpf_module_license(b.module).decode(),
        kern_version=int(lib.bpf_module_kern_version(b.module)),
    )
    for name in _table_names(b):
        fd = b[name.encode()].map_fd
        info = map_info(fd)
        del info["id"]
        entry.maps.append(bpfcache.MapSpec(name=name, fd=fd, **info))
    for fname in b.funcs:
        f = fname.decode()
        if f.startswith("raw_tracepoint__") or kinds.get(f) == "raw_tracepoint":
            ptype = bpf_cls.RAW_TRACEPOINT
        else:
            ptype = bpf_cls.TRACEPOINT
        entry.progs.append(bpfcache.ProgSpec(f, ptype, b.dump_func(fname)))
    entry.tail_calls = list(installed)
    for tp in b.raw_tracepoint_fds:
        entry.attach.append(("raw", tp.decode(), f"raw_tracepoint__{tp.decode()}"))
    for tp in b.tracepoint_fds:
        cat, _, event = tp.decode().partition(":")
        entry.attach.append(("tp", tp.decode(), f"tracepoint__{cat}__{event}"))
    return entry


def _table_names(b: Any) -> list[str]:
    """Every map the module defines (bcc's ``tables`` only holds those opened so far)."""
    from bcc import lib

    lib.bpf_num_tables.restype = ctypes.c_ulonglong
    lib.bpf_num_tables.argtypes = [ctypes.c_void_p]
    lib.bpf_table_name.restype = ctypes.c_char_p
    lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_ulonglong]
    return [lib.bpf_table_name(b.module, i).decode() for i in range(lib.bpf_num_tables(b.module))]


def _load_lsm(
    bpf_cls: Any,
    text: bytes,
    cflags: list[str],
    hooks: list[str],
    names: list[str],
    kinds: list[str],
    fds: list[int],
) -> Any:
    """Compile, then load (verify) every ``lsm__<hook>`` program; attach none of them."""

    class NoAutoload(bpf_cls):  # type: ignore[misc]
        def _trace_autoload(self) -> None:  # bcc would attach each program as it loads it
            pass

    try:
        b = NoAutoload(text=text, cflags=cflags)
    except Exception as exc:
        raise RuntimeError(f"compiling bpf/enforcement/lsm.c failed: {exc}") from exc
    for hook in hooks:
        try:
            fn = b.load_func(f"lsm__{hook}".encode(), bpf_cls.LSM)
        except Exception as exc:
            raise RuntimeError(f"the kernel rejected the {hook} program: {exc}") from exc
        names.append(hook)
        kinds.append("prog")
        fds.append(fn.fd)
    return b


# ---- reading a map without bcc: the bpf(2) syscall -------------------------------------------

_NR_BPF = 321  # x86-64
BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM, BPF_MAP_GET_NEXT_KEY = 1, 2, 3, 4
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _MapElemAttr(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


def possible_cpus() -> int:
    """Per-CPU map values have one slot per *possible* CPU."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def bpf_map_op(cmd: int, map_fd: int, key: object, value: object = None) -> int:
    """One bpf(2) map command on ctypes objects (None: a null pointer); returns 0 or errno."""
    attr = _MapElemAttr(
        map_fd,
        0,
        ctypes.addressof(key) if key is not None else 0,  # type: ignore[arg-type]
        ctypes.addressof(value) if value is not None else 0,  # type: ignore[arg-type]
        0,
    )
    res = _libc.syscall(_NR_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    return 0 if res == 0 else ctypes.get_errno()


def percpu_u64(map_fd: int, key: int, ncpus: int) -> list[int]:
    """The per-CPU u64 values of one key of a per-CPU array map."""
    k = ctypes.c_uint32(key)
    values = (ctypes.c_uint64 * ncpus)()
    err = bpf_map_op(BPF_MAP_LOOKUP_ELEM, map_fd, k, values)
    if err:
        raise OSError(err, os.strerror(err))
    return list(values)


BPF_OBJ_GET_INFO_BY_FD = 15


class _MapInfo(ctypes.Structure):
    """The head of struct bpf_map_info (the kernel fills as much as info_len asks for)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
    ]


class _InfoAttr(ctypes.Structure):
    _fields_ = [
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    ]


def bpf_call(cmd: int, attr: ctypes.Structure, what: str) -> int:
    """One bpf(2) command on an attribute struct; returns its result (an fd for some), raises
    OSError naming ``what``."""
    res = _libc.syscall(_NR_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return int(res)


def map_info(map_fd: int) -> dict[str, int]:
    """A map's type, key and value sizes, max entries and flags, as the kernel has them (and
    its kernel ``id``)."""
    info = _MapInfo()
    bpf_call(
        BPF_OBJ_GET_INFO_BY_FD,
        _InfoAttr(map_fd, ctypes.sizeof(info), ctypes.addressof(info)),
        "reading a map's info",
    )
    return {
        "type": info.type,
        "id": info.id,
        "key_size": info.key_size,
        "value_size": info.value_size,
        "max_entries": info.max_entries,
        "flags": info.map_flags,
    }


BPF_RAW_TRACEPOINT_OPEN = 17


class _RawTpAttr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_uint64), ("prog_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


def attach_lsm(prog_fd: int) -> int:
    """Attach a loaded BPF LSM program to its hook (fixed at load); returns the link fd,
    whose close detaches it (what bcc's attach_lsm does, without bcc)."""
    attr = _RawTpAttr(0, prog_fd, 0)
    res = _libc.syscall(_NR_BPF, BPF_RAW_TRACEPOINT_OPEN, ctypes.byref(attr), ctypes.sizeof(attr))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(res)


if __name__ == "__main__":
    sys.exit(_child(int(sys.argv[1])))
