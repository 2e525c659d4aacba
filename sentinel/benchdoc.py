"""The README's kernel benchmark table, rendered from ``bench/results/kernel.json`` (written by
``python -m bench kernel``), so that every figure in it is one a run produced, with its trials
and the time it ran, never one typed by hand (sentinel.readme keeps the block current)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "kernel.json"


def _rules(sec: dict[str, Any]) -> str:
    rules = sec.get("rules", "default")
    return "the default rules" if rules == "default" else "Falco's three files"


def _s(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _startup(sec: dict[str, Any], goals: dict[str, Any]) -> list[str]:
    def fig(mode: str) -> str:
        return f"{sec[f'armed_s_{mode}_median']:.2f} s** ({_s(sec[f'armed_s_{mode}_all'])})"

    steps = sec.get("step_seconds_warm", {})
    where = ", ".join(
        f"{k} {v:.2f}" for k, v in steps.items() if k in ("load_rules", "start_sensor", "arm")
    )
    unpinned = (
        f"; warm without the pins (the kernel verifies every program again) **"
        f"{fig('warm_unpinned')}"
        if "armed_s_warm_unpinned_all" in sec
        else ""
    )
    return [
        f"| start-up to armed, {_rules(sec)}, every traced event type attached; median of "
        f"{len(sec['armed_s_warm_all'])} (runs), {sec['measured_at']}, load "
        f"{sec.get('load_avg_1min', 0):.1f} "
        f"| warm (nothing changed: the programs the last start pinned, reused) **{fig('warm')}"
        f"{f' (steps, s: {where})' if where else ''}{unpinned}; cold (empty cache: compiled, "
        f"then recorded) **{fig('cold')}; cache off **{fig('uncached')}; peak RSS "
        f"{sec['peak_rss_mb_idle']:.0f} MB "
        f"| ≤ {goals.get('armed_s_warm', 1.0)} s warm, ≤ {goals.get('armed_s_cold', 2.0)} s cold |"
    ]


def _storm(sec: dict[str, Any], goals: dict[str, Any]) -> list[str]:
    per = sec["ns_per_open_close"]
    rows = [
        f"| open()+close() storm of /dev/null ({sec['opens_per_storm']:,} opens, median of "
        f"{sec['rounds']} rounds, {sec['measured_at']}), `sentinel run` with {_rules(sec)}, vs "
        f"empty programs on the same tracepoints (floor) "
        f"| **{sec['sentinel_vs_floor']:.3f}x the floor** (ns per open+close: sentinel "
        f"{per['sentinel']:.0f}, floor {per['floor']:.0f}, none {per['none']:.0f}); "
        f"`--no-prefilter` "
        f"{sec['sentinel_no_prefilter_vs_floor']:.2f}x; bpftrace counting "
        f"{sec['bpftrace_vs_floor']:.2f}x; lost {sec['sentinel_lost_during_storms']:,} "
        f"| ≤ {goals.get('floor_ratio', 1.02)}x |",
        f"| BPF time per open event (bpf_stats, the same storms) "
        f"| **{sec['bpf_ns_per_open_event_sentinel']:.0f} ns** "
        f"({sec['bpf_ns_per_open_event_sentinel_all']}); empty program "
        f"{sec['bpf_ns_per_open_event_floor']:.0f} ns | |",
    ]
    if "sentinel_vs_before" in sec:
        rows.append(
            f"| same storms, this sentinel vs commit {sec['before_commit']} (interleaved in "
            f"the same rounds) | **{sec['sentinel_vs_before']:.3f}x** its wall time; BPF "
            f"{sec['bpf_ns_per_open_event_sentinel']:.0f} ns vs "
            f"{sec['bpf_ns_per_open_event_before']:.0f} ns per open "
            f"({sec['bpf_ns_per_open_event_before_all']}) | |"
        )
    return rows


def _rates(sec: dict[str, Any], drain: dict[str, Any] | None, goals: dict[str, Any]) -> list[str]:
    losses = "; ".join(
        f"{r['target_per_s'] // 1000}k (generated {r['generated_per_s_median']:,.0f}/s): "
        f"{r['lost_open_all']}"
        for r in sec["rows"]
    )
    drained = f" {_drain(drain, goals)}" if drain is not None else ""
    return [
        f"| highest open rate with zero lost events (`--no-prefilter`: every open through "
        f"decode, process table, engine; {sec['trials']} trials of {sec['seconds_per_rate']:.0f} s "
        f"per rate, {sec['measured_at']}) | **{sec['max_rate_zero_loss']:,} events/s** "
        f"(lost per trial, by rate: {losses}).{drained} | ≥ {goals.get('rate', 300_000):,} |"
    ]


def _drain(drain: dict[str, Any], goals: dict[str, Any]) -> str:
    """The drain of a full ring (reader alone), with its trials and the before checkout's."""
    text = f"Drain of a full ring, reader alone: {drain['drain_events_per_s']:,.0f} events/s"
    if "drain_events_per_s_all" not in drain:
        return text + "."
    text += (
        f" (median of {drain['trials']}: {_ints(drain['drain_events_per_s_all'])}; "
        f"{drain['measured_at']}, load average {drain['load_avg_1min']:.1f} on 2 cores"
    )
    if "before_commit" in drain:
        text += (
            f"; commit {drain['before_commit']} in the same rounds "
            f"{drain['before_drain_events_per_s']:,.0f} "
            f"({_ints(drain['before_drain_events_per_s_all'])})"
        )
    return text + f"; goal ≥ {goals.get('drain', 500_000):,})."


