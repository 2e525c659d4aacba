"""The live sensor's costs, each figure a ratio or rate measured in this one run (root).

    .venv/bin/python -m bench kernel        (or: .venv/bin/python bench/bench_kernel.py)

(a) open()+close() storm wall time with ``sentinel run`` and the default rules, against no
    tracing, against EMPTY BPF programs on the same tracepoints (the floor: the price of being
    attached at all), and against bpftrace counting on the same tracepoints.
(b) the highest open-event rate user space sustains with zero lost events (paced generator,
    one fresh sentinel per rate), and the loss counters above it.
(c) exec -> alert latency p50/p99: the alert's evt.time (kernel timestamp of the exec) to the
    moment the alert line is read from sentinel's stdout.
(drain) user space's own ceiling: a full ring drained by the reader alone (decode, process
    table, engine), 3 trials in fresh processes; with ``--before CHECKOUT`` that checkout's
    reader drains the same storms in the same rounds (``--only drain``; (b) also runs one).
(d) start-up time from launching ``sentinel run`` to armed, and peak RSS (VmHWM): with the
    BPF program cache off, cold (an empty cache: compiled, then recorded) and warm (loaded from
    the cache), interleaved in each round.
(e) an exec storm (two shells exec /bin/true 1,000 times in all) through ``sentinel run`` with
    Falco's three files and a probe rule on the storm: BPF ns per exec (bpf_stats), how many
    execs woke the reader, each storm exec's alert latency; ``--before CHECKOUT`` runs that
    checkout in the same rounds, taking turns (``--only e``; not in the default set).

(a), (d) and (e) run with Falco's three rules files (``--falco DIR``; the default rules when the
directory does not exist), (b) and (c) with the default rules. Every figure is the median of at
least 3 trials, with every trial kept in the results; (b)'s zero-loss rate is the highest rate
at which every trial, at it and at every rate below it, lost nothing.

Other processes on the machine add noise: each configuration of (a) runs several storms and
keeps the median, and 'none' is measured before and after the others.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # after PYTHONPATH: a --before worker imports the other checkout's sentinel
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench.kernel_storm import build, paced, storm
from sentinel.kernel.program import syscall_names as syscalls

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
RESULTS = REPO / "bench" / "results" / "kernel.json"
GOALS = {
    "floor_ratio": 1.02,
    "rate": 300_000,
    "drain": 500_000,
    "p99_ms": 5.0,
    "armed_s_cold": 2.0,
    "armed_s_warm": 1.0,
    "rss_mb": 150.0,
}
FALCO_DIR = Path("/work/shared/corpus/falco")
FALCO_FILES = ("falco_rules.yaml", "falco-incubating_rules.yaml", "falco-sandbox_rules.yaml")
CACHE_ENV = "SENTINEL_BPF_CACHE"  # sentinel.kernel.bpfcache.ENV (not imported: no bcc here)
PINS_ENV = "SENTINEL_BPF_PINS"  # sentinel.kernel.pins.ENV


# The storms' sentinels compile their programs (the cache off): bcc loads them with BTF, so
# bpftool lists each by its whole name, which BpfStats matches (the same bytecode either way).
COMPILED = {CACHE_ENV: ""}


def rules_args(falco: Path) -> list[str]:
    """``--rules`` for Falco's three files, or none (the default rules) when absent."""
    files = [falco / f for f in FALCO_FILES]
    if not all(f.exists() for f in files):
        return []
    return [a for f in files for a in ("--rules", str(f))]


