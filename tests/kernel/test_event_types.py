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

import errno
import json
import os
import re
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
from sentinel.kernel import program
from sentinel.kernel.features import OPTIONAL
from sentinel.kernel.sensor import TRACEFS
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
    # The new image's name (comm) is the kernel's choice: the basename of bprm->filename,
    # "/dev/fd/N" -> "N", on 5.10-6.12 (seen in the 5.10 VM: "3"); the file's own name on the
    # host's 6.18. So the exec'd shell writes down what its kernel named it, and the event must
    # say the same.
    out_file = c.tmp / f"comm-{c.marker}"
    script = 'read n </proc/$$/comm; echo "$n" >"$0"'
    pid, _ = child(
        f"pid = os.fork()\nif pid == 0:\n    fd = os.open('/bin/sh', os.O_RDONLY)\n"
        f"    os.execve(fd, ['sh', '-c', {script!r}, {str(out_file)!r}], {{}})\n"
        "os.waitpid(pid, 0)\nout(pid=pid)"
    )
    comm = out_file.read_text().strip()
    # the file's name (/bin/sh is a link: the name of what it resolves to), or the number
    assert comm == os.path.basename(os.path.realpath("/bin/sh")) or comm.isdigit(), comm
    ev = one(c.live, lambda e: e["evt.type"] == "execveat" and e["proc.pid"] == pid)
    args = f"-c {script} {out_file}"
    expect(ev, {"proc.name": comm, "proc.args": args, "evt.res": "SUCCESS"})
    expect(ev, {"proc.exepath": os.path.realpath("/bin/sh")})
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
            "evt.arg.mode": "0640",
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
            "evt.arg.mode": "0600",
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
            "evt.arg.mode": "0604",
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
            "evt.arg.mode": "0751",
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


# ---- the other families: one call each, by number where libc might pick another syscall ------
# Each entry: the child's code (T: the test's directory, M: the marker; ``r`` the call's result,
# printed with what else the child knows) and the fields expected, from what the child did.
# An event type whose tracepoint this kernel lacks (init_module without CONFIG_MODULES, as on
# the host) must instead be reported missing by the sensor (Sensor.missing): the kernels of
# scripts/vm-kernels.conf have them all, so the VM suites decode them.

Facts = dict[str, Any]
Want = Callable[[Facts, str, str], dict[str, Any]]


@dataclass(frozen=True)
class Call:
    code: str
    want: Want


def _r(f: Facts) -> str:
    return "SUCCESS" if f["r"] >= 0 else errno.errorcode[-f["r"]]


OPENDIR = "d = os.open(T, os.O_RDONLY | os.O_DIRECTORY)\n"


def touch(name: str) -> str:
    return f"open(f'{{T}}/{name}-{{M}}', 'w').close()\n"


UDP = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
TCP_PAIR = (
    "import socket\nl = socket.socket()\nl.bind(('127.0.0.1', 0))\nl.listen()\n"
    "c = socket.create_connection(l.getsockname())\n"
)
UDP_PAIR = (
    UDP + "s.bind(('127.0.0.1', 0))\nu = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "u.sendto(b'abcd', s.getsockname())\n"
)
NULL_FD = "fd = os.open('/dev/null', os.O_RDONLY)\n"
STDIO_CALLS = {"dup2", "dup3"}  # what a child makes of its stdio before exec (see run())
SAME = "out(pid=os.getpid(), r=r"  # the child's facts line, closed by each entry


def _tup(a: str, b: str) -> Callable[[Facts], str]:
    return lambda f: f"127.0.0.1:{f[a]}->127.0.0.1:{f[b]}"


