"""``python -m bench [AREA ...] [OPTIONS]``: run the named benchmarks (default: all that need
no VM). OPTIONS go to the area's own ``main`` (``python -m bench kernel --only b``; ``python -m
bench outputs --help``), so they need exactly one area."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def areas() -> list[str]:
    """Every benchmark area: the modules ``bench/bench_AREA.py``."""
    here = Path(__file__).parent
    return sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules([str(here)])
        if m.name.startswith("bench_")
    )


def main(argv: list[str]) -> int:
    known = areas()
    first_option = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    named, rest = argv[:first_option], argv[first_option:]
    if rest and len(named) != 1:
        print("bench: options need exactly one area, e.g. python -m bench kernel --only b",
              file=sys.stderr)  # fmt: skip
        return 2
    wanted = named or [a for a in known if a != "lsm"]  # the LSM bench boots a VM: ask for it
    unknown = [a for a in wanted if a not in known]
    if unknown:
        print(f"bench: unknown area {unknown[0]!r}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    code = 0
    for area in wanted:
        print(f"== bench {area}", flush=True)
        module = importlib.import_module(f"bench.bench_{area}")
        code |= int(module.main(rest))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
