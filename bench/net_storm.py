"""Socket load generators for the family benchmark, as a small C program built at bench time.

C for the same reason as ``kernel_storm``: the syscalls must dominate the loop.

- ``udp N``: one UDP socket bound to 127.0.0.1, N x (sendto itself + recvfrom): N sendto and
  N recvfrom events; prints the loop's wall time in ns.
- ``accept N``: a listener on 127.0.0.1, N x (socket + connect + accept4 + two closes, the client
  resetting so no TIME_WAIT accumulates);
  prints the loop's wall time in ns.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

SOURCE = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int bound(int type, struct sockaddr_in *a) {
    int s = socket(AF_INET, type, 0);
    socklen_t len = sizeof(*a);
    memset(a, 0, sizeof(*a));
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (s < 0 || bind(s, (struct sockaddr *)a, sizeof(*a)) < 0) { perror("bind"); exit(1); }
    getsockname(s, (struct sockaddr *)a, &len);
    return s;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: net_storm udp|accept N\n");
        return 2;
    }
    long n = atol(argv[2]);
    struct sockaddr_in a;
    char buf[64] = "x";
    struct sockaddr *sa = (struct sockaddr *)&a;
    if (strcmp(argv[1], "udp") == 0) {
        int s = bound(SOCK_DGRAM, &a);
        long long t0 = now_ns();
        for (long i = 0; i < n; i++) {
            if (sendto(s, buf, 1, 0, sa, sizeof(a)) != 1) return perror("sendto"), 1;
            if (recvfrom(s, buf, sizeof(buf), 0, NULL, NULL) != 1) return perror("recvfrom"), 1;
        }
        printf("%lld\n", now_ns() - t0);
        return 0;
    }
    if (strcmp(argv[1], "accept") == 0) {
        int l = bound(SOCK_STREAM, &a);
        if (listen(l, 128) < 0) { perror("listen"); return 1; }
        long long t0 = now_ns();
        for (long i = 0; i < n; i++) {
            int c = socket(AF_INET, SOCK_STREAM, 0);
            if (c < 0 || connect(c, sa, sizeof(a)) < 0)
                return perror("connect"), 1;
            int s = accept4(l, NULL, NULL, 0);
            if (s < 0) { perror("accept4"); return 1; }
            // the client resets (linger 0): no TIME_WAIT left to exhaust the ephemeral ports
            struct linger lg = {1, 0};
            setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
            close(c);
            close(s);
        }
        printf("%lld\n", now_ns() - t0);
        return 0;
    }
    return 2;
}
"""


def build(workdir: Path | None = None) -> Path:
    """Compile the generator with the system C compiler; returns the binary's path."""
    d = workdir or Path(tempfile.mkdtemp(prefix="sentinel-bench-net-"))
    src = d / "net_storm.c"
    src.write_text(SOURCE)
    out = d / "net_storm"
    subprocess.run(["cc", "-O2", "-o", str(out), str(src)], check=True)
    return out


def net_storm(binary: Path, mode: str, n: int) -> int:
    """Wall time in ns of n iterations of ``mode`` (udp or accept)."""
    res = subprocess.run([str(binary), mode, str(n)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"net_storm {mode}: {res.stderr.strip()}")
    return int(res.stdout.strip())
