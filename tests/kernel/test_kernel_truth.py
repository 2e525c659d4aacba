"""What rules judge comes from kernel objects, not from strings an attacker writes.

Falco's stable rules, unmodified, with "Read sensitive file untrusted" watching /etc/shadow.
A reader (a copy of the interpreter, so its name is its own) reads /etc/shadow through a
symlink, /proc/self/root, /proc/self/cwd, a dirfd, after renaming itself to "sshd" (a name the
rule exempts), and with the path flipped by a racing thread; each real open must raise the rule
naming /etc/shadow, and no open of another file may. Each trick is first shown to work without
Sentinel (the bytes read are shadow's).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import CORPUS
from tests.kernel.conftest import require_root
from tests.live import LiveRun, sentinel_run

pytestmark = pytest.mark.kernel
RULE = "Read sensitive file untrusted"
SHADOW = "/etc/shadow"

# Each trick opens /etc/shadow by another name and prints the first bytes read (hex).
TRICKS = {
    "symlink": "os.symlink('/etc/shadow', d + '/s'); p = d + '/s'",
    "proc_root": "p = '/proc/self/root/etc/shadow'",
    "proc_cwd": "os.chdir('/etc'); p = '/proc/self/cwd/shadow'",
    "dirfd": "p = ('shadow', os.open('/etc', os.O_RDONLY | os.O_DIRECTORY))",
    "prctl_sshd": (
        "import ctypes; ctypes.CDLL(None).prctl(15, b'sshd', 0, 0, 0); p = '/etc/shadow'"
    ),
    "symlinked_dir": "os.symlink('/etc', d + '/e'); p = d + '/e/shadow'",
}
READER = """
import os, sys, tempfile  # {marker}
d = tempfile.mkdtemp()
{trick}
if isinstance(p, tuple):
    fd = os.open(p[0], os.O_RDONLY, dir_fd=p[1])
else:
    fd = os.open(p, os.O_RDONLY)
print(os.getpid(), os.read(fd, 16).hex(), flush=True)
"""


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the interpreter named rdr<hex>: a name no rule exempts."""
    require_root()
    exe = tmp_path_factory.mktemp("truth") / f"rdr{uuid.uuid4().hex[:6]}"
    shutil.copy(sys.executable, exe)
    return exe


@pytest.fixture(scope="module")
def live() -> Iterator[LiveRun]:
    require_root()
    with sentinel_run("--rules", str(CORPUS / "falco_rules.yaml")) as run:
        yield run


def _read(reader: Path, trick: str, marker: str = "") -> tuple[int, str]:
    out = subprocess.run(
        [str(reader), "-c", READER.format(trick=TRICKS[trick], marker=marker)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]), out[1]


def _shadow_head() -> str:
    with open(SHADOW, "rb") as f:
        return f.read(16).hex()


@pytest.mark.parametrize("trick", sorted(TRICKS))
def test_each_trick_reads_shadow_without_sentinel(reader: Path, trick: str) -> None:
    _pid, head = _read(reader, trick)
    assert head == _shadow_head()  # the attack really reads the file


@pytest.mark.parametrize("trick", sorted(TRICKS))
def test_reading_shadow_by_another_name_raises_the_rule_naming_it(
    live: LiveRun, reader: Path, trick: str
) -> None:
    marker = f"m{uuid.uuid4().hex[:10]}"
    _pid, head = _read(reader, trick, marker)
    assert head == _shadow_head()
    got = live.wait(lambda a: a["rule"] == RULE and marker in a["output_fields"]["proc.cmdline"])
    assert len(got) == 1, (trick, live.log_tail())
    f: dict[str, Any] = got[0]["output_fields"]
    assert f["fd.name"] == SHADOW
    assert f["proc.name"] == reader.name[:15]  # the name at exec, not a later prctl's


RACER = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile char path[64] = "/etc/shadow";
static volatile int stop, started;

static void put(const char *s) {
    for (int i = 0; s[i] || (path[i] = 0); i++)  // byte by byte (volatile): no store is elided
        path[i] = s[i];
}

static void *flip(void *arg) {
    const char *other = arg;
    started = 1;
    while (!stop) {
        put("/etc/shadow");
        put(other);
    }
    return 0;
}

int main(int argc, char **argv) {
    struct stat sh;
    stat("/etc/shadow", &sh);
    pthread_t t;
    pthread_create(&t, 0, flip, argv[1]);
    while (!started)
        ;
    /* until both kinds of open happened often enough (or a bound): the flipping thread may
       get little CPU on a busy machine */
    int want = atoi(argv[2]), hits = 0, others = 0;
    for (int i = 0; i < 400000 && (hits < want || others < want); i++) {
        int fd = open((const char *)path, O_RDONLY);
        if (fd < 0)
            continue;
        struct stat st;
        fstat(fd, &st);
        if (st.st_ino == sh.st_ino && st.st_dev == sh.st_dev)
            hits++;
        else
            others++;
        close(fd);
    }
    stop = 1;
    pthread_join(t, 0);
    printf("%d %d %d\n", getpid(), hits, others);
    return 0;
}
"""


@pytest.fixture(scope="module")
def racer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The racer binary and the harmless file it flips the path to (same length as the
    shadow path, so each write leaves a whole name)."""
    require_root()
    d = tmp_path_factory.mktemp("race")
    src = d / "racer.c"
    src.write_text(RACER)
    exe = d / f"rcr{uuid.uuid4().hex[:6]}"
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(exe), str(src)], check=True)
    harmless = Path("/tmp/sntl-harm")
    harmless.write_text("harmless\n")
    return exe, harmless


