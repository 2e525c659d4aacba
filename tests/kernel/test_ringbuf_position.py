"""The ring buffer's consumer position is published with one 8-byte store.

The BPF producer reads the consumer position on every reserve, on another CPU, at any moment.
A store that passes through an intermediate value (``struct.pack_into`` zero-fills its bytes,
then writes them one by one) let the producer see 0, judge the ring full and drop the record:
the sensor lost events with its ring nearly empty (issue 16). Here a C watcher, another
process reading the position as the kernel does (one 8-byte load), must never see a value
that was not written; the same watcher sees torn values through ``struct`` (checked too, so
this test can fail).
"""

from __future__ import annotations

import mmap
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from sentinel.kernel.ringbuf import position

A, B = 0x0000_0000_00FF_FFF8, 0x0000_0000_0100_0070  # a carry across three bytes
WATCHER = r"""
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
// Reads for 2 s of wall time (on a loaded machine the writer may not run beside it for a
// while), or until 1000 torn values were seen.
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDONLY);
    volatile uint64_t *p = mmap(0, 4096, PROT_READ, MAP_SHARED, fd, 0);
    uint64_t a = strtoull(argv[2], 0, 0), b = strtoull(argv[3], 0, 0);
    long torn = 0;
    puts("ready");
    fflush(stdout);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        for (long i = 0; i < 1000000L; i++) {
            uint64_t v = *p;
            if (v != a && v != b)
                torn++;
        }
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (torn >= 1000 || t.tv_sec - t0.tv_sec >= 2)
            break;
    }
    printf("%ld\n", torn);
    return 0;
}
"""


def _watch(tmp: Path, store: object) -> int:
    """Torn values the watcher saw while ``store(view_or_map, value)`` alternated A and B."""
    shm = tmp / "pos"
    shm.write_bytes(b"\0" * mmap.PAGESIZE)
    exe = tmp / "watcher"
    if not exe.exists():
        (tmp / "watcher.c").write_text(WATCHER)
        subprocess.run(["gcc", "-O2", "-o", str(exe), str(tmp / "watcher.c")], check=True)
    with open(shm, "r+b") as f:
        page = mmap.mmap(f.fileno(), mmap.PAGESIZE)
    struct.pack_into("<Q", page, 0, A)
    # The two on different CPUs: on one, they never run at the same moment.
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.fail("the watcher needs a second CPU")
    proc = subprocess.Popen(
        ["taskset", "-c", str(cpus[1]), str(exe), str(shm), hex(A), hex(B)],
        stdout=subprocess.PIPE,
        text=True,
    )
    os.sched_setaffinity(0, {cpus[0]})
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    view = position(page)
    try:
        while proc.poll() is None:
            for _ in range(2000):
                store(view, page, B)  # type: ignore[operator]
                store(view, page, A)  # type: ignore[operator]
            time.sleep(0)
    finally:
        os.sched_setaffinity(0, cpus)
        out = proc.communicate()[0]
        view.release()
        page.close()
    return int(out.strip())


def test_position_store_is_never_seen_torn(tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the watcher (scripts/setup.sh installs it)")

    def atomic(view: memoryview, _page: mmap.mmap, value: int) -> None:
        view[0] = value

    def bytewise(_view: memoryview, page: mmap.mmap, value: int) -> None:
        struct.pack_into("<Q", page, 0, value)

    assert _watch(tmp_path, bytewise) > 0  # the watcher can see a torn store
    assert _watch(tmp_path, atomic) == 0