CALLS: dict[str, Call] = {
    "mkdir": Call(
        f"r = sc(83, f'{{T}}/mk-{{M}}'.encode(), 0o710)\n{SAME})",
        lambda f, t, m: {"evt.arg.path": f"{t}/mk-{m}", "evt.arg.mode": "0x1c8"},
    ),
    "mkdirat": Call(
        f"{OPENDIR}r = sc(258, d, f'mkat-{{M}}'.encode(), 0o700)\n{SAME}, d=d)",
        lambda f, t, m: {
            "evt.arg.dirfd": str(f["d"]),
            "fs.path.nameraw": f"mkat-{m}",
            "fs.path.name": f"{t}/mkat-{m}",
            "evt.arg.mode": "0x1c0",
        },
    ),
    "rmdir": Call(
        f"os.mkdir(f'{{T}}/rm-{{M}}')\nr = sc(84, f'{{T}}/rm-{{M}}'.encode())\n{SAME})",
        lambda f, t, m: {"evt.arg.path": f"{t}/rm-{m}"},
    ),
    "chmod": Call(
        f"{touch('ch')}r = sc(90, f'{{T}}/ch-{{M}}'.encode(), 0o604)\n{SAME})",
        lambda f, t, m: {
            "evt.arg.filename": f"{t}/ch-{m}",
            "evt.arg.mode": "S_IROTH|S_IWUSR|S_IRUSR",
        },
    ),
    "fchmodat": Call(
        f"{touch('chat')}{OPENDIR}r = sc(268, d, f'chat-{{M}}'.encode(), 0o640)\n{SAME}, d=d)",
        lambda f, t, m: {
            "evt.arg.dirfd": str(f["d"]),
            "fs.path.name": f"{t}/chat-{m}",
            "fs.path.nameraw": f"chat-{m}",
            "evt.arg.mode": "S_IRGRP|S_IWUSR|S_IRUSR",
        },
    ),
    "umount2": Call(
        f"r = sc(166, f'{{T}}/nomount-{{M}}'.encode(), 2)\n{SAME})",  # 2: MNT_DETACH
        lambda f, t, m: {"evt.arg.name": f"{t}/nomount-{m}", "evt.res": _r(f)},
    ),
    "chdir": Call(
        f"os.mkdir(f'{{T}}/cd-{{M}}')\nr = sc(80, f'{{T}}/cd-{{M}}'.encode())\n{SAME})",
        lambda f, t, m: {"evt.arg.path": f"{t}/cd-{m}"},
    ),
    "fchdir": Call(
        "os.mkdir(f'{T}/fcd-{M}')\nd = os.open(f'{T}/fcd-{M}', os.O_RDONLY | os.O_DIRECTORY)\n"
        f"r = sc(81, d)\n{SAME}, d=d)",
        lambda f, t, m: {"evt.arg.fd": str(f["d"]), "fs.path.name": f"{t}/fcd-{m}"},
    ),
    "rename": Call(
        f"{touch('mv')}r = sc(82, f'{{T}}/mv-{{M}}'.encode(), f'{{T}}/mv2-{{M}}'.encode())\n"
        f"{SAME})",
        lambda f, t, m: {"fs.path.source": f"{t}/mv-{m}", "fs.path.target": f"{t}/mv2-{m}"},
    ),
    "renameat": Call(
        f"{touch('mva')}{OPENDIR}"
        f"r = sc(264, d, f'mva-{{M}}'.encode(), {AT_FDCWD}, f'{{T}}/mvb-{{M}}'.encode())\n"
        f"{SAME}, d=d)",
        lambda f, t, m: {
            "evt.arg.olddirfd": str(f["d"]),
            "evt.arg.newdirfd": "AT_FDCWD",
            "fs.path.sourceraw": f"mva-{m}",
            "fs.path.source": f"{t}/mva-{m}",
            "fs.path.target": f"{t}/mvb-{m}",
        },
    ),
    "renameat2": Call(
        f"{touch('mv2a')}{OPENDIR}"
        f"r = sc(316, d, f'mv2a-{{M}}'.encode(), d, f'mv2b-{{M}}'.encode(), 1)\n{SAME}, d=d)",
        lambda f, t, m: {
            "evt.arg.newdirfd": str(f["d"]),
            "fs.path.source": f"{t}/mv2a-{m}",
            "fs.path.target": f"{t}/mv2b-{m}",
            "evt.arg.flags": "RENAME_NOREPLACE",
        },
    ),
    # link and linkat: Falco's source is the new name, its target the existing file.
    "link": Call(
        f"{touch('ln')}r = sc(86, f'{{T}}/ln-{{M}}'.encode(), f'{{T}}/ln2-{{M}}'.encode())\n"
        f"{SAME})",
        lambda f, t, m: {"fs.path.target": f"{t}/ln-{m}", "fs.path.source": f"{t}/ln2-{m}"},
    ),
    "linkat": Call(
        f"{touch('lna')}{OPENDIR}"
        f"r = sc(265, d, f'lna-{{M}}'.encode(), d, f'lnb-{{M}}'.encode(), 0)\n{SAME}, d=d)",
        lambda f, t, m: {
            "evt.arg.olddir": str(f["d"]),
            "fs.path.target": f"{t}/lna-{m}",
            "fs.path.source": f"{t}/lnb-{m}",
            "fs.path.sourceraw": f"lnb-{m}",
        },
    ),
    "symlink": Call(
        f"r = sc(88, b'/etc/hostname', f'{{T}}/sl-{{M}}'.encode())\n{SAME})",
        lambda f, t, m: {"fs.path.target": "/etc/hostname", "fs.path.source": f"{t}/sl-{m}"},
    ),
    "symlinkat": Call(
        f"{OPENDIR}r = sc(266, b'/etc/hostname', d, f'sla-{{M}}'.encode())\n{SAME}, d=d)",
        lambda f, t, m: {
            "evt.arg.linkdirfd": str(f["d"]),
            "fs.path.target": "/etc/hostname",
            "fs.path.source": f"{t}/sla-{m}",
        },
    ),
    "accept": Call(
        f"{TCP_PAIR}r = sc(43, l.fileno(), 0, 0)\n"
        f"{SAME}, port=l.getsockname()[1], cport=c.getsockname()[1])",
        lambda f, t, m: {
            "fd.num": f["r"],
            "evt.arg.tuple": _tup("cport", "port")(f),
            "fd.sport": f["port"],
            "fd.cport": f["cport"],
            "fd.is_server": True,
        },
    ),
    "accept4": Call(
        f"{TCP_PAIR}r = sc(288, l.fileno(), 0, 0, {O_CLOEXEC})\n"
        f"{SAME}, port=l.getsockname()[1], cport=c.getsockname()[1])",
        lambda f, t, m: {
            "fd.num": f["r"],
            "evt.arg.tuple": _tup("cport", "port")(f),
            "raw.flags": O_CLOEXEC,
        },
    ),
    "bind": Call(
        f"{UDP}addr = b'\\x02\\x00\\x30\\x39\\x7f\\x00\\x00\\x01' + bytes(8)\n"
        f"r = sc(49, s.fileno(), addr, 16)\n{SAME}, fd=s.fileno())",
        lambda f, t, m: {"evt.arg.addr": "127.0.0.1:12345", "fd.num": f["fd"], "fd.sport": 12345},
    ),
    "listen": Call(
        "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\n"
        f"r = sc(50, s.fileno(), 7)\n{SAME}, fd=s.fileno(), port=s.getsockname()[1])",
        lambda f, t, m: {"evt.arg.backlog": "7", "fd.num": f["fd"], "fd.lport": f["port"]},
    ),
    "socket": Call(
        f"r = sc(41, 2, 2, 0)\n{SAME})",  # AF_INET, SOCK_DGRAM
        lambda f, t, m: {"evt.arg.domain": "AF_INET", "evt.arg.type": "2", "fd.num": f["r"]},
    ),
    "sendto": Call(
        f"{UDP}r = s.sendto(b'12345', ('127.0.0.1', 9))\n"
        f"{SAME}, fd=s.fileno(), cport=s.getsockname()[1])",
        lambda f, t, m: {
            "evt.arg.size": "5",
            "fd.num": f["fd"],
            "fd.cport": f["cport"],
            "fd.sport": 9,
            "fd.sip": "127.0.0.1",
        },
    ),
    "recvfrom": Call(
        f"{UDP_PAIR}r = len(s.recvfrom(100)[0])\n"
        f"{SAME}, fd=s.fileno(), port=s.getsockname()[1], cport=u.getsockname()[1])",
        lambda f, t, m: {"evt.arg.size": "100", "evt.rawres": 4, "fd.num": f["fd"]},
    ),
    "sendmsg": Call(
        f"{UDP}r = s.sendmsg([b'1234567'], [], 0, ('127.0.0.1', 9))\n"
        f"{SAME}, fd=s.fileno(), cport=s.getsockname()[1])",
        lambda f, t, m: {"evt.rawres": 7, "fd.num": f["fd"], "fd.cport": f["cport"], "fd.sport": 9},
    ),
    "recvmsg": Call(
        f"{UDP_PAIR}r = len(s.recvmsg(100)[0])\n"
        f"{SAME}, fd=s.fileno(), port=s.getsockname()[1], cport=u.getsockname()[1])",
        lambda f, t, m: {"evt.rawres": 4, "fd.num": f["fd"], "fd.lport": f["port"]},
    ),
    "dup": Call(
        f"{NULL_FD}r = sc(32, fd)\n{SAME}, fd=fd)",
        lambda f, t, m: {"evt.arg.oldfd": str(f["fd"]), "fd.num": f["r"], "fd.name": "/dev/null"},
    ),
    "dup2": Call(
        f"{NULL_FD}r = sc(33, fd, 77)\n{SAME}, fd=fd)",
        lambda f, t, m: {"evt.arg.oldfd": str(f["fd"]), "fd.num": 77, "fd.name": "/dev/null"},
    ),
    "dup3": Call(
        f"{NULL_FD}r = sc(292, fd, 78, {O_CLOEXEC})\n{SAME}, fd=fd)",
        lambda f, t, m: {"fd.num": 78, "fd.name": "/dev/null", "evt.arg.flags": "O_CLOEXEC"},
    ),
    "fchmod": Call(
        "fd = os.open(f'{T}/fch-{M}', os.O_WRONLY | os.O_CREAT, 0o600)\n"
        f"r = sc(91, fd, 0o644)\n{SAME}, fd=fd)",
        lambda f, t, m: {
            "fd.num": f["fd"],
            "fd.name": f"{t}/fch-{m}",
            "evt.arg.mode": "S_IROTH|S_IRGRP|S_IWUSR|S_IRUSR",
        },
    ),
    "setuid": Call(f"r = sc(105, os.getuid())\n{SAME})", lambda f, t, m: {"raw.uid": os.getuid()}),
    "setgid": Call(f"r = sc(106, os.getgid())\n{SAME})", lambda f, t, m: {"raw.gid": os.getgid()}),
    "setresuid": Call(
        f"r = sc(117, -1, os.getuid(), -1)\n{SAME})",
        lambda f, t, m: {"evt.arg.ruid": "4294967295", "raw.euid": os.getuid()},
    ),
    "setresgid": Call(
        f"r = sc(119, -1, os.getgid(), -1)\n{SAME})",
        lambda f, t, m: {"evt.arg.sgid": "4294967295", "raw.egid": os.getgid()},
    ),
    "setreuid": Call(
        f"r = sc(113, -1, os.getuid())\n{SAME})",
        lambda f, t, m: {"evt.arg.ruid": "4294967295", "raw.euid": os.getuid()},
    ),
    "setregid": Call(
        f"r = sc(114, -1, os.getgid())\n{SAME})",
        lambda f, t, m: {"evt.arg.rgid": "4294967295", "raw.egid": os.getgid()},
    ),
    # capset: keep the permitted set, drop the low 32 effective capabilities.
    "capset": Call(
        "hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)\ndata = (ctypes.c_uint32 * 6)()\n"
        "assert sc(125, hdr, data) == 0\ndata[0] = 0\nr = sc(126, hdr, data)\n"
        f"{SAME}, perm=data[1] | (data[4] << 32), eff=data[3] << 32)",
        lambda f, t, m: {
            "evt.arg.cap_permitted": hex(f["perm"]),
            "evt.arg.cap_effective": hex(f["eff"]),
        },
    ),
    "setns": Call(
        "fd = os.open('/proc/self/ns/uts', os.O_RDONLY)\n"
        f"r = sc(308, fd, 0x04000000)\n{SAME}, fd=fd)",
        lambda f, t, m: {"evt.arg.fd": str(f["fd"]), "evt.arg.nstype": "CLONE_NEWUTS"},
    ),
    "unshare": Call(
        f"r = sc(272, 0x04000000)\n{SAME})", lambda f, t, m: {"evt.arg.flags": "CLONE_NEWUTS"}
    ),
    "ptrace": Call(
        f"r = sc(101, 0x4206, 1, 0, 0)\n{SAME})",  # PTRACE_SEIZE of init: refused
        lambda f, t, m: {"evt.arg.request": "PTRACE_SEIZE", "raw.pid": 1, "evt.res": _r(f)},
    ),
    "kill": Call(
        f"r = sc(62, os.getpid(), 0)\n{SAME})",
        lambda f, t, m: {"evt.arg.sig": "0", "raw.pid": f["pid"]},
    ),
    "userfaultfd": Call(
        f"r = sc(323, {O_CLOEXEC})\n{SAME})",
        lambda f, t, m: {"evt.arg.flags": "O_CLOEXEC", "evt.res": _r(f)},
    ),
    "bpf": Call(
        f"r = sc(321, 999, 0, 0)\n{SAME})",
        lambda f, t, m: {"evt.arg.cmd": "999", "evt.res": "EINVAL"},
    ),
    "memfd_create": Call(
        f"r = sc(319, f'mfd-{{M}}'.encode(), 1)\n{SAME})",
        lambda f, t, m: {
            "fd.num": f["r"],
            "fd.name": f"memfd:mfd-{m}",
            "evt.arg.flags": "MFD_CLOEXEC",
        },
    ),
    "io_uring_setup": Call(
        f"p = (ctypes.c_uint32 * 30)()\nr = sc(425, 4, p)\n{SAME}, sq=p[0], cq=p[1])",
        lambda f, t, m: {
            "evt.arg.entries": "4",
            "evt.arg.sq_entries": str(f["sq"]),
            "evt.arg.cq_entries": str(f["cq"]),
        },
    ),
    "init_module": Call(
        f"r = sc(175, 0, 0, b'x=1')\n{SAME})",
        lambda f, t, m: {"raw.length": 0, "evt.res": _r(f)},
    ),
    "finit_module": Call(
        f"r = sc(313, -1, b'x=1', 0)\n{SAME})",
        lambda f, t, m: {"raw.fd": -1, "evt.res": _r(f)},
    ),
    "mount": Call(
        f"r = sc(165, b'none', f'{{T}}/nomnt-{{M}}'.encode(), b'tmpfs', 1, 0)\n{SAME})",
        lambda f, t, m: {
            "evt.arg.dir": f"{t}/nomnt-{m}",
            "evt.arg.type": "tmpfs",
            "evt.arg.flags": "MS_RDONLY",
            "evt.res": "ENOENT",
        },
    ),
}


