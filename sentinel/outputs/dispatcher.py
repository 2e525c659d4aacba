"""The dispatcher: alerts go to the spool, one worker thread per output delivers them.

``emit`` only appends to the spool (a local file write), so a slow or dead SIEM never stalls
the event path, and one output never stalls another: each worker has its own cursor and reads
the spool at its own pace. A worker advances its cursor only after the sink acknowledged every
alert of the batch (delivered or dead-lettered), which is what makes delivery at-least-once
across crashes: anything not acknowledged is read again after a restart.
"""

from __future__ import annotations

import json
import os
import random
import ssl
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from sentinel.alerts import Alert, format_time
from sentinel.outputs._log import get_log
from sentinel.outputs.base import Outcome, Sink, TransientError
from sentinel.outputs.config import (
    FileOutput,
    HttpOutput,
    OutputConfig,
    OutputsConfig,
    RetryConfig,
    StdoutOutput,
    SyslogOutput,
    output_name,
)
from sentinel.outputs.spool import Record, RecordTooLarge, Spool, SpoolError

log = get_log("sentinel.outputs")

# "blocked": emits that had to wait for this output under the ``block`` full policy.
COUNTERS = ("sent", "retried", "spooled", "dead_lettered", "dropped", "blocked")


_ALERT_FIELDS = tuple(f.name for f in fields(Alert))
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


def encode_alert(alert: Alert) -> bytes:
    """Spool payload: every Alert field, so the alert is rebuilt exactly (id, time_ns).
    (Not ``dataclasses.asdict``: its deep copy made this 3x slower on the event path.)"""
    return _encoder.encode({f: getattr(alert, f) for f in _ALERT_FIELDS}).encode()


def decode_alert(payload: bytes) -> Alert:
    return Alert(**json.loads(payload))


def build_sink(cfg: OutputConfig) -> Sink:
    # Imported here so that a config with only local outputs never loads ssl/http.client.
    if isinstance(cfg, StdoutOutput):
        from sentinel.outputs.local import StdoutSink

        return StdoutSink(cfg)
    if isinstance(cfg, FileOutput):
        from sentinel.outputs.local import FileSink

        return FileSink(cfg)
    if isinstance(cfg, SyslogOutput):
        from sentinel.outputs.syslog import SyslogSink

        return SyslogSink(cfg)
    if isinstance(cfg, HttpOutput):
        from sentinel.outputs.http import HttpSink

        return HttpSink(cfg)
    raise TypeError(f"unknown output {cfg!r}")  # pragma: no cover - the union is closed


class OutputSetupError(Exception):
    """An output cannot be set up (unreadable CA/cert/key file, bad URL): names the output."""


class Backoff:
    """Capped exponential backoff with jitter (a fraction of each delay is random, so that
    many Sentinels recovering from the same SIEM outage do not retry in lockstep)."""

    def __init__(self, cfg: RetryConfig) -> None:
        self.cfg = cfg
        self.attempt = 0

    def next_delay(self) -> float:
        base = min(
            self.cfg.max_backoff, self.cfg.initial_backoff * self.cfg.multiplier**self.attempt
        )
        self.attempt += 1
        return base * (1 - self.cfg.jitter * random.random())

    def reset(self) -> None:
        self.attempt = 0


class Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values = dict.fromkeys(COUNTERS, 0)

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.values[key] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.values)