def _race(racer: tuple[Path, Path], n: int, marker: str = "") -> tuple[int, int, int]:
    exe, harmless = racer
    out = subprocess.run([str(exe), str(harmless), str(n), marker], capture_output=True,
                         text=True, check=True).stdout.split()  # fmt: skip
    return int(out[0]), int(out[1]), int(out[2])


def test_the_race_opens_both_files_without_sentinel(racer: tuple[Path, Path]) -> None:
    _pid, hits, others = _race(racer, 200)
    assert hits >= 200 and others >= 200  # the flip lands between the caller's and the kernel's


@pytest.mark.parametrize("trial", range(3))
def test_every_real_open_of_shadow_alerts_and_no_other_does(
    live: LiveRun, racer: tuple[Path, Path], trial: int
) -> None:
    marker = f"m{uuid.uuid4().hex[:10]}"
    _pid, hits, others = _race(racer, 200, marker)
    assert hits >= 200 and others >= 200
    mine = live.wait(
        lambda a: a["rule"] == RULE and marker in a["output_fields"]["proc.cmdline"],
        count=hits,
        timeout=20,
    )
    names = {a["output_fields"]["fd.name"] for a in mine}
    assert len(mine) == hits, (len(mine), hits, others)  # none missed, none false
    assert names == {SHADOW}


STALE_RULE = """
- rule: Stale facts probe
  desc: an open of one file, the only rule loaded (no rule wants execs)
  condition: evt.type in (open, openat) and fd.name = {target}
  output: probe cmdline=%proc.cmdline exepath=%proc.exepath pname=%proc.pname
  priority: INFO
"""


def test_process_facts_stay_true_when_no_rule_wants_execs(tmp_path: Path, reader: Path) -> None:
    """With only an open rule, the kernel drops every exec for rules; the process table must
    still learn the exec (a table-only record), or the child's events would carry the
    parent's command line and executable."""
    target = tmp_path / f"stale-{uuid.uuid4().hex[:8]}"
    target.write_text("x")
    rules = tmp_path / "stale.yaml"
    rules.write_text(STALE_RULE.format(target=target))
    spawn = (
        "import os\npid = os.fork()\n"
        f"if pid == 0: os.execv('/bin/cat', ['cat', '{target}'])\nos.waitpid(pid, 0)"
    )
    with sentinel_run("--rules", str(rules)) as run:
        subprocess.run([str(reader), "-c", spawn], check=True, capture_output=True)
        got = run.wait(lambda a: a["rule"] == "Stale facts probe")
    assert len(got) == 1, run.log_tail()
    f = got[0]["output_fields"]
    assert f["proc.cmdline"] == f"cat {target}"
    assert f["proc.exepath"] == os.path.realpath("/bin/cat")
    assert f["proc.pname"] == reader.name[:15]


# ---- io_uring ------------------------------------------------------------------------------

URING = r"""
#include <arpa/inet.h>
#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* One request, waited for: prints its result. argv: op path [path2] */
int main(int argc, char **argv) {
    struct io_uring ring;
    if (io_uring_queue_init(4, &ring, 0) < 0)
        return 2;
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    const char *op = argv[1];
    if (!strcmp(op, "openat"))
        io_uring_prep_openat(sqe, AT_FDCWD, argv[2], O_RDONLY, 0);
    else if (!strcmp(op, "unlinkat"))
        io_uring_prep_unlinkat(sqe, AT_FDCWD, argv[2], 0);
    else if (!strcmp(op, "mkdirat"))
        io_uring_prep_mkdirat(sqe, AT_FDCWD, argv[2], 0755);
    else if (!strcmp(op, "renameat"))
        io_uring_prep_renameat(sqe, AT_FDCWD, argv[2], AT_FDCWD, argv[3], 0);
    else if (!strcmp(op, "symlinkat"))
        io_uring_prep_symlinkat(sqe, argv[2], AT_FDCWD, argv[3]);
    else if (!strcmp(op, "linkat"))
        io_uring_prep_linkat(sqe, AT_FDCWD, argv[2], AT_FDCWD, argv[3], 0);
    else if (!strcmp(op, "connect") || !strcmp(op, "accept")) {
        /* connect: to 127.0.0.1:argv[2]; accept: a listener on 127.0.0.1:argv[2], which a
           second socket of this process connects to first */
        static struct sockaddr_in a;
        a.sin_family = AF_INET;
        a.sin_port = htons(atoi(argv[2]));
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (!strcmp(op, "connect")) {
            io_uring_prep_connect(sqe, s, (struct sockaddr *)&a, sizeof(a));
        } else {
            int one = 1;
            setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
            if (bind(s, (struct sockaddr *)&a, sizeof(a)) || listen(s, 1))
                return 5;
            int c = socket(AF_INET, SOCK_STREAM, 0);
            if (connect(c, (struct sockaddr *)&a, sizeof(a)))
                return 6;
            io_uring_prep_accept(sqe, s, 0, 0, 0);
        }
    } else
        return 3;
    io_uring_submit(&ring);
    struct io_uring_cqe *cqe;
    if (io_uring_wait_cqe(&ring, &cqe) < 0)
        return 4;
    int res = cqe->res;
    if (res >= 0 && !strcmp(op, "openat")) {
        char buf[16];
        int n = read(res, buf, sizeof(buf));
        for (int i = 0; i < n; i++)
            printf("%02x", (unsigned char)buf[i]);
        printf(" ");
    }
    printf("%d\n", res);
    return 0;
}
"""