def call_case(evt: str) -> Callable[[Ctx], None]:
    def run(c: Ctx) -> None:
        if evt in c.live.sensor.missing:
            # Degraded, not failed: the sensor left the type out because the kernel has no
            # tracepoint for it (checked here against tracefs itself).
            assert not any(
                (TRACEFS / "events" / cat / tp).exists()
                for cat, tp in program.tracepoints([evt])
                if cat == "syscalls"
            )
            return
        call = CALLS[evt]
        prelude = f"T = {str(c.tmp)!r}\nM = {c.marker!r}\n"
        pid, facts = child(prelude + call.code)
        facts["pid"] = pid

        def ours(e: dict[str, Any]) -> bool:
            return e["evt.type"] == evt and e["proc.pid"] == pid

        if evt in STDIO_CALLS:
            # subprocess sets the child's stdio up with dup2 between fork and exec, under the
            # child's pid: those events come first, so wait for the one with the test's result
            # (waiting for any dup2 of the pid returned before it was read: failed in full runs)
            mine = c.live.wait_for(lambda e: ours(e) and e.get("evt.rawres") == facts["r"], 20)
        else:
            mine = c.live.wait_for(ours, timeout=20)
        # The child's interpreter may make the same call while starting (dup2 of stdio...):
        # the one the test made is the one with its result.
        if len(mine) > 1:
            mine = [e for e in mine if e.get("evt.rawres") == facts["r"]]
        assert len(mine) == 1, mine
        ev = mine[0]
        expect(ev, common(pid))
        # raw.NAME: an argument's raw value, as evt.args shows it before any resolved text
        ev.update({f"raw.{k}": int(v) for k, v in re.findall(r"(\w+)=(-?\d+)", ev["evt.args"])})
        expect(ev, call.want(facts, str(c.tmp), c.marker))

    return run


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
    **{evt: call_case(evt) for evt in CALLS},
}


def test_every_event_type_has_a_case() -> None:
    assert set(CASES) == {t.name for t in EVENT_TYPES}


@pytest.mark.parametrize("evt_type", list(CASES))
def test_event_type_decodes(live: LiveSensor, tmp_path: Path, evt_type: str) -> None:
    CASES[evt_type](Ctx(live, tmp_path, f"m{uuid.uuid4().hex[:10]}"))
