"""Load, attach and read the sensor (``bpf/sensor/``, assembled by :mod:`.program`) with bcc.

Why this way:

- Offsets of every kernel struct field come from the running kernel's BTF
  (:mod:`sentinel.kernel.offsets`), so the program is correct even though bcc compiles it
  against headers of another kernel (or works where none for this kernel exist).
- Only the syscall event types the loaded rules can match are compiled in and attached: a
  syscall tracepoint puts every syscall of every task on the slow path (KERNEL.md), while the
  sched tracepoints that keep the process table exact (exec, fork, exit) are nearly free and
  always on.
- Only sys_exit_* syscall tracepoints: the arguments are read from the saved user registers,
  so no enter probe (and no enter->exit map) is needed.
- One ring buffer carries all records. Per event type (the event table's codes), a per-CPU map
  counts the events the prefilter dropped, those it passed, and the reserve failures among them
  (bcc's ring buffer has no lost callback); read with :meth:`Sensor.counts` and
  :meth:`Sensor.lost`.
- bcc (LLVM) runs in a short-lived child (:mod:`sentinel.kernel.loader`) that hands back the
  attachment and map fds; this process reads the ring from its mmap (:mod:`.ringbuf`).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import mmap
import os
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

from sentinel.events import EVENT_TYPES
from sentinel.events.common import COUNTERS
from sentinel.events.exec import WAKE_GAP_NS
from sentinel.kernel import bpfcache, pins, program
from sentinel.kernel.btf import VMLINUX, Btf, BtfError
from sentinel.kernel.features import UnsupportedKernel
from sentinel.kernel.loader import Loaded, LoaderError, load_in_child, percpu_u64, possible_cpus
from sentinel.kernel.offsets import UnsupportedArch, sensor_cflags, uring_cflags
from sentinel.kernel.ringbuf import RingBufferReader

TRACEFS = Path("/sys/kernel/tracing")
BPFFS = Path("/sys/fs/bpf")

# Every syscall event type the sensor can attach (their names; sched ones are always on).
ALL_SYSCALLS = program.ALL_SYSCALL_TYPES
syscalls_for = program.syscall_types

# How long the loader child may compile and verify (a hang must not stall start-up forever).
# Seconds on real hardware; minutes under software emulation (the BPF LSM VM) with both cores
# busy, so the bound is generous.
LOAD_TIMEOUT_S = 600.0
DEFAULT_RINGBUF_PAGES = 4096  # 16 MiB: ~140k open records of burst at ~120 bytes each
POLL_MS = 5  # wakeups are batched in the kernel; this bounds a lone event's delay
LINGER_MS = WAKE_GAP_NS / 1e6  # the wait after a poll that delivered records (see poll)


class SensorError(Exception):
    """A start-up problem, phrased as the one line the user should read."""


def _mount(fstype: str, target: Path) -> None:
    if os.path.ismount(target):
        return
    # argv list, no shell: nothing from events or config reaches a shell.
    res = subprocess.run(
        ["mount", "-t", fstype, fstype, str(target)], capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        raise SensorError(f"cannot mount {fstype} on {target}: {res.stderr.strip()}")


def check_root() -> None:
    if os.geteuid() != 0:
        raise SensorError("sentinel must run as root to load BPF programs")


def _flags_tag() -> str:
    """The cache tag of the sensor's -D flags: the code that computes them is part of the key
    (the flags of an older Sentinel, cached for the same BTF, lack what newer code needs)."""
    import hashlib

    from sentinel.kernel import features, offsets

    h = hashlib.sha256()
    for mod in (offsets, features):
        h.update(Path(str(mod.__file__)).read_bytes())
    return f"offsets-{h.hexdigest()[:16]}"


def preflight(
    tracepoints: Iterable[tuple[str, str]],
    btf_path: Path | str = VMLINUX,
    cache_dir: Path | None = None,
    disable_features: Iterable[str] = (),
) -> list[str]:
    """Check everything that can be checked before compiling; returns the cflags (the struct
    offsets from BTF: from ``cache_dir`` when a BTF with the same digest was parsed before;
    ``disable_features``: optional kernel features whose fallback is compiled instead).

    Raises :class:`SensorError` with one clear line for: not root, no BTF, bcc missing, a
    tracepoint that does not exist on this kernel.
    """
    check_root()
    if not Path(btf_path).exists():
        raise SensorError(
            f"no kernel BTF at {btf_path}: this kernel was built without CONFIG_DEBUG_INFO_BTF"
        )
    # Only look for bcc here: importing it would put LLVM in this long-lived process (the
    # child loader imports it).
    if importlib.util.find_spec("bcc") is None:
        raise SensorError(
            "bcc is missing: install Debian's python3-bpfcc and use a venv made with "
            "--system-site-packages"
        )
    _mount("tracefs", TRACEFS)
    with contextlib.suppress(SensorError):  # bpffs: only to pin programs (pins.py notes it)
        _mount("bpf", BPFFS)
    for category, name in tracepoints:
        if not (TRACEFS / "events" / category / name).is_dir():
            raise SensorError(f"tracepoint {category}:{name} does not exist on this kernel")
    try:
        # Parsed once and dropped: the raw BTF is ~5 MB the sensor does not need afterwards.
        if disable_features:  # a test's choice: never cached
            return sensor_cflags(Btf.load(btf_path), disable=disable_features)
        flags = bpfcache.cached_cflags(
            cache_dir, Path(btf_path), lambda: sensor_cflags(Btf.load(btf_path)), _flags_tag()
        )
        assert flags is not None  # sensor_cflags raises rather than return None
        return flags
    except BtfError as exc:
        raise SensorError(f"kernel BTF lacks what the sensor needs: {exc}") from None
    except (UnsupportedArch, UnsupportedKernel) as exc:
        raise SensorError(str(exc)) from None


def absent_syscalls(syscalls: Iterable[str]) -> list[str]:
    """The syscall event types among ``syscalls`` whose ``sys_exit_*`` tracepoint this kernel
    does not have (tracefs must be mounted)."""
    return sorted(
        name
        for name in syscalls
        for category, tp in program.tracepoints([name])
        if category == "syscalls" and not (TRACEFS / "events" / category / tp).is_dir()
    )


def configured_out(syscalls: Iterable[str], kallsyms: Path = Path("/proc/kallsyms")) -> set[str]:
    """The syscall event types among ``syscalls`` that this kernel does not implement: their
    entry point is the weak ENOSYS stub ``COND_SYSCALL`` leaves (``W`` in kallsyms), e.g.
    init_module without CONFIG_MODULES. Their events cannot happen, so their missing
    tracepoint loses nothing."""
    entry = {
        f"__x64_sys_{tp.removeprefix('sys_exit_')}": name
        for name in syscalls
        for category, tp in program.tracepoints([name])
        if category == "syscalls"
    }
    if not entry:
        return set()
    try:
        text = kallsyms.read_text()
    except OSError:
        return set()
    # a substring search per name (splitting the ~5 MB into lines costs ~0.1 s of start-up)
    return {name for sym, name in entry.items() if f" W {sym}\n" in text}


RawCallback = Callable[[bytes], None]


def _ignore(_raw: bytes) -> None:
    pass


class Sensor:
    """The compiled and attached sensor. ``start`` arms it, ``poll`` delivers records to the
    callback as raw bytes (decode with :func:`sentinel.events.decode`), ``close``
    detaches everything."""

    def __init__(
        self,
        syscalls: Iterable[str] = ALL_SYSCALLS,
        *,
        ringbuf_pages: int = DEFAULT_RINGBUF_PAGES,
        btf_path: Path | str = VMLINUX,
        extra_cflags: Iterable[str] = (),
        ignore_self: bool = True,
        prelude: str = "",
        maps: Iterable[str] = (),
        cache_dir: Path | None = bpfcache.AUTO,
        pin_root: Path | None = bpfcache.AUTO,
        disable_features: Iterable[str] = (),
    ) -> None:
        unknown = set(syscalls) - ALL_SYSCALLS
        if unknown:
            raise SensorError(f"unknown syscall event types: {', '.join(sorted(unknown))}")
        if ringbuf_pages & (ringbuf_pages - 1):
            raise SensorError("ring buffer pages must be a power of two")
        self.syscalls = frozenset(syscalls)
        self.missing: frozenset[str] = frozenset()  # asked for, but no tracepoint here
        self.uring = False  # io_uring's requests are traced (bpf/sensor/uring.h)
        self.uring_missing = ""  # why not, when some attached event type could have them
        self.ringbuf_pages = ringbuf_pages
        self.btf_path = btf_path
        self.extra_cflags = list(extra_cflags)
        # C placed before bpf/sensor/common.h (the in-kernel prefilter's hooks and maps), and
        # extra map names whose fds the caller wants (see map_fd()).
        self.prelude = prelude
        self.extra_maps = list(maps)
        # Our own events would feed back forever (see is_self() in the BPF source).
        self.ignore_self = ignore_self
        self.cache_dir = bpfcache.default_dir() if cache_dir is bpfcache.AUTO else cache_dir
        self.cached = False  # loaded from the program cache, not compiled
        # Where loaded sets are pinned to be reused by the next start (sentinel.kernel.pins;
        # None: nowhere). Only with the program cache: its entry is what a pinned set is
        # verified against.
        self.pin_root = pins.default_root() if pin_root is bpfcache.AUTO else pin_root
        self.reused = False  # the programs were pinned by a previous start: not verified again
        self._pins: pins.PinSet | None = None
        self.notes: list[str] = []  # problems with the program cache (warnings)
        # Optional kernel features to leave unused (sentinel.kernel.features): their fallback
        # code is compiled instead, e.g. to test it on a kernel that has the feature.
        self.disable_features = tuple(disable_features)
        self._loaded: Loaded | None = None
        self._ncpus = 1
        self._reader: RingBufferReader | None = None
        self._busy = False  # the last poll delivered records (poll lingers after it)
        self._callback: RawCallback = _ignore

    def start(self, callback: RawCallback) -> None:
        # A syscall event type whose tracepoint this kernel lacks (a syscall configured out,
        # such as init_module without CONFIG_MODULES) is left out and reported (``missing``, in
        # `sentinel doctor` and in the `started` line), not fatal: its events cannot happen
        # here. The sched tracepoints are required (preflight).
        check_root()
        _mount("tracefs", TRACEFS)
        self.missing = frozenset(absent_syscalls(self.syscalls))
        self.syscalls = self.syscalls - self.missing
        cflags = preflight(
            program.tracepoints(self.syscalls), self.btf_path, self.cache_dir, self.disable_features
        )
        uring = self._uring_cflags() if self.syscalls & program.URING_TYPES else None
        self.uring = uring is not None
        cflags += uring or []
        cflags += [f"-DRINGBUF_PAGES={self.ringbuf_pages}", "-w"]
        cflags += self.extra_cflags
        text = program.text(self.syscalls, self.prelude, uring=self.uring)
        tails = program.tail_calls(self.syscalls)
        maps = ["events", "counts", "exec_opts", *self.extra_maps]
        self_tgid = os.getpid() if self.ignore_self else None
        key = None
        if self.cache_dir is not None:
            key = bpfcache.cache_key(text, cflags, [list(t) for t in tails])
            self._loaded = self._load_cached(key, maps, self_tgid)
        if self._loaded is None:
            try:
                # A child process runs bcc (compile, verify, attach) and passes back the fds.
                self._loaded = load_in_child(
                    text,
                    cflags,
                    maps,
                    timeout=LOAD_TIMEOUT_S,
                    tail_calls=tails,
                    cache_dir=self.cache_dir,
                    cache_key=key,
                    self_tgid=self_tgid,
                )
            except LoaderError as exc:
                raise SensorError(str(exc)) from None
            self.notes += self._loaded.notes
        self.cached = self._loaded.cached
        # Records are read straight from the mmapped ring in batches (see ringbuf.py): no
        # ctypes callback per record.
        self._reader = RingBufferReader(
            self._loaded.maps["events"], self.ringbuf_pages * mmap.PAGESIZE
        )
        self._callback = callback
        self._ncpus = possible_cpus()

    def _load_cached(self, key: str, maps: list[str], self_tgid: int | None) -> Loaded | None:
        """The sensor from the program cache, when it holds this very compile (no bcc, no
        child: sentinel.kernel.bpfcache); None otherwise, with the reason in ``notes`` when
        it is a problem rather than a first start."""
        assert self.cache_dir is not None
        cache = bpfcache.ProgramCache(self.cache_dir)
        entry = cache.load(key)
        self.notes += cache.notes
        if entry is None:
            return None
        pinset = None
        if self.pin_root is not None:
            pinset = pins.PinSet(self.pin_root, key)
            if not pinset.acquire():
                self.notes += pinset.notes
                pinset = None
        try:
            handles = bpfcache.load_entry(entry, maps, self_tgid, pinset)
        except (OSError, bpfcache.CacheError) as exc:
            self.notes.append(f"BPF cache entry not loadable ({exc}): compiled instead")
            if pinset is not None:
                self.notes += pinset.notes
                pinset.release()
            return None
        if pinset is not None:
            self.notes += pinset.notes
            self.reused = pinset.reused
            self._pins = pinset  # its lock is held until close()
        loaded = Loaded(maps={}, cached=True)
        for name, (kind, fd) in handles.items():
            if kind == "prog":
                loaded.progs[name.removeprefix(bpfcache.PROG_PREFIX)] = fd
            else:
                (loaded.maps if kind == "map" else loaded.links)[name] = fd
        return loaded

    def _uring_cflags(self) -> list[str] | None:
        """io_uring's requests are traced when its tracepoints name the request (Linux 5.19+:
        older ones give no way to join a submission to its completion) and BTF has the
        request's layout; None otherwise (``uring_missing`` says why)."""
        for cat, name in program.URING_TRACEPOINTS:
            fmt = TRACEFS / "events" / cat / name / "format"
            try:
                text = fmt.read_text()
            except OSError:
                self.uring_missing = f"no tracepoint {cat}:{name}"
                return None
            if " req;" not in text:
                self.uring_missing = f"{cat}:{name} does not name the request"
                return None
        try:
            flags = bpfcache.cached_cflags(
                self.cache_dir,
                Path(self.btf_path),
                lambda: uring_cflags(Btf.load(self.btf_path)),
                tag="uring",
            )
        except BtfError as exc:
            self.uring_missing = str(exc)
            return None
        if flags is None:
            self.uring_missing = "BTF lacks io_uring's request layout"
        return flags

    def copy_env(self, wanted: bool) -> None:
        """Whether execs copy their environment (proc.env): a page of user memory per exec,
        worth copying only while some loaded rule reads it. Started sensors only."""
        from sentinel.events.exec import EXEC_SKIP_ENV
        from sentinel.kernel.loader import BPF_MAP_UPDATE_ELEM, bpf_map_op

        if self._loaded is None or "exec_opts" not in self._loaded.maps:
            raise SensorError("no exec_opts map (not started)")
        value = ctypes.c_uint32(0 if wanted else EXEC_SKIP_ENV)
        fd = self._loaded.maps["exec_opts"]
        err = bpf_map_op(BPF_MAP_UPDATE_ELEM, fd, ctypes.c_uint32(0), value)
        if err:
            raise SensorError(f"setting exec_opts: {os.strerror(err)}")

    def map_fd(self, name: str) -> int:
        """The fd of a map named in ``maps=`` (owned by the sensor; valid until close)."""
        if self._loaded is None or name not in self._loaded.maps:
            raise SensorError(f"no map {name!r} (not started, or not asked for)")
        return self._loaded.maps[name]

    def programs(self) -> dict[str, int]:
        """The loaded programs' fds by function name (owned by the sensor; valid until close),
        for their kernel statistics (sentinel.kernel.bpfstats)."""
        return dict(self._loaded.progs) if self._loaded is not None else {}

    @property
    def attachments(self) -> list[str]:
        """What is attached, e.g. ``raw:sched_process_exec``, ``tp:syscalls:sys_exit_openat``."""
        return sorted(self._loaded.links) if self._loaded is not None else []

    def poll(self, timeout_ms: float = POLL_MS) -> int:
        """Wait up to ``timeout_ms`` for records and deliver all that are ready.

        After a poll that delivered records, the wait is at most the exec wakeup gap: an exec
        whose record skipped its wakeup (another exec woke the reader less than the gap ago,
        bpf/sensor/common.h wakeup_flags) is then read within about the gap, not POLL_MS."""
        assert self._reader is not None, "sensor not started"
        if self._busy:
            timeout_ms = min(timeout_ms, LINGER_MS)
        self._reader.wait(timeout_ms)
        n = self.drain()
        self._busy = n > 0
        return n

    def drain(self) -> int:
        """Deliver whatever is in the ring buffer now, without waiting; returns the count."""
        assert self._reader is not None, "sensor not started"
        callback = self._callback
        total = 0
        while True:
            batch = self._reader.read_batch()
            if not batch:
                return total
            total += len(batch)
            for raw in batch:
                callback(raw)

    def counts(self) -> dict[str, dict[str, int]]:
        """Per Falco event type, since start: events the prefilter ``filtered`` (dropped in
        the kernel), events it ``passed`` towards user space, and those of them ``lost``
        (ring buffer full). Sentinel's own events are not counted. Events seen by the
        kernel = filtered + passed; delivered = passed - lost."""
        out: dict[str, dict[str, int]] = {}
        if self._loaded is None:
            return out
        fd = self._loaded.maps["counts"]
        n = len(COUNTERS)
        for t in EVENT_TYPES:
            out[t.name] = {
                c: sum(percpu_u64(fd, t.code * n + j, self._ncpus)) for j, c in enumerate(COUNTERS)
            }
        return out

    def lost(self) -> dict[str, int]:
        """Reserve failures (lost records) per Falco event type since start."""
        return {t: c["lost"] for t, c in self.counts().items()}

    def close(self) -> None:
        """Detach everything (closing the attachment fds detaches the programs)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._loaded is not None:
            self._loaded.close()
            self._loaded = None
        if self._pins is not None:
            self._pins.release()
            self._pins = None

    def __enter__(self) -> Sensor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