class Sentinel:
    """A ``sentinel run`` subprocess with its stdout (alerts) and stderr read by threads."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, repo: Path = REPO) -> None:
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [PY, "-m", "sentinel", "run", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=repo,  # python -m runs the sentinel package of this checkout
            env={**os.environ, **(env or {})},
        )
        self.armed = threading.Event()
        self.armed_s = 0.0
        self.armed_rec: dict[str, Any] = {}
        self.stderr: list[str] = []
        self.stdout_junk: list[str] = []
        self.alerts: list[tuple[int, dict[str, Any]]] = []  # (receive time ns, alert)
        self._threads = [
            threading.Thread(target=self._out, daemon=True),
            threading.Thread(target=self._err, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.alerts.append((time.time_ns(), json.loads(line)))
            except ValueError:
                self.stdout_junk.append(line.rstrip())

    def _err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip())
            rec = _log_record(line)
            # checkouts before the structlog change printed a plain "sentinel: armed ..."
            armed = rec.get("event") == "armed" or line.startswith("sentinel: armed")
            if armed and not self.armed.is_set():
                self.armed_s = time.monotonic() - self.t0
                self.armed_rec = rec
                self.armed.set()

    def wait_armed(self, timeout: float = 60) -> float:
        if not self.armed.wait(timeout):
            self.proc.kill()
            raise RuntimeError(f"sentinel did not arm: {self.stderr}")
        return self.armed_s

    def cpu_s(self) -> float:
        """CPU time (user + system) the sentinel process itself has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def hwm_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> dict[str, int]:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)
        for t in self._threads:  # every line read (the 'stopped' line is the last)
            t.join(10)
        # sentinel's log is structlog JSON on a pipe: {"event": "stopped", "lost": 0, ...}
        stopped = [r for r in map(_log_record, self.stderr) if r.get("event") == "stopped"]
        # older checkouts: a plain "sentinel: stopped events=N lost=N ..." line
        stopped += [
            {k: int(v) for k, _, v in (w.partition("=") for w in line.split()[2:]) if v.isdigit()}
            for line in self.stderr
            if line.startswith("sentinel: stopped")
        ]
        if not stopped:
            raise RuntimeError(f"no 'stopped' line: {self.stderr}")
        return {k: v for k, v in stopped[-1].items() if isinstance(v, int)}


def _log_record(line: str) -> dict[str, Any]:
    try:
        rec = json.loads(line)
    except ValueError:
        return {}
    return rec if isinstance(rec, dict) else {}


