"""Container identity from cgroup paths, and the cgroup-id -> path index.

Why cgroups: a container runtime puts every process of a container into a cgroup whose name
carries the container's 64-hex id, on every runtime we care about and on cgroup v1, v2 and
hybrid hosts alike. The kernel sensor gets the v2 cgroup id for free in BPF
(``bpf_get_current_cgroup_id()``), and that id stays valid after the process exited, which
``/proc/PID/cgroup`` does not; so the id is the primary key and /proc the fallback.

The v2 cgroup id is the inode number of the cgroup's directory in the cgroup2 mount (kernfs
uses the node id as inode number). Mapping id -> path therefore means finding the directory
with that inode: we walk the cgroup2 tree with ``os.scandir`` (whose ``inode()`` comes from
readdir and costs no stat) and keep an index that is only ever merged, never replaced, so ids of
cgroups already removed (containers that exited) still resolve. Cgroup ids are 64-bit and not
reused, which makes keeping stale entries safe.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import select
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# One path component that names a container. The prefix says which runtime made it.
_COMPONENT = re.compile(
    r"^(?:(?P<prefix>docker|libpod|cri-containerd|crio|containerd|nerdctl)-)?"
    r"(?P<id>[0-9a-f]{64})(?:\.scope)?$"
)
# Runtime monitor processes (conmon) live in their own cgroup next to the container's; the
# id in it is the container's, but the processes are not the container's.
_CONMON = re.compile(r"^(?:libpod|crio)-conmon-[0-9a-f]{64}(?:\.scope)?$")
# kubepods: cgroupfs `pod<uid>` (dashes) or systemd `kubepods-<qos>-pod<uid>.slice`
# (underscores instead of dashes, as systemd unit names cannot contain dashes there).
_POD = re.compile(r"^(?:kubepods(?:-[a-z]+)?-)?pod(?P<uid>[0-9a-f_-]{32,36})(?:\.slice)?$")

_PREFIX_RUNTIME = {
    "docker": "docker",
    "libpod": "podman",
    "cri-containerd": "containerd",
    "containerd": "containerd",
    "nerdctl": "containerd",
    "crio": "cri-o",
}


@dataclass(frozen=True, slots=True)
class CgroupMatch:
    """What a cgroup path says about its container."""

    runtime: str
    full_id: str
    pod_uid: str | None = None


def match_cgroup_path(path: str) -> CgroupMatch | None:
    """Full parse of a cgroup path (as in /proc/PID/cgroup); None for host cgroups.

    The deepest component that names a container wins, because runtimes nest helper cgroups
    *inside* the container's one (e.g. podman's ``libpod-<id>.scope/container``), and a
    conmon cgroup as the deepest match means the process is the monitor, not the container.
    """
    parts = [p for p in path.split("/") if p]
    for i in range(len(parts) - 1, -1, -1):
        part = parts[i]
        if _CONMON.match(part):
            return None
        m = _COMPONENT.match(part)
        if not m:
            continue
        prefix = m.group("prefix")
        ancestors = parts[:i]
        in_kube = any(a == "kubepods" or a.startswith("kubepods") for a in ancestors)
        if prefix:
            runtime = _PREFIX_RUNTIME[prefix]
        elif ancestors and ancestors[-1] == "docker":
            runtime = "docker"
        elif in_kube:
            runtime = "cri"
        else:
            # `/<namespace>/<id>` is what containerd's cgroupfs driver writes (nerdctl, ctr).
            runtime = "containerd"
        pod_uid = None
        if in_kube:
            for a in reversed(ancestors):
                pm = _POD.match(a)
                if pm:
                    pod_uid = pm.group("uid").replace("_", "-")
                    break
        return CgroupMatch(runtime, m.group("id"), pod_uid)
    return None


def parse_cgroup_path(path: str) -> tuple[str, str] | None:
    """(runtime, full 64-hex id) for a container's cgroup path, None for anything else."""
    m = match_cgroup_path(path)
    return (m.runtime, m.full_id) if m else None


