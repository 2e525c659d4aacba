"""The bounded on-disk spool: every alert is written here before any output sees it.

Why a log with per-output cursors rather than one queue per output: an alert is written once
whatever the number of outputs, each output advances at its own pace (a dead SIEM never holds
back the others), and a restart resumes every output exactly where its last positive
acknowledgement left it.

Layout of ``dir``: ``<16 digits>.seg`` segment files, each a sequence of records
``[u32 length][u32 crc32][u64 seq][payload]`` (little endian); ``<output>.cursor`` JSON files
``{"seg": n, "off": bytes, "seq": next seq}`` replaced atomically (write + rename); ``lock``
held with ``flock`` so that two Sentinels never share a spool.

Records are written with one ``write(2)`` each, so a ``kill -9`` loses nothing that ``append``
returned for (the page cache survives the process); ``fsync: true`` also survives power loss.
A torn record at the tail (power loss mid-write) fails its CRC and is cut off on the next open.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sentinel.outputs._log import get_log
from sentinel.outputs.config import SpoolConfig

log = get_log("sentinel.outputs.spool")

HEADER = struct.Struct("<IIQ")


class SpoolError(Exception):
    """The spool cannot take or give records (in use, closed, record too large)."""


class RecordTooLarge(SpoolError):
    """One alert is larger than a spool segment: it can never be spooled."""


@dataclass(frozen=True, slots=True, order=True)
class Position:
    seg: int
    off: int
    seq: int  # sequence number of the next record at (seg, off)


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    payload: bytes
    end: Position  # the cursor value once this record is acknowledged


def _seg_name(n: int) -> str:
    return f"{n:016d}.seg"


def _scan(path: Path, start: int = 0) -> tuple[int, int, int | None]:
    """Walk valid records from ``start``: (valid end offset, record count, last seq)."""
    count, last_seq, off = 0, None, start
    with path.open("rb") as f:
        f.seek(start)
        while True:
            head = f.read(HEADER.size)
            if len(head) < HEADER.size:
                break
            length, crc, seq = HEADER.unpack(head)
            body = f.read(length)
            if len(body) < length or zlib.crc32(body) != crc:
                break
            off += HEADER.size + length
            count += 1
            last_seq = seq
    return off, count, last_seq


class Spool:
    """Append-only segmented log with named cursors. Thread-safe."""

    def __init__(
        self,
        config: SpoolConfig,
        names: list[str],
        on_drop: Callable[[str, int], None] | None = None,
        on_block: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.config = config
        self.dir = Path(config.dir)
        self.max_bytes = config.max_bytes
        self.segment_bytes = min(config.effective_segment_bytes, config.max_bytes)
        self._on_drop = on_drop or (lambda name, n: None)
        self._on_block = on_block or (lambda names: None)
        self._cond = threading.Condition()
        self._closed = False
        if not self.dir.exists():
            self.dir.mkdir(parents=True, mode=0o700)  # alerts carry command lines, paths, users
        self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolError(f"spool {self.dir} is in use by another Sentinel") from None
        self._sizes: dict[int, int] = {}
        self._first_seq: dict[int, int] = {}
        self._next_seq = 0
        self._recover()
        self._active = max(self._sizes)
        self._fd = os.open(self.dir / _seg_name(self._active), os.O_WRONLY | os.O_APPEND)
        self._cursors: dict[str, Position] = {}
        for name in names:
            self._cursors[name] = self._load_cursor(name)
            self._save_cursor(name)
        with self._cond:
            self._reclaim()

    # -- opening -------------------------------------------------------------------------------

    def _recover(self) -> None:
        segs = sorted(int(p.name[:-4]) for p in self.dir.glob("*.seg") if p.name[:-4].isdigit())
        if not segs:
            (self.dir / _seg_name(1)).touch(mode=0o600)
            segs = [1]
        for n in segs:
            path = self.dir / _seg_name(n)
            first = _first_seq(path)
            valid, _count, last = _scan(path)
            size = path.stat().st_size
            if valid < size:
                # Only the tail of a segment can be torn (power loss mid-write): cut it off.
                log.warning("spool_torn_tail", segment=path.name, cut_bytes=size - valid)
                os.truncate(path, valid)
            self._sizes[n] = valid
            if first is not None:
                self._first_seq[n] = first
            if last is not None:
                self._next_seq = max(self._next_seq, last + 1)
        for cur in self.dir.glob("*.cursor"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                self._next_seq = max(self._next_seq, int(json.loads(cur.read_text())["seq"]))

    def _end(self) -> Position:
        return Position(self._active, self._sizes[self._active], self._next_seq)

    def _load_cursor(self, name: str) -> Position:
        path = self.dir / f"{name}.cursor"
        try:
            raw = json.loads(path.read_text())
            pos = Position(int(raw["seg"]), int(raw["off"]), int(raw["seq"]))
        except FileNotFoundError:
            # A new output starts at the end: it gets the alerts emitted from now on.
            return self._end()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("spool_cursor_unreadable", output=name, error=str(exc))
            return self._oldest()
        if pos.seg not in self._sizes:
            return self._oldest() if pos.seg < min(self._sizes) else self._end()
        if pos.off > self._sizes[pos.seg]:
            return Position(pos.seg, self._sizes[pos.seg], self._next_seq)
        return pos

    def _oldest(self) -> Position:
        first = min(self._sizes)
        return Position(first, 0, self._first_seq.get(first, self._next_seq))

    def _save_cursor(self, name: str) -> None:
        pos = self._cursors[name]
        path = self.dir / f"{name}.cursor"
        tmp = path.with_suffix(".cursor.tmp")
        data = json.dumps({"seg": pos.seg, "off": pos.off, "seq": pos.seq}).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            if self.config.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    # -- writing -------------------------------------------------------------------------------

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    def append(self, payload: bytes) -> int:
        """Persist one record; returns its sequence number.

        Under ``block`` this waits for outputs to acknowledge; under ``drop_oldest`` it deletes
        the oldest segment and counts what each lagging output lost.
        """
        size = HEADER.size + len(payload)
        if size > self.segment_bytes:
            raise RecordTooLarge(
                f"alert of {size} bytes exceeds the spool segment size ({self.segment_bytes})"
            )
        with self._cond:
            warned = False
            while self.total_bytes + size > self.max_bytes:
                if self._closed:
                    raise SpoolError("spool is closed")
                if self._roll_if_consumed():
                    continue
                if self.config.full_policy == "drop_oldest":
                    self._drop_oldest()
                    continue
                if not warned:
                    # The outputs holding the oldest data are the ones making emit() wait.
                    low = min(self._cursors.values(), default=self._end())
                    holders = [n for n, c in self._cursors.items() if c.seg == low.seg]
                    log.warning(
                        "spool_full_blocking",
                        spool=str(self.dir),
                        bytes=self.total_bytes,
                        waiting_for=holders,
                    )
                    self._on_block(holders)
                    warned = True
                self._cond.wait(0.5)
            if self._closed:
                raise SpoolError("spool is closed")
            if self._sizes[self._active] + size > self.segment_bytes:
                self._roll()
            seq = self._next_seq
            rec = HEADER.pack(len(payload), zlib.crc32(payload), seq) + payload
            written = os.write(self._fd, rec)
            if written != len(rec):  # pragma: no cover - regular files write fully or raise
                raise SpoolError("short write to spool")
            if self.config.fsync:
                os.fsync(self._fd)
            if self._sizes[self._active] == 0:
                self._first_seq[self._active] = seq
            self._sizes[self._active] += len(rec)
            self._next_seq += 1
            self._cond.notify_all()
            return seq

    def _roll(self) -> None:
        os.close(self._fd)
        self._active += 1
        path = self.dir / _seg_name(self._active)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
        self._sizes[self._active] = 0

    def _roll_if_consumed(self) -> bool:
        """If every output has consumed the whole active segment, start a new one so that the
        old one can be reclaimed. Returns True if space was freed."""
        end = self._end()
        if end.off == 0 or any(c < end for c in self._cursors.values()):
            return False
        self._roll()
        for name in self._cursors:
            self._cursors[name] = self._end()
            self._save_cursor(name)
        with self._cond:
            self._reclaim()
        return True

    def _drop_oldest(self) -> None:
        oldest = min(self._sizes)
        if oldest == self._active:
            self._roll()
        nxt = min(n for n in self._sizes if n > oldest)
        path = self.dir / _seg_name(oldest)
        new_pos = Position(nxt, 0, self._first_seq.get(nxt, self._next_seq))
        for name, cur in self._cursors.items():
            if cur.seg == oldest:
                _, lost, _ = _scan(path, cur.off)
                if lost:
                    log.error("spool_full_dropped", output=name, alerts=lost, segment=oldest)
                    self._on_drop(name, lost)
                self._cursors[name] = new_pos
                self._save_cursor(name)
        path.unlink()
        del self._sizes[oldest]
        self._first_seq.pop(oldest, None)

    def _reclaim(self) -> None:
        """Delete segments every output has gone past."""
        low = min((c.seg for c in self._cursors.values()), default=self._active)
        for n in sorted(self._sizes):
            if n >= low or n == self._active:
                break
            (self.dir / _seg_name(n)).unlink(missing_ok=True)
            del self._sizes[n]
            self._first_seq.pop(n, None)
        self._cond.notify_all()

    # -- reading -------------------------------------------------------------------------------

    def pending(self, name: str) -> int:
        with self._cond:
            return self._next_seq - self._cursors[name].seq

    def read(
        self,
        name: str,
        max_count: int,
        max_bytes: int,
        wait: float,
        linger: float = 0.0,
        stop: threading.Event | None = None,
    ) -> list[Record]:
        """Records after ``name``'s cursor (not consuming them: see ``ack``).

        Waits up to ``wait`` for the first record, then up to ``linger`` more for the batch to
        fill to ``max_count``.
        """
        deadline = time.monotonic() + wait
        with self._cond:
            if self._closed:
                raise SpoolError("spool is closed")
            while self._cursors[name] >= self._end() and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0 or (stop is not None and stop.is_set()):
                    return []
                self._cond.wait(min(left, 0.2))
            if linger > 0:
                until = time.monotonic() + linger
                while (
                    self._next_seq - self._cursors[name].seq < max_count
                    and not self._closed
                    and not (stop is not None and stop.is_set())
                ):
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(min(left, 0.2))
            if self._closed:
                raise SpoolError("spool is closed")
            pos = self._cursors[name]
            plan: list[tuple[int, int, int, int]] = []  # seg, fd, from, to
            segs = sorted(n for n in self._sizes if n >= pos.seg)
            for n in segs:
                start = pos.off if n == pos.seg else 0
                if self._sizes[n] > start:
                    fd = os.open(self.dir / _seg_name(n), os.O_RDONLY)
                    plan.append((n, fd, start, self._sizes[n]))
                if sum(p[3] - p[2] for p in plan) >= max_bytes:
                    break
        # The reads happen outside the lock so emit() never waits for them; an fd keeps a
        # segment readable even if drop_oldest unlinks it meanwhile.
        records: list[Record] = []
        used = 0
        try:
            for n, fd, start, stop_at in plan:
                if len(records) >= max_count or (records and used >= max_bytes):
                    break
                data = os.pread(fd, min(stop_at - start, max(max_bytes - used, 0) + 65536), start)
                off = 0
                while off + HEADER.size <= len(data) and len(records) < max_count:
                    length, _crc, seq = HEADER.unpack_from(data, off)
                    end = off + HEADER.size + length
                    if end > len(data):
                        if not records and off == 0:  # one record bigger than the read window
                            data = os.pread(fd, HEADER.size + length, start)
                            end = HEADER.size + length
                        else:
                            break
                    if records and used + length > max_bytes:
                        break
                    records.append(
                        Record(
                            seq,
                            bytes(data[off + HEADER.size : end]),
                            Position(n, start + end, seq + 1),
                        )
                    )
                    used += length
                    off = end
                if start + off < stop_at:
                    break  # stopped inside this segment: do not skip ahead to the next one
        finally:
            for _n, fd, _s, _e in plan:
                os.close(fd)
        # A record ending exactly at a segment's end: the next read starts at the next segment.
        return records

    def ack(self, name: str, pos: Position) -> None:
        """Advance ``name``'s cursor to ``pos`` (never backwards) and reclaim space."""
        with self._cond:
            cur = self._cursors[name]
            if (pos.seg, pos.off) <= (cur.seg, cur.off):
                return
            if (
                pos.seg in self._sizes
                and pos.off >= self._sizes[pos.seg]
                and pos.seg != self._active
            ):
                later = [n for n in self._sizes if n > pos.seg]
                pos = Position(min(later), 0, pos.seq)
            self._cursors[name] = pos
            self._save_cursor(name)
            self._reclaim()

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            os.close(self._fd)
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)


def _first_seq(path: Path) -> int | None:
    with path.open("rb") as f:
        head = f.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    return int(HEADER.unpack(head)[2])