class Worker(threading.Thread):
    def __init__(
        self, name: str, cfg: OutputConfig, sink: Sink, spool: Spool, counters: Counters, dead: Path
    ) -> None:
        super().__init__(name=f"output-{name}", daemon=True)
        self.output = name
        self.cfg = cfg
        self.sink = sink
        self.spool = spool
        self.counters = counters
        self.dead_path = dead
        self.stop_now = threading.Event()  # abandon in-flight work (it stays spooled)
        self.draining = threading.Event()  # finish when nothing is pending
        self.backoff = Backoff(cfg.retry)
        self.last_error: str | None = None

    def run(self) -> None:
        try:
            while not self.stop_now.is_set():
                if self.draining.is_set() and self.spool.pending(self.output) <= 0:
                    break
                try:
                    batch = self.spool.read(
                        self.output,
                        self.sink.max_count,
                        self.sink.max_bytes,
                        wait=0.2,
                        linger=0.0 if self.draining.is_set() else self.sink.linger,
                        stop=self.stop_now,
                    )
                    if batch:
                        self.deliver(batch)
                except SpoolError:
                    raise
                except Exception:
                    # A bug must neither kill delivery nor lose the batch: it stays spooled,
                    # and the worker starts over after a pause.
                    log.exception("output_worker_error", output=self.output)
                    self.counters.add("retried")
                    self.stop_now.wait(self.backoff.next_delay())
        except SpoolError:
            pass  # the spool closed under us: nothing unacknowledged is lost
        finally:
            try:
                self.sink.close()
            except Exception:
                log.exception("output_close_failed", output=self.output)

    def deliver(self, batch: list[Record]) -> None:
        alerts: list[Alert] = []
        for rec in batch:
            try:
                alerts.append(decode_alert(rec.payload))
            except (ValueError, TypeError) as exc:
                self.dead_letter(None, f"undecodable spool record {rec.seq}: {exc}", None, rec)
        pending = list(range(len(alerts)))
        while pending:
            if self.stop_now.is_set():
                return  # not acknowledged: delivered again after the next start
            try:
                outcomes = self.sink.send([alerts[i] for i in pending])
                if len(outcomes) != len(pending):  # pragma: no cover - sink bug
                    raise TransientError(f"sink returned {len(outcomes)} results")
            except (TransientError, OSError) as exc:
                outcomes = [Outcome("retry", str(exc))] * len(pending)
            except Exception:
                # Not the transport: some alert cannot be rendered/sent. Find which, one by one,
                # so that one bad alert is dead-lettered rather than blocking the output forever.
                outcomes = [self._send_one(alerts[i]) for i in pending]
            retry: list[int] = []
            for i, outcome in zip(pending, outcomes, strict=True):
                if outcome.kind == "ok":
                    self.counters.add("sent")
                elif outcome.kind == "dead":
                    self.dead_letter(alerts[i], outcome.reason, outcome.status, None)
                else:
                    retry.append(i)
            if retry:
                self.counters.add("retried", len(retry))
                delay = self.backoff.next_delay()
                reason = next(o.reason for o in outcomes if o.kind == "retry")
                if reason != self.last_error:
                    log.warning("output_retry", output=self.output, alerts=len(retry), error=reason)
                    self.last_error = reason
                self.stop_now.wait(delay)
            else:
                if self.last_error is not None:
                    log.info("output_recovered", output=self.output)
                self.last_error = None
                self.backoff.reset()
            pending = retry
        self.spool.ack(self.output, batch[-1].end)

    def _send_one(self, alert: Alert) -> Outcome:
        try:
            return self.sink.send([alert])[0]
        except (TransientError, OSError) as exc:
            return Outcome("retry", str(exc))
        except Exception as exc:
            log.exception("output_cannot_send_alert", output=self.output, alert_id=alert.id)
            return Outcome("dead", f"cannot format or send: {exc!r}")

    def dead_letter(
        self, alert: Alert | None, reason: str, status: int | None, rec: Record | None
    ) -> None:
        entry: dict[str, Any] = {
            "time": format_time(time.time_ns()),
            "output": self.output,
            "reason": reason,
            "status": status,
            "alert": None,
        }
        if alert is not None:
            try:
                entry["alert"] = alert.to_dict()
            except Exception:  # the alert itself is what could not be formatted
                entry["raw"] = encode_alert(alert).decode()
        if rec is not None:
            entry["raw"] = rec.payload.decode(errors="replace")
        line = (json.dumps(entry, ensure_ascii=False, default=str) + "\n").encode()
        fd = os.open(self.dead_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.counters.add("dead_lettered")
        log.error(
            "output_dead_letter",
            output=self.output,
            alert_id=alert.id if alert else None,
            status=status,
            reason=reason[:300],
            file=str(self.dead_path),
        )


class Dispatcher:
    """Fans alerts out to every configured output, through the spool."""

    def __init__(self, config: OutputsConfig) -> None:
        self.config = config
        self.names = [output_name(o) for o in config.outputs]
        self._counters = {n: Counters() for n in self.names}
        self._spool: Spool | None = None
        self._workers: list[Worker] = []
        self._left: dict[str, int] = dict.fromkeys(self.names, 0)  # backlog at the last close

    def start(self) -> None:
        if self._spool is not None:
            return
        spool = Spool(self.config.spool, self.names, on_drop=self._on_drop, on_block=self._on_block)
        self._spool = spool
        try:
            for name, cfg in zip(self.names, self.config.outputs, strict=True):
                dead = cfg.dead_letter or spool.dir / f"{name}.dead"
                Path(dead).parent.mkdir(parents=True, exist_ok=True)
                try:
                    sink = build_sink(cfg)
                except (OSError, ValueError, ssl.SSLError) as exc:
                    raise OutputSetupError(f"output {name!r} ({cfg.type}): {exc}") from exc
                worker = Worker(name, cfg, sink, spool, self._counters[name], Path(dead))
                self._workers.append(worker)
        except BaseException:
            spool.close()
            self._spool = None
            raise
        backlog = {n: spool.pending(n) for n in self.names}
        for worker in self._workers:
            worker.start()
        log.info("outputs_started", outputs=self.names, backlog=backlog, spool=str(spool.dir))

    def _on_block(self, names: list[str]) -> None:
        for name in names:
            self._counters[name].add("blocked")

    def _on_drop(self, name: str, count: int) -> None:
        self._counters[name].add("dropped", count)

    def emit(self, alert: Alert) -> None:
        """Persist ``alert`` for every output. Never waits for the network; waits for space
        only under the ``block`` full policy."""
        if self._spool is None:
            raise SpoolError("Dispatcher.emit before start() or after close()")
        try:
            self._spool.append(encode_alert(alert))
        except RecordTooLarge as exc:
            # Counted and logged, never raised: one absurd alert must not stop the sensor.
            log.error("alert_dropped_too_large", alert_id=alert.id, rule=alert.rule, error=str(exc))
            for counters in self._counters.values():
                counters.add("dropped")
            return
        for counters in self._counters.values():
            counters.add("spooled")

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is pending for up to ``timeout`` seconds; the rest stays spooled."""
        spool = self._spool
        if spool is None:
            return
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.draining.set()
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        for worker in self._workers:
            worker.stop_now.set()
        for worker in self._workers:
            worker.join(1.0)
        left = {n: spool.pending(n) for n in self.names}
        self._left = left
        if any(left.values()):
            log.warning("outputs_closed_with_backlog", pending=left, spool=str(spool.dir))
        spool.close()
        self._spool = None
        self._workers = []

    def metrics(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for name in self.names:
            values = self._counters[name].snapshot()
            spool = self._spool
            values["queue_depth"] = spool.pending(name) if spool is not None else self._left[name]
            out[name] = values
        return out