def parse_proc_cgroup(text: str) -> list[tuple[str, str]]:
    """(hierarchy, path) pairs of a /proc/PID/cgroup file, the v2 line (``0::``) first.

    v1 lines look like ``4:memory:/path``; the v2 line is ``0::/path``. On a hybrid host both
    exist and normally agree; on a v1-only host only v1 lines name the container.
    """
    v2: list[tuple[str, str]] = []
    v1: list[tuple[str, str]] = []
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hid, controllers, path = fields
        (v2 if hid == "0" and controllers == "" else v1).append((controllers or "unified", path))
    return v2 + v1


def find_cgroup2_root(mounts_file: str = "/proc/self/mounts") -> str | None:
    """Mount point of the cgroup2 hierarchy: /sys/fs/cgroup/unified on hybrid hosts."""
    try:
        with open(mounts_file, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found: list[str] = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            found.append(fields[1].replace("\\040", " "))
    if not found:
        return None
    # Prefer the host's canonical mounts over copies (e.g. inside a container's bind mounts).
    for preferred in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if preferred in found:
            return preferred
    return found[0]


class CgroupIndex:
    """cgroup v2 id (inode) -> cgroup path relative to the cgroup2 root ("/a/b").

    Thread-safe. ``lookup`` is what the event path calls: a dict hit in the common case; on a
    miss it rescans the tree (a few milliseconds for hundreds of cgroups) unless that same id
    already missed a scan recently, so a stream of events from an unknown id costs one scan
    per ``negative_ttl``, not one per event.
    """

    def __init__(
        self,
        root: str | None = None,
        *,
        max_entries: int = 65536,
        negative_ttl: float = 1.0,
    ) -> None:
        self.root = root if root is not None else find_cgroup2_root()
        self.max_entries = max_entries
        self.negative_ttl = negative_ttl
        self._paths: OrderedDict[int, str] = OrderedDict()
        self._misses: OrderedDict[int, float] = OrderedDict()
        self._lock = threading.Lock()
        self._scan_lock = threading.Lock()
        self.scans = 0
        self.last_scan_seconds = 0.0

    def lookup(self, cgroup_id: int) -> str | None:
        """Path of the cgroup with this id, scanning the tree on a miss (see class doc)."""
        with self._lock:
            path = self._paths.get(cgroup_id)
            if path is not None:
                return path
            missed = self._misses.get(cgroup_id)
        now = time.monotonic()
        if missed is not None and now - missed < self.negative_ttl:
            return None
        self.rescan()
        with self._lock:
            path = self._paths.get(cgroup_id)
            if path is None:
                self._misses[cgroup_id] = now
                self._misses.move_to_end(cgroup_id)
                while len(self._misses) > 4096:
                    self._misses.popitem(last=False)
            return path

    def add(self, cgroup_id: int, path: str) -> None:
        """Record one cgroup (from the watcher) without walking the tree."""
        with self._lock:
            self._paths[cgroup_id] = path
            self._paths.move_to_end(cgroup_id)
            self._misses.pop(cgroup_id, None)
            while len(self._paths) > self.max_entries:
                self._paths.popitem(last=False)

    def rescan(self) -> int:
        """Walk the cgroup2 tree and merge what it finds; returns the number of cgroups seen.

        Concurrent callers share one walk: whoever waits on the lock finds the index fresh.
        """
        if self.root is None:
            return 0
        with self._scan_lock:
            t0 = time.perf_counter()
            found: list[tuple[int, str]] = []
            try:
                found.append((os.stat(self.root).st_ino, "/"))
            except OSError:
                return 0
            stack = [(self.root, "")]
            while stack:
                directory, rel = stack.pop()
                try:
                    with os.scandir(directory) as it:
                        for entry in it:
                            # Cgroup directories only; is_dir() uses d_type, no stat.
                            if not entry.is_dir(follow_symlinks=False):
                                continue
                            child = f"{rel}/{entry.name}"
                            found.append((entry.inode(), child))
                            stack.append((entry.path, child))
                except OSError:
                    continue  # removed while we walked it: normal for short-lived cgroups
            with self._lock:
                for ino, path in found:
                    self._paths[ino] = path
                    self._paths.move_to_end(ino)
                    self._misses.pop(ino, None)
                while len(self._paths) > self.max_entries:
                    self._paths.popitem(last=False)
            self.scans += 1
            self.last_scan_seconds = time.perf_counter() - t0
            return len(found)


# inotify (linux/inotify.h); Python's stdlib has no binding, and one small watcher does not
# justify a dependency.
_IN_CREATE = 0x00000100
_IN_ISDIR = 0x40000000
_IN_Q_OVERFLOW = 0x00004000
_IN_IGNORED = 0x00008000
_IN_ONLYDIR = 0x01000000
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_EVENT_HEAD = struct.Struct("iIII")


class CgroupWatcher:
    """Indexes every new cgroup the moment it is created (inotify IN_CREATE on the tree).

    Why: a container can be created, run and be removed between two of our lookups; scanning on
    a miss is then too late, and a runtime's event stream can lag by hundreds of milliseconds
    (podman's file events are polled). mkdir in cgroupfs goes through the VFS, so inotify sees
    it at once. ``on_new(path)`` is told of each new cgroup (e.g. to prefetch container
    metadata before the container's first process even runs).
    """

    def __init__(self, index: CgroupIndex, on_new: Callable[[str], None] | None = None) -> None:
        self.index = index
        self.on_new = on_new
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = -1
        self._wds: dict[int, str] = {}
        self._stop_r, self._stop_w = -1, -1
        self._thread: threading.Thread | None = None
        self.watches = 0
        self.overflows = 0

    def start(self) -> bool:
        """Start watching; False (and no thread) when there is no cgroup2 tree or no inotify."""
        if self.index.root is None or self._thread is not None:
            return self._thread is not None
        fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            return False
        self._fd = fd
        self._stop_r, self._stop_w = os.pipe()
        self._watch_tree(self.index.root, "", initial=True)
        self.index.rescan()  # anything created before the watches were in place
        self._thread = threading.Thread(target=self._run, name="cgroup-watch", daemon=True)
        self._thread.start()
        return True

    def close(self) -> None:
        if self._thread is None:
            return
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=5)
        self._thread = None
        for fd in (self._fd, self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _add_watch(self, directory: str, rel: str) -> bool:
        wd = self._libc.inotify_add_watch(
            self._fd, os.fsencode(directory), _IN_CREATE | _IN_ONLYDIR
        )
        if wd < 0:
            return False
        self._wds[wd] = rel
        self.watches = len(self._wds)
        return True

    def _watch_tree(self, directory: str, rel: str, *, initial: bool = False) -> None:
        """Watch ``directory`` and everything below it; index what is new on the way."""
        stack = [(directory, rel)]
        while stack:
            d, r = stack.pop()
            if not self._add_watch(d, r):
                continue
            try:
                with os.scandir(d) as it:
                    for entry in it:
                        if entry.is_dir(follow_symlinks=False):
                            child = f"{r}/{entry.name}"
                            if not initial:
                                self._found(entry.inode(), child)
                            stack.append((entry.path, child))
            except OSError:
                continue

    def _found(self, ino: int, rel: str) -> None:
        self.index.add(ino, rel)
        if self.on_new is not None:
            with contextlib.suppress(Exception):
                self.on_new(rel)

    def _run(self) -> None:
        root = self.index.root
        assert root is not None
        while True:
            ready, _, _ = select.select([self._fd, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                buf = os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                return
            off = 0
            while off + _EVENT_HEAD.size <= len(buf):
                wd, mask, _cookie, length = _EVENT_HEAD.unpack_from(buf, off)
                name = buf[off + _EVENT_HEAD.size : off + _EVENT_HEAD.size + length]
                off += _EVENT_HEAD.size + length
                if mask & _IN_Q_OVERFLOW:
                    self.overflows += 1
                    self.index.rescan()
                    continue
                if mask & _IN_IGNORED:
                    self._wds.pop(wd, None)  # the directory is gone
                    continue
                if not (mask & _IN_CREATE and mask & _IN_ISDIR) or wd not in self._wds:
                    continue
                child = os.fsdecode(name.rstrip(b"\0"))
                rel = f"{self._wds[wd]}/{child}"
                path = root + rel
                try:
                    ino = os.stat(path).st_ino
                except OSError:
                    continue  # created and removed already
                self._found(ino, rel)
                self._watch_tree(path, rel)
