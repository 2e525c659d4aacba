"""Pinned program sets (sentinel/kernel/pins.py): a restart with nothing changed reuses the
programs and maps the previous start pinned in bpffs, and the reused set behaves like a fresh
load: no state of the previous run survives (planted entries, counters, ring leftovers),
events flow and alert; a set that is not exactly this start's is unpinned and loaded fresh;
two sensors never share one set; without bpffs, with pins off or the cache off, nothing is
pinned and nothing fails. All on the real kernel, with real programs."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sentinel.kernel import bpfcache, pins
from sentinel.kernel.loader import (
    BPF_MAP_LOOKUP_ELEM,
    BPF_MAP_UPDATE_ELEM,
    bpf_map_op,
    map_info,
    possible_cpus,
)
from tests.kernel.conftest import require_root
from tests.kernel.test_bpfcache import _opens_seen
from tests.live import sentinel_run

pytestmark = pytest.mark.kernel

NO_PID = 0x7FFFFFF0  # a tgid no process has (pid_max is at most 2^22)


def _sensor(cache: Path, root: Path | None) -> tuple[object, list[bytes]]:
    from sentinel.kernel.sensor import Sensor

    got: list[bytes] = []
    s = Sensor(["openat"], ringbuf_pages=1024, cache_dir=cache, pin_root=root)
    s.start(got.append)
    return s, got


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory holding one compile's entry (a first start, which pins nothing)."""
    require_root()
    d = tmp_path_factory.mktemp("pinseed") / "cache"
    s, _ = _sensor(d, None)
    s.close()  # type: ignore[attr-defined]
    return d


@pytest.fixture
def root() -> Iterator[Path]:
    """A pin root of the test's own on bpffs (never the operator's /sys/fs/bpf/sentinel)."""
    require_root()
    subprocess.run(["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"], check=False, capture_output=True)
    r = Path("/sys/fs/bpf") / f"sentinel-test-{uuid.uuid4().hex[:8]}"
    yield r
    shutil.rmtree(r, ignore_errors=True)


def _key(cache: Path) -> str:
    (entry,) = cache.glob("[0-9a-f]*.json")
    return entry.stem


def _pinned_map(root: Path, cache: Path, name: str) -> int:
    return pins.obj_get(root / _key(cache) / f"m_{name}")


def _u32(fd: int, key: int) -> int:
    value = ctypes.c_uint32()
    assert bpf_map_op(BPF_MAP_LOOKUP_ELEM, fd, ctypes.c_uint32(key), value) == 0
    return int(value.value)


