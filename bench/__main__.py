"""``python -m bench [AREA ...]``: run the named benchmarks (default: all that need no VM)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    areas = sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules([str(here)])
        if m.name.startswith("bench_")
    )
    wanted = argv or [a for a in areas if a != "lsm"]  # the LSM bench boots a VM: ask for it
    code = 0
    for area in wanted:
        if area not in areas:
            print(f"bench: unknown area {area!r}; known: {', '.join(areas)}", file=sys.stderr)
            return 2
        print(f"== bench {area}", flush=True)
        module = importlib.import_module(f"bench.bench_{area}")
        code |= int(module.main())
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
