"""``sentinel explain FILE...``: how each rule is split between the kernel and user space.

Per rule: the event types it can match, its kernel part per event type the prefilter judges
(the terms the BPF filter tests, or why there is none; types with the same terms are shown
together), and the user-space residue (the condition Python checks on what the kernel lets
through). Then, per event type, whether the kernel filters it and the map entries.

``--live``: instead, which enabled rules can fire on the live sensor (every event type traced,
every field their condition reads on that type filled; see sentinel.app.coverage), and what
keeps the others from it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sentinel.cli.common import load_compiled
from sentinel.compiler import OTHER
from sentinel.events import BY_NAME
from sentinel.language import to_text
from sentinel.prefilter.plan import TYPES, dim_label
from sentinel.prefilter.tables import build_tables


def register(sub: Any) -> None:
    p = sub.add_parser("explain", help="show each rule's kernel part and user-space residue")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--live",
        action="store_true",
        help="which enabled rules the live sensor can fire: event types traced, fields filled",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    compiled = load_compiled(args.files)
    if compiled is None:
        return 1
    rules = compiled.enabled
    if args.live:
        return live(rules, args.json)
    tables = build_tables([(r.name, r.expr) for r in rules])
    plans = {(p.rule, p.evt_type): p for p in tables.plans}
    out_rules: list[dict[str, Any]] = []
    for r in rules:
        types = sorted(t for t in r.event_types if t != OTHER)
        # event types with the same kernel part, shown once: "open, openat, openat2"
        groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]] = {}
        for t in TYPES:
            if t not in r.event_types:
                continue
            plan = plans[(r.name, t)]
            key = (tuple(plan.describe()), tuple(plan.approximated))
            groups.setdefault(key, []).append(t)
        fams: dict[str, Any] = {
            ", ".join(ts): {"terms": list(terms), "approximated": list(approx)}
            for (terms, approx), ts in groups.items()
        }
        out_rules.append(
            {
                "rule": r.name,
                "event_types": types + (["<any other>"] if OTHER in r.event_types else []),
                "kernel": fams,
                "residue": to_text(r.expr),
            }
        )
    wanted = set().union(*(r.event_types for r in rules)) if rules else set()
    out_fams: dict[str, Any] = {}
    for fam, ft in tables.types.items():
        if fam not in wanted:
            continue  # no rule can match it: not traced
        out_fams[fam] = {
            "values_from": BY_NAME[fam].truth,
            "filtered": not ft.pass_all,
            "reason": ft.reason,
            "terms": ft.nterms,
            "wildcards": {dim_label(d, fam): f"{m:#x}" for d, m in ft.wild.items()},
            "exact_entries": {dim_label(d, fam): len(t) for d, t in ft.exact.items()},
            "lpm_entries": {dim_label(d, fam): len(t) for d, t in ft.lpm.items()},
            "cidr_entries": {str(v): len(t) for v, t in ft.nets.items()},
        }
    if args.json:
        json.dump({"rules": out_rules, "event_types": out_fams}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for row in out_rules:
        print(f"rule: {row['rule']}")
        print(f"  event types: {', '.join(row['event_types']) or '(none)'}")
        for fam, info in row["kernel"].items():
            print(f"  kernel ({fam}):")
            for t in info["terms"]:
                print(f"    - {t}")
            for a in info["approximated"]:
                print(f"    ! {a}")
        print(f"  user space: {row['residue']}")
        print()
    for fam, info in out_fams.items():
        state = "filtered in the kernel" if info["filtered"] else f"NOT filtered: {info['reason']}"
        print(
            f"{fam}: {state}; {info['terms']} terms; exact {info['exact_entries']}, "
            f"prefix/suffix {info['lpm_entries']}, cidr {info['cidr_entries']}"
        )
        print(f"  values from: {info['values_from']}")
    return 0


def live(rules: list[Any], as_json: bool) -> int:
    from sentinel.app.coverage import kernel_tracepoints, rule_liveness
    from sentinel.enrichment.event import sensor_fields

    has = kernel_tracepoints()
    rows = rule_liveness(rules, sensor_fields(), has)
    n_live = sum(r.live for r in rows)
    n_here = sum(r.live_here for r in rows) if has is not None else None
    if as_json:
        doc = {
            "enabled": len(rows),
            "live": n_live,
            "live_on_this_kernel": n_here,
            "rules": [
                {
                    "rule": r.rule,
                    "event_types": r.event_types,
                    "live": r.live,
                    "untraced": r.untraced,
                    "no_tracepoint_here": r.no_tracepoint,
                    "unfilled_fields": r.unfilled,
                }
                for r in rows
            ],
        }
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for r in rows:
        if r.live_here:
            continue
        print(f"rule: {r.rule}")
        if r.untraced:
            print(f"  event types not traced: {', '.join(r.untraced)}")
        for name, types in r.unfilled.items():
            print(f"  field not filled: {name} (on {', '.join(types)})")
        if r.no_tracepoint:
            print(f"  no tracepoint on this kernel: {', '.join(r.no_tracepoint)}")
    print(f"{n_live} of {len(rows)} enabled rules have every event type and field live")
    if n_here is not None:
        print(f"{n_here} of {len(rows)} on this kernel (its tracepoints)")
    else:
        print("this kernel's tracepoints not checked (tracefs not readable)")
    return 0
