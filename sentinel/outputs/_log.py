"""The outputs' logger: the global structlog config when there is one, else stderr.

Why: structlog's unconfigured default prints to *stdout*, which is where the stdout output
writes alerts; a log line there would corrupt the JSON Lines stream a SIEM agent reads.
Resolved at each call, so a ``configure_logging`` made after import still applies.
"""

from __future__ import annotations

import sys
from typing import Any

import structlog


class _Log:
    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, method: str) -> Any:
        if structlog.is_configured():
            logger = structlog.get_logger(self.name).bind(logger=self.name)
        else:
            logger = structlog.wrap_logger(structlog.PrintLogger(sys.stderr)).bind(logger=self.name)
        return getattr(logger, method)


def get_log(name: str) -> Any:
    return _Log(name)
