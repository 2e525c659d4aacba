"""Engine throughput: events/s through ``Engine.process`` with the three upstream Falco rules
files loaded, over a realistic syscall mix (mostly opens, then execs, connects, forks/exits).

Engine only: events are decoded and normalised before the clock starts, as the issue asks.
The mix is generated deterministically (seeded), so runs compare.

Each trial runs in a fresh process (no warm state carried between trials); ``--before
CHECKOUT`` runs another checkout's engine over the same events in the same rounds, after and
before interleaved, so the ratio is measured under the same machine load (this machine is
shared, and load moves the absolute figures by 2x or more).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # after PYTHONPATH: a --before worker imports the other checkout's sentinel
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from sentinel.compiler import compile_rules
from sentinel.engine import Engine, normalize_event
from sentinel.loader import load_rules

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "falco"
FILES = ["falco_rules.yaml", "falco-incubating_rules.yaml", "falco-sandbox_rules.yaml"]

PROCS = [
    ("bash", "/usr/bin/bash", "sshd"),
    ("python3", "/usr/bin/python3.11", "bash"),
    ("nginx", "/usr/sbin/nginx", "systemd"),
    ("postgres", "/usr/lib/postgresql/15/bin/postgres", "postgres"),
    ("java", "/usr/lib/jvm/bin/java", "containerd-shim"),
    ("cat", "/usr/bin/cat", "bash"),
    ("node", "/usr/bin/node", "runc"),
    ("apt-get", "/usr/bin/apt-get", "bash"),
]
READ_PATHS = [
    "/usr/lib/x86_64-linux-gnu/libc.so.6",
    "/etc/ld.so.cache",
    "/proc/self/status",
    "/usr/share/zoneinfo/UTC",
    "/etc/nsswitch.conf",
    "/var/lib/postgresql/15/main/base/1/1259",
    "/home/app/src/index.js",
    "/etc/passwd",
]
WRITE_PATHS = ["/tmp/out.log", "/var/log/nginx/access.log", "/var/lib/app/data.db", "/run/x.pid"]


def _proc(rng: random.Random) -> dict[str, Any]:
    name, exe, parent = rng.choice(PROCS)
    container = rng.random() < 0.4
    return {
        "proc.name": name,
        "proc.exepath": exe,
        "proc.exe": exe,
        "proc.cmdline": f"{name} --flag value",
        "proc.args": "--flag value",
        "proc.pid": rng.randint(100, 60000),
        "proc.ppid": rng.randint(1, 60000),
        "proc.pname": parent,
        "proc.pcmdline": f"{parent} -D",
        "proc.aname": [parent, "containerd-shim" if container else "systemd", "systemd"],
        "proc.tty": 0,
        "proc.sname": parent,
        "proc.cwd": "/",
        "user.uid": 0 if rng.random() < 0.3 else 1000,
        "user.name": "root",
        "user.loginuid": -1,
        "container.id": f"{rng.getrandbits(48):012x}" if container else "host",
        "container.image.repository": "docker.io/library/app" if container else None,
    }


def make_events(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ev = _proc(rng)
        ev["evt.num"] = i + 1
        ev["evt.time"] = 1_700_000_000_000_000_000 + i
        r = rng.random()
        if r < 0.62:
            write = rng.random() < 0.15
            path = rng.choice(WRITE_PATHS if write else READ_PATHS)
            ev.update(
                {
                    "evt.type": "openat",
                    "fd.name": path,
                    "fd.directory": path.rsplit("/", 1)[0],
                    "fd.filename": path.rsplit("/", 1)[1],
                    "fd.typechar": "f",
                    "fd.num": rng.randint(3, 40),
                    "evt.is_open_write": write,
                    "evt.is_open_read": not write,
                    "evt.arg.flags": "O_WRONLY|O_CREAT" if write else "O_RDONLY",
                    "evt.res": "SUCCESS",
                    "evt.rawres": 3,
                }
            )
        elif r < 0.80:
            ev.update({"evt.type": "execve", "evt.arg.flags": "", "evt.res": "SUCCESS"})
        elif r < 0.90:
            ev.update(
                {
                    "evt.type": "connect",
                    "fd.typechar": "4",
                    "fd.type": "ipv4",
                    "fd.sip": "10.0.0.5",
                    "fd.rip": "10.0.0.5",
                    "fd.sport": 5432,
                    "fd.rport": 5432,
                    "fd.l4proto": "tcp",
                    "fd.sockfamily": "ip",
                    "fd.name": "10.0.0.2:40000->10.0.0.5:5432",
                    "evt.res": "SUCCESS",
                    "fd.num": 5,
                }
            )
        elif r < 0.95:
            ev.update({"evt.type": "clone", "evt.res": "SUCCESS"})
        else:
            ev.update({"evt.type": "procexit"})
        out.append(normalize_event({k: v for k, v in ev.items() if v is not None}))
    return out


def run(n: int = 200_000) -> dict[str, Any]:
    compiled = compile_rules(load_rules([CORPUS / f for f in FILES]))
    engine = Engine(compiled, hostname="bench")
    events = make_events(n)
    engine.warm({e["evt.type"] for e in events})
    process = engine.process
    for e in events[:2000]:  # warm caches
        process(e)
    alerts = 0
    t0 = time.perf_counter()
    for e in events:
        alerts += len(process(e))
    dt = time.perf_counter() - t0
    return {
        "events": n,
        "rules_enabled": len(engine.rules),
        "seconds": round(dt, 3),
        "events_per_second": round(n / dt),
        "alerts": alerts,
    }


def _trial(checkout: Path, n: int) -> dict[str, Any]:
    """One :func:`run` in a fresh interpreter that imports ``sentinel`` from ``checkout``
    (this file's event mix either way, so both sides replay the same events)."""
    from bench.checkout import worker

    return worker(__file__, ["--worker", "--events", str(n)], checkout, "trial")


def measure(trials: int, n: int, before: Path | None) -> dict[str, Any]:
    """``trials`` rounds; each runs this checkout (and ``before``) once, alternating which
    goes first."""
    from bench.checkout import commit

    here = Path(__file__).resolve().parents[1]
    sides = {"after": here} | ({"before": before} if before is not None else {})
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in sides}
    for i in range(trials):
        order = list(sides) if i % 2 == 0 else list(reversed(sides))
        for side in order:
            res = _trial(sides[side], n)
            runs[side].append(res)
            print(f"  trial {i + 1} {side}: {res['events_per_second']:,} events/s", flush=True)
    eps = {k: [r["events_per_second"] for r in v] for k, v in runs.items()}
    out: dict[str, Any] = {
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ"),
        "load_avg_1min": os.getloadavg()[0],
        "events": n,
        "trials": trials,
        "rules_enabled": runs["after"][0]["rules_enabled"],
        "alerts": runs["after"][0]["alerts"],
        "events_per_second": statistics.median(eps["after"]),
        "events_per_second_all": eps["after"],
        "commit": commit(here),
    }
    if before is not None:
        if runs["before"][0]["alerts"] != out["alerts"]:
            before_alerts = runs["before"][0]["alerts"]
            raise RuntimeError(f"alerts differ: before {before_alerts}, after {out['alerts']}")
        out["before_commit"] = commit(before)
        out["before_events_per_second"] = statistics.median(eps["before"])
        out["before_events_per_second_all"] = eps["before"]
        ratios = [a / b for a, b in zip(eps["after"], eps["before"], strict=True)]
        out["after_vs_before"] = round(statistics.median(ratios), 3)
        out["after_vs_before_all"] = [round(r, 3) for r in ratios]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--before", type=Path, help="a checkout to compare with, same rounds")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv if argv is not None else [])
    if args.worker:
        import sentinel

        print(json.dumps({**run(args.events), "sentinel_from": sentinel.__file__}))
        return 0
    res = measure(max(1, args.trials), args.events, args.before)
    print(json.dumps(res))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "engine.json").write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
