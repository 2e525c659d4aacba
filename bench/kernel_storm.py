"""The load generators of the kernel benchmark, as small C programs built at bench time.

C, not Python, so the syscall cost dominates and tracing overhead shows as a clean ratio
(a Python open()+close() costs several times the syscalls themselves).

- ``storm N PATH``: N x (open(PATH, O_RDONLY) + close) as fast as possible; prints the
  loop's wall time in ns.
- ``paced RATE SECS PATH``: RATE opens per second for SECS seconds, in 1 ms slices; prints
  the number of opens done.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SOURCE = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "storm") == 0) {
        long n = atol(argv[2]);
        const char *path = argv[3];
        long long t0 = now_ns();
        for (long i = 0; i < n; i++) {
            int fd = open(path, O_RDONLY);
            if (fd >= 0) close(fd);
        }
        printf("%lld\n", now_ns() - t0);
        return 0;
    }
    if (argc == 5 && strcmp(argv[1], "paced") == 0) {
        long rate = atol(argv[2]);
        double secs = atof(argv[3]);
        const char *path = argv[4];
        long long t0 = now_ns(), end = t0 + (long long)(secs * 1e9);
        long done = 0;
        for (long long slice = t0; slice < end; slice += 1000000) {
            long target = (long)((double)(slice - t0 + 1000000) * rate / 1e9);
            while (done < target) {
                int fd = open(path, O_RDONLY);
                if (fd >= 0) close(fd);
                done++;
            }
            long long wait = slice + 1000000 - now_ns();
            if (wait > 0) {
                struct timespec ts = {0, wait};
                nanosleep(&ts, NULL);
            }
        }
        printf("%ld %lld\n", done, now_ns() - t0);
        return 0;
    }
    fprintf(stderr, "usage: storm N PATH | paced RATE SECS PATH\n");
    return 2;
}
"""


def build(workdir: Path | None = None) -> Path:
    """Compile the generator with the system C compiler; returns the binary's path."""
    d = workdir or Path(tempfile.mkdtemp(prefix="sentinel-bench-"))
    src = d / "storm.c"
    src.write_text(SOURCE)
    out = d / "storm"
    subprocess.run(["cc", "-O2", "-o", str(out), str(src)], check=True)
    return out


def storm(binary: Path, n: int, path: str = "/dev/null") -> int:
    """Wall time in ns of n open+close pairs."""
    res = subprocess.run([str(binary), "storm", str(n), path], capture_output=True, text=True)
    res.check_returncode()
    return int(res.stdout.strip())


@dataclass(frozen=True)
class Paced:
    done: int  # opens made: rate * secs, whatever the generator's own speed
    ns: int  # wall time
    pid: int  # the generator's process (its events can be told from the machine's)


def paced_run(binary: Path, rate: int, secs: float, path: str = "/dev/null") -> Paced:
    """Opens at a target rate, in 1 ms slices, for ``secs`` seconds."""
    proc = subprocess.Popen(
        [str(binary), "paced", str(rate), str(secs), path], stdout=subprocess.PIPE, text=True
    )
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, out)
    done, ns = out.split()
    return Paced(int(done), int(ns), proc.pid)


def paced(binary: Path, rate: int, secs: float, path: str = "/dev/null") -> tuple[int, int]:
    """(opens done, wall ns) at a target rate."""
    res = paced_run(binary, rate, secs, path)
    return res.done, res.ns
