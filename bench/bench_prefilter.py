"""In-kernel prefilter: the share of events dropped in the kernel on a realistic workload.

The upstream Falco stable rules (``falco_rules.yaml``) are loaded into the real sensor with
its prefilter; the workload is ``find /usr -type f`` then ``xargs cat`` over (at most FILES of)
the files found, measured as two phases, then the whole pipeline ``find /usr -type f -size
-256k -print0 | xargs -0 cat`` on every file at once. find walks directories with *relative*
openat(dirfd, name) calls, which the kernel judges on its walk of the dirfd; cat opens
absolute paths.
The kernel's own counters (``f_stats``) give dropped vs kept per event family; user space
counts what actually arrived. The open-storm ratio to the
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
        phases: dict[str, Any] = {}
        listing = Path("/tmp/sentinel-bench-files.txt")

        def phase(
            name: str, pipeline: list[list[str]], stdin: Any = None, stdout: Any = None
        ) -> None:
            sensor.drain()
            arrived["n"] = 0
            before = pf.stats()
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
            after = pf.stats()
            phases[name] = {
                "argv": " | ".join(" ".join(argv) for argv in pipeline),
                "seconds": round(time.monotonic() - t0, 2),
                "records_reaching_user_space": arrived["n"],
                "families": {
                    fam: _share(
                        after[fam]["dropped"] - before[fam]["dropped"],
                        after[fam]["kept"] - before[fam]["kept"],
                        tables.families[fam],
                    )
                    for fam in after
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
    return {"rules": "falco_rules.yaml", "files": files, "phases": phases}


def _share(dropped: int, kept: int, ft: Any) -> dict[str, Any]:
    return {
        "dropped": dropped,
        "kept": kept,
        "filtered_share": round(dropped / (dropped + kept), 5) if dropped + kept else None,
        "filtered_in_kernel": not ft.pass_all,
        "why_not": ft.reason,
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
