"""In-kernel prefilter: the share of events dropped in the kernel on a realistic workload.

The upstream Falco stable rules (``falco_rules.yaml``) are loaded into the real sensor with
its prefilter; the workload is ``find /usr -type f`` then ``xargs cat`` over (at most FILES of)
the files found, measured as two phases, then the whole pipeline ``find /usr -type f -size
-256k -print0 | xargs -0 cat`` on every file at once. find walks directories with *relative*
openat(dirfd, name) calls, which the kernel judges on its walk of the dirfd; cat opens
absolute paths. The sensor's per-event-type counters (``Sensor.counts()``) give filtered vs
passed per Falco event type; user space counts what actually arrived. The open-storm ratio to the
empty-program floor is measured by ``bench_kernel`` (with and without the prefilter).

Second part: the BPF time of the exec program (kernel bpf_stats) per exec of ``/bin/true``,
with one rule each: dropped on comm, dropped on the executable's path (prefix, suffix: the
path is walked only then), and kept (the full record is built).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sentinel.compiler import compile_rules
from sentinel.engine import Engine
from sentinel.loader import load_rules

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "falco"
FILES = 20_000


def run(files: int = FILES) -> dict[str, Any]:
    from sentinel.app.sensor import FilteredSensor

    engine = Engine(compile_rules(load_rules([CORPUS / "falco_rules.yaml"])))
    arrived = {"n": 0}

    def count(_raw: bytes) -> None:
        arrived["n"] += 1

    sensor = FilteredSensor(
        [(r.name, r.expr) for r in engine.rules], event_types=engine.event_types()
    )
    sensor.start(count)
    try:
        tables = sensor.tables
        phases: dict[str, Any] = {}
        listing = Path("/tmp/sentinel-bench-files.txt")

        def phase(
            name: str, pipeline: list[list[str]], stdin: Any = None, stdout: Any = None
        ) -> None:
            sensor.drain()
            arrived["n"] = 0
            before = sensor.counts()
            t0 = time.monotonic()
            # argv lists only, piped here: no shell anywhere
            procs: list[subprocess.Popen[bytes]] = []
            for i, argv in enumerate(pipeline):
                last = i == len(pipeline) - 1
                src = procs[-1].stdout if procs else stdin
                procs.append(
                    subprocess.Popen(
                        argv,
                        stdin=src,
                        stdout=stdout if last else subprocess.PIPE,
                        stderr=subprocess.DEVNULL,
                    )
                )
                if src is not None and src is not stdin:
                    src.close()  # the next process holds it now
            while any(p.poll() is None for p in procs):
                sensor.poll(50)
            sensor.drain()
            after = sensor.counts()
            phases[name] = {
                "argv": " | ".join(" ".join(argv) for argv in pipeline),
                "seconds": round(time.monotonic() - t0, 2),
                "records_reaching_user_space": arrived["n"],
                "evt_types": {
                    t: _share(
                        after[t]["filtered"] - before[t]["filtered"],
                        after[t]["passed"] - before[t]["passed"],
                    )
                    for t in after
                    if after[t] != before[t]
                },
            }

        find = ["find", "/usr", "-type", "f", "-size", "-256k"]
        with listing.open("w") as out:
            phase("find", [find], stdout=out)
        lines = listing.read_text().splitlines()[:files]
        listing.write_text("\n".join(lines) + "\n")
        with listing.open() as inp:
            phase("xargs cat", [["xargs", "-d", "\n", "cat"]], stdin=inp, stdout=subprocess.DEVNULL)
        listing.unlink()
        # the whole pipeline at once, every file (~137k here, ~15 s)
        phase(
            "find | xargs cat",
            [[*find, "-print0"], ["xargs", "-0", "cat"]],
            stdout=subprocess.DEVNULL,
        )
    finally:
        sensor.close()
    families = {
        fam: {"filtered_in_kernel": not ft.pass_all, "why_not": ft.reason}
        for fam, ft in tables.families.items()
    }
    return {"rules": "falco_rules.yaml", "files": files, "families": families, "phases": phases}


def _share(filtered: int, passed: int) -> dict[str, Any]:
    seen = filtered + passed
    return {
        "filtered": filtered,
        "passed": passed,
        "filtered_share": round(filtered / seen, 5) if seen else None,
    }


EXEC_RULES = {
    "dropped_on_comm": "evt.type = execve and proc.name = zzzz",
    "dropped_on_exepath_prefix": "evt.type = execve and proc.exepath startswith /opt/zz/",
    "dropped_on_exepath_suffix": "evt.type = execve and proc.exepath endswith /zzz",
    "kept_on_exepath": "evt.type = execve and proc.exepath = {true}",
}
EXECS = 2000


def exec_costs(execs: int = EXECS) -> dict[str, Any]:
    """BPF ns per exec for each rule of EXEC_RULES (one sensor each; sched tracepoints only)."""
    import tempfile

    from bench.bench_kernel import BpfStats
    from sentinel.app.sensor import FilteredSensor, reads_env

    true = os.path.realpath("/bin/true")
    out: dict[str, Any] = {"execs": execs, "binary": true}
    for name, cond in EXEC_RULES.items():
        with tempfile.TemporaryDirectory() as d:
            rules = Path(d) / "r.yaml"
            rules.write_text(
                f"- rule: R\n  desc: d\n  condition: >-\n    {cond.format(true=true)}\n"
                "  output: o\n  priority: INFO\n"
            )
            engine = Engine(compile_rules(load_rules([rules])))
        sensor = FilteredSensor(
            [(r.name, r.expr) for r in engine.rules],
            syscalls=(),
            copy_env=reads_env(engine.rules),  # as sentinel run decides it
        )
        stats = BpfStats()
        try:
            sensor.start(lambda _raw: None)
            before = sensor.counts()["execve"]
            # argv lists only; the loop is sh's own, /bin/true is exec'd each time
            loop = f"i=0; while [ $i -lt {execs} ]; do {true}; i=$((i+1)); done"
            subprocess.run(["sh", "-c", loop], check=True)
            ns = stats.ns_per_run("sched_process_exec")
            sensor.drain()
            after = sensor.counts()["execve"]
        finally:
            stats.close()
            sensor.close()
        out[name] = {
            "bpf_ns_per_exec": round(ns) if ns else None,
            "filtered": after["filtered"] - before["filtered"],
            "passed": after["passed"] - before["passed"],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__).parse_args(argv if argv is not None else [])
    if os.geteuid() != 0:
        print("bench prefilter: needs root", file=sys.stderr)
        return 1
    res = run()
    res["exec_bpf_cost"] = exec_costs()
    print(json.dumps(res, indent=2))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "prefilter.json").write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
