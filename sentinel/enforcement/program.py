"""The enforcement programs' text: the generated ABI header, common.h, then lsm.c or kill.c.

One text, not ``#include``s: bcc rewrites map calls (``idents.lookup()``...) only in the text
it is given (the sensor is assembled the same way, sentinel.kernel.program).
"""

from __future__ import annotations

from typing import Literal

from sentinel.enforcement import abi
from sentinel.paths import BPF_DIR

ENFORCEMENT_DIR = BPF_DIR / "enforcement"

Kind = Literal["lsm", "kill"]
_ACTION = {"lsm": "ACTION_DENY", "kill": "ACTION_KILL"}


def text(kind: Kind) -> str:
    return "\n".join(
        [
            abi.header(),
            f"#define ACTION {_ACTION[kind]}",
            (ENFORCEMENT_DIR / "common.h").read_text(),
            (ENFORCEMENT_DIR / f"{kind}.c").read_text(),
        ]
    )
