"""Every family live with Falco's three files: what the sensor costs where the events are many.

    .venv/bin/python -m bench families        (root)

With ``falco_rules.yaml``, ``falco-incubating_rules.yaml`` and ``falco-sandbox_rules.yaml``
loaded unmodified (as ``sentinel run --rules`` takes them), each round measures three storms
with no tracing, with EMPTY programs on exactly the tracepoints the sensor attaches for those
rules (the floor), and with ``sentinel run``:

- open()+close() of /dev/null (the file family);
- UDP sendto+recvfrom to itself on loopback (net: high-rate calls no rule may want);
- socket+connect+accept4+close on loopback (net: accept, connect, socket).

Also the start-up to armed of each round's sentinel, and the kernel's own run time per event
of every program the sensor loaded (bpf_stats: ns per run, by tracepoint, i.e. per family;
tail-called work counts in its caller). Figures are medians over rounds with their spread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_kernel import REPO, BpfStats, Floor, Sentinel, _progs
from bench.kernel_storm import build as build_open
from bench.kernel_storm import storm
from bench.net_storm import build as build_net
from bench.net_storm import net_storm

RESULTS = REPO / "bench" / "results" / "families.json"
FILES = ["falco_rules.yaml", "falco-incubating_rules.yaml", "falco-sandbox_rules.yaml"]
GOAL_OPEN_VS_FLOOR = 1.02


def falco_files() -> list[Path]:
    for base in (REPO, *REPO.parents):
        d = base / "shared" / "corpus" / "falco"
        if (d / FILES[0]).exists():
            return [d / f for f in FILES]
    raise SystemExit("bench families: Falco's rules files not found under ../shared/corpus")


def traced_types(files: list[Path]) -> list[str]:
    """The syscall event types ``sentinel run`` attaches for these files."""
    from sentinel.cli.common import load_compiled
    from sentinel.engine import Engine
    from sentinel.kernel.sensor import syscalls_for

    compiled = load_compiled(files)
    assert compiled is not None
    events = Path("/sys/kernel/tracing/events/syscalls")
    # a syscall this kernel has no tracepoint for is not attached by the sensor either
    return sorted(
        t
        for t in syscalls_for(Engine(compiled).event_types())
        if not events.exists() or any(events.glob(f"sys_exit_{t}"))
    )


def private_config(workdir: Path, name: str = "bench-sentinel", **settings: Any) -> Path:
    """A config with no metrics listener and a spool of its own: other sentinels on the
    machine may hold the default port and spool. ``settings``: more keys (or these replaced)."""
    config = workdir / f"{name}.yaml"
    values = {"metrics_address": "", "spool": {"dir": str(workdir / "spool")}, **settings}
    config.write_text(json.dumps(values) + "\n")  # JSON is YAML
    return config


def write_result(path: Path, out: dict[str, Any]) -> None:
    """The bench's result, as JSON under bench/results/ (or ``--out``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"written {path}")


def spread(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


class SentinelStats(BpfStats):
    """bpf_stats of the programs loaded since: ns per run of each, by program name."""

    def per_program(self) -> dict[str, tuple[int, float]]:
        out: dict[str, tuple[int, float]] = {}
        for pid, p in _progs().items():
            runs = p.get("run_cnt", 0)
            if pid in self.before or not runs:
                continue
            name = p.get("name", str(pid))
            prev_runs, prev_ns = out.get(name, (0, 0.0))
            out[name] = (prev_runs + runs, prev_ns + p.get("run_time_ns", 0))
        return {k: (r, ns / r) for k, (r, ns) in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--opens", type=int, default=200_000)
    ap.add_argument("--udp", type=int, default=50_000)
    ap.add_argument("--accepts", type=int, default=5_000)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv if argv is not None else [])
    if os.geteuid() != 0:
        print("bench families: SKIPPED, needs root (loads BPF programs)")
        return 0
    files = falco_files()
    types = traced_types(files)
    ob, nb = build_open(), build_net()
    config = private_config(ob.parent)
    loads: dict[str, tuple[int, Callable[[], int]]] = {
        "open": (args.opens, lambda: storm(ob, args.opens)),
        "udp": (args.udp, lambda: net_storm(nb, "udp", args.udp)),
        "accept": (args.accepts, lambda: net_storm(nb, "accept", args.accepts)),
    }
    for _, run in loads.values():
        run()  # warm caches
    ns: dict[str, dict[str, list[float]]] = {
        w: {"none": [], "floor": [], "sentinel": []} for w in loads
    }
    armed: list[float] = []
    per_prog: dict[str, list[float]] = {}
    lost = 0

    def round_of(config_name: str) -> None:
        for w, (n, run) in loads.items():
            ns[w][config_name].append(run() / n)

    for _ in range(args.rounds):
        round_of("none")
        floor = Floor(types)
        try:
            round_of("floor")
        finally:
            floor.stop()
        stats = SentinelStats()
        s = Sentinel(*(a for f in files for a in ("--rules", str(f))), "--config", str(config))
        try:
            armed.append(s.wait_armed(180))
            round_of("sentinel")
            for name, (_, per) in stats.per_program().items():
                per_prog.setdefault(name, []).append(per)
        finally:
            lost += s.stop().get("lost", 0)
            stats.close()
    out: dict[str, Any] = {
        "machine": os.uname().release,
        "rules": FILES,
        "traced_types": types,
        "rounds": args.rounds,
        "armed_s": spread(armed),
        "lost": lost,
        "goal_open_vs_floor": GOAL_OPEN_VS_FLOOR,
    }
    for w, by in ns.items():
        med = {k: statistics.median(v) for k, v in by.items()}
        out[w] = {
            "iterations": loads[w][0],
            "ns_per_iteration": {k: spread(v) for k, v in by.items()},
            "sentinel_vs_floor": med["sentinel"] / med["floor"],
            "floor_vs_none": med["floor"] / med["none"],
            "sentinel_vs_none": med["sentinel"] / med["none"],
        }
        print(f"{w}:", json.dumps(out[w]), flush=True)
    out["bpf_ns_per_run"] = {k: spread(v) for k, v in sorted(per_prog.items())}
    print("armed:", json.dumps(out["armed_s"]), "lost:", lost, flush=True)
    write_result(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