@pytest.fixture(scope="module")
def uring(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_root()
    d = tmp_path_factory.mktemp("uring")
    (d / "uring.c").write_text(URING)
    exe = d / f"urg{uuid.uuid4().hex[:6]}"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(d / "uring.c"), "-luring"], check=True)
    return exe


def _uring(exe: Path, *args: str) -> list[str]:
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, check=True
    ).stdout.split()


def test_io_uring_reads_shadow_without_a_syscall_open(uring: Path, tmp_path: Path) -> None:
    """Without Sentinel: the request really reads shadow (and strace would show no open)."""
    link = tmp_path / "l"
    link.symlink_to(SHADOW)
    head, fd = _uring(uring, "openat", str(link))
    assert int(fd) >= 0 and head == _shadow_head()


def test_io_uring_open_raises_the_rule_naming_the_real_file(
    live: LiveRun, uring: Path, tmp_path: Path
) -> None:
    link = tmp_path / f"l{uuid.uuid4().hex[:6]}"
    link.symlink_to(SHADOW)
    head, _fd = _uring(uring, "openat", str(link))
    assert head == _shadow_head()
    # the link's name, not only the program's: the module's run also sees the test above
    got = live.wait(lambda a: a["rule"] == RULE and link.name in a["output_fields"]["proc.cmdline"])
    assert len(got) == 1, live.log_tail()
    assert got[0]["output_fields"]["fd.name"] == SHADOW
    assert got[0]["output_fields"]["evt.type"] == "openat"


def test_each_io_uring_operation_is_its_syscalls_event(uring: Path, tmp_path: Path) -> None:
    """The requests that do what traced syscalls do, as those syscalls' events: the same
    evt.type and fields, evt.is_io_uring set, paths from the kernel's own copies."""
    from tests.kernel.conftest import LiveSensor

    live = LiveSensor()
    live.watch.add(os.getpid())
    live.start()
    try:
        d = tmp_path / "u"
        d.mkdir()
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        steps = [
            ("mkdirat", [str(d / "m")], "mkdirat", {"fs.path.name": str(d / "m")}),
            ("symlinkat", ["/etc/shadow", str(d / "s")], "symlinkat",
             {"fs.path.target": "/etc/shadow", "fs.path.source": str(d / "s")}),
            ("linkat", [str(d / "s"), str(d / "h")], "linkat", {"fs.path.target": str(d / "s")}),
            ("renameat", [str(d / "h"), str(d / "r")], "renameat2",
             {"fs.path.source": str(d / "h"), "fs.path.target": str(d / "r")}),
            ("unlinkat", [str(d / "r")], "unlinkat", {"fs.path.name": str(d / "r")}),
            ("openat", [str(d / "s")], "openat", {"fd.name": SHADOW}),
            ("connect", [str(port)], "connect", {"fd.sip": "127.0.0.1", "fd.sport": port}),
            ("accept", [str(port + 1)], "accept4",
             {"fd.sip": "127.0.0.1", "fd.sport": port + 1, "fd.is_server": True}),
        ]  # fmt: skip
        for op, args, evt_type, fields in steps:
            out = _uring(uring, op, *args)
            assert int(out[-1]) >= 0, (op, out)
            evs = live.wait_for(
                lambda e, t=evt_type, a=args: (
                    e["evt.type"] == t
                    and e.get("evt.is_io_uring") is True
                    and (a[-1] in str(e.get("evt.args")) or a[-1] == str(e.get("fd.sport")))
                )
            )
            assert len(evs) == 1, (op, [e for e in live.events if e.get("evt.is_io_uring")])
            e = evs[0]
            assert e["evt.res"] == "SUCCESS"
            for name, value in fields.items():
                assert e[name] == value, (op, name, e[name])
    finally:
        server.close()
        live.close()
