"""tests/vm: host-side tests, plus the guest suite (tests/vm/guest) that only runs in the VM.

The guest tests load BPF LSM programs, which this host's kernel refuses; on the host they are
run *through* tests/vm/test_vm.py, which boots the VM once and reports each guest result as a
host test. So the host never collects tests/vm/guest directly.
"""

from __future__ import annotations

import os

collect_ignore = [] if os.environ.get("SENTINEL_IN_VM") == "1" else ["guest"]
