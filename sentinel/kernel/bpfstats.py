"""The kernel's own accounting of BPF programs (bpf_stats): runs and run time per program.

Why: an operator must see what Sentinel costs each CPU without running a benchmark. The
kernel counts, per program, how often it ran and for how long (``run_cnt``, ``run_time_ns`` of
``struct bpf_prog_info``), but only while statistics are enabled, and enabling them is
system-wide (a static key: every BPF program on the machine then pays two clock reads per run).

There are two switches. The ``kernel.bpf_stats_enabled`` sysctl stays on until someone turns
it off, also after a crash. ``BPF_ENABLE_STATS`` (Linux 5.8+) returns an fd that keeps them on
while it is open; the kernel releases it when the process exits, however it exits. Sentinel
uses only the fd (:class:`StatsSwitch`) and never writes the sysctl.

Reading is ``BPF_OBJ_GET_INFO_BY_FD`` on the program fds the caller holds (the sensor's and
the enforcement's: ``Loaded.progs``), so only Sentinel's own programs are reported, under the
names Sentinel gave them. :func:`all_programs` walks every loaded program by id instead, for
the benchmarks, which measure programs of other processes (bpftrace, another sentinel).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sentinel.kernel.loader import BPF_OBJ_GET_INFO_BY_FD, _InfoAttr, bpf_call
from sentinel.metrics.registry import Collector, Family

BPF_PROG_GET_NEXT_ID = 11
BPF_PROG_GET_FD_BY_ID = 13
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0
SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


class _ProgInfo(ctypes.Structure):
    """struct bpf_prog_info (UAPI: fields are only ever appended) up to ``recursion_misses``.
    The kernel fills as much as ``info_len`` asks for and zeroes what it does not know (a
    kernel before 5.12 leaves ``recursion_misses`` 0)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
        ("ifindex", ctypes.c_uint32),
        ("gpl_compatible", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("nr_jited_ksyms", ctypes.c_uint32),
        ("nr_jited_func_lens", ctypes.c_uint32),
        ("jited_ksyms", ctypes.c_uint64),
        ("jited_func_lens", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("nr_func_info", ctypes.c_uint32),
        ("nr_line_info", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("jited_line_info", ctypes.c_uint64),
        ("nr_jited_line_info", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("jited_line_info_rec_size", ctypes.c_uint32),
        ("nr_prog_tags", ctypes.c_uint32),
        ("prog_tags", ctypes.c_uint64),
        ("run_time_ns", ctypes.c_uint64),
        ("run_cnt", ctypes.c_uint64),
        ("recursion_misses", ctypes.c_uint64),
    ]


class _StatsAttr(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32)]


class _IdAttr(ctypes.Structure):
    """The attr of BPF_PROG_GET_NEXT_ID / BPF_PROG_GET_FD_BY_ID (start_id or prog_id first)."""

    _fields_ = [
        ("id", ctypes.c_uint32),
        ("next_id", ctypes.c_uint32),
        ("open_flags", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class ProgStats:
    """One program as the kernel accounts it. ``name`` is the kernel's (15 bytes at most)."""

    id: int
    name: str
    run_cnt: int
    run_time_ns: int
    recursion_misses: int


def prog_stats(prog_fd: int) -> ProgStats:
    """The kernel's counters of the program ``prog_fd`` refers to (OSError if it is none)."""
    info = _ProgInfo()
    attr = _InfoAttr(prog_fd, ctypes.sizeof(info), ctypes.addressof(info))
    bpf_call(BPF_OBJ_GET_INFO_BY_FD, attr, "reading a program's statistics")
    return ProgStats(
        id=info.id,
        name=info.name.decode("utf-8", "replace"),
        run_cnt=info.run_cnt,
        run_time_ns=info.run_time_ns,
        recursion_misses=info.recursion_misses,
    )


def all_programs() -> dict[int, ProgStats]:
    """Every program loaded on the machine, by id (root: CAP_SYS_ADMIN opens them by id). A
    program unloaded during the walk is skipped."""
    out: dict[int, ProgStats] = {}
    start = 0
    while True:
        attr = _IdAttr(start, 0, 0)
        try:
            bpf_call(BPF_PROG_GET_NEXT_ID, attr, "listing programs")
        except FileNotFoundError:  # ENOENT: no program after ``start``
            return out
        start = attr.next_id
        try:
            fd = bpf_call(BPF_PROG_GET_FD_BY_ID, _IdAttr(start, 0, 0), "opening a program")
        except FileNotFoundError:
            continue
        try:
            out[start] = prog_stats(fd)
        finally:
            os.close(fd)


def sysctl_enabled() -> bool | None:
    """Whether statistics are on now, by anyone (the sysctl reads 1 while any fd or the sysctl
    itself holds them on); None when the kernel has no such sysctl."""
    try:
        return SYSCTL.read_text().strip() == "1"
    except OSError:
        return None


class StatsSwitch:
    """bpf_stats on for as long as this is open (``BPF_ENABLE_STATS``). ``on`` says whether it
    took; ``why`` says why not (an old kernel, no CAP_SYS_ADMIN). Never raises: without
    statistics Sentinel runs exactly as before, it only reports less."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.why = ""
        try:
            self.fd = bpf_call(
                BPF_ENABLE_STATS, _StatsAttr(BPF_STATS_RUN_TIME), "BPF_ENABLE_STATS refused"
            )
        except OSError as exc:
            self.why = f"{exc.strerror} (needs Linux 5.8+ and CAP_SYS_ADMIN)"

    @property
    def on(self) -> bool:
        return self.fd is not None

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def __enter__(self) -> StatsSwitch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# (component, program) -> program fd, read at every scrape: programs come and go (an enforcer
# attached by a rules reload, one closed on shutdown).
Programs = Callable[[], Mapping[tuple[str, str], int]]

METRICS = (
    ("runs_total", "times each BPF program ran (kernel bpf_stats)"),
    ("run_seconds_total", "CPU time each BPF program ran, in seconds (kernel bpf_stats)"),
    (
        "recursion_misses_total",
        "runs the kernel skipped because a BPF program was already running on that CPU",
    ),
)


def collector(programs: Programs, switch: StatsSwitch | None) -> Collector:
    """Prometheus families ``sentinel_bpf_program_*{component,program}`` and the gauge
    ``sentinel_bpf_stats_enabled``. Counts exist only while statistics are on, so with the
    switch off (``switch`` None or refused) only the gauge is exported: zeros would read as
    'costs nothing'."""

    def collect() -> Iterable[Family]:
        on = switch is not None and switch.on
        gauge = Family(
            "sentinel_bpf_stats_enabled",
            "1 when Sentinel holds kernel bpf_stats on (config bpf_stats), else 0",
            "gauge",
        ).add(1 if on else 0)
        if not on:
            return [gauge]
        labels = ["component", "program"]
        fams = [
            Family(f"sentinel_bpf_program_{key}", help, "counter", labels) for key, help in METRICS
        ]
        for (component, name), fd in sorted(programs().items()):
            try:
                st = prog_stats(fd)
            except OSError:
                continue  # closed under us (shutdown, an enforcer replaced)
            fams[0].add(st.run_cnt, component, name)
            fams[1].add(st.run_time_ns / 1e9, component, name)
            fams[2].add(st.recursion_misses, component, name)
        return [gauge, *fams]

    return collect


def labelled(component: str, progs: Mapping[str, int]) -> dict[tuple[str, str], int]:
    """``progs`` (function name -> fd, as ``Loaded.progs`` holds them) keyed for
    :func:`collector`, each under its name without bcc's section prefix."""
    from sentinel.kernel.bpfcache import short_name

    return {(component, short_name(name)): fd for name, fd in progs.items()}


__all__ = [
    "ProgStats",
    "StatsSwitch",
    "all_programs",
    "collector",
    "labelled",
    "prog_stats",
    "sysctl_enabled",
]
