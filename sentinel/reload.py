"""Hot reload of the rules (and config): SIGHUP, or optional polling of the files' mtimes.

Why it is built this way:

- The kernel side is never touched: programs stay attached and keep writing into the ring
  buffer, so a reload cannot lose events as long as the event loop keeps draining it.
- Loading and compiling run in a worker thread, so even a slow compile (the Falco rules) does
  not stall the loop; the new rules are handed to ``swap`` *in the loop's thread*, between two
  polls, so the engine is never replaced under an event being evaluated.
- A bad new file is rejected: the error (file:line:column, rule) is logged, the old rules keep
  running, and the next change or SIGHUP tries again.
- The signal handler only sets a flag (no I/O, no locks in signal context).
- Polling, not inotify: it works on every filesystem, including Kubernetes ConfigMap volumes,
  which swap a ``..data`` symlink rather than writing files in place.

Use from an event loop::

    reloader = RulesReloader(paths, swap=install_new_rules, watch=cfg.reload.watch)
    reloader.install()              # SIGHUP handler (main thread only)
    while running:
        sensor.poll(100)
        reloader.poll()             # maybe start a reload; maybe call swap(new) here
    reloader.close()
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import Any, Generic, TypeVar

from sentinel.compiler import CompiledRules, compile_rules
from sentinel.enrichment.event import filled_fields
from sentinel.loader import RulesError, expand_paths, load_ruleset
from sentinel.logging import get_logger

T = TypeVar("T")
Stamp = dict[str, tuple[int, int]]


def load_compiled_rules(paths: list[Path]) -> CompiledRules:
    """Load and compile ``paths``; raise RulesError (every problem, with positions) on error."""
    rs = load_ruleset(paths)
    rs.diagnostics.raise_if_errors()
    compiled = compile_rules(rs, strict=False, filled=filled_fields())
    compiled.diagnostics.raise_if_errors()
    return compiled


def snapshot(paths: Iterable[Path]) -> Stamp:
    """(mtime_ns, size) of every rules file and of each directory (so an added or removed
    file shows), following symlinks the way the loader does."""
    out: Stamp = {}
    paths = list(paths)
    for p in [*paths, *expand_paths(q for q in paths if q.is_dir())]:
        try:
            st = p.stat()
        except OSError:
            out[str(p)] = (-1, -1)
            continue
        out[str(p)] = (st.st_mtime_ns, st.st_size)
        if p.is_dir():
            # Directory mtime changes on add/remove; ConfigMap updates replace ..data.
            data = p / "..data"
            if data.exists():
                out[str(data)] = (int(os.stat(data).st_mtime_ns), 0)
    return out


class RulesReloader(Generic[T]):
    """Reload on SIGHUP or on a change of the watched files; ``swap(new)`` on success only.

    ``load`` builds the new object from ``paths`` (default: compiled rules). It may raise
    :class:`RulesError` (logged with every problem's position) or any other exception (logged
    as-is); either way the old rules stay.
    """

    def __init__(
        self,
        paths: list[Path],
        swap: Callable[[T], None],
        load: Callable[[list[Path]], T] | None = None,
        *,
        watch: bool = False,
        interval: float = 2.0,
        extra_watch: Iterable[Path] = (),
        logger: Any = None,
        on_reject: Callable[[], None] | None = None,
    ) -> None:
        self.paths = list(paths)
        # called once per rejected reload, wherever it is delivered (poll or wait): a metric
        # counted by the caller around poll() alone missed the rejections wait() delivered
        self.on_reject = on_reject
        self.swap = swap
        self.load: Callable[[list[Path]], Any] = load or load_compiled_rules
        self.watch = watch
        self.interval = interval
        self.extra_watch = list(extra_watch)
        self.log = logger if logger is not None else get_logger("sentinel.reload")
        self.requested = False
        self.reloads = 0
        self.failures = 0
        self.last_error: str | None = None
        self._stamp = self._snapshot()
        self._next_check = time.monotonic() + interval
        self._worker: threading.Thread | None = None
        self._result: tuple[bool, Any] | None = None
        self._old_handler: Any = None
        self._installed_sig: int | None = None

    def _snapshot(self) -> Stamp:
        return snapshot([*self.paths, *self.extra_watch])

    # -- triggers --------------------------------------------------------------------------
    def install(self, sig: int = signal.SIGHUP) -> None:
        """Install the signal handler (must be called from the main thread)."""
        self._old_handler = signal.signal(sig, self._on_signal)
        self._installed_sig = sig

    def _on_signal(self, _sig: int, _frame: FrameType | None) -> None:
        self.requested = True

    def request(self) -> None:
        self.requested = True

    # -- the loop's side -------------------------------------------------------------------
    def poll(self) -> bool:
        """Call often from the event loop. Starts a reload when asked or when files changed;
        delivers a finished one through ``swap``. True when new rules were swapped in."""
        swapped = False
        if self._worker is not None and not self._worker.is_alive():
            self._worker = None
            swapped = self._finish()
        if self._worker is None:
            now = time.monotonic()
            if self.watch and now >= self._next_check:
                self._next_check = now + self.interval
                stamp = self._snapshot()
                if stamp != self._stamp:
                    self._stamp = stamp
                    self.log.info("rules_changed", paths=[str(p) for p in self.paths])
                    self.requested = True
            if self.requested:
                self.requested = False
                self._start()
        return swapped

    def busy(self) -> bool:
        return self._worker is not None

    def _start(self) -> None:
        self._stamp = self._snapshot()
        paths = list(self.paths)

        def work() -> None:
            t0 = time.monotonic()
            try:
                new = self.load(paths)
                self._result = (True, (new, time.monotonic() - t0))
            except BaseException as exc:
                self._result = (False, exc)

        self._result = None
        self._worker = threading.Thread(target=work, name="rules-reload", daemon=True)
        self._worker.start()

    def _finish(self) -> bool:
        result, self._result = self._result, None
        if result is None:  # pragma: no cover - the worker always sets it
            return False
        ok, value = result
        if not ok:
            self._rejected()
            exc = value
            if isinstance(exc, RulesError):
                problems = [p.to_dict() for p in exc.problems]
                self.last_error = str(exc)
                self.log.error(
                    "rules_reload_rejected",
                    reason="the new rules have errors; the old rules keep running",
                    errors=len(problems),
                    problems=problems,
                )
            else:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.log.error(
                    "rules_reload_rejected",
                    reason="loading the new rules failed; the old rules keep running",
                    error=self.last_error,
                )
            return False
        new, secs = value
        try:
            self.swap(new)
        except Exception as exc:
            self._rejected()
            self.last_error = f"swap failed: {exc!r}"
            self.log.error(
                "rules_reload_rejected",
                reason="installing the new rules failed",
                error=self.last_error,
            )
            return False
        self.reloads += 1
        self.last_error = None
        self.log.info("rules_reloaded", seconds=round(secs, 3), reloads=self.reloads)
        return True

    def _rejected(self) -> None:
        self.failures += 1
        if self.on_reject is not None:
            self.on_reject()

    def wait(self, timeout: float = 30.0) -> bool:
        """Block until a running reload finishes, then deliver it (tests, shutdown)."""
        w = self._worker
        if w is not None:
            w.join(timeout)
        return self.poll()

    def close(self) -> None:
        if self._installed_sig is not None:
            signal.signal(self._installed_sig, self._old_handler)
            self._installed_sig = None


__all__ = ["RulesReloader", "load_compiled_rules", "snapshot"]
