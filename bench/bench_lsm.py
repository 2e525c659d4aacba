"""Overhead of Sentinel's BPF LSM hooks on a file-write storm, as a ratio to no policy.

Run ``.venv/bin/python bench/bench_lsm.py``. BPF LSM does not load on the project's host
kernel, so on such a host this boots the BPF LSM VM (scripts/vm-run.sh) and runs itself
inside with ``--inside-vm``; the VM suite (tests/vm) runs it the same way after the tests.

Workloads are C loops, so the figure is the hooks' cost and not Python's. Files sit six
levels below a tmpfs mount, on the same file system as the protected directory:
  * ``dd-write``: ``dd bs=512`` from /dev/zero into a file it opens: ``file_open``, then a
    ``file_permission`` per write() (one identity lookup each);
  * ``dd-write-preopened-fd``: the same into a descriptor opened before the programs were
    attached (before this project judged writes by identity, this was a dentry walk crossing
    two mounts on every write());
  * ``sh-open-trunc-write``: a dash loop of ``echo x > file`` (builtin, no fork): open with
    O_CREAT|O_TRUNC (``file_open``, ``inode_setattr``) and a write per iteration.
One LsmEnforcer (a protected directory, an exec deny, connect denies) is loaded, and the
runs alternate between its programs detached (= no programs run) and attached, ABBA, ROUNDS
times each. ratio = median(attached) / median(detached), and ratio_of_minimums (less
disturbed by other load on the host), all from one run of this script.
Counts are calibrated so that one run takes ~1 s without programs.

``--combine AFTER.json [--before BEFORE.json]`` writes bench/results/lsm.json: per case the
ratio of medians, and the spread of the ratio over the ROUNDS paired rounds (each attached
run over the detached run of its round), for this enforcer and, measured in the same VM boot
by main's bench_lsm.py, the enforcer it replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sentinel.enforcement.lsm import ConnectDeny, DenyPolicy, LsmEnforcer, lsm_available  # noqa: E402
from sentinel.kernel.loader import attach_lsm  # noqa: E402

ROUNDS = 7
TARGET_S = 1.0


def _dd(path: Path, n: int) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={path}", "bs=512", f"count={n}", "status=none"], check=True
    )
    return time.perf_counter() - t0


class _Preopened:
    """dd writing to a descriptor opened before the programs were attached (stdout)."""

    def __init__(self) -> None:
        self.fd = -1

    def __call__(self, path: Path, n: int) -> float:
        if self.fd < 0:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.lseek(self.fd, 0, os.SEEK_SET)
        t0 = time.perf_counter()
        subprocess.run(
            ["dd", "if=/dev/zero", "bs=512", f"count={n}", "status=none"],
            stdout=self.fd,
            check=True,
        )
        return time.perf_counter() - t0


def _sh(path: Path, n: int) -> float:
    script = f'i=0; while [ $i -lt {n} ]; do echo x > "{path}"; i=$((i+1)); done'
    t0 = time.perf_counter()
    subprocess.run(["sh", "-c", script], check=True)
    return time.perf_counter() - t0


def _calibrate(fn: Callable[[Path, int], float], path: Path, n: int) -> int:
    took = fn(path, n)
    for _ in range(4):
        if took > 0.3:
            break
        n *= 4
        took = fn(path, n)
    return max(1000, int(n * TARGET_S / max(took, 1e-6)))


def _set_attached(enf: LsmEnforcer, on: bool) -> None:
    """Benchmark-only toggle, so that both conditions interleave within one compile.

    Detached programs cost nothing; they stay loaded. Not an enforcement feature.
    """
    loaded = enf._loaded
    assert loaded is not None
    if on:
        for hook in enf.attached_hooks:
            loaded.links[hook] = attach_lsm(loaded.progs[hook])
    else:
        for hook in list(loaded.links):
            os.close(loaded.links.pop(hook))


def run_inside(json_out: Path | None) -> int:
    ok, why = lsm_available()
    if not ok:
        print(f"bench_lsm: {why}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="bench-lsm-", dir=os.environ.get("TMPDIR")))
    deep = root / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    prot = root / "protected"
    prot.mkdir()
    (prot / "f").write_bytes(b"x")
    policy = DenyPolicy(
        protect={str(prot): "bench-protect"},
        exec_exact={shutil.which("false") or "/bin/false": "bench-exec"},
        connect=[ConnectDeny("bench-connect", "127.66.0.0/16", (9,))],
    )
    preopened = _Preopened()
    cases: list[tuple[str, Callable[[Path, int], float], int, Path]] = [
        ("dd-write", _dd, 20000, deep / "storm.bin"),
        ("dd-write-preopened-fd", preopened, 20000, deep / "pre.bin"),
        ("sh-open-trunc-write", _sh, 2000, deep / "sh.txt"),
    ]
    counts = {name: _calibrate(fn, path, n) for name, fn, n, path in cases}
    base: dict[str, list[float]] = {name: [] for name, *_ in cases}
    enforced: dict[str, list[float]] = {name: [] for name, *_ in cases}
    t0 = time.monotonic()
    denied: list[object] = []
    enf = LsmEnforcer(policy, denied.append)
    load_s = time.monotonic() - t0
    attached = True
    try:
        for r in range(ROUNDS):
            # A B B A ...: drift in the (emulated) machine's speed hits both conditions alike.
            for on in (True, False) if r % 2 == 0 else (False, True):
                if on != attached:
                    _set_attached(enf, on)
                    attached = on
                for name, fn, _, path in cases:
                    (enforced if on else base)[name].append(fn(path, counts[name]))
        if not attached:
            _set_attached(enf, True)
        lost = enf.lost_events
        hooks = enf.attached_hooks
    finally:
        enf.close()
    shutil.rmtree(root, ignore_errors=True)
    result = {
        "kernel": os.uname().release,
        "rounds": ROUNDS,
        "enforcer_load_s": round(load_s, 2),
        "hooks": hooks,
        "denials_during_bench": len(denied),
        "lost_events": lost,
        "cases": [
            {
                "name": name,
                "iterations": counts[name],
                "baseline_median_s": round(statistics.median(base[name]), 4),
                "enforced_median_s": round(statistics.median(enforced[name]), 4),
                "ratio": round(
                    statistics.median(enforced[name]) / statistics.median(base[name]), 3
                ),
                # Less sensitive to other load on the machine than the medians.
                "ratio_of_minimums": round(min(enforced[name]) / min(base[name]), 3),
                "baseline_s": [round(x, 4) for x in base[name]],
                "enforced_s": [round(x, 4) for x in enforced[name]],
            }
            for name, *_ in cases
        ],
    }
    text = json.dumps(result, indent=1)
    print(text)
    if json_out is not None:
        json_out.write_text(text)
    return 0


def run_in_vm() -> int:
    out = Path(tempfile.mkdtemp(prefix="sentinel-bench-vm-"))
    os.chmod(out, 0o777)
    entry = REPO / "tests" / "vm" / "guest_entry.sh"
    cmd = f"SENTINEL_VM_TESTS=0 bash {entry} {out}"
    r = subprocess.run(["bash", str(REPO / "scripts" / "vm-run.sh"), str(out), cmd], check=False)
    result = out / "bench.json"
    if not result.exists():
        print(f"bench_lsm: no result from the VM (rc {r.returncode}); see {out}", file=sys.stderr)
        return 1
    print(f"bench_lsm: result in {result}")
    return 0


RESULTS = REPO / "bench" / "results" / "lsm.json"


def _summary(raw: dict[str, object]) -> dict[str, object]:
    cases = raw["cases"]
    assert isinstance(cases, list)
    out: dict[str, object] = {}
    for case in cases:
        per_round = sorted(
            e / b for e, b in zip(case["enforced_s"], case["baseline_s"], strict=True)
        )
        out[case["name"]] = {
            "ratio_of_medians": case["ratio"],
            "ratio_per_round_median": round(statistics.median(per_round), 3),
            "ratio_per_round_min": round(per_round[0], 3),
            "ratio_per_round_max": round(per_round[-1], 3),
            "rounds": len(per_round),
        }
    return out


def combine(after: Path, before: Path | None, out: Path = RESULTS) -> int:
    result: dict[str, object] = {"after": _summary(json.loads(after.read_text()))}
    result["after_raw"] = json.loads(after.read_text())
    if before is not None:
        result["before"] = _summary(json.loads(before.read_text()))
        result["before_raw"] = json.loads(before.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_raw")}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--inside-vm", action="store_true", help="measure here (BPF LSM must work)")
    ap.add_argument("--json", type=Path, help="write the result to this file")
    ap.add_argument("--combine", type=Path, help="a result of --inside-vm: write " + str(RESULTS))
    ap.add_argument("--before", type=Path, help="with --combine: main's result, same VM boot")
    args = ap.parse_args(argv if argv is not None else [])
    if args.combine is not None:
        return combine(args.combine, args.before)
    if args.inside_vm or lsm_available()[0]:
        return run_inside(args.json)
    return run_in_vm()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