class Floor:
    def __init__(self, families: list[str]) -> None:
        self.proc = subprocess.Popen(
            [PY, "-m", "bench.kernel_floor", *families],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("floor programs did not attach")

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


class Bpftrace:
    def __init__(self, families: list[str]) -> None:
        probes = [f"tracepoint:sched:{t}" for t in ("sched_process_exec", "sched_process_fork")]
        probes.append("tracepoint:sched:sched_process_exit")
        probes += [f"tracepoint:syscalls:sys_exit_{c}" for c in syscalls(families)]
        script = ", ".join(probes) + " { @[probe] = count(); }"
        self.proc = subprocess.Popen(
            ["bpftrace", "-e", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("Attaching"):
            raise RuntimeError(f"bpftrace did not attach: {line!r}")
        time.sleep(0.3)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)


def _progs() -> dict[int, dict[str, Any]]:
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True)
    return {p["id"]: p for p in json.loads(out.stdout or "[]")}


class BpfStats:
    """Kernel-measured run time of the BPF programs loaded while this is active (bpf_stats,
    held on by sentinel's own switch: an fd, so a crashed bench leaves nothing on): the
    in-kernel cost per event, free of scheduling noise. Programs are listed by bpftool, which
    names a compiled program by its whole function name from BTF (the kernel keeps 15
    bytes: every bcc syscall program is "syscalls__sys_e" there)."""

    def __init__(self) -> None:
        from sentinel.kernel.bpfstats import StatsSwitch

        self.before = set(_progs())
        self.switch = StatsSwitch()
        if not self.switch.on:
            raise RuntimeError(self.switch.why)

    def ns_per_run(self, name_suffix: str) -> float | None:
        runs = ns = 0
        for pid, p in _progs().items():
            if pid not in self.before and p.get("name", "").endswith(name_suffix):
                runs += p.get("run_cnt", 0)
                ns += p.get("run_time_ns", 0)
        return ns / runs if runs else None

    def close(self) -> None:
        self.switch.close()


def default_families(rules: list[str] | None = None) -> list[str]:
    """The event types the rules need (``rules``: ``--rules`` arguments; none: the default
    rules)."""
    from sentinel.cli.common import load_compiled
    from sentinel.engine import Engine
    from sentinel.kernel.sensor import syscalls_for
    from sentinel.paths import RULES_DIR

    paths = [Path(a) for a in (rules or [])[1::2]] or [RULES_DIR]
    compiled = load_compiled(paths)
    assert compiled is not None
    return sorted(syscalls_for(Engine(compiled).event_types()))


def median_storm(binary: Path, n: int, rounds: int) -> float:
    return statistics.median(storm(binary, n) for _ in range(rounds))


# ---- (a) -----------------------------------------------------------------------------------


def bench_storm(
    binary: Path,
    n: int,
    rounds: int,
    families: list[str],
    rules: list[str],
    before: Path | None = None,
) -> dict[str, Any]:
    """Each round runs one storm per configuration, in turn, so that load from elsewhere on
    the machine falls on all of them alike; the figures are medians over rounds. ``before``:
    another checkout (an earlier commit) whose ``sentinel run`` is measured too, in the same
    rounds, for a before/after ratio from one run."""
    storm(binary, n // 10)  # warm caches
    times: dict[str, list[float]] = {
        "none": [],
        "floor": [],
        "sentinel": [],
        "sentinel_no_prefilter": [],
        "bpftrace": [],
    }
    if before is not None:
        times["sentinel_before"] = []
    before_ns: list[float] = []
    lost = events = 0
    rss = 0.0
    bpf_ns: list[float] = []
    floor_ns: list[float] = []
    for _ in range(rounds):
        times["none"].append(storm(binary, n))
        stats_on = BpfStats()
        floor = Floor(families)
        try:
            times["floor"].append(storm(binary, n))
            floor_ns.append(stats_on.ns_per_run("sys_exit_openat") or 0.0)
        finally:
            floor.stop()
            stats_on.close()
        stats_on = BpfStats()
        s = Sentinel(*rules, env=COMPILED)
        s.wait_armed()
        try:
            times["sentinel"].append(storm(binary, n))
            rss = max(rss, s.hwm_mb())
            bpf_ns.append(stats_on.ns_per_run("sys_exit_openat") or 0.0)
        finally:
            stats = s.stop()
            stats_on.close()
        lost += stats.get("lost", 0)
        events += stats.get("events", 0)
        if before is not None:
            stats_on = BpfStats()
            s = Sentinel(*rules, env=COMPILED, repo=before)
            s.wait_armed()
            try:
                times["sentinel_before"].append(storm(binary, n))
                before_ns.append(stats_on.ns_per_run("sys_exit_openat") or 0.0)
            finally:
                s.stop()
                stats_on.close()
        s = Sentinel("--no-prefilter", *rules)  # every open to user space: the prefilter's effect
        s.wait_armed()
        try:
            times["sentinel_no_prefilter"].append(storm(binary, n))
        finally:
            s.stop()
        bt = Bpftrace(families)
        try:
            times["bpftrace"].append(storm(binary, n))
        finally:
            bt.stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    compare: dict[str, Any] = {}
    if before is not None:
        compare = {
            "before_commit": subprocess.run(
                ["git", "-C", str(before), "describe", "--always", "--dirty"],
                capture_output=True,
                text=True,
            ).stdout.strip(),
            "sentinel_vs_before": med["sentinel"] / med["sentinel_before"],
            "sentinel_before_vs_floor": med["sentinel_before"] / med["floor"],
            "bpf_ns_per_open_event_before": statistics.median(before_ns),
            "bpf_ns_per_open_event_before_all": [round(x) for x in before_ns],
        }
    return {
        **compare,
        "rules": [Path(a).name for a in rules[1::2]] or "default",
        "opens_per_storm": n,
        "rounds": rounds,
        "tracepoints": ["sched_process_exec", "sched_process_fork", "sched_process_exit"]
        + [f"sys_exit_{c}" for c in syscalls(families)],
        "ns_per_open_close": {k: v / n for k, v in med.items()},
        "ns_per_open_close_all": {k: [round(x / n) for x in v] for k, v in times.items()},
        "sentinel_vs_none": med["sentinel"] / med["none"],
        "sentinel_vs_floor": med["sentinel"] / med["floor"],
        "sentinel_no_prefilter_vs_floor": med["sentinel_no_prefilter"] / med["floor"],
        "floor_vs_none": med["floor"] / med["none"],
        "bpftrace_vs_none": med["bpftrace"] / med["none"],
        "bpftrace_vs_floor": med["bpftrace"] / med["floor"],
        "sentinel_vs_bpftrace": med["sentinel"] / med["bpftrace"],
        "bpf_ns_per_open_event_sentinel": statistics.median(bpf_ns),
        "bpf_ns_per_open_event_sentinel_all": [round(x) for x in bpf_ns],
        "bpf_ns_per_open_event_floor": statistics.median(floor_ns),
        "bpf_ns_per_open_event_floor_all": [round(x) for x in floor_ns],
        "sentinel_lost_during_storms": lost,
        "sentinel_events_during_storms": events,
        "sentinel_peak_rss_mb_storm": rss,
    }


# ---- (b) -----------------------------------------------------------------------------------


def bench_rates(binary: Path, rates: list[int], secs: float, trials: int) -> dict[str, Any]:
    """Each rate ``trials`` times, a fresh sentinel each; the zero-loss rate is the highest at
    which every trial, there and at every lower rate, lost nothing and reached the rate."""
    rows = []
    best = 0
    clean = True  # every trial of every rate so far lost nothing
    for rate in rates:
        trial_rows = [_rate_trial(binary, rate, secs) for _ in range(trials)]
        ok = all(r["lost_open"] == 0 and r["generated_per_s"] >= rate * 0.97 for r in trial_rows)
        clean = clean and ok
        if clean:
            best = rate
        rows.append(
            {
                "target_per_s": rate,
                "generated_per_s_median": statistics.median(
                    r["generated_per_s"] for r in trial_rows
                ),
                "lost_open_all": [r["lost_open"] for r in trial_rows],
                "cpu_us_per_event_median": statistics.median(
                    r["cpu_us_per_event"] for r in trial_rows
                ),
                "trials": trial_rows,
            }
        )
        print(
            f"  rate {rate:>7}/s: generated {rows[-1]['generated_per_s_median']:>9.0f}/s "
            f"lost {rows[-1]['lost_open_all']} "
            f"cpu/event {rows[-1]['cpu_us_per_event_median']:.2f} us",
            flush=True,
        )
    return {"seconds_per_rate": secs, "trials": trials, "rows": rows, "max_rate_zero_loss": best}


def _rate_trial(binary: Path, rate: int, secs: float) -> dict[str, Any]:
    # Without the prefilter, so every generated open reaches user space: this measures what
    # user space sustains, not what the kernel drops (with it, ~0 events arrive).
    s = Sentinel("--no-prefilter")
    s.wait_armed()
    try:
        cpu0 = s.cpu_s()
        done, ns = paced(binary, rate, secs)
        time.sleep(1.0)  # let user space drain what is still in the ring buffer
        cpu1 = s.cpu_s()
        hwm = s.hwm_mb()
    finally:
        stats = s.stop()
    # per Falco event type since the counters went per type (lost_openat, lost_open, ...)
    return {
        "generated_per_s": round(done / (ns / 1e9)),
        "lost_open": sum(v for k, v in stats.items() if k.startswith("lost_open")),
        "lost_total": stats.get("lost", -1),
        "events_seen": stats.get("events", -1),
        # user-space cost: CPU seconds of the sentinel process per event delivered
        "cpu_us_per_event": (cpu1 - cpu0) * 1e6 / max(stats.get("events", 1), 1),
        "peak_rss_mb": hwm,
    }


def bench_drain(binary: Path, n: int) -> dict[str, Any]:
    """User space's own ceiling, free of the generator's: with the reader paused, a storm of
    ``n`` opens fills the ring (16 MiB holds ~140k open records), then the time to drain it
    through the same path as ``sentinel run`` (decode, process table, engine with the default
    rules) gives events/s. In-process, because only the reading loop is timed."""
    from sentinel.cli.common import load_compiled
    from sentinel.engine import Engine
    from sentinel.enrichment.containers import ContainerResolver
    from sentinel.enrichment.live import Enricher
    from sentinel.kernel.sensor import Sensor, syscalls_for
    from sentinel.paths import RULES_DIR

    compiled = load_compiled([RULES_DIR])
    assert compiled is not None
    engine = Engine(compiled)
    resolver = ContainerResolver(follow_events=False)
    enricher = Enricher(resolver=resolver)
    count = 0

    def on_raw(raw: bytes) -> None:
        nonlocal count
        count += 1
        engine.process(enricher.event(raw))

    sensor = Sensor(syscalls_for(engine.event_types()))
    sensor.start(on_raw)
    resolver.start()
    enricher.seed()
    try:
        sensor.drain()
        count = 0
        storm(binary, n)
        t0 = time.perf_counter()
        sensor.drain()
        dt = time.perf_counter() - t0
        lost = sensor.lost()
    finally:
        sensor.close()
        resolver.close()
    return {
        "storm_opens": n,
        "drained_events": count,
        "drain_events_per_s": count / dt if dt else 0.0,
        "lost_while_paused": sum(lost.get(t, 0) for t in ("open", "openat", "openat2")),
    }


def _drain_trial(checkout: Path, n: int) -> dict[str, Any]:
    """One :func:`bench_drain` in a fresh interpreter importing ``sentinel`` from
    ``checkout`` (this file's harness on both sides)."""
    from bench.checkout import worker

    return worker(__file__, ["--drain-worker", str(n)], checkout, "drain trial")


def bench_drain_trials(n: int, trials: int, before: Path | None) -> dict[str, Any]:
    """:func:`bench_drain` ``trials`` times (and ``before``'s, alternating which goes first):
    medians with every trial kept."""
    sides = {"after": REPO} | ({"before": before} if before is not None else {})
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in sides}
    for i in range(trials):
        for side in list(sides) if i % 2 == 0 else list(reversed(sides)):
            runs[side].append(_drain_trial(sides[side], n))
            rate = runs[side][-1]["drain_events_per_s"]
            print(f"  drain trial {i + 1} {side}: {rate:,.0f} events/s", flush=True)
    rates = {k: [round(r["drain_events_per_s"]) for r in v] for k, v in runs.items()}
    out: dict[str, Any] = {
        "storm_opens": n,
        "trials": trials,
        "drained_events_all": [r["drained_events"] for r in runs["after"]],
        "drain_events_per_s": statistics.median(rates["after"]),
        "drain_events_per_s_all": rates["after"],
    }
    if before is not None:
        from bench.checkout import commit

        out["before_commit"] = commit(before)
        out["before_drain_events_per_s"] = statistics.median(rates["before"])
        out["before_drain_events_per_s_all"] = rates["before"]
        ratios = [a / b for a, b in zip(rates["after"], rates["before"], strict=True)]
        out["after_vs_before"] = round(statistics.median(ratios), 3)
        out["after_vs_before_all"] = [round(r, 3) for r in ratios]
    return out


# ---- (c) -----------------------------------------------------------------------------------


def _parse_time(stamp: str) -> int:
    base, frac = stamp.rstrip("Z").split(".")
    secs = datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return int(secs) * 1_000_000_000 + int(frac.ljust(9, "0"))


def _probe_rules(d: Path, name: str, cond: str) -> Path:
    """A rules file in ``d`` holding one probe rule: ``name`` on ``cond``, Notice."""
    path = d / "probe.yaml"
    path.write_text(
        f"- rule: {name}\n  desc: x\n  condition: {cond}\n"
        "  output: exec %proc.pid\n  priority: Notice\n"
    )
    return path


def _latencies_ms(alerts: list[tuple[int, dict[str, Any]]]) -> list[float]:
    """Each alert's delay, sorted: its evt.time (the kernel's stamp of the event) to the moment
    its line was read from sentinel's stdout."""
    return sorted((recv - _parse_time(a["time"])) / 1e6 for recv, a in alerts)


def bench_latency(count: int) -> dict[str, Any]:
    marker = f"lat{os.getpid()}"
    with tempfile.TemporaryDirectory() as d:
        cond = f'evt.type = execve and proc.name = true and proc.args contains "{marker}"'
        rules = _probe_rules(Path(d), "Latency probe", cond)
        s = Sentinel("--rules", str(rules))
        s.wait_armed()
        try:
            for i in range(count):
                subprocess.run(["/bin/true", f"{marker}-{i}"], check=True)
                time.sleep(0.005)
            deadline = time.monotonic() + 10
            while len(s.alerts) < count and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            s.stop()
    lat_ms = _latencies_ms(s.alerts)
    if not lat_ms:
        return {"alerts": 0}
    return {
        "execs": count,
        "alerts": len(lat_ms),
        "p50_ms": statistics.median(lat_ms),
        "p99_ms": statistics.quantiles(lat_ms, n=100)[98],
        "max_ms": lat_ms[-1],
    }


# ---- (e) -----------------------------------------------------------------------------------


def _probes(s: Sentinel) -> int:
    return sum(a.get("rule") == "Exec storm probe" for _, a in s.alerts)


def _exec_storm_round(repo: Path, rules: list[str], execs: int, loops: int) -> dict[str, Any]:
    """One ``sentinel run`` of ``repo`` with ``rules`` plus a probe rule on the storm's execs;
    ``loops`` shells exec /bin/true ``execs`` times in all, back to back: the BPF time per
    exec (bpf_stats), how many woke the reader, and each storm exec's alert latency."""
    marker = f"xs{os.getpid()}"
    true = os.path.realpath("/bin/true")
    with tempfile.TemporaryDirectory() as d:
        cond = f'evt.type = execve and proc.args contains "{marker}"'
        probe = _probe_rules(Path(d), "Exec storm probe", cond)
        stats = BpfStats()
        s = Sentinel(*rules, "--rules", str(probe), repo=repo, env=COMPILED)  # names: see COMPILED
        try:
            s.wait_armed()
            per = execs // loops
            loop = f"i=0; while [ $i -lt {per} ]; do {true} {marker}-$i; i=$((i+1)); done"
            shells = [subprocess.Popen(["sh", "-c", loop]) for _ in range(loops)]
            for p in shells:
                p.wait(120)
            deadline = time.monotonic() + 10
            while _probes(s) < per * loops and time.monotonic() < deadline:
                time.sleep(0.05)
            ns = stats.ns_per_run("sched_process_exec")
        finally:
            stats.close()
            s.stop()
    lat_ms = _latencies_ms([(t, a) for t, a in s.alerts if a.get("rule") == "Exec storm probe"])
    stopped = [r for r in map(_log_record, s.stderr) if r.get("event") == "stopped"]
    woken = int(stopped[-1].get("woken_execve", 0)) if stopped else None  # before: no counter
    q = statistics.quantiles(lat_ms, n=100) if len(lat_ms) > 1 else [float("nan")] * 99
    return {
        "execs": per * loops,
        "alerts": len(lat_ms),
        "bpf_ns_per_exec": ns,
        "woken_execve": woken,
        "p50_ms": statistics.median(lat_ms) if lat_ms else None,
        "p99_ms": q[98],
    }


def bench_exec_storm(
    rules: list[str], execs: int, rounds: int, before: Path | None, loops: int = 2
) -> dict[str, Any]:
    """(e) An exec storm through ``sentinel run`` (Falco's files and a probe rule): BPF ns per
    exec, wakeups, alert latency; with ``before``, that checkout in the same rounds, the two
    taking turns (which goes first alternates)."""
    sides = {"after": REPO} | ({"before": before} if before is not None else {})
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in sides}
    for i in range(rounds):
        for side in list(sides) if i % 2 == 0 else list(reversed(sides)):
            r = _exec_storm_round(sides[side], rules, execs, loops)
            runs[side].append(r)
            print(f"  exec storm round {i + 1} {side}: {json.dumps(r)}", flush=True)
    out: dict[str, Any] = {"execs": execs, "loops": loops, "rounds": rounds}
    for side, rs in runs.items():
        pre = "" if side == "after" else "before_"
        for key in ("bpf_ns_per_exec", "p50_ms", "p99_ms", "woken_execve", "alerts"):
            vals = [r[key] for r in rs if r[key] is not None]
            out[f"{pre}{key}"] = statistics.median(vals) if vals else None
            out[f"{pre}{key}_all"] = vals
    if before is not None:
        from bench.checkout import commit

        out["before_commit"] = commit(before)
    return out