def test_a_restart_reuses_the_set_and_keeps_no_state(
    cache: Path, root: Path, tmp_path: Path
) -> None:
    from sentinel.events import EVENT_TYPES
    from sentinel.events.common import COUNTERS

    target = tmp_path / "f"
    target.write_text("x")
    s, got = _sensor(cache, root)  # loads from the cache (verifier) and pins
    try:
        assert (s.cached, s.reused) == (True, False)  # type: ignore[attr-defined]
        assert s.notes == []  # type: ignore[attr-defined]
        assert sorted(os.listdir(root)) == [_key(cache)]
        # the run's state: records left in the ring, counters, a comm entry, exec options
        marker = tmp_path / "left-in-the-ring"
        marker.write_text("x")
        subprocess.run(["cat", str(marker)], check=True, stdout=subprocess.DEVNULL)
        events = s.map_fd("events")  # type: ignore[attr-defined]
        ring_id = map_info(events)["id"]
        ncpus = possible_cpus()
        openat = next(t for t in EVENT_TYPES if t.name == "openat")
        lost = (ctypes.c_uint64 * ncpus)(*([10**9] * ncpus))
        counts = s.map_fd("counts")  # type: ignore[attr-defined]
        slot = openat.code * len(COUNTERS) + COUNTERS.index("lost")
        assert bpf_map_op(BPF_MAP_UPDATE_ELEM, counts, ctypes.c_uint32(slot), lost) == 0
        assert s.lost()["openat"] == 10**9 * ncpus  # type: ignore[attr-defined]
        comm = _pinned_map(root, cache, "exec_comm")
        planted = ctypes.create_string_buffer(b"planted", 16)
        assert bpf_map_op(BPF_MAP_UPDATE_ELEM, comm, ctypes.c_uint32(NO_PID), planted) == 0
        s.copy_env(False)  # type: ignore[attr-defined]
        assert _u32(s.map_fd("exec_opts"), 0) != 0  # type: ignore[attr-defined]
    finally:
        s.close()  # type: ignore[attr-defined]
    assert sorted(os.listdir(root)) == [_key(cache)]  # the set outlives the run

    s, got = _sensor(cache, root)
    try:
        assert (s.cached, s.reused) == (True, True)  # type: ignore[attr-defined]
        assert s.notes == []  # type: ignore[attr-defined]
        assert map_info(s.map_fd("events"))["id"] == ring_id  # type: ignore[attr-defined]
        s.drain()  # type: ignore[attr-defined]
        assert not any(str(marker).encode() in raw for raw in got)  # ring leftovers skipped
        assert s.lost()["openat"] == 0  # type: ignore[attr-defined]  # counters from zero
        value = ctypes.create_string_buffer(16)
        assert bpf_map_op(BPF_MAP_LOOKUP_ELEM, comm, ctypes.c_uint32(NO_PID), value) == 2
        assert _u32(s.map_fd("exec_opts"), 0) == 0  # type: ignore[attr-defined]
        assert _u32(_pinned_map(root, cache, "self_tgid"), 0) == os.getpid()
        # events flow through the reused programs, tail calls included (exec_walk/emit)
        assert _opens_seen(s, got, target) == 1
        from sentinel.events import decode

        cat = str(Path(shutil.which("cat") or "/usr/bin/cat").resolve()).encode() + b"\0"
        assert any(decode(raw).evt.name == "execve" and cat in raw for raw in got)
    finally:
        s.close()  # type: ignore[attr-defined]
        os.close(comm)


def test_a_second_sensor_never_shares_the_set(cache: Path, root: Path) -> None:
    first, _ = _sensor(cache, root)
    try:
        second, _ = _sensor(cache, root)  # while the first holds the set's lock
        try:
            assert second.reused is False  # type: ignore[attr-defined]
            assert any("another Sentinel" in n for n in second.notes)  # type: ignore[attr-defined]
            ring = [map_info(x.map_fd("events"))["id"] for x in (first, second)]  # type: ignore[attr-defined]
            assert ring[0] != ring[1]
        finally:
            second.close()  # type: ignore[attr-defined]
    finally:
        first.close()  # type: ignore[attr-defined]
    third, _ = _sensor(cache, root)  # the lock went with the first
    assert third.reused is True  # type: ignore[attr-defined]
    third.close()  # type: ignore[attr-defined]


def test_a_set_that_is_not_this_starts_is_unpinned_and_loaded_fresh(
    cache: Path, root: Path, tmp_path: Path
) -> None:
    s, _ = _sensor(cache, root)
    s.close()  # type: ignore[attr-defined]
    d = root / _key(cache)
    entry = bpfcache.ProgramCache(cache).load(_key(cache))
    assert entry is not None
    a, b = sorted(f"p_{p.name}" for p in entry.progs)[:2]
    # another program in one program's place (same type, other code): its tag differs
    fd = pins.obj_get(d / b)
    os.unlink(d / a)
    pins.obj_pin(fd, d / a)
    os.close(fd)
    target = tmp_path / "f"
    target.write_text("x")
    s, got = _sensor(cache, root)
    try:
        assert s.reused is False  # type: ignore[attr-defined]
        assert any("not reused" in n and "tag" in n for n in s.notes)  # type: ignore[attr-defined]
        assert _opens_seen(s, got, target) == 1
    finally:
        s.close()  # type: ignore[attr-defined]
    s, _ = _sensor(cache, root)  # re-pinned by the fresh load
    assert s.reused is True  # type: ignore[attr-defined]
    s.close()  # type: ignore[attr-defined]
    os.unlink(d / a)  # an incomplete set (as a crash while pinning leaves)
    s, _ = _sensor(cache, root)
    assert s.reused is False  # type: ignore[attr-defined]
    assert any("incomplete" in n for n in s.notes)  # type: ignore[attr-defined]
    s.close()  # type: ignore[attr-defined]


