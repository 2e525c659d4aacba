"""The prefilter's invariant on every event type: it never drops an event a rule would match.

Unlike test_plan (events written as field dictionaries), these events are records built as the
BPF side emits them (sentinel.events.builder), decoded by the same code as live ones; the kernel
half of each comes from the same record (sentinel.prefilter.model.view_of mirrors what each
handler gives the prefilter). Rules are drawn over the fields the new families bind: paths of
file operations, ptrace's request, socket's domain, kill's signal, the server end, whether the
socket is connected, the descriptor's type, uid, comm and the result.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel.compiler import compile_rules
from sentinel.engine import Engine
from sentinel.enrichment.live import Enricher
from sentinel.events import BY_NAME, EVENT_TYPES
from sentinel.events.builder import build
from sentinel.events.common import (
    AT_FDCWD,
    FLAG_BASE_AFTER,
    FLAG_BASE_BAD,
    FLAG_BASE_TRUNC,
    FLAG_KPATH,
)
from sentinel.loader import load_rules
from sentinel.prefilter.model import passes, view_of
from sentinel.prefilter.plan import FAMILY_OF
from sentinel.prefilter.tables import build_tables
from tests.events.conftest import PARENT, PID
from tests.prefilter.test_plan import COMMS, CWDS, IPS, PATHS, PORTS, _lst, _q

FAMILIES: dict[str, list[str]] = {}
for _t in EVENT_TYPES:
    if _t.name in FAMILY_OF:
        FAMILIES.setdefault(FAMILY_OF[_t.name], []).append(_t.name)
NEW = {f: ts for f, ts in FAMILIES.items() if f not in ("exec",)}
OPENS = ("open", "openat", "openat2", "creat")
KPATHS = ["/etc/shadow", "/etc/passwd", "/tmp/x", "/usr/bin/ls", "/", "", "/etc/ssh/sshd_config",
          "/" + "k" * 300]  # fmt: skip
S_IFMT = {"file": 0o100644, "dir": 0o40755, "fifo": 0o10600, "sock": 0o140777, "chr": 0o20620}


def _how(evt_type: str) -> int:
    """The handler's ``how`` constant of a socket call (the stub's last argument)."""
    sc = BY_NAME[evt_type].syscall
    assert sc is not None
    return int(sc.call.rsplit(",", 1)[1])


def _ip_for(fam: int, draw: Any) -> str:
    if fam == socket.AF_INET6:
        return draw(st.sampled_from(["::1", "2001:db8::1", "::ffff:10.0.0.1", "::"]))
    return draw(st.sampled_from([ip for ip in IPS if ":" not in ip] + ["0.0.0.0", "127.0.0.1"]))


@st.composite
def records(draw: Any, family: str) -> tuple[str, dict[str, Any]]:
    fam = family
    t = draw(st.sampled_from(NEW[fam]))
    ret = draw(st.sampled_from([0, 3, -2, -13, -1]))
    v: dict[str, Any] = {
        "comm": draw(st.sampled_from(COMMS))[:15],
        "uid": draw(st.sampled_from([0, 1000, 33])),
        "res": ret,
    }
    if fam == "file":
        v["path"] = draw(st.sampled_from(PATHS))
        v["base"] = draw(st.sampled_from(CWDS))
        v["dirfd"] = draw(st.sampled_from([AT_FDCWD, 5]))
        v["flags"] = draw(st.sampled_from([0, 1, 2, 0o101, 0o1102, 0o200000]))
        v["mode"] = draw(st.sampled_from([0, 0o755, 0o4755]))
        flags = 0
        if t in ("chdir", "fchdir"):
            flags |= FLAG_BASE_AFTER
        if t in OPENS and ret >= 0 and draw(st.booleans()):
            # a successful open: the kernel's path of the file installed (a symlink or a magic
            # link may make it differ from the path passed), or a walk cut short
            flags |= FLAG_KPATH
            v["kpath"] = draw(st.sampled_from(KPATHS))
            if v["kpath"] == "":
                flags |= FLAG_BASE_TRUNC
            v.pop("base")
        if draw(st.booleans()) and draw(st.booleans()):
            flags |= FLAG_BASE_BAD
        v["hdr_flags"] = flags
    elif fam == "link":
        for i in (0, 1):
            v[f"path{i}"] = draw(st.sampled_from(PATHS))
            v[f"base{i}"] = draw(st.sampled_from(CWDS))
    elif fam == "net":
        how = _how(t)
        v["how"] = how
        v["fd"] = 4
        skf = draw(st.sampled_from([2, 10, 1, 0, 16]))
        v["sk_family"] = skf
        if skf in (2, 10):
            v["laddr"] = _ip_for(skf, draw)
            v["raddr"] = _ip_for(skf, draw)
        v["lport"] = draw(st.sampled_from([0, *PORTS, 40000]))
        v["rport"] = draw(st.sampled_from([0, 0, *PORTS]))
        v["state"] = draw(st.sampled_from([0, 1, 7, 10]))
        v["sock_type"] = draw(st.sampled_from([1, 2, 3]))
        v["protocol"] = draw(st.sampled_from([0, 6, 17]))
        if how & 4 and draw(st.booleans()):  # an address passed
            if draw(st.booleans()):
                v["addr"] = "/run/x.sock"
            else:
                pf = draw(st.sampled_from([2, 10]))
                v["addr"] = (_ip_for(pf, draw), draw(st.sampled_from(PORTS)))
        v["v0"] = draw(st.sampled_from([1, 2, 10, 16, 17, 38, 512]))
    elif fam == "fd":
        kind = draw(st.sampled_from([*S_IFMT, None]))
        v["fd"] = draw(st.sampled_from([0, 1, 3]))
        v["v0"] = draw(st.sampled_from([0, 1, 2]))
        if kind is not None:
            v["i_mode"] = S_IFMT[kind]
        if kind == "sock":
            skf = draw(st.sampled_from([2, 10, 1, 16]))
            v["sk_family"] = skf
            if skf in (2, 10):
                v["laddr"] = _ip_for(skf, draw)
                v["raddr"] = _ip_for(skf, draw)
                v["rport"] = draw(st.sampled_from(PORTS))
                v["state"] = draw(st.sampled_from([1, 7]))
        elif kind is not None:
            v["sk_family"] = 0
            v["path"] = draw(st.sampled_from([p for p in PATHS if p.startswith("/")]))
    elif fam == "system":
        for i in range(3):
            v[f"v{i}"] = draw(st.sampled_from([0, 1, 9, 15, 16, 17, 5, 0x20000, 1000]))
    return t, v


GENERIC = [
    st.builds(lambda v: f"proc.name = {_q(v)}", st.sampled_from(COMMS)),
    st.builds(lambda v: f"user.uid = {v}", st.sampled_from([0, 1000])),
    st.sampled_from(
        ["evt.res = SUCCESS", "evt.res = ENOENT", "evt.rawres >= 0", "evt.failed = true"]
    ),
]


def _types(family: str) -> Any:
    return st.builds(
        lambda v: f"evt.type in {_lst(v)}",
        st.lists(st.sampled_from(NEW[family]), min_size=1, max_size=3),
    )


# Per family: the fields its rules test (those its kernel part binds, and others).
ATOMS: dict[str, list[Any]] = {
    "file": [
        st.builds(lambda v: f"fs.path.name pmatch ({_q(v)})", st.sampled_from(["/etc", "/tmp"])),
        st.builds(
            lambda o, v: f"fs.path.name {o} {_q(v)}",
            st.sampled_from(["=", "startswith", "endswith", "glob", "!="]),
            st.sampled_from(["/etc", "/etc/passwd", "/tmp/x", "/usr/bin", "/tmp/*", "passwd"]),
        ),
        st.builds(lambda v: f"fd.name startswith {_q(v)}", st.sampled_from(["/etc", "/tmp/"])),
        st.builds(lambda v: f"fd.directory = {_q(v)}", st.sampled_from(["/etc", "/tmp"])),
        st.builds(lambda v: f"evt.is_open_write = {v}", st.sampled_from(["true", "false"])),
        st.builds(lambda v: f"evt.is_open_create = {v}", st.sampled_from(["true", "false"])),
        st.builds(
            lambda v: f"evt.arg.flags contains {v}", st.sampled_from(["O_CREAT", "CREAT", "O_"])
        ),
        st.just("fd.nameraw contains '../'"),
    ],
    "link": [
        st.builds(lambda v: f"fs.path.source = {_q(v)}", st.sampled_from(PATHS)),
        st.builds(lambda v: f"fs.path.target startswith {_q(v)}", st.sampled_from(["/etc", "/"])),
        st.builds(lambda v: f"evt.arg.target startswith {_q(v)}", st.sampled_from(["/etc", "/"])),
    ],
    "net": [
        st.builds(lambda v: f"evt.arg.domain = {v}", st.sampled_from(["AF_PACKET", "2"])),
        st.builds(lambda v: f"evt.arg.domain contains {v}", st.sampled_from(["INET", "PACKET"])),
        st.builds(lambda v: f"fd.typechar = {v}", st.sampled_from(["4", "6", "u", "f", "o"])),
        st.builds(lambda v: f"fd.sockfamily = {v}", st.sampled_from(["ip", "unix"])),
        st.builds(lambda v: f"fd.type in {_lst(v)}", st.lists(st.sampled_from(["ipv4", "ipv6",
                                                                                "unix"]))),
        st.builds(lambda v: f"fd.connected = {v}", st.sampled_from(["true", "false"])),
        st.builds(lambda v: f"fd.sport = {v}", st.sampled_from([0, *PORTS])),
        st.builds(lambda v: f"fd.rport in ({v}, 1)", st.sampled_from(PORTS)),
        st.builds(lambda v: f"fd.sip = {_q(v)}", st.sampled_from([*IPS, "0.0.0.0"])),
        st.builds(lambda v: f"fd.snet in {_lst(v)}", st.lists(st.sampled_from(["10.0.0.0/8",
                                                                                "::/0"]))),
        st.builds(lambda v: f"fd.rip = {_q(v)}", st.sampled_from(IPS)),
        st.builds(lambda v: f"fd.num in ({v}, 1, 2)", st.sampled_from([0, 4])),
    ],
    "fd": [
        st.builds(lambda v: f"fd.type in {_lst(v)}", st.lists(st.sampled_from(
            ["ipv4", "ipv6", "unix", "file", "pipe", "directory", "unknown"]))),
        st.builds(lambda v: f"fd.typechar = {v}", st.sampled_from(["4", "6", "u", "f", "p", "o",
                                                                     "d"])),
        st.builds(lambda v: f"fd.num in ({v}, 1, 2)", st.sampled_from([0, 3])),
        st.builds(lambda v: f"fd.name startswith {_q(v)}", st.sampled_from(["/etc", "10."])),
    ],
    "system": [
        st.builds(lambda v: f"evt.arg.request in {_lst(v)}", st.lists(st.sampled_from(
            ["PTRACE_ATTACH", "PTRACE_POKETEXT", "PTRACE_TRACEME", "16"]))),
        st.builds(lambda v: f"evt.arg.sig = {v}", st.sampled_from(["SIGKILL", "SIGTERM", "9"])),
        st.builds(lambda v: f"evt.arg.cmd contains {v}", st.sampled_from(["PROG", "MAP"])),
        st.builds(lambda v: f"evt.arg.uid = {v}", st.sampled_from(["0", "root"])),
    ],
}  # fmt: skip


def conds(family: str) -> Any:
    leaves = st.one_of(*GENERIC, _types(family), *ATOMS[family], *ATOMS[family])
    return st.recursive(
        leaves,
        lambda kids: st.one_of(
            st.builds(lambda a: f"not ({a})", kids),
            st.builds(lambda a, b: f"({a} and {b})", kids, kids),
            st.builds(lambda a, b: f"({a} or {b})", kids, kids),
        ),
        max_leaves=5,
    )


def _engine(tmp_path: Path, conds: list[str]) -> Engine:
    rules = [
        {"rule": f"R{i}", "desc": "d", "condition": c, "output": "o", "priority": "INFO"}
        for i, c in enumerate(conds)
    ]
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(rules))
    return Engine(compile_rules(load_rules([p])), matching="all")


@pytest.mark.parametrize("family", sorted(NEW))
def test_no_event_type_loses_a_matching_event_in_the_kernel(
    tmp_path: Path, world: Enricher, family: str
) -> None:
    @settings(
        max_examples=250,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
        database=None,
    )
    @given(
        st.lists(conds(family), min_size=1, max_size=3),
        st.lists(records(family), min_size=1, max_size=8),
    )
    def check(rule_conds: list[str], recs: list[tuple[str, dict[str, Any]]]) -> None:
        engine = _engine(tmp_path, rule_conds)
        tables = build_tables([(r.name, r.expr) for r in engine.rules])
        for evt_type, values in recs:
            ev = world.event(build(evt_type, pid=PID, tid=PID, ppid=PARENT, **values))
            kv = view_of(ev.rec)
            assert kv is not None
            if engine.match(ev):
                assert passes(tables, kv), (rule_conds, kv, ev.to_dict())

    check()


def _filtered_share(
    tmp_path: Path, world: Enricher, cond: str, make: Callable[[int], tuple[str, dict[str, Any]]]
) -> float:
    engine = _engine(tmp_path, [cond])
    tables = build_tables([(r.name, r.expr) for r in engine.rules])
    dropped = 0
    for i in range(50):
        evt_type, values = make(i)
        kv = view_of(world.event(build(evt_type, pid=PID, tid=PID, ppid=PARENT, **values)).rec)
        assert kv is not None
        dropped += not passes(tables, kv)
    return dropped / 50


def test_falcos_high_rate_rules_drop_ordinary_calls_in_the_kernel(
    tmp_path: Path, world: Enricher
) -> None:
    """The shapes of Falco's dup, packet-socket and ptrace rules: ordinary calls of those types
    (a shell's dup2 of a file, an IPv4 socket, a PTRACE_PEEKDATA) never reach user space."""
    dup = "evt.type in (dup, dup2, dup3) and fd.num in (0, 1, 2) and fd.type in (ipv4, ipv6)"
    file_dup = {"fd": 3, "res": 1, "i_mode": S_IFMT["file"], "path": "/etc/passwd"}
    assert _filtered_share(tmp_path, world, dup, lambda i: ("dup2", file_dup)) == 1.0
    sock = "evt.type = socket and evt.arg.domain contains AF_PACKET"
    assert _filtered_share(tmp_path, world, sock, lambda i: ("socket", {"v0": 2, "res": 3})) == 1.0
    ptrace = "evt.type = ptrace and evt.arg.request in (PTRACE_POKETEXT, PTRACE_POKEDATA)"
    peek = {"v0": 2, "res": 0}
    assert _filtered_share(tmp_path, world, ptrace, lambda i: ("ptrace", peek)) == 1.0
    outbound = "evt.type in (sendto, sendmsg) and fd.connected = false and fd.sport = 53"
    connected = {"how": 4, "sk_family": 2, "laddr": "10.0.0.2", "raddr": "10.0.0.3",
                 "rport": 443, "state": 1, "res": 10}  # fmt: skip
    assert _filtered_share(tmp_path, world, outbound, lambda i: ("sendto", connected)) == 1.0