def _ints(values: list[float]) -> str:
    return ", ".join(f"{v:,.0f}" for v in values)


ENGINE = RESULTS.parent / "engine.json"


def engine_table(path: Path = ENGINE) -> str:
    """The replay engine's row, from ``python -m bench engine``."""
    if not path.exists():
        return "(no results: run python -m bench engine)"
    e = json.loads(path.read_text())
    rows = [
        "| engine benchmark | result | goal |",
        "|---|---|---|",
        f"| engine replay throughput, three Falco files ({e['rules_enabled']} enabled rules), "
        f"realistic mix (62% openat, 18% execve, 10% connect, 10% clone/exit), one core; "
        f"median of {e['trials']} fresh processes, {e['measured_at']}, load average "
        f"{e['load_avg_1min']:.1f} on 2 cores "
        f"| **{e['events_per_second']:,.0f} events/s** ({_ints(e['events_per_second_all'])})"
        + (
            f"; commit {e['before_commit']} in the same rounds "
            f"{e['before_events_per_second']:,.0f} ({_ints(e['before_events_per_second_all'])})"
            f", this/that **{e['after_vs_before']:.2f}x** ({e['after_vs_before_all']})"
            if "before_commit" in e
            else ""
        )
        + " | ≥ 400,000 |",
    ]
    return "\n".join(rows)


def kernel_table(path: Path = RESULTS) -> str:
    """The rows of the last ``python -m bench kernel`` run (each section as last measured)."""
    if not path.exists():
        return "(no results: run python -m bench kernel)"
    doc = json.loads(path.read_text())
    goals = doc.get("goals", {})
    rows = ["| kernel benchmark | result | goal |", "|---|---|---|"]
    if "startup" in doc and "armed_s_warm_all" in doc["startup"]:
        rows += _startup(doc["startup"], goals)
    for key in ("storm", "storm_default_rules"):
        if key in doc:
            rows += _storm(doc[key], goals)
    if "rates" in doc and "trials" in doc["rates"]:
        rows += _rates(doc["rates"], doc.get("drain"), goals)
    if "exec_storm" in doc:
        rows += _exec_storm(doc["exec_storm"])
    return "\n".join(rows)


def _exec_storm(sec: dict[str, Any]) -> list[str]:
    """(e): BPF ns per exec, wakeups and latency in an exec storm, and the before checkout's."""

    def side(pre: str) -> str:
        ns = sec[f"{pre}bpf_ns_per_exec_all"]
        text = (
            f"BPF **{sec[f'{pre}bpf_ns_per_exec']:,.0f} ns** per exec ({_ints(ns)}); "
            f"alert latency p50 {sec[f'{pre}p50_ms']:.2f} ms, p99 {sec[f'{pre}p99_ms']:.2f} ms"
        )
        woken = sec.get(f"{pre}woken_execve_all") or []
        if any(woken):
            text += f"; execs that woke the reader: {_ints(woken)} of {sec['execs']:,}"
        return text

    result = side("")
    if "before_commit" in sec:
        result += f". Commit {sec['before_commit']}, same rounds: {side('before_')}"
    return [
        f"| exec storm: {sec['loops']} shells exec /bin/true {sec['execs']:,} times, `sentinel "
        f"run` with Falco's three files and a probe rule; median of {sec['rounds']} rounds, "
        f"{sec['measured_at']}, load average {sec['load_avg_1min']:.1f} | {result} | "
        "≤ 5,000 ns per exec |"
    ]


FAMILIES = RESULTS.parent / "families.json"
TRUTH = RESULTS.parent / "truth.json"
_LOADS = {
    "open": "open()+close() of /dev/null",
    "udp": "UDP sendto+recvfrom to itself on loopback",
    "accept": "socket+connect+accept4+close on loopback",
}


def _spread(s: dict[str, Any]) -> str:
    return f"{s['median']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f})"


