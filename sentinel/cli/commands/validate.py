"""``sentinel validate FILE...``: load, parse and compile rules files; report every problem."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sentinel.compiler import compile_rules
from sentinel.enrichment.event import filled_fields
from sentinel.loader import load_ruleset


def register(sub: Any) -> None:
    p = sub.add_parser("validate", help="check rules files (exit 1 on any error)")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only, not warnings")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rs = load_ruleset(args.files)
    compiled = compile_rules(rs, strict=False, filled=filled_fields())
    diag = rs.diagnostics
    summary = {
        "ok": not diag.errors,
        "files": [str(f) for f in rs.files],
        "rules": len(rs.rules),
        "rules_compiled": len(compiled.rules),
        "rules_enabled": len(compiled.enabled),
        "macros": len(rs.macros),
        "lists": len(rs.lists),
        "errors": [p.to_dict() for p in diag.errors],
        "warnings": [p.to_dict() for p in diag.warnings],
    }
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        shown = diag.errors if args.quiet else diag.problems
        for p in shown:
            print(p.format(), file=sys.stderr)
        status = "OK" if not diag.errors else "FAILED"
        print(
            f"{status}: {summary['rules']} rules ({summary['rules_compiled']} compiled, "
            f"{summary['rules_enabled']} enabled), {summary['macros']} macros, "
            f"{summary['lists']} lists; {len(diag.errors)} errors, "
            f"{len(diag.warnings)} warnings"
        )
    return 0 if not diag.errors else 1
