"""A stand-in Sentinel process for the crash tests: ``emitter.py CONFIG.json COUNT PREFIX``.

Starts a Dispatcher from the config, emits COUNT alerts (ids PREFIX-0 ..), prints
``EMITTED <n>`` and then keeps delivering until it is killed, or (COUNT 0) until every output's
queue is empty, when it prints ``DRAINED`` and exits 0.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import structlog

from sentinel.alerts import Alert
from sentinel.outputs import Dispatcher, OutputsConfig


def main() -> int:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    cfg = OutputsConfig.model_validate(json.loads(Path(sys.argv[1]).read_text()))
    count, prefix = int(sys.argv[2]), sys.argv[3]
    d = Dispatcher(cfg)
    d.start()
    for i in range(count):
        d.emit(
            Alert(
                rule="Any exec",
                priority="Warning",
                output=f"exec bash (cmd=bash -c {i}) ü\nline 2",
                output_fields={"evt.type": "execve", "proc.name": "bash", "n": i},
                hostname="crash-test",
                id=f"{prefix}-{i}",
            )
        )
    print(f"EMITTED {count}", flush=True)
    while True:
        time.sleep(0.05)
        if count == 0 and all(m["queue_depth"] == 0 for m in d.metrics().values()):
            d.close()
            print("DRAINED " + json.dumps(d.metrics()), flush=True)
            return 0


if __name__ == "__main__":
    sys.exit(main())