# ---- (d) -----------------------------------------------------------------------------------


def bench_startup(rounds: int, rules: list[str]) -> dict[str, Any]:
    """Launch to armed with the BPF program cache off, cold (an empty cache directory: the
    programs are compiled, then recorded; no pins apply without the cache's entry), warm
    without pins (a directory a previous start filled: the programs are loaded from it, and
    the kernel verifies them) and warm (the same, reusing the programs and maps the previous
    warm start pinned in bpffs: no verifier), in turn in each round so that load from
    elsewhere falls on all alike. The pinned sets live in a bpffs directory of the bench's
    own, removed at the end."""
    modes = ("uncached", "cold", "warm_unpinned", "warm")
    # Bytecode, as an installed Sentinel has it (pip compiles at install): this machine sets
    # PYTHONDONTWRITEBYTECODE, and without .pyc files every start compiles ~300 modules
    # (~0.3-0.5 s here), which is not Sentinel's start-up.
    subprocess.run([PY, "-m", "compileall", "-q", str(REPO / "sentinel")], check=True)
    armed: dict[str, list[float]] = {m: [] for m in modes}
    steps: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    rss: list[float] = []
    pin_root = Path("/sys/fs/bpf") / f"sentinel-bench-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="sentinel-bench-") as d:
        warm = Path(d) / "warm"
        try:
            # fills the cache (a compile), then pins what a start from the cache loads
            for _ in range(2):
                s = Sentinel(*rules, env={CACHE_ENV: str(warm), PINS_ENV: str(pin_root)})
                s.wait_armed()
                time.sleep(1.0)  # its signal handlers are set just after the armed line
                s.stop()
            for i in range(rounds):
                for mode in modes:
                    cache = str(warm) if mode.startswith("warm") else str(Path(d) / f"cold{i}")
                    env = {
                        CACHE_ENV: "" if mode == "uncached" else cache,
                        PINS_ENV: str(pin_root) if mode == "warm" else "",
                    }
                    s = Sentinel(*rules, env=env)
                    armed[mode].append(round(s.wait_armed(), 3))
                    steps[mode].append(s.armed_rec.get("step_seconds", {}))
                    got = (s.armed_rec.get("bpf_cached"), s.armed_rec.get("bpf_reused"))
                    time.sleep(1.0)
                    rss.append(s.hwm_mb())
                    s.stop()
                    want = (mode.startswith("warm"), mode == "warm")
                    if got != want:
                        raise RuntimeError(f"{mode} start: (bpf_cached, bpf_reused)={got!r}")
        finally:
            shutil.rmtree(pin_root, ignore_errors=True)
    out: dict[str, Any] = {"rules": [Path(a).name for a in rules[1::2]] or "default"}
    for mode, values in armed.items():
        out[f"armed_s_{mode}_median"] = statistics.median(values)
        out[f"armed_s_{mode}_all"] = values
        out[f"step_seconds_{mode}"] = {
            k: statistics.median(st.get(k, 0.0) for st in steps[mode])
            for k in sorted({k for st in steps[mode] for k in st})
        }
    out["peak_rss_mb_idle"] = max(rss)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--opens", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rates", default="50000,100000,150000,200000,250000,300000,400000")
    ap.add_argument("--rate-secs", type=float, default=4.0)
    ap.add_argument("--trials", type=int, default=3, help="trials per rate in (b)")
    ap.add_argument("--falco", type=Path, default=FALCO_DIR, help="Falco's rules, for (a), (d)")
    ap.add_argument("--before", type=Path, help="a checkout to compare (a), drain with")
    ap.add_argument("--execs", type=int, default=200)
    ap.add_argument("--only", default="a,b,c,d")
    ap.add_argument("--drain-worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv if argv is not None else [])
    if args.drain_worker:
        import sentinel

        res = bench_drain(build(), args.drain_worker)
        print(json.dumps({**res, "sentinel_from": sentinel.__file__}))
        return 0
    if os.geteuid() != 0:
        print("bench kernel: SKIPPED, needs root (loads BPF programs)")
        return 0
    only = set(args.only.split(","))
    binary = build()
    rules = rules_args(args.falco)
    families = default_families(rules)
    # A run of some sections (--only) replaces those sections only; each says when it ran.
    out: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    out.update({"machine": os.uname().release, "goals": GOALS})
    # (the machine's load when the run began: other work on it skews every figure)
    stamp = {
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ"),
        "load_avg_1min": os.getloadavg()[0],
    }
    if "d" in only:
        out["startup"] = {**stamp, **bench_startup(max(3, args.rounds), rules)}
        print("(d) startup:", json.dumps(out["startup"]), flush=True)
    if "a" in only:
        # with the default rules (--falco elsewhere) a section of its own: both are figures
        out["storm" if rules else "storm_default_rules"] = {
            **stamp,
            **bench_storm(binary, args.opens, args.rounds, families, rules, args.before),
        }
        print("(a) storm:", json.dumps(out["storm" if rules else "storm_default_rules"]))
    if "c" in only:
        out["latency"] = {**stamp, **bench_latency(args.execs)}
        print("(c) latency:", json.dumps(out["latency"]), flush=True)
    if "b" in only:
        rates = [int(r) for r in args.rates.split(",")]
        out["rates"] = {**stamp, **bench_rates(binary, rates, args.rate_secs, args.trials)}
        print("(b) max zero-loss rate:", out["rates"]["max_rate_zero_loss"], flush=True)
    if "e" in only:
        out["exec_storm"] = {**stamp, **bench_exec_storm(rules, 1000, args.trials, args.before)}
        print("(e) exec storm:", json.dumps(out["exec_storm"]), flush=True)
    if "b" in only or "drain" in only:
        out["drain"] = {**stamp, **bench_drain_trials(100_000, args.trials, args.before)}
        print("(drain):", json.dumps(out["drain"]), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"written {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
