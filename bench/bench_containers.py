"""Start-up with container runtime sockets that do not answer (issue 17: "start-up is not
slower with a runtime socket that does not answer").

    .venv/bin/python -m bench containers [--trials N] [--no-run]

Two measures, each a median of N trials (default 3) with the spread, cases interleaved so the
machine's drift hits every case alike:

- ``resolver``: ``ContainerResolver.start()`` plus the first ``resolve_pid`` of a process (what
  ``sentinel run`` calls before it is armed), with no runtime socket, a CRI socket that accepts
  and never answers (a real listening socket: a hung runtime), a CRI socket nobody listens on
  (a stopped runtime), and a hung Docker-API socket.
- ``run``: ``sentinel run`` (root, real sensor) from spawn to its ``armed`` line, with no socket
  and with the hung CRI socket named by ``CONTAINER_RUNTIME_ENDPOINT``.

Results: bench/results/containers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sentinel.enrichment.container_meta import RuntimeSocket
from sentinel.enrichment.containers import ContainerResolver
from sentinel.logging import configure_logging

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "containers.json"
_ENV_SOCKETS = ("CONTAINER_RUNTIME_ENDPOINT", "CONTAINER_HOST", "DOCKER_HOST")


@contextmanager
def sockets(tmp: Path) -> Iterator[dict[str, list[RuntimeSocket]]]:
    """The cases: name -> the sockets the resolver is given."""
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.bind(str(tmp / "hung.sock"))
    hung.listen(64)  # the kernel accepts connections; nobody ever reads or answers
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(tmp / "dead.sock"))  # a socket file with no listener: ECONNREFUSED
    try:
        yield {
            "none": [],
            "cri_hung": [RuntimeSocket(str(tmp / "hung.sock"), "cri", "containerd")],
            "cri_stopped": [RuntimeSocket(str(tmp / "dead.sock"), "cri", "containerd")],
            "docker_hung": [RuntimeSocket(str(tmp / "hung.sock"), "docker", "podman")],
        }
    finally:
        hung.close()
        dead.close()


def resolver_start(socks: list[RuntimeSocket]) -> float:
    """Seconds for start() + the first resolve_pid (of this process)."""
    t0 = time.perf_counter()
    r = ContainerResolver(sockets=socks)
    r.start()
    r.resolve_pid(os.getpid())
    took = time.perf_counter() - t0
    r.close()
    return took


def run_armed(env: dict[str, str], own: list[float]) -> float:
    """Seconds from spawning `sentinel run` to its `armed` line; appends to ``own`` what run
    itself reports there (``seconds=``: from creating the container resolver to armed)."""
    argv = [sys.executable, "-m", "sentinel", "run", "--duration", "1"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    assert proc.stderr is not None
    armed = None
    for line in proc.stderr:
        if "armed" in line and armed is None:
            armed = time.perf_counter() - t0
            own.append(_seconds(line))
    proc.wait(60)
    if armed is None:
        raise RuntimeError("sentinel run did not arm")
    return armed


def _seconds(line: str) -> float:
    """The ``seconds`` of run's armed log line (JSON when stderr is a pipe, else key=value)."""
    try:
        return float(json.loads(line)["seconds"])
    except (ValueError, KeyError):
        return float(line.rsplit("seconds=", 1)[1].split()[0])


def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "median_s": round(statistics.median(samples), 4),
        "min_s": round(min(samples), 4),
        "max_s": round(max(samples), 4),
        "samples_s": [round(s, 4) for s in samples],
    }


def interleave(cases: dict[str, Callable[[], float]], trials: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(trials):
        for name, fn in cases.items():
            out[name].append(fn())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--no-run", action="store_true", help="skip the sentinel run measure")
    args = ap.parse_args(argv if argv is not None else [])
    configure_logging("console", "error")  # each hung case logs its (expected) warning once
    base_env = {k: v for k, v in os.environ.items() if k not in _ENV_SOCKETS}
    base_env["SENTINEL_METRICS_ADDRESS"] = "127.0.0.1:0"
    result: dict[str, Any] = {"trials": args.trials}
    with tempfile.TemporaryDirectory(prefix="sentinel-bench-") as d, sockets(Path(d)) as cases:
        resolver_start([])  # warm imports (grpc) outside the timings
        resolver_start(cases["cri_hung"])
        got = interleave(
            {name: (lambda s=s: resolver_start(s)) for name, s in cases.items()}, args.trials * 3
        )
        result["resolver"] = {name: summary(v) for name, v in got.items()}
        if not args.no_run and os.geteuid() == 0:
            hung_env = dict(base_env, CONTAINER_RUNTIME_ENDPOINT=f"unix://{d}/hung.sock")
            own: dict[str, list[float]] = {"none": [], "cri_hung": []}
            runs = interleave(
                {
                    "none": lambda: run_armed(base_env, own["none"]),
                    "cri_hung": lambda: run_armed(hung_env, own["cri_hung"]),
                },
                args.trials,
            )
            result["run_armed"] = {name: summary(v) for name, v in runs.items()}
            result["run_armed_reported"] = {name: summary(v) for name, v in own.items()}
            med = {n: statistics.median(v) for n, v in runs.items()}
            result["run_armed_ratio_hung_vs_none"] = round(med["cri_hung"] / med["none"], 3)
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
