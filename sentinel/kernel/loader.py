"""Compile, load and attach the sensor in a short-lived child process; keep only the fds.

Why: bcc brings LLVM into the process. Importing it costs ~65 MB of resident memory and a
compile peaks ~90 MB more, which would stay in the long-running sensor's peak RSS for its
whole life. A child does the bcc work, then hands the parent, over a Unix socket
(SCM_RIGHTS), the file descriptors that keep everything alive: one per attachment (perf event
or raw tracepoint) and the maps the parent reads. The child exits without cleanup, so the
attachments stay; the parent closing those fds (or dying) detaches everything, as the kernel
guarantees. The parent never imports bcc.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

MAX_FDS = 64


class LoaderError(Exception):
    pass


@dataclass
class Loaded:
    """What the parent holds: map fds by name, and the attachment fds (closing detaches)."""

    maps: dict[str, int]
    links: dict[str, int] = field(default_factory=dict)

    def close(self) -> None:
        for fd in [*self.links.values(), *self.maps.values()]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.links.clear()
        self.maps.clear()


def load_in_child(
    source: Path,
    cflags: list[str],
    maps: list[str],
    timeout: float = 120,
    prelude: str = "",
    tail_calls: Sequence[tuple[str, int, str]] = (),
) -> Loaded:
    """Run the child, wait for its fds. Raises :class:`LoaderError` with the child's error.
    ``prelude`` is C source placed in front of the file (e.g. the prefilter's hooks).
    ``tail_calls``: (program array, index, function) to load and install, for each program array
    the program defines (others are skipped); the array's fd comes back in ``maps``, since the
    kernel empties a program array when its last user-space fd closes."""
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with parent_sock, child_sock:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sentinel.kernel.loader", str(child_sock.fileno())],
            # from the directory holding this sentinel package, so the child runs this very
            # loader whatever the caller's cwd (-m looks in the cwd first)
            cwd=Path(__file__).resolve().parents[2],
            pass_fds=[child_sock.fileno()],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        child_sock.close()
        request = {
            "source": str(source),
            "cflags": cflags,
            "maps": maps,
            "prelude": prelude,
            "tail_calls": [list(t) for t in tail_calls],
        }
        parent_sock.sendall(json.dumps(request).encode() + b"\n")
        parent_sock.settimeout(timeout)
        try:
            msg, fds, _flags, _addr = socket.recv_fds(parent_sock, 1 << 20, MAX_FDS)
        except TimeoutError:
            proc.kill()
            raise LoaderError("the BPF loader timed out") from None
        _out, err = proc.communicate(timeout=timeout)
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
    loaded = Loaded(maps={})
    for name, kind, fd in zip(names, kinds, fds, strict=True):
        if kind == "map":
            loaded.maps[name] = fd
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
    try:
        from bcc import BPF

        text = req.get("prelude", "").encode() + Path(req["source"]).read_bytes()
        b = BPF(text=text, cflags=req["cflags"])
        tails: list[str] = []
        for array, index, func in req.get("tail_calls", []):
            try:
                table = b[array.encode()]
            except KeyError:
                continue  # not compiled in
            prog = b.load_func(func.encode(), BPF.TRACEPOINT)
            table[ctypes.c_int(index)] = ctypes.c_int(prog.fd)
            tails.append(array)
    except Exception as exc:  # the compile/verifier message is the useful part
        sock.sendall(json.dumps({"error": f"loading the BPF sensor failed: {exc}"}).encode())
        sock.close()
        os._exit(0)
    names: list[str] = []
    kinds: list[str] = []
    fds: list[int] = []
    for tp, fd in b.raw_tracepoint_fds.items():
        names.append("raw:" + tp.decode())
        kinds.append("link")
        fds.append(fd)
    for tp, fd in b.tracepoint_fds.items():
        names.append("tp:" + tp.decode())
        kinds.append("link")
        fds.append(fd)
    for m in [*req["maps"], *tails]:
        names.append(m)
        kinds.append("map")
        fds.append(b[m.encode()].map_fd)
    socket.send_fds(sock, [json.dumps({"names": names, "kinds": kinds}).encode()], fds)
    sock.close()
    # No cleanup: bcc's atexit detach would undo what the parent now holds.
    os._exit(0)


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


if __name__ == "__main__":
    sys.exit(_child(int(sys.argv[1])))
