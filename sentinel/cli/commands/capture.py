"""``sentinel capture -o FILE``: a live session that also records every event it sees.

The file is JSON Lines in the replay format (one flat Falco-field mapping per event), so
``sentinel replay FILE`` later gives the same alerts this session printed: the engine here is
fed exactly the materialised mapping that is written, not the lazy live event.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sentinel.cli.commands.run import add_common_options, run_live
from sentinel.logging import configure_logging, get_logger


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("capture", help="run, and write the events seen to a replay file (root)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")
    add_common_options(p)
    p.set_defaults(func=capture)


def capture(args: argparse.Namespace) -> int:
    try:
        out = args.output.open("w", encoding="utf-8")
    except OSError as exc:
        configure_logging("auto", "info")
        get_logger("sentinel").error(f"cannot write {args.output}: {exc.strerror}")
        return 2
    with out:
        return run_live(args, capture=out)
