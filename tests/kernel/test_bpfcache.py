"""The program cache (sentinel/kernel/bpfcache.py): a start with nothing changed loads what the
last compile produced, and the sensor it gives works as the compiled one does; an entry for
other sources is never loaded; a corrupt or untrusted entry is rebuilt, not fatal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sentinel.kernel import bpfcache
from tests.kernel.conftest import require_root

pytestmark = pytest.mark.kernel


def _sensor(cache: Path, extra: tuple[str, ...] = ()) -> tuple[object, list[bytes]]:
    from sentinel.kernel.sensor import Sensor

    got: list[bytes] = []
    s = Sensor(["openat"], ringbuf_pages=1024, cache_dir=cache, extra_cflags=extra)
    s.start(got.append)
    return s, got


def _opens_seen(sensor: object, got: list[bytes], path: Path) -> int:
    """Opens of ``path`` by a child process the sensor delivered."""
    from sentinel.events import decode

    sensor.drain()  # type: ignore[attr-defined]  # the machine's opens so far
    subprocess.run(["cat", str(path)], check=True, stdout=subprocess.DEVNULL)
    sensor.drain()  # type: ignore[attr-defined]
    assert sum(sensor.lost().values()) == 0  # type: ignore[attr-defined]
    want = str(path).encode() + b"\0"
    return sum(1 for raw in got if decode(raw).evt.name == "openat" and want in raw)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory holding the entry of one compile (made by a first start)."""
    require_root()
    d = tmp_path_factory.mktemp("seed") / "cache"
    s, _ = _sensor(d)
    try:
        assert s.cached is False  # type: ignore[attr-defined]
    finally:
        s.close()  # type: ignore[attr-defined]
    entries = list(d.glob("[0-9a-f]*.json"))
    assert len(entries) == 1
    assert entries[0].stat().st_mode & 0o777 == 0o600
    assert d.stat().st_mode & 0o777 == 0o700
    return d


def test_a_start_with_nothing_changed_loads_the_cache(cache: Path, tmp_path: Path) -> None:
    from sentinel.events import decode

    target = tmp_path / "f"
    target.write_text("x")
    s, got = _sensor(cache)
    try:
        assert s.cached is True  # type: ignore[attr-defined]
        assert s.notes == []  # type: ignore[attr-defined]
        assert _opens_seen(s, got, target) == 1  # the cached programs see a child's open
        # ... and its exec, through the cached tail calls (exec_walk, exec_emit) with the
        # executable's path walked by the kernel
        cat = str(Path(shutil.which("cat") or "/usr/bin/cat").resolve()).encode() + b"\0"
        assert any(decode(raw).evt.name == "execve" and cat in raw for raw in got)
        # ... and not the sensor's own opens (its pid is a map value, set at load)
        before = len(got)
        target.read_text()
        s.drain()  # type: ignore[attr-defined]
        assert all(str(target).encode() not in raw for raw in got[before:])
    finally:
        s.close()  # type: ignore[attr-defined]


def test_a_corrupt_entry_is_rebuilt(cache: Path, tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("x")
    (entry,) = cache.glob("[0-9a-f]*.json")
    doc = json.loads(entry.read_text())
    doc["entry"]["progs"][0]["insns"] = "AAAA" + doc["entry"]["progs"][0]["insns"][4:]
    entry.write_text(json.dumps(doc))  # the digest no longer matches
    s, got = _sensor(cache)
    try:
        assert s.cached is False  # type: ignore[attr-defined]
        assert any("corrupt" in n for n in s.notes)  # type: ignore[attr-defined]
        assert _opens_seen(s, got, target) == 1
    finally:
        s.close()  # type: ignore[attr-defined]
    s, _ = _sensor(cache)
    assert s.cached is True  # type: ignore[attr-defined]  # rebuilt by the previous start
    s.close()  # type: ignore[attr-defined]


def test_an_untrusted_or_unreadable_entry_is_a_miss(tmp_path: Path) -> None:
    d = tmp_path / "c"
    d.mkdir(mode=0o700)
    key = "ab" * 32
    entry = bpfcache.Entry(license="GPL", kern_version=0)
    cache = bpfcache.ProgramCache(d)
    cache.store(key, entry)
    assert cache.load(key) == entry and cache.notes == []
    os.chmod(d, 0o777)  # anyone could have replaced it: loading it would run their code
    assert cache.load(key) is None and "writable by others" in cache.notes[-1]
    os.chmod(d, 0o700)
    (d / f"{key}.json").write_text("{not json")
    assert cache.load(key) is None and "corrupt" in cache.notes[-1]
    assert not (d / f"{key}.json").exists()  # removed: the next compile writes it anew


def test_relink_points_map_references_at_new_fds() -> None:
    ld_map = bytes([0x18, 0x10 | 1, 0, 0]) + (7).to_bytes(4, "little") + bytes(8)  # r1 = map 7
    ld_num = bytes([0x18, 0x01, 0, 0]) + (7).to_bytes(4, "little") + bytes(8)  # r1 = 7 (number)
    exit_ = bytes([0x95]) + bytes(7)
    out = bpfcache.relink(ld_map + ld_num + exit_, {7: 42})
    assert int.from_bytes(out[4:8], "little") == 42
    assert out[16:] == ld_num + exit_  # a plain 64-bit constant is left alone
    with pytest.raises(bpfcache.CacheError):
        bpfcache.relink(ld_map, {8: 42})  # a map the entry does not define


def test_the_key_follows_text_cflags_and_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    base = bpfcache.cache_key("int x;", ["-DA=1"], [])
    assert bpfcache.cache_key("int x;", ["-DA=1"], []) == base
    assert bpfcache.cache_key("int y;", ["-DA=1"], []) != base
    assert bpfcache.cache_key("int x;", ["-DA=2"], []) != base
    assert bpfcache.cache_key("int x;", ["-DA=1"], [["a", 0, "f", "tracepoint"]]) != base
    other = {**bpfcache.kernel_identity(), "btf": "0" * 64}
    monkeypatch.setattr(bpfcache, "kernel_identity", lambda: other)
    assert bpfcache.cache_key("int x;", ["-DA=1"], []) != base
