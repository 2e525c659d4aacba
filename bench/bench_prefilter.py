"""In-kernel prefilter: the share of events dropped in the kernel on a realistic workload.

The upstream Falco stable rules (``falco_rules.yaml``) are loaded into the real sensor with
its prefilter; the workload is ``find /usr -type f | xargs cat`` (bounded), which opens many
files that no rule watches. The kernel's own counters (``f_stats``) give dropped vs kept per
event family; user space counts what actually arrived. The open-storm ratio to the
empty-program floor is measured by ``bench_kernel`` (with and without the prefilter).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sentinel.compiler import compile_rules
from sentinel.compiler.kernelmaps import build_tables
from sentinel.engine import Engine
from sentinel.loader import load_rules

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "falco"
FILES = 20_000


def run(files: int = FILES) -> dict[str, Any]:
    from sentinel.kernel.prefilter import MAP_NAMES, Prefilter, cflags, sensor_prelude
    from sentinel.kernel.sensor import Sensor, families_for

    engine = Engine(compile_rules(load_rules([CORPUS / "falco_rules.yaml"])))
    arrived = {"n": 0}

    def count(_raw: bytes) -> None:
        arrived["n"] += 1

    sensor = Sensor(
        families_for(engine.event_types()),
        prelude=sensor_prelude(),
        maps=list(MAP_NAMES),
        extra_cflags=cflags(),
    )
    sensor.start(count)
    try:
        pf = Prefilter({m: sensor.map_fd(m) for m in MAP_NAMES})
        tables = build_tables([(r.name, r.expr) for r in engine.rules])
        pf.load(tables)
        sensor.drain()
        arrived["n"] = 0
        before = pf.stats()
        t0 = time.monotonic()
        # argv lists only; the pipeline is find | head | xargs cat, no shell involved
        find = subprocess.Popen(
            ["find", "/usr", "-type", "f", "-size", "-256k"], stdout=subprocess.PIPE
        )
        head = subprocess.Popen(
            ["head", "-n", str(files)], stdin=find.stdout, stdout=subprocess.PIPE
        )
        assert find.stdout is not None
        find.stdout.close()
        cat = subprocess.Popen(
            ["xargs", "-d", "\n", "cat"],
            stdin=head.stdout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert head.stdout is not None
        head.stdout.close()
        while cat.poll() is None:
            sensor.poll(50)
        find.wait()
        head.wait()
        sensor.drain()
        seconds = time.monotonic() - t0
        after = pf.stats()
    finally:
        sensor.close()
    fams: dict[str, Any] = {}
    for fam in after:
        d = after[fam]["dropped"] - before[fam]["dropped"]
        k = after[fam]["kept"] - before[fam]["kept"]
        fams[fam] = {
            "dropped": d,
            "kept": k,
            "filtered_share": round(d / (d + k), 5) if d + k else None,
            "filtered_in_kernel": not tables.families[fam].pass_all,
            "why_not": tables.families[fam].reason,
        }
    return {
        "rules": "falco_rules.yaml",
        "workload": f"find /usr -type f -size -256k | head -n {files} | xargs cat",
        "seconds": round(seconds, 2),
        "records_reaching_user_space": arrived["n"],
        "families": fams,
    }


def main() -> int:
    if os.geteuid() != 0:
        print("bench prefilter: needs root", file=sys.stderr)
        return 1
    res = run()
    print(json.dumps(res, indent=2))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "prefilter.json").write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
