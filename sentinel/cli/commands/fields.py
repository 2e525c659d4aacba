"""``sentinel fields``: the fields conditions and outputs may use; ``--sensor``: those the live
sensor fills (derived from the event table's getters, with the event types that fill each)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sentinel.fields import FIELDS


def register(sub: Any) -> None:
    p = sub.add_parser("fields", help="list the supported fields")
    p.add_argument("--json", action="store_true")
    p.add_argument("--sensor", action="store_true", help="only fields the sensor fills")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sentinel.enrichment.event import sensor_fields

    filled = sensor_fields()  # field -> the event types whose getters fill it
    infos = [f for f in FIELDS.values() if f.name in filled or not args.sensor]
    if args.json:
        rows = [
            {
                "name": f.name,
                "type": f.type.value,
                "kind": f.kind.value,
                "arg": f.arg.value,
                "sensor": f.name in filled,
                "sensor_event_types": sorted(filled.get(f.name, ())),
                "event_types": sorted(f.event_types) if f.event_types else None,
                "desc": f.desc,
            }
            for f in infos
        ]
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    width = max(len(f.name) for f in infos) + 2
    for f in infos:
        name = f.name + ("[N]" if f.kind.value == "ancestors" else "")
        mark = "" if f.name in filled else "  (not filled by the sensor)"
        print(f"{name:<{width + 3}} {f.type.value:<9} {f.desc}{mark}")
    return 0
