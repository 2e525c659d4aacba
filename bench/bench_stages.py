"""Where an open's and an exec's BPF time goes, with Falco's three files loaded.

    .venv/bin/python -m bench stages [--rounds 3] [--opens 200000] [--execs 2000]   (root)

The sensor is built once per stage of :mod:`sentinel.events.stages` with
``-DBENCH_CUT=<code>`` (the program returns at that point) and once whole; each build runs the
same load (open()+close() of /dev/null, or fork+exec of /bin/true from sh's own loop) and the
kernel's bpf_stats give the run time per event of the program the load fires
(``sys_exit_openat``, ``sched_process_exec``; tail-called work counts in its caller). A
stage's cost is its figure minus the previous stage's. Rounds interleave the builds, figures
are medians over rounds with their spread. The program cache is off (every build compiles),
so the programs carry their full names and no other sentinel's can be taken for them; the
run count is kept as a check (about one run per event of the load).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_families import falco_files, spread
from bench.bench_kernel import REPO
from bench.kernel_storm import build as build_open
from bench.kernel_storm import storm
from sentinel.events.stages import FAMILIES, Stage

RESULTS = REPO / "bench" / "results" / "stages.json"
PROGRAM = {
    "open": "tracepoint__syscalls__sys_exit_openat",
    "exec": "raw_tracepoint__sched_process_exec",
}


def _progs() -> dict[int, dict[str, Any]]:
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True)
    return {p["id"]: p for p in json.loads(out.stdout or "[]")}


def measure(
    rules: list[tuple[str, Any]], types: Any, cut: int, prog: str, load: Callable[[], object]
) -> tuple[float, int]:
    """BPF ns per run of ``prog`` and its run count over one ``load``, for the sensor built
    to stop at stage ``cut`` (0: whole)."""
    from sentinel.app.sensor import FilteredSensor
    from sentinel.kernel.bpfstats import StatsSwitch

    before = set(_progs())
    flags = [f"-DBENCH_CUT={cut}"] if cut else []
    sensor = FilteredSensor(rules, event_types=types, extra_cflags=flags)
    try:
        sensor.start(lambda _raw: None)
        mine = [i for i, p in _progs().items() if i not in before and p.get("name") == prog]
        with StatsSwitch() as switch:  # an fd: nothing stays on if the bench dies
            if not switch.on:
                raise RuntimeError(switch.why)
            p0 = _progs()
            load()
            p1 = _progs()
        sensor.drain()
    finally:
        sensor.close()
    runs = sum(p1[i].get("run_cnt", 0) - p0[i].get("run_cnt", 0) for i in mine)
    ns = sum(p1[i].get("run_time_ns", 0) - p0[i].get("run_time_ns", 0) for i in mine)
    return (ns / runs if runs else float("nan")), runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--opens", type=int, default=200_000)
    ap.add_argument("--execs", type=int, default=2_000)
    ap.add_argument("--only", choices=sorted(FAMILIES), action="append")
    ap.add_argument("--stages", help="comma-separated stage names to build (default: all)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv if argv is not None else [])
    if os.geteuid() != 0:
        print("bench stages: SKIPPED, needs root (loads BPF programs)")
        return 0
    os.environ["SENTINEL_BPF_CACHE"] = ""  # full program names; every build its own
    from sentinel.cli.common import load_compiled
    from sentinel.engine import Engine

    compiled = load_compiled(falco_files())
    assert compiled is not None
    engine = Engine(compiled)
    rules = [(r.name, r.expr) for r in engine.rules]
    types = engine.event_types()
    ob = build_open()
    true = os.path.realpath("/bin/true")
    loop = f"i=0; while [ $i -lt {args.execs} ]; do {true}; i=$((i+1)); done"
    loads: dict[str, Callable[[], object]] = {
        "open": lambda: storm(ob, args.opens),
        "exec": lambda: subprocess.run(["sh", "-c", loop], check=True),
    }
    families = args.only or sorted(FAMILIES)
    builds = {
        f: [
            *FAMILIES[f],
            Stage(
                "WHOLE",
                0,
                "the rest: the path judgement (opens); the submit, with the reader's wakeup "
                "when no exec woke it in the last 2 ms (execs)",
            ),
        ]
        for f in families
    }
    if args.stages:
        keep = {n.strip().upper() for n in args.stages.split(",")}
        builds = {f: [s for s in b if s.name in keep] for f, b in builds.items()}
    ns: dict[str, dict[str, list[float]]] = {f: {s.name: [] for s in builds[f]} for f in families}
    runs: dict[str, dict[str, list[int]]] = {f: {s.name: [] for s in builds[f]} for f in families}
    loads_seen: list[float] = []
    for rnd in range(args.rounds):
        for f in families:
            for s in builds[f]:
                v, n = measure(rules, types, s.code, PROGRAM[f], loads[f])
                ns[f][s.name].append(v)
                runs[f][s.name].append(n)
                loads_seen.append(os.getloadavg()[0])
                print(f"round {rnd} {f} {s.name}: {v:.0f} ns/run ({n} runs)", flush=True)
    out: dict[str, Any] = {
        "rules": [p.name for p in falco_files()],
        "rounds": args.rounds,
        "load_avg_1min": spread(loads_seen),
        "families": {},
    }
    for f in families:
        prev = 0.0
        rows = []
        for s in builds[f]:
            med = spread(ns[f][s.name])
            rows.append(
                {
                    "stage": s.name.lower(),
                    "work": s.work,
                    "ns_per_run_to_here": med,
                    "ns_of_this_stage": round(med["median"] - prev),
                    "runs": runs[f][s.name],
                }
            )
            prev = med["median"]
        out["families"][f] = {"program": PROGRAM[f], "stages": rows}
    print(json.dumps(out, indent=2))
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