def test_a_set_writable_by_others_is_not_used(cache: Path, root: Path) -> None:
    s, _ = _sensor(cache, root)
    s.close()  # type: ignore[attr-defined]
    os.chmod(root / _key(cache), 0o777)
    s, _ = _sensor(cache, root)
    try:
        assert (s.cached, s.reused) == (True, False)  # type: ignore[attr-defined]
        assert any("writable by others" in n for n in s.notes)  # type: ignore[attr-defined]
    finally:
        s.close()  # type: ignore[attr-defined]


def test_no_pins_without_bpffs_with_pins_off_or_the_cache_off(
    cache: Path, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, _ = _sensor(cache, tmp_path / "not-bpffs")  # a plain directory: a note, a normal load
    try:
        assert (s.cached, s.reused) == (True, False)  # type: ignore[attr-defined]
        assert any("not bpffs" in n for n in s.notes)  # type: ignore[attr-defined]
    finally:
        s.close()  # type: ignore[attr-defined]
    assert not (tmp_path / "not-bpffs").exists()
    monkeypatch.setenv(pins.ENV, "")
    assert pins.default_root() is None
    monkeypatch.setenv(pins.ENV, str(root))
    assert pins.default_root() == root
    from sentinel.kernel.sensor import Sensor

    monkeypatch.setenv(bpfcache.ENV, "")  # the cache off: compiled, nothing pinned
    s = Sensor(["openat"], ringbuf_pages=1024)
    s.start(lambda _raw: None)
    try:
        assert (s.cached, s.reused) == (False, False)
    finally:
        s.close()
    assert not root.exists()


def test_only_the_newest_set_is_kept_and_unpin_drops_idle_sets(root: Path) -> None:
    old, held, new = (root / (c * 64) for c in "abc")
    for d in (old, held, new):
        d.mkdir(parents=True, mode=0o700)
    lock = pins.PinSet(root, "b" * 64)
    assert lock.acquire()  # a running Sentinel's set
    try:
        assert pins.prune(root, keep=new.name) == [old.name]
        assert sorted(os.listdir(root)) == [held.name, new.name]
        assert pins.unpin_all(root) == ([new.name], [held.name])
    finally:
        lock.release()
    assert pins.unpin_all(root) == ([held.name], [])


RULE = """
- rule: Pinned Write
  desc: a write-open under this test's directory
  condition: evt.type in (open, openat, openat2) and evt.is_open_write = true
    and fd.name startswith "{workdir}/"
  output: write %fd.name by %proc.name
  priority: Error
"""


def _run_once(rules: Path, env: dict[str, str], target: Path) -> tuple[dict[str, Any], str]:
    """``sentinel run`` until armed, one write-open of ``target``, stop: (armed line, the
    outputs of the alerts naming ``target``)."""
    with sentinel_run("--rules", str(rules), env=env) as run:
        subprocess.run([sys.executable, "-c", f"open({str(target)!r}, 'w').close()"], check=True)
        hits = run.wait(lambda a: str(target) in a.get("output", ""))
        rec = run.log("armed")
    assert rec is not None
    return rec, "\n".join(a["output"] for a in hits)


def test_sentinel_run_alerts_after_a_reuse(tmp_path: Path, root: Path) -> None:
    """The whole run: the prefilter's plan is written into reused maps and the rule alerts."""
    require_root()
    workdir = tmp_path / "work"
    workdir.mkdir()
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULE.format(workdir=workdir))
    env = {
        **os.environ,
        bpfcache.ENV: str(tmp_path / "c"),
        pins.ENV: str(root),
    }  # sentinel_run adds sentinel_env
    seen = []
    for i in range(3):  # compile; load from the cache and pin; reuse
        rec, out = _run_once(rules, env, workdir / f"w{i}")
        seen.append((rec.get("bpf_cached"), rec.get("bpf_reused")))
        assert f"{workdir}/w{i}" in out, (i, out)
    assert seen == [(False, False), (True, False), (True, True)]
