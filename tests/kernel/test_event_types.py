"""Every event type the sensor traces, produced for real and decoded with the right fields.

The portability suite of the sensor: it runs on the host and, through tests/vm/test_vm.py, in
the VM on every kernel of scripts/vm-kernels.conf (5.10, 6.1, 6.12), because what differs
between kernels is exactly what these records depend on: struct layouts (offsets from BTF), the
helpers that read the task and the saved registers (sentinel.kernel.features), the tracepoints.
One case per event type of the event table, checked field by field against what the test
itself did (paths, flags, modes, descriptors, pids, addresses); a test fails when an event type
has no case, so a new event type gets its line here.

On the host the module runs twice: with the kernel's own features, and with every optional
feature disabled, so that the fallbacks older kernels use (bpf_probe_read_kernel for task
fields, the registers found at the top of the kernel stack) are proven here too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sentinel.events import EVENT_TYPES
from sentinel.kernel.features import OPTIONAL
from tests.kernel.conftest import LiveSensor, require_root

pytestmark = pytest.mark.kernel

IN_VM = os.environ.get("SENTINEL_IN_VM") == "1"
# In a VM the kernel's own features are the point (and each compile costs minutes there).
FEATURE_SETS = [()] if IN_VM else [(), OPTIONAL]

# x86-64 syscall numbers: libc has no wrapper for some of these, and for the others the wrapper
# may pick another syscall (glibc's open() is openat), so the test calls them by number.
SYSCALL_C = """
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *args):
    r = libc.syscall(nr, *args)
    return r if r >= 0 else -ctypes.get_errno()
def out(**kw):
    print(json.dumps(kw), flush=True)
