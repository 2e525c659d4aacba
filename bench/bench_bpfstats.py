"""What the kernel's BPF statistics cost (the config's ``bpf_stats``), measured (root).

    .venv/bin/python -m bench bpfstats [--rounds 15] [--opens 200000]

One ``sentinel run`` with Falco's three files stays armed for the whole run while open()+close()
storms alternate between bpf_stats off and on (the order flips every round, so that load from
elsewhere falls on both alike). Wall time and the storm process' CPU time (where the programs
run; it does not count waiting for a CPU) are both kept. Each figure is the median of the
rounds with its spread; the ratio on/off is of medians from this one run, and the median of
the rounds' paired ratios.

bpf_stats are system-wide: another process holding them on (bpftool, another bench) makes an
'off' storm measure 'on'. Every storm counts the runs the kernel recorded for the sentinel's
own programs (``runs_counted_per_storm``): an 'off' storm with any is not clean, and the
``*_clean`` figures leave such rounds out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_families import private_config, spread, write_result
from bench.bench_kernel import FALCO_DIR, Sentinel, rules_args
from bench.kernel_storm import build, storm

RESULTS = Path(__file__).resolve().parent / "results" / "bpfstats.json"


def runs(ids: set[int]) -> int:
    """Runs the kernel has counted for these programs (those unloaded since: none)."""
    from sentinel.kernel.bpfstats import all_programs

    return sum(p.run_cnt for i, p in all_programs().items() if i in ids)


def timed_storm(binary: Path, n: int) -> tuple[float, float]:
    """(wall ns, CPU ns) per open+close. The CPU time (user + system) is the storm process'
    own, where the BPF programs run: unlike the wall time it does not grow while the process
    waits for a CPU another process holds, so it shows a small cost through the machine's
    noise."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = storm(binary, n)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall / n, cpu * 1e9 / n


def measure(binary: Path, n: int, rounds: int, rules: list[str]) -> dict[str, Any]:
    """One sentinel (``bpf_stats: false``) for the whole run; statistics are switched on and
    off around its storms by this process' own :class:`StatsSwitch`. The cost is the kernel's,
    per program run, whoever holds the switch: the same as ``bpf_stats: true``, without a
    sentinel start between storms (seconds each; more rounds in the same time)."""
    from sentinel.kernel.bpfstats import StatsSwitch, all_programs

    config = private_config(binary.parent, "stats-off", bpf_stats=False)
    storm(binary, n // 10)  # warm caches
    wall: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    counted: dict[str, list[int]] = {"off": [], "on": []}
    old = set(all_programs())
    s = Sentinel(*rules, "--config", str(config))
    s.wait_armed(180)
    mine = set(all_programs()) - old  # the sentinel's programs
    try:
        for i in range(rounds):
            for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
                switch = StatsSwitch() if mode == "on" else None
                try:
                    if switch is not None and not switch.on:
                        raise RuntimeError(switch.why)
                    before = runs(mine)
                    w, c = timed_storm(binary, n)
                    counted[mode].append(runs(mine) - before)
                finally:
                    if switch is not None:
                        switch.close()
                wall[mode].append(w)
                cpu[mode].append(c)
    finally:
        lost = s.stop().get("lost", 0)
    # a round whose 'off' storm was counted had statistics on from elsewhere: not clean
    clean = [i for i, r in enumerate(counted["off"]) if r == 0]

    def summary(xs: dict[str, list[float]], only: list[int]) -> dict[str, Any]:
        if len(only) < 3:
            return {"rounds": len(only), "note": "fewer than 3 clean rounds"}
        sel = {k: [v[i] for i in only] for k, v in xs.items()}
        med = {k: statistics.median(v) for k, v in sel.items()}
        return {
            "rounds": len(only),
            "ns_per_open_close": {k: spread(v) for k, v in sel.items()},
            "on_vs_off": med["on"] / med["off"],
            "on_vs_off_paired": spread([a / b for a, b in zip(sel["on"], sel["off"], strict=True)]),
            "extra_ns_per_open_close": med["on"] - med["off"],
        }

    every = list(range(rounds))
    return {
        "opens_per_storm": n,
        "rounds": rounds,
        "rules": [Path(a).name for a in rules[1::2]] or "default",
        "wall": summary(wall, every),
        "cpu": summary(cpu, every),
        "wall_clean": summary(wall, clean),
        "cpu_clean": summary(cpu, clean),
        "program_runs_per_open_close_on": statistics.median(counted["on"]) / n,
        "runs_counted_per_storm": counted,
        "clean_rounds": clean,
        "lost": lost,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--opens", type=int, default=200_000)
    ap.add_argument("--falco", type=Path, default=FALCO_DIR, help="Falco's rules files' dir")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv if argv is not None else [])
    if os.geteuid() != 0:
        print("bench bpfstats: SKIPPED, needs root (loads BPF programs)")
        return 0
    binary = build()
    stamp = {
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ"),
        "load_avg_1min": os.getloadavg()[0],
        "machine": os.uname().release,
    }
    out = {**stamp, **measure(binary, args.opens, max(3, args.rounds), rules_args(args.falco))}
    out["load_avg_1min_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=2), flush=True)
    write_result(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
