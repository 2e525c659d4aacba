"""The prefilter's sizes, defined once for Python and for ``bpf/prefilter/filter.h``.

The map key structs themselves are written in :mod:`.maps` (ctypes mirrors, checked against the
kernel by the real-kernel tests); family and dimension codes come from the event table
(:mod:`sentinel.events`, generated into C by :mod:`sentinel.events.cgen`).
"""

from __future__ import annotations

from sentinel.events.common import WALK_DEPTH

NWORDS = 8  # mask words at most: 512 terms per family (beyond: the family is not filtered)
MAX_TERMS = NWORDS * 64
F_PATH = 256  # the exact-path hash key's path bytes (with the NUL), and the path read
F_LPM_DATA = 256  # LPM trie key data: 4 header bytes (slot, family, dim[, ip version]) + payload
LPM_PAYLOAD = 252  # longest prefix/suffix an LPM key holds
PATH_MAX_KEY = F_PATH - 1  # longest path the exact-path hash keys on
PATH_READ_MAX = F_PATH - 2  # longest path argument judged (read whole, 256 bytes with the NUL)
COMPOSED_MAX = F_PATH - 1  # longest base + "/" + relative path the kernel composes
F_WALK_MAX = WALK_DEPTH  # components of a base walk composed (the sensor's walk depth)


def defines(nwords: int = NWORDS) -> str:
    """The C text that gives filter.h its sizes."""
    values = {
        "F_NWORDS": nwords,
        "F_PATH": F_PATH,
        "F_LPM_PAYLOAD": LPM_PAYLOAD,
        "F_WALK_MAX": F_WALK_MAX,
    }
    return "".join(f"#define {k} {v}\n" for k, v in values.items())
