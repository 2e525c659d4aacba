"""Relative open paths judged in the kernel, in the real sensor, against the Python model.

The kernel composes "/" + the walked base (cwd or dirfd) + "/" + the relative path, as user
space builds ``fd.name``, and judges the path dimensions on it; any doubt keeps the event. A
child process (the sensor ignores its own process) makes real relative opens: cwd- and
dirfd-relative, "./x", "sub/..", ".." and "." (the base's parent, the base), a trailing "/",
a hidden name, bases at "/", across a mount
(procfs), a bad dirfd, a base deeper than the walk, a composed path too long to judge. For each,
the model (:func:`sentinel.prefilter.tables.passes` given the base) says whether it reaches
user space; the test checks exactly those arrive, each with the right absolute ``fd.name``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sentinel.compiler import compile_rules
from sentinel.engine import Engine
from sentinel.enrichment.live import Enricher
from sentinel.events import decode
from sentinel.events.file import FAMILY, normalize, raw_path
from sentinel.loader import load_rules
from sentinel.prefilter.model import KernelView, passes
from sentinel.prefilter.tables import KernelTables

pytestmark = pytest.mark.kernel

if os.geteuid() != 0:
    pytest.skip("loading BPF programs needs root (CI runs as root)", allow_module_level=True)

ROOT = "/tmp/sntl-rel"
COMM = "sntl-rel"
OPEN_TYPES = "(open, openat, openat2)"
RULES = [
    f"evt.type in {OPEN_TYPES} and fd.name startswith {ROOT}/watched/",
    f"evt.type in {OPEN_TYPES} and fd.name = {ROOT}/plain/exact.conf",
    f"evt.type in {OPEN_TYPES} and fd.name endswith .pem",
    f"evt.type in {OPEN_TYPES} and fd.name in (/etc/hostname)",
    f"evt.type in {OPEN_TYPES} and fd.name startswith /proc/sys/kernel/",
    f"evt.type in {OPEN_TYPES} and fd.num = -1 and fd.name startswith {ROOT}/fails/",
    f"evt.type in {OPEN_TYPES} and fd.name in ({ROOT}/dotted, /) and proc.name = {COMM}",
]
DEEP = 20  # directory levels: deeper than the kernel's 16-step walk
LONG = "l" * 45  # a 203-byte base: + "/short.pem" fits in 255 bytes, + "/" + LONG_NAME does not
LONG_NAME = "n" * 56 + ".txt"  # unwatched: kept only because it cannot be judged

AT_FDCWD = -100


@pytest.fixture(scope="module")
def sensor() -> Iterator[tuple[Any, Any, KernelTables, list[bytes]]]:
    from sentinel.app.sensor import FilteredSensor

    rules = Path("/tmp/sntl-rel-rules.yaml")
    rules.write_text(
        yaml.safe_dump(
            [
                {"rule": f"R{i}", "desc": "d", "condition": c, "output": "o", "priority": "INFO"}
                for i, c in enumerate(RULES)
            ]
        )
    )
    engine = Engine(compile_rules(load_rules([rules])))
    got: list[bytes] = []
    s = FilteredSensor([(r.name, r.expr) for r in engine.rules], event_types=engine.event_types())
    tables = s.tables
    assert not tables.types["openat"].pass_all
    s.start(got.append)
    pf = s.prefilter
    _make_tree()
    try:
        yield s, pf, tables, got
    finally:
        s.close()


def _deep_dir() -> str:
    return ROOT + "/plain" + "/d" * DEEP


def _long_dir() -> str:
    return ROOT + "/plain/" + "/".join([LONG] * 4)


def _make_tree() -> None:
    for d in ("watched", "plain", "fails", "plain/sub", "dotted/in"):
        os.makedirs(f"{ROOT}/{d}", exist_ok=True)
    os.makedirs(_deep_dir(), exist_ok=True)
    os.makedirs(_long_dir(), exist_ok=True)
    names = [f"w{i}.txt" for i in range(4)]
    for n in names:
        Path(f"{ROOT}/watched/{n}").write_text("x")
    for n in [f"a{i}.txt" for i in range(8)] + ["exact.conf", "k.pem", ".hidden.pem"]:
        Path(f"{ROOT}/plain/{n}").write_text("x")
    Path(f"{ROOT}/plain/sub/s0.txt").write_text("x")
    Path(f"{_deep_dir()}/deep.pem").write_text("x")
    Path(f"{_long_dir()}/{LONG_NAME}").write_text("x")
    Path(f"{_long_dir()}/short.pem").write_text("x")


# (base directory: a cwd "cwd:<dir>" or a dirfd "fd:<dir>" or "fd:bad", relative path, flags)
CASES: list[tuple[str, str, int]] = [
    (f"cwd:{ROOT}/plain", "a0.txt", os.O_RDONLY),  # unwatched: dropped
    (f"cwd:{ROOT}/plain", "exact.conf", os.O_RDONLY),  # exact
    (f"cwd:{ROOT}/plain", "k.pem", os.O_RDONLY),  # suffix
    (f"cwd:{ROOT}/plain", "sub/s0.txt", os.O_RDONLY),  # two components, unwatched
    (f"cwd:{ROOT}/plain", "./a1.txt", os.O_RDONLY),  # not canonical: kept
    (f"cwd:{ROOT}/plain", "../watched/w0.txt", os.O_RDONLY),  # not canonical: kept
    (f"cwd:{ROOT}/plain", "..", os.O_RDONLY | os.O_DIRECTORY),  # the base's parent: dropped
    (f"cwd:{ROOT}/plain", ".", os.O_RDONLY | os.O_DIRECTORY),  # the base: dropped
    (f"cwd:{ROOT}/dotted/in", "..", os.O_RDONLY | os.O_DIRECTORY),  # the parent: watched
    (f"cwd:{ROOT}/dotted", ".", os.O_RDONLY | os.O_DIRECTORY),  # the base: watched
    (f"fd:{ROOT}/dotted/in", "..", os.O_RDONLY | os.O_DIRECTORY),  # dirfd's parent: watched
    ("cwd:/", ".", os.O_RDONLY | os.O_DIRECTORY),  # "/": watched
    ("cwd:/", "..", os.O_RDONLY | os.O_DIRECTORY),  # "/..": "/", watched
    ("cwd:/tmp", "..", os.O_RDONLY | os.O_DIRECTORY),  # "/": watched
    ("fd:/proc/sys", "..", os.O_RDONLY | os.O_DIRECTORY),  # "/proc", across the mount: dropped
    ("fd:/proc", "..", os.O_RDONLY | os.O_DIRECTORY),  # "/" (a mount's root): watched
    (f"cwd:{ROOT}/plain", "./.", os.O_RDONLY | os.O_DIRECTORY),  # not canonical: kept
    (f"cwd:{ROOT}/plain", "sub/..", os.O_RDONLY | os.O_DIRECTORY),  # not canonical: kept
    (f"cwd:{ROOT}/plain", "sub/", os.O_RDONLY | os.O_DIRECTORY),  # trailing slash: kept
    (f"cwd:{ROOT}/plain", ".hidden.pem", os.O_RDONLY),  # hidden name: ordinary, dropped
    (f"cwd:{ROOT}", "plain/.hidden.pem", os.O_RDONLY),  # hidden name deeper: dropped
    (f"cwd:{ROOT}/plain", "missing.txt", os.O_RDONLY),  # failed, unwatched: dropped
    (f"cwd:{ROOT}", "watched/w1.txt", os.O_RDONLY),  # prefix
    (f"cwd:{ROOT}", "plain/a2.txt", os.O_RDONLY),  # dropped
    (f"cwd:{ROOT}", "fails/nothere", os.O_RDONLY),  # failed open under fails/: kept
    (f"cwd:{ROOT}", "fails/../plain/a3.txt", os.O_RDONLY),  # not canonical: kept
    (f"fd:{ROOT}/watched", "w2.txt", os.O_RDONLY),  # dirfd, prefix
    (f"fd:{ROOT}/plain", "a4.txt", os.O_RDONLY),  # dirfd, dropped
    (f"fd:{ROOT}/plain", "exact.conf", os.O_RDONLY),  # dirfd, exact
    (f"fd:{ROOT}/plain", "a5.txt", os.O_WRONLY),  # dirfd, write, dropped
    ("cwd:/", "etc/hostname", os.O_RDONLY),  # base "/": "/etc/hostname"
    ("cwd:/", "usr/lib/os-release", os.O_RDONLY),  # base "/": dropped
    ("fd:/", "etc/hostname", os.O_RDONLY),
    ("fd:/", "etc/os-release", os.O_RDONLY),  # dropped
    ("fd:/proc/sys", "kernel/hostname", os.O_RDONLY),  # walk crosses the procfs mount
    ("fd:/proc/sys", "vm/swappiness", os.O_RDONLY),  # dropped
    ("fd:bad", "a6.txt", os.O_RDONLY),  # bad dirfd: no base, kept
    (f"cwd:{_deep_dir()}", "deep.pem", os.O_RDONLY),  # walk truncated: kept (watched anyway)
    (f"cwd:{_deep_dir()}", "nothing.txt", os.O_RDONLY),  # walk truncated: kept
    (f"cwd:{_long_dir()}", LONG_NAME, os.O_RDONLY),  # composed > 255 bytes: kept
    (f"cwd:{_long_dir()}", "short.pem", os.O_RDONLY),  # composed fits: suffix, kept
    (f"cwd:{_long_dir()}", "short.txt", os.O_RDONLY),  # composed fits: dropped
]


def _base_of(spec: str) -> str | None:
    """The base the kernel's walk yields (None: unusable), from the test's own knowledge."""
    d = spec.partition(":")[2]
    if d == "bad" or d == _deep_dir():
        return None
    return os.path.realpath(d)


def _kpath(spec: str, rel: str, ret: int) -> str | None:
    """What the kernel judges a successful open on: the path of the file it installed, walked
    forward (16 steps, one per component and one per mount crossed, plus the last that finds
    the root; "" when that does not reach the root or for the root itself). None: failed."""
    base = _base_of(spec)
    if ret < 0:
        return None
    if base is None:
        return ""  # the deep directory: the file's own walk is cut short too
    full = os.path.realpath(os.path.join(base, rel))
    if full == "/":
        return ""
    parts = full.strip("/").split("/")
    mounts = sum(os.path.ismount("/" + "/".join(parts[: i + 1])) for i in range(len(parts)))
    if len(parts) + mounts + 1 > 16 or len(full) >= 512:
        return ""
    return full


def _child(cases: list[tuple[str, str, int]], wfd: int) -> None:
    """Runs in the forked child: make every open, report the results as JSON on wfd."""
    Path(f"/proc/self/task/{threading.get_native_id()}/comm").write_text(COMM)
    results: list[int] = []
    for spec, rel, flags in cases:
        kind, _, d = spec.partition(":")
        dirfd = AT_FDCWD
        if kind == "cwd":
            os.chdir(d)
        elif d == "bad":
            dirfd = 987
        else:
            dirfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fd = os.open(rel, flags, 0o600, dir_fd=None if dirfd == AT_FDCWD else dirfd)
            os.close(fd)
            results.append(fd)
        except OSError as exc:
            results.append(-(exc.errno or 1))
        if dirfd >= 0 and d != "bad":
            os.close(dirfd)
    os.write(wfd, json.dumps(results).encode())


def _run_child(cases: list[tuple[str, str, int]]) -> tuple[int, list[int]]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            _child(cases, w)
            code = 0
        except BaseException as exc:  # shown in the test's output; the parent then fails
            print(f"child: {exc!r}", flush=True)
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return pid, json.loads(data)


def _opens_of(got: list[bytes], pid: int) -> list[bytes]:
    return [raw for raw in got if (r := decode(raw)).pid == pid and r.evt.family is FAMILY]


def test_relative_verdicts_match_the_model(sensor: tuple) -> None:  # type: ignore[type-arg]
    s, pf, tables, got = sensor
    s.drain()
    got.clear()
    before = pf.stats()["openat"]
    pid, results = _run_child(CASES)
    s.drain()
    after = pf.stats()["openat"]
    expected: list[tuple[str, str, str | None]] = []  # (spec, rel, fd.name) of the kept
    verdicts = []
    for (spec, rel, flags), ret in zip(CASES, results, strict=True):
        base = _base_of(spec)
        kpath = _kpath(spec, rel, ret)
        if kpath is not None:  # opened: judged on the file the kernel installed
            kv = KernelView("openat", COMM, os.getuid(), path=rel, flags=flags, ret=ret,
                            kpath=kpath)  # fmt: skip
        else:
            kv = KernelView("openat", COMM, os.getuid(), path=rel, flags=flags, ret=ret, base=base)
        keep = passes(tables, kv)
        verdicts.append(keep)
        if keep:
            # with no usable walk, user space asks /proc, and the child is gone by now
            full = None if base is None else normalize(os.path.join(base, rel))
            if kpath is not None:
                full = kpath or None
            expected.append((spec, rel, full))
    enricher = Enricher()
    arrived = []
    for raw in _opens_of(got, pid):
        ev = enricher.event(raw)
        if not raw_path(ev.rec).startswith("/"):  # (not the dirfd cases' own opens)
            arrived.append((raw_path(ev.rec), ev.get("fd.name")))
    assert [a[0] for a in arrived] == [rel for _s, rel, _f in expected]
    for (rel, name), (_spec, _rel, full) in zip(arrived, expected, strict=True):
        if full is not None:
            assert name == full, rel
    # both verdicts on relative paths, and the cases that matter, are exercised
    by_case = dict(zip([(c[0], c[1]) for c in CASES], verdicts, strict=True))
    assert not by_case[(f"cwd:{ROOT}/plain", "a0.txt")]
    assert not by_case[(f"fd:{ROOT}/plain", "a4.txt")]
    assert not by_case[("cwd:/", "usr/lib/os-release")]
    assert not by_case[("fd:/proc/sys", "vm/swappiness")]
    assert not by_case[(f"cwd:{_long_dir()}", "short.txt")]
    assert not by_case[(f"cwd:{ROOT}/plain", "..")]
    assert not by_case[(f"cwd:{ROOT}/plain", ".")]
    assert not by_case[("fd:/proc/sys", "..")]
    # paths the kernel could not judge as passed are judged on the file opened
    assert not by_case[(f"cwd:{ROOT}/plain", "./a1.txt")]
    assert not by_case[(f"cwd:{ROOT}/plain", "sub/..")]
    assert not by_case[(f"cwd:{_long_dir()}", LONG_NAME)]
    assert by_case[(f"cwd:{ROOT}/plain", "../watched/w0.txt")]
    for case in [
        (f"cwd:{ROOT}", "watched/w1.txt"),
        (f"fd:{ROOT}/watched", "w2.txt"),
        ("cwd:/", "etc/hostname"),
        ("fd:/proc/sys", "kernel/hostname"),
        ("fd:bad", "a6.txt"),
        (f"cwd:{_deep_dir()}", "nothing.txt"),
        (f"cwd:{ROOT}/dotted/in", ".."),
        (f"fd:{ROOT}/dotted/in", ".."),
        (f"cwd:{ROOT}/dotted", "."),
        ("cwd:/tmp", ".."),
        ("fd:/proc", ".."),
    ]:
        assert by_case[case], case
    dropped = after["dropped"] - before["dropped"]
    assert dropped >= verdicts.count(False)


def _storm_child(cwd: str, rel: str, n: int, dirfd_of: str | None = None) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            Path(f"/proc/self/task/{threading.get_native_id()}/comm").write_text(COMM)
            os.chdir(cwd)
            dfd = os.open(dirfd_of, os.O_RDONLY | os.O_DIRECTORY) if dirfd_of else None
            for _ in range(n):
                with contextlib.suppress(OSError):
                    os.close(os.open(rel, os.O_RDONLY, dir_fd=dfd))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return pid


STORM = 10_000


@pytest.mark.parametrize(
    ("cwd", "rel", "dirfd_of"),
    [(f"{ROOT}/plain", "a7.txt", None), ("/", "a7.txt", f"{ROOT}/plain")],
    ids=["cwd-relative", "dirfd-relative"],
)
def test_relative_storm_in_an_unwatched_directory_is_dropped(
    sensor: tuple,  # type: ignore[type-arg]
    cwd: str,
    rel: str,
    dirfd_of: str | None,
) -> None:
    s, pf, _tables, got = sensor
    s.drain()
    got.clear()
    before = pf.stats()["openat"]["dropped"]
    pid = _storm_child(cwd, rel, STORM, dirfd_of)
    s.drain()
    assert len(_opens_of(got, pid)) == 0
    assert pf.stats()["openat"]["dropped"] - before >= STORM


def test_relative_opens_into_a_watched_path_all_arrive(sensor: tuple) -> None:  # type: ignore[type-arg]
    s, _pf, _tables, got = sensor
    s.drain()
    got.clear()
    pid = _storm_child(ROOT, "watched/w3.txt", 300)
    s.drain()
    enricher = Enricher()
    names = [enricher.event(raw).get("fd.name") for raw in _opens_of(got, pid)]
    assert names == [f"{ROOT}/watched/w3.txt"] * 300
