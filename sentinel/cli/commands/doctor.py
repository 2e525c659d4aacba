"""``sentinel doctor [--json] [--config FILE]``: check this host and explain, with the fix.

Exit status 0 means ``sentinel run`` can work here (possibly with warnings), 1 that it cannot.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("doctor", help="check whether `sentinel run` can work here, and how to fix")
    p.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    p.add_argument("--config", type=Path, default=None, help="also validate this config file")
    p.add_argument(
        "--runtime-socket",
        action="append",
        metavar="PATH",
        help="container runtime API socket to check (repeatable; default: the usual podman, "
        "docker, containerd and CRI-O paths)",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from sentinel.doctor import RUNTIME_SOCKETS, exit_code, run_checks

    sockets = tuple(args.runtime_socket) if args.runtime_socket else RUNTIME_SOCKETS
    checks = run_checks(args.config, sockets)
    code = exit_code(checks)
    if args.json:
        doc = {"ok": code == 0, "checks": [c.to_dict() for c in checks]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        for c in checks:
            sys.stdout.write(c.line() + "\n")
        verdict = "sentinel run can work here" if code == 0 else "sentinel run cannot work here"
        sys.stdout.write(f"{verdict}\n")
    return code
