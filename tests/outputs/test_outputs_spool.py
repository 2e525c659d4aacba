"""The on-disk spool: cursors, restart, torn tails, full policies, space reclaim."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from sentinel.outputs.config import SpoolConfig
from sentinel.outputs.spool import HEADER, Spool, SpoolError


def _cfg(tmp_path: Path, **over: object) -> SpoolConfig:
    return SpoolConfig.model_validate({"dir": str(tmp_path / "sp"), **over})


def _drain(spool: Spool, name: str, n: int = 10_000) -> list[bytes]:
    recs = spool.read(name, n, 1 << 30, wait=0)
    if recs:
        spool.ack(name, recs[-1].end)
    return [r.payload for r in recs]


def _segs(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "sp").glob("*.seg"))


def test_cursors_are_independent(tmp_path: Path) -> None:
    sp = Spool(_cfg(tmp_path), ["a", "b"])
    for i in range(5):
        assert sp.append(f"r{i}".encode()) == i
    assert _drain(sp, "a") == [f"r{i}".encode() for i in range(5)]
    assert sp.pending("a") == 0 and sp.pending("b") == 5
    recs = sp.read("b", 2, 1 << 20, wait=0)
    assert [r.payload for r in recs] == [b"r0", b"r1"]
    # Reading is not consuming: without ack the same records come again.
    assert [r.payload for r in sp.read("b", 2, 1 << 20, wait=0)] == [b"r0", b"r1"]
    sp.ack("b", recs[-1].end)
    assert _drain(sp, "b") == [b"r2", b"r3", b"r4"]
    sp.close()


def test_restart_resumes_from_cursor(tmp_path: Path) -> None:
    sp = Spool(_cfg(tmp_path), ["a"])
    for i in range(6):
        sp.append(f"r{i}".encode())
    recs = sp.read("a", 4, 1 << 20, wait=0)
    sp.ack("a", recs[1].end)  # acknowledged r0, r1 only
    sp.close()
    sp2 = Spool(_cfg(tmp_path), ["a", "new"])
    assert sp2.pending("a") == 4 and sp2.pending("new") == 0  # new outputs start at the end
    assert sp2.append(b"r6") == 6  # sequence numbers continue
    assert _drain(sp2, "a") == [b"r2", b"r3", b"r4", b"r5", b"r6"]
    assert _drain(sp2, "new") == [b"r6"]
    sp2.close()


def test_second_process_cannot_share_a_spool(tmp_path: Path) -> None:
    sp = Spool(_cfg(tmp_path), ["a"])
    with pytest.raises(SpoolError, match="in use"):
        Spool(_cfg(tmp_path), ["a"])
    sp.close()
    Spool(_cfg(tmp_path), ["a"]).close()


def test_torn_tail_is_cut_and_earlier_records_kept(tmp_path: Path) -> None:
    sp = Spool(_cfg(tmp_path), ["a"])
    for i in range(3):
        sp.append(f"record-{i}".encode())
    sp.close()
    seg = tmp_path / "sp" / _segs(tmp_path)[-1]
    size = seg.stat().st_size
    with seg.open("ab") as f:  # a record whose write was cut short by a power loss
        f.write(HEADER.pack(100, 0, 3) + b"partial")
    sp2 = Spool(_cfg(tmp_path), ["a"])
    assert seg.stat().st_size == size
    sp2.append(b"after")
    assert _drain(sp2, "a") == [b"record-0", b"record-1", b"record-2", b"after"]
    sp2.close()


def test_corrupt_record_is_not_delivered(tmp_path: Path) -> None:
    sp = Spool(_cfg(tmp_path), ["a"])
    sp.append(b"good")
    sp.append(b"flipped")
    sp.close()
    seg = tmp_path / "sp" / _segs(tmp_path)[-1]
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF
    seg.write_bytes(bytes(data))
    sp2 = Spool(_cfg(tmp_path), ["a"])
    assert _drain(sp2, "a") == [b"good"]
    sp2.close()


def test_segments_roll_and_are_reclaimed(tmp_path: Path) -> None:
    sp = Spool(_cfg(tmp_path, max_bytes=65536, segment_bytes=4096), ["a", "b"])
    payload = b"x" * 1000
    for _ in range(20):
        sp.append(payload)
    assert len(_segs(tmp_path)) == 5  # 4 records of 1016 bytes per 4096-byte segment
    _drain(sp, "a")
    assert len(_segs(tmp_path)) == 5  # b still needs them
    assert len(_drain(sp, "b")) == 20
    assert len(_segs(tmp_path)) == 1  # only the active segment is left
    sp.close()


def test_drop_oldest_counts_what_each_output_lost(tmp_path: Path) -> None:
    dropped: dict[str, int] = {}

    def on_drop(name: str, n: int) -> None:
        dropped[name] = dropped.get(name, 0) + n

    cfg = _cfg(tmp_path, max_bytes=65536, segment_bytes=4096, full_policy="drop_oldest")
    sp = Spool(cfg, ["fast", "slow"], on_drop=on_drop)
    payload = b"y" * 1000
    for i in range(64):  # 64 records = 16 segments = the whole budget
        sp.append(payload)
        if i % 4 == 3:
            _drain(sp, "fast")
    seq = sp.append(payload)  # no room: the oldest segment goes
    assert seq == 64
    assert dropped == {"slow": 4}  # 'fast' had consumed it already: it lost nothing
    assert sp.total_bytes <= 65536
    got = sp.read("slow", 1, 1 << 20, wait=0)
    assert got[0].seq == 4  # 'slow' continues with the oldest record still there
    assert sp.pending("slow") == 61 and sp.pending("fast") == 1
    sp.close()


def test_block_policy_waits_for_space(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, max_bytes=65536, segment_bytes=4096, full_policy="block")
    sp = Spool(cfg, ["a"])
    payload = b"z" * 1000
    for _ in range(64):
        sp.append(payload)
    done = threading.Event()

    def writer() -> None:
        sp.append(payload)
        done.set()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    assert not done.wait(0.5)  # full, and nothing acknowledged: the writer waits
    recs = sp.read("a", 4, 1 << 20, wait=0)
    sp.ack("a", recs[-1].end)  # frees the first segment
    assert done.wait(5)
    assert sp.pending("a") == 61
    sp.close()


def test_block_policy_when_all_consumed_rolls_active_segment(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, max_bytes=65536, segment_bytes=65536, full_policy="block")
    sp = Spool(cfg, ["a"])
    for _ in range(64):  # 64 * 1016 bytes: the next one does not fit
        sp.append(b"w" * 1000)
    _drain(sp, "a")
    done = threading.Event()

    def writer() -> None:
        for _ in range(10):  # no output lags, so the full active segment can go
            sp.append(b"w" * 1000)
        done.set()

    threading.Thread(target=writer, daemon=True).start()
    assert done.wait(5)
    assert len(_drain(sp, "a")) == 10
    assert len(_segs(tmp_path)) == 1
    sp.close()


def test_read_waits_for_data(tmp_path: Path) -> None:
    sp = Spool(_cfg(tmp_path), ["a"])
    threading.Timer(0.2, lambda: sp.append(b"late")).start()
    recs = sp.read("a", 10, 1 << 20, wait=5)
    assert [r.payload for r in recs] == [b"late"]
    sp.close()


def test_oversized_record_is_refused_with_an_error(tmp_path: Path) -> None:
    sp = Spool(_cfg(tmp_path, max_bytes=65536, segment_bytes=4096), ["a"])
    with pytest.raises(SpoolError, match="exceeds"):
        sp.append(b"q" * 5000)
    sp.close()


def test_cursor_file_is_replaced_atomically(tmp_path: Path) -> None:
    sp = Spool(_cfg(tmp_path), ["a"])
    sp.append(b"1")
    _drain(sp, "a")
    sp.close()
    names = sorted(os.listdir(tmp_path / "sp"))
    assert "a.cursor" in names and not any(n.endswith(".tmp") for n in names)
