"""The prefilter inside the real sensor, with the upstream Falco stable rules loaded.

An open storm on a path no rule mentions must reach user space as ~0 events (the kernel's
counters show them dropped), while every open of a watched path arrives; the same for paths
relative to the cwd (judged on the kernel's walk of it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from sentinel.compiler import compile_rules
from sentinel.engine import Engine
from sentinel.events import decode
from sentinel.events.file import FAMILY, kernel_path, raw_path
from sentinel.loader import load_rules
from tests.helpers import CORPUS

pytestmark = pytest.mark.kernel

if os.geteuid() != 0:
    pytest.skip("loading BPF programs needs root (CI runs as root)", allow_module_level=True)

STORM = 20_000


@pytest.fixture(scope="module")
def sensor() -> Iterator[tuple[object, object, list[bytes]]]:
    from sentinel.app.sensor import FilteredSensor

    engine = Engine(compile_rules(load_rules([CORPUS / "falco_rules.yaml"])))
    got: list[bytes] = []
    s = FilteredSensor([(r.name, r.expr) for r in engine.rules], event_types=engine.event_types())
    s.start(got.append)
    try:
        yield s, s.prefilter, got
    finally:
        s.close()


def _file_records(got: list[bytes], pid: int) -> list:  # type: ignore[type-arg]
    recs = [decode(r) for r in got]
    return [r for r in recs if r.pid == pid and r.evt.family is FAMILY]


def _opens_in_child(path: str, n: int, flags: int = os.O_RDONLY, cwd: str | None = None) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            if cwd is not None:
                os.chdir(cwd)  # then a relative path is judged on the walked cwd
            for _ in range(n):
                with contextlib.suppress(OSError):
                    os.close(os.open(path, flags, 0o600))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_storm_on_unmentioned_path_is_dropped_in_the_kernel(sensor: tuple) -> None:  # type: ignore[type-arg]
    s, pf, got = sensor
    s.drain()  # type: ignore[attr-defined]
    got.clear()
    before = pf.stats()["openat"]["dropped"]  # type: ignore[attr-defined]
    pid = _opens_in_child("/usr/lib/os-release", STORM)
    s.drain()  # type: ignore[attr-defined]
    mine = _file_records(got, pid)
    dropped = pf.stats()["openat"]["dropped"] - before  # type: ignore[attr-defined]
    assert len(mine) == 0
    assert dropped >= STORM


def test_opens_of_a_watched_path_all_arrive(sensor: tuple) -> None:  # type: ignore[type-arg]
    # falco_rules.yaml's "Read sensitive file untrusted" watches reads of /etc/shadow
    s, _pf, got = sensor
    s.drain()  # type: ignore[attr-defined]
    got.clear()
    pid = _opens_in_child("/etc/shadow", 200, os.O_RDONLY)
    s.drain()  # type: ignore[attr-defined]
    mine = _file_records(got, pid)
    assert len(mine) == 200


def test_relative_storm_on_unmentioned_path_is_dropped_in_the_kernel(sensor: tuple) -> None:  # type: ignore[type-arg]
    s, pf, got = sensor
    s.drain()  # type: ignore[attr-defined]
    got.clear()
    before = pf.stats()["openat"]["dropped"]  # type: ignore[attr-defined]
    pid = _opens_in_child("os-release", STORM, cwd="/usr/lib")
    s.drain()  # type: ignore[attr-defined]
    mine = _file_records(got, pid)
    dropped = pf.stats()["openat"]["dropped"] - before  # type: ignore[attr-defined]
    assert len(mine) == 0
    assert dropped >= STORM


def test_relative_opens_of_a_watched_path_all_arrive(sensor: tuple) -> None:  # type: ignore[type-arg]
    s, _pf, got = sensor
    s.drain()  # type: ignore[attr-defined]
    got.clear()
    pid = _opens_in_child("shadow", 200, os.O_RDONLY, cwd="/etc")
    s.drain()  # type: ignore[attr-defined]
    mine = _file_records(got, pid)
    # a successful open carries the file the kernel installed, not the base it started from
    assert [(kernel_path(r), raw_path(r)) for r in mine] == [("/etc/shadow", "shadow")] * 200
