"""What judging the kernel's path costs: opens with Falco's stable rules, before and after.

    .venv/bin/python -m bench truth [--before REF]      (root)

A successful open's ``fd.name`` is the file the kernel installed, walked from the task's root
(issue 13); before, it was the caller's string. The walk runs in the kernel for every
successful open, also those the prefilter then drops, so this measures it where it matters:
an open()+close() storm of files no rule watches, with Falco's ``falco_rules.yaml`` unmodified,
against no tracing and against empty programs on the same tracepoints (the floor), and the
kernel's own run time per open event (bpf_stats; the tail-called walk counts in its caller).

"before" is the same storm with a checkout of REF (default: main before the kernel-path
work; ``--after REF`` compares two refs), run from detached worktrees under build/ with this
interpreter: both sensors take
turns in every round, so load from elsewhere on the machine falls on both alike. Paths: a
shallow one (/dev/null, one mount crossing) and a deep one (ten directories under /tmp).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_families import falco_files, private_config, spread, write_result
from bench.bench_kernel import REPO, BpfStats, Floor, Sentinel
from bench.kernel_storm import build, storm

RESULTS = REPO / "bench" / "results" / "truth.json"
BEFORE = "3d064ec"  # main before the kernel-path work (truth) was merged
FAMILIES = ["open", "openat", "openat2", "creat"]  # the storm's: the floor traces these


def checkout(ref: str) -> Path:
    """A detached worktree of ``ref`` (reused when it is already there)."""
    path = REPO / "build" / f"bench-{ref}"
    if not (path / "sentinel").exists():
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), ref],
            check=True,
            capture_output=True,
        )
    return path


def run(before: Path, after: Path, n: int, rounds: int, path: str, rules: Path) -> dict[str, Any]:
    binary = build()
    config = private_config(binary.parent)
    storm(binary, n // 10, path)  # warm caches
    walls: dict[str, list[float]] = {"none": [], "floor": [], "before": [], "after": []}
    armed: dict[str, list[float]] = {"before": [], "after": []}
    bpf: dict[str, list[float]] = {"floor": [], "before": [], "after": []}
    lost = 0
    for _ in range(rounds):
        walls["none"].append(storm(binary, n, path) / n)
        stats = BpfStats()
        floor = Floor(FAMILIES)
        try:
            walls["floor"].append(storm(binary, n, path) / n)
            bpf["floor"].append(stats.ns_per_run("sys_exit_openat") or 0.0)
        finally:
            floor.stop()
            stats.close()
        for name, cwd in (("before", before), ("after", after)):
            stats = BpfStats()
            # no metrics listener: other sentinels on the machine may hold the default port
            s = Sentinel("--rules", str(rules), "--config", str(config), repo=cwd)
            armed[name].append(s.wait_armed(120))
            try:
                walls[name].append(storm(binary, n, path) / n)
                bpf[name].append(stats.ns_per_run("sys_exit_openat") or 0.0)
            finally:
                lost += s.stop().get("lost", 0)
                stats.close()
    med = {k: statistics.median(v) for k, v in walls.items()}
    return {
        "path": path,
        "opens_per_storm": n,
        "rounds": rounds,
        "ns_per_open_close": {k: spread(v) for k, v in walls.items()},
        "bpf_ns_per_open_event": {k: spread(v) for k, v in bpf.items()},
        "armed_s": {k: spread(v) for k, v in armed.items()},
        "after_vs_floor": med["after"] / med["floor"],
        "before_vs_floor": med["before"] / med["floor"],
        "after_vs_before": med["after"] / med["before"],
        "floor_vs_none": med["floor"] / med["none"],
        "lost": lost,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--before", default=BEFORE)
    ap.add_argument("--after", default=None, help="a ref (default: this checkout)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--opens", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv if argv is not None else [])
    if os.geteuid() != 0:
        print("bench truth: SKIPPED, needs root (loads BPF programs)")
        return 0
    rules = falco_files()[0]  # falco_rules.yaml
    before = checkout(args.before)
    after = checkout(args.after) if args.after else REPO
    deep = Path("/tmp/sentinel-bench-truth") / "/".join("abcdefghij")
    deep.mkdir(parents=True, exist_ok=True)
    (deep / "file").write_text("x")
    out: dict[str, Any] = {
        "machine": os.uname().release,
        "before": args.before,
        "after": args.after or "HEAD",
        "rules": str(rules),
    }
    for label, path in (("shallow", "/dev/null"), ("deep", str(deep / "file"))):
        out[label] = run(before, after, args.opens, args.rounds, path, rules)
        print(f"{label}:", json.dumps(out[label]), flush=True)
    write_result(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
