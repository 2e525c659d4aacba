"""Where Sentinel's non-Python assets live (grammar, default rules, BPF sources).

They sit at the top of the repository, next to the package, so that a newcomer finds them by
folder name. ``SENTINEL_HOME`` points elsewhere (e.g. in a container image).
"""

from __future__ import annotations

import os
from pathlib import Path

HOME = Path(os.environ.get("SENTINEL_HOME", Path(__file__).resolve().parent.parent))
GRAMMAR_DIR = HOME / "grammar"
RULES_DIR = HOME / "rules"
BPF_DIR = HOME / "bpf"
