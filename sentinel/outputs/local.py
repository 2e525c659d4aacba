"""Local outputs: standard output and JSON Lines files with size-based rotation."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sentinel.alerts import Alert
from sentinel.outputs.base import OK, Outcome
from sentinel.outputs.config import FileOutput, StdoutOutput
from sentinel.outputs.formats import render


class StdoutSink:
    """One line per alert. Acknowledged once the write and flush returned."""

    linger = 0.0
    max_bytes = 1024 * 1024

    def __init__(self, cfg: StdoutOutput) -> None:
        self.cfg = cfg
        self.max_count = 256

    def send(self, alerts: list[Alert]) -> list[Outcome]:
        data = "".join(render(a, self.cfg.format, self.cfg.ocsf_class) + "\n" for a in alerts)
        out = sys.stdout
        out.write(data)
        out.flush()
        return [OK] * len(alerts)

    def close(self) -> None:
        return None


class FileSink:
    """JSON Lines (or CEF lines). Rotates ``path`` -> ``path.1`` .. ``path.N`` at ``max_bytes``.

    Acknowledged after the write, and after ``fsync`` when the policy says so (``always``:
    each alert; ``batch``: each batch; ``never``: left to the kernel, which survives a crash of
    Sentinel but not of the machine).
    """

    linger = 0.0
    max_bytes = 1024 * 1024

    def __init__(self, cfg: FileOutput) -> None:
        self.cfg = cfg
        self.max_count = 1 if cfg.fsync == "always" else 512
        self.path = Path(cfg.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = -1
        self._size = 0

    def _open(self) -> None:
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._size = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        if self.cfg.backups == 0:
            os.truncate(self.path, 0)
        else:
            for i in range(self.cfg.backups - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._open()

    def send(self, alerts: list[Alert]) -> list[Outcome]:
        # Render everything before writing anything: an alert that cannot be rendered then
        # fails the batch before any line is written (no duplicates on the one-by-one retry).
        lines = [(render(a, self.cfg.format, self.cfg.ocsf_class) + "\n").encode() for a in alerts]
        self._open()
        for line in lines:
            if self._size > 0 and self._size + len(line) > self.cfg.max_bytes:
                self._rotate()
            view = memoryview(line)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            self._size += len(line)
            if self.cfg.fsync == "always":
                os.fsync(self._fd)
        if self.cfg.fsync == "batch":
            os.fsync(self._fd)
        return [OK] * len(alerts)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