"""
NR = {"open": 2, "creat": 85, "unlink": 87, "openat": 257, "unlinkat": 263, "openat2": 437}
AT_FDCWD = -100
O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_CLOEXEC = 0o1, 0o2, 0o100, 0o1000, 0o2000000
O_DIRECTORY = 0o200000


@pytest.fixture(scope="module", params=FEATURE_SETS, ids=lambda f: "fallbacks" if f else "native")
def live(request: pytest.FixtureRequest) -> Iterator[LiveSensor]:
    require_root()
    s = LiveSensor(disable_features=request.param)
    s.watch.add(os.getpid())
    s.start()
    try:
        yield s
    finally:
        s.close()


def child(code: str, *, cwd: Path | None = None, check: bool = True) -> tuple[int, dict[str, Any]]:
    """Run Python ``code`` in a child (the sensor ignores its own process); returns the child's
    pid and the JSON object it printed last (what it did: descriptors, ports...)."""
    proc = subprocess.run(
        [sys.executable, "-c", SYSCALL_C + code],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert not check or proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    facts = json.loads(lines[-1]) if lines else {}
    pid = facts.pop("pid", None)
    assert isinstance(pid, int), f"the child did not say its pid: {proc.stdout!r} {proc.stderr!r}"
    return pid, facts


def one(live: LiveSensor, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    evs = live.wait_for(pred, timeout=20)
    assert len(evs) == 1, evs
    return evs[0]


def expect(ev: dict[str, Any], want: dict[str, Any]) -> None:
    got = {k: ev.get(k) for k in want}
    assert got == want, {"differs": {k: (got[k], v) for k, v in want.items() if got[k] != v}}


def common(pid: int) -> dict[str, Any]:
    """Header fields every record carries (from the task: fill_hdr)."""
    return {
        "proc.pid": pid,
        "proc.ppid": os.getpid(),
        "user.uid": os.getuid(),
        "user.loginuid": _loginuid(),
        "evt.dir": "<",
    }


def _loginuid() -> int:
    v = int(Path("/proc/self/loginuid").read_text())
    return -1 if v == 0xFFFFFFFF else v


# ---- one case per event type ----------------------------------------------------------------


@dataclass
class Ctx:
    live: LiveSensor
    tmp: Path
    marker: str


def case_execve(c: Ctx) -> None:
    # A successful exec (sched_process_exec) and a failed one (sys_exit_execve: arguments from
    # the saved registers).
    proc = subprocess.run(["/bin/sh", "-c", f": {c.marker}"], cwd=c.tmp, check=True)
    assert proc.returncode == 0
    ev = one(c.live, lambda e: e["evt.type"] == "execve" and c.marker in e.get("proc.args", ""))
    expect(ev, {"proc.name": "sh", "proc.exe": "/bin/sh", "proc.ppid": os.getpid()})
    expect(ev, {"proc.exepath": os.path.realpath("/bin/sh"), "proc.cwd": f"{c.tmp}/"})
    expect(ev, {"proc.args": f"-c : {c.marker}", "evt.res": "SUCCESS"})
    missing = c.tmp / f"nope-{c.marker}"
    pid, _ = child(
        f"try:\n    os.execv({str(missing)!r}, ['x', {c.marker!r}])\nexcept OSError:\n"
        "    out(pid=os.getpid())"
    )
    # (the child's own exec of python is an execve too)
    ev = one(c.live, lambda e: e["evt.type"] == "execve" and e.get("evt.failed") is True)
    expect(ev, common(pid))
    expect(ev, {"evt.res": "ENOENT", "evt.arg.filename": str(missing)})
    expect(ev, {"evt.arg.args": c.marker})


def case_execveat(c: Ctx) -> None:
    # fexecve: execveat(fd, "", AT_EMPTY_PATH) succeeds (reported at sched_process_exec, told
    # apart by bprm->fdpath); on a directory fd it fails at its own syscall exit.
    pid, _ = child(
        f"pid = os.fork()\nif pid == 0:\n    fd = os.open('/bin/true', os.O_RDONLY)\n"
        f"    os.execve(fd, ['true', {c.marker!r}], {{}})\n"
        "os.waitpid(pid, 0)\nout(pid=pid)"
    )
    ev = one(c.live, lambda e: e["evt.type"] == "execveat" and e["proc.pid"] == pid)
    expect(ev, {"proc.name": "true", "proc.args": c.marker, "evt.res": "SUCCESS"})
    expect(ev, {"proc.exepath": os.path.realpath("/bin/true")})
    pid, _ = child(
        f"fd = os.open({str(c.tmp)!r}, os.O_RDONLY)\n"
        "try:\n    os.execve(fd, ['x'], {})\nexcept OSError:\n    out(pid=os.getpid())"
    )
    ev = one(c.live, lambda e: e["evt.type"] == "execveat" and e["proc.pid"] == pid)
    expect(ev, common(pid))
    assert ev["evt.res"] in ("EACCES", "ENOEXEC"), ev["evt.res"]


def fork_and_exit(status: int) -> str:
    return (
        f"k = os.fork()\nif k == 0:\n    os._exit({status})\n"
        "os.waitpid(k, 0)\nout(pid=os.getpid(), child=k)"
    )


def case_clone(c: Ctx) -> None:
    pid, facts = child(fork_and_exit(0))
    ev = one(c.live, lambda e: e["evt.type"] == "clone" and e["proc.pid"] == pid)
    expect(ev, common(pid))
    expect(ev, {"evt.rawres": facts["child"], "proc.name": Path(sys.executable).name[:15]})


def case_procexit(c: Ctx) -> None:
    pid, facts = child(fork_and_exit(7))
    ev = one(c.live, lambda e: e["evt.type"] == "procexit" and e["proc.pid"] == facts["child"])
    expect(ev, {"proc.ppid": pid, "proc.exitcode": 7 << 8, "evt.arg.ret": "7", "evt.arg.sig": "0"})


def _file_case(c: Ctx, evt: str, code: str, want: dict[str, Any], cwd: Path | None = None) -> None:
    pid, facts = child(code, cwd=cwd)
    ev = one(
        c.live,
        lambda e: (
            e["evt.type"] == evt and e["proc.pid"] == pid and c.marker in e.get("fs.path.name", "")
        ),
    )
    expect(ev, common(pid))
    expect(ev, {k: v(facts) if callable(v) else v for k, v in want.items()})


def case_open(c: Ctx) -> None:
    path = c.tmp / f"open-{c.marker}"
    flags = O_WRONLY | O_CREAT | O_TRUNC
    _file_case(
        c,
        "open",
        f"fd = sc({NR['open']}, {str(path).encode()!r}, {flags}, 0o640)\n"
        "out(pid=os.getpid(), fd=fd)",
        {
            "fd.name": str(path),
            "fd.num": lambda f: f["fd"],
            "evt.arg.flags": "O_WRONLY|O_CREAT|O_TRUNC",
            "evt.arg.mode": "0o640",
            "evt.arg.name": str(path),
            "evt.is_open_write": True,
        },
    )


def case_openat(c: Ctx) -> None:
    # Relative to a directory fd: the kernel's walk of the dirfd's file names the directory.
    (c.tmp / "d").mkdir()
    flags = O_RDWR | O_CREAT | O_CLOEXEC
    _file_case(
        c,
        "openat",
        f"d = os.open({str(c.tmp / 'd')!r}, os.O_RDONLY | os.O_DIRECTORY)\n"
        f"fd = sc({NR['openat']}, d, b'rel-{c.marker}', {flags}, 0o600)\n"
        "out(pid=os.getpid(), fd=fd, dirfd=d)",
        {
            "fd.name": str(c.tmp / "d" / f"rel-{c.marker}"),
            "fd.nameraw": f"rel-{c.marker}",
            "fd.num": lambda f: f["fd"],
            "evt.arg.dirfd": lambda f: str(f["dirfd"]),
            "evt.arg.flags": "O_RDWR|O_CREAT|O_CLOEXEC",
            "evt.arg.mode": "0o600",
        },
    )


def case_openat2(c: Ctx) -> None:
    # openat2's flags and mode come from the struct open_how in user memory; relative to the
    # cwd this time.
    flags = O_WRONLY | O_CREAT
    _file_case(
        c,
        "openat2",
        f"how = (ctypes.c_uint64 * 3)({flags}, 0o604, 0)\n"
        f"fd = sc({NR['openat2']}, {AT_FDCWD}, b'how-{c.marker}', ctypes.byref(how), 24)\n"
        "out(pid=os.getpid(), fd=fd)",
        {
            "fd.name": str(c.tmp / f"how-{c.marker}"),
            "fd.num": lambda f: f["fd"],
            "evt.arg.dirfd": "AT_FDCWD",
            "evt.arg.flags": "O_WRONLY|O_CREAT",
            "evt.arg.mode": "0o604",
            "proc.cwd": f"{c.tmp}/",
        },
        cwd=c.tmp,
    )


def case_creat(c: Ctx) -> None:
    path = c.tmp / f"creat-{c.marker}"
    _file_case(
        c,
        "creat",
        f"fd = sc({NR['creat']}, {str(path).encode()!r}, 0o751)\nout(pid=os.getpid(), fd=fd)",
        {
            "fd.name": str(path),
            "fd.num": lambda f: f["fd"],
            "evt.arg.flags": "O_WRONLY|O_CREAT|O_TRUNC",
            "evt.arg.mode": "0o751",
        },
    )


def case_unlink(c: Ctx) -> None:
    path = c.tmp / f"unlink-{c.marker}"
    path.write_bytes(b"x")
    _file_case(
        c,
        "unlink",
        f"r = sc({NR['unlink']}, {str(path).encode()!r})\nout(pid=os.getpid(), r=r)",
        {"fs.path.name": str(path), "evt.arg.path": str(path), "evt.res": "SUCCESS"},
    )
    assert not path.exists()


def case_unlinkat(c: Ctx) -> None:
    sub = c.tmp / f"dir-{c.marker}"
    sub.mkdir()
    _file_case(
        c,
        "unlinkat",
        f"d = os.open({str(c.tmp)!r}, os.O_RDONLY | os.O_DIRECTORY)\n"
        f"r = sc({NR['unlinkat']}, d, b'dir-{c.marker}', 0x200)\n"
        "out(pid=os.getpid(), r=r, dirfd=d)",
        {
            "fs.path.name": str(sub),
            "evt.arg.name": str(sub),
            "evt.arg.dirfd": lambda f: str(f["dirfd"]),
            "evt.arg.flags": "AT_REMOVEDIR",
            "evt.res": "SUCCESS",
        },
    )
    assert not sub.exists()


def case_connect(c: Ctx) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        pid, facts = child(
            f"import socket\ns = socket.create_connection(('127.0.0.1', {port}))\n"
            "out(pid=os.getpid(), cport=s.getsockname()[1], fd=s.fileno())"
        )
        srv.accept()[0].close()
    ev = one(c.live, lambda e: e["evt.type"] == "connect" and e["proc.pid"] == pid)
    expect(ev, common(pid))
    tup = f"127.0.0.1:{facts['cport']}->127.0.0.1:{port}"
    expect(ev, {"fd.sip": "127.0.0.1", "fd.sport": port, "fd.cport": facts["cport"]})
    expect(ev, {"fd.l4proto": "tcp", "fd.typechar": "4", "fd.name": tup})
    expect(ev, {"evt.arg.addr": f"127.0.0.1:{port}", "evt.arg.tuple": tup})
    expect(ev, {"evt.res": "SUCCESS"})


CASES: dict[str, Callable[[Ctx], None]] = {
    "execve": case_execve,
    "execveat": case_execveat,
    "clone": case_clone,
    "procexit": case_procexit,
    "open": case_open,
    "openat": case_openat,
    "openat2": case_openat2,
    "creat": case_creat,
    "unlink": case_unlink,
    "unlinkat": case_unlinkat,
    "connect": case_connect,
}


def test_every_event_type_has_a_case() -> None:
    assert set(CASES) == {t.name for t in EVENT_TYPES}


@pytest.mark.parametrize("evt_type", list(CASES))
def test_event_type_decodes(live: LiveSensor, tmp_path: Path, evt_type: str) -> None:
    CASES[evt_type](Ctx(live, tmp_path, f"m{uuid.uuid4().hex[:10]}"))


def test_no_event_was_lost(live: LiveSensor) -> None:
    assert sum(live.sensor.lost().values()) == 0