def families_table(path: Path = FAMILIES) -> str:
    """The rows of the last ``python -m bench families`` run: Falco's three files live."""
    if not path.exists():
        return "(no results: run python -m bench families)"
    doc = json.loads(path.read_text())
    rounds = doc["rounds"]
    rows = ["| storm with Falco's three files | sentinel vs floor | ns per iteration: "
            "sentinel, floor, none (median, min-max) |", "|---|---|---|"]  # fmt: skip
    goal = doc["goal_open_vs_floor"]
    for load, label in _LOADS.items():
        sec = doc[load]
        per = sec["ns_per_iteration"]
        rows.append(
            f"| {label} ({sec['iterations']:,} per storm, {rounds} rounds) "
            f"| **{sec['sentinel_vs_floor']:.2f}x**"
            f"{f' (goal ≤ {goal}x)' if load == 'open' else ''} "
            f"| {_spread(per['sentinel'])}; {_spread(per['floor'])}; {_spread(per['none'])} |"
        )
    rows.append(
        "| BPF ns per event, by tracepoint (bpf_stats over each round's run, median of the "
        f"rounds) | | {'; '.join(f'{t} {ns:,.0f}' for t, ns in _per_tracepoint(doc).items())} |"
    )
    rows.append(
        f"| start-up to armed with the three files (median, min-max of {rounds}) "
        f"| | {doc['armed_s']['median']:.2f} s ({doc['armed_s']['min']:.2f}-"
        f"{doc['armed_s']['max']:.2f}); records lost over all storms: {doc['lost']:,} |"
    )
    return "\n".join(rows)


TRUTH_WALK = RESULTS.parent / "truth-walk.json"
STAGES = RESULTS.parent / "stages.json"


def stages_table(path: Path = STAGES) -> str:
    """The rows of the last ``python -m bench stages`` run: an open's and an exec's BPF time,
    program stage by program stage (sentinel.events.stages)."""
    if not path.exists():
        return "(no results: run python -m bench stages)"
    doc = json.loads(path.read_text())
    load = doc["load_avg_1min"]
    rows = [
        f"| event (program), {doc['rounds']} rounds, load average {load['median']:.1f} "
        f"| stage: the work since the previous one | BPF ns up to its end (median, min-max) "
        f"| this stage |",
        "|---|---|---|---|",
    ]
    for fam, sec in doc["families"].items():
        for row in sec["stages"]:
            rows.append(
                f"| {fam} (`{sec['program']}`) | {row['stage']}: {row['work']} "
                f"| {_spread(row['ns_per_run_to_here'])} | {row['ns_of_this_stage']:,} |"
            )
    return "\n".join(rows)


def truth_table(path: Path = TRUTH, walk: Path = TRUTH_WALK) -> str:
    """The rows of the last ``python -m bench truth`` runs: the kernel path's cost against
    main before kernel paths, and (``--before`` a later commit) a change to the walk itself."""
    if not path.exists():
        return "(no results: run python -m bench truth)"
    rows = ["| open storm, Falco's falco_rules.yaml | this sentinel vs the commit named "
            "(wall time, same rounds) | BPF ns per open: this, that commit, empty program "
            "(median, min-max) | this vs floor |", "|---|---|---|---|"]  # fmt: skip
    for p in (path, walk):
        if not p.exists():
            continue
        doc = json.loads(p.read_text())
        for label in ("shallow", "deep"):
            sec = doc[label]
            bpf = sec["bpf_ns_per_open_event"]
            rows.append(
                f"| `{sec['path']}` ({sec['opens_per_storm']:,} opens, {sec['rounds']} rounds) "
                f"| vs {doc['before']}: {sec['after_vs_before']:.2f}x "
                f"| **{_spread(bpf['after'])}**; {_spread(bpf['before'])}; "
                f"{_spread(bpf['floor'])} | {sec['after_vs_floor']:.2f}x |"
            )
    return "\n".join(rows)


def _per_tracepoint(doc: dict[str, Any]) -> dict[str, float]:
    """bpf_stats by tracepoint. Programs are named by bcc's function name when compiled and by
    its last 15 characters when loaded from the cache: both are mapped to the tracepoint."""
    known = [f"sys_exit_{t}" for t in doc["traced_types"]]
    known += ["sched_process_exec", "sched_process_fork", "sched_process_exit"]
    by: dict[str, list[float]] = {}
    for name, sp in doc["bpf_ns_per_run"].items():
        hits = [k for k in known if name.endswith(k) or k.endswith(name)]
        if hits:
            by.setdefault(max(hits, key=len), []).append(sp["median"])
    return {k.removeprefix("sys_exit_"): sorted(v)[len(v) // 2] for k, v in sorted(by.items())}
