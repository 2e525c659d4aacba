"""The kernel prefilter's invariant: it never drops an event the full rule would match.

Checked here against the Python model of the maps (``sentinel.compiler.kernelmaps.passes``),
which mirrors ``bpf/filter.h``; the real-kernel tests check the BPF side on a sample.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel.compiler import compile_rules
from sentinel.compiler.kernelmaps import KernelView, build_tables, passes
from sentinel.engine import Engine
from sentinel.loader import load_rules
from tests.helpers import CORPUS

COMMS = ["bash", "sh", "cat", "nginx", "verylongprocessname123"]
PATHS = [
    "/etc",
    "/etc/",
    "/etc/passwd",
    "/etc/ssh/sshd_config",
    "/etc/shadow",
    "/tmp/x",
    "/tmp",
    "/usr/bin/ls",
    "/usr/bin",
    "/",
    "/.hidden",
    "/etc/.pw",
    "/etc//passwd",
    "relative/x",
    "../etc/passwd",
    "/etc/../tmp/x",
    "passwd",
    "/var/log/a.log",
    # relative: judged on cwd + "/" + path when canonical (see kernelmaps.kernel_path)
    "./passwd",
    "..",
    ".",
    "ssh/sshd_config",
    "a.log",
    "log/a.log",
    "bin/ls",
    "x/",
    ".pw",
    "tmp",
    "etc/passwd",
]
CWDS = ["/", "/etc", "/tmp", "/var", "/usr", "/etc/ssh"]
IPS = ["10.0.0.1", "10.1.2.3", "192.168.1.5", "::1", "2001:db8::1", "::ffff:10.0.0.1", "8.8.8.8"]
NETS = ["10.0.0.0/8", "192.168.0.0/16", "2001:db8::/32", "0.0.0.0/0", "10.0.0.1"]
PORTS = [22, 80, 443, 5432]
TYPES = {
    "exec": ["execve", "execveat"],
    "open": ["openat", "open", "openat2", "creat"],
    "connect": ["connect"],
}


def _q(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _lst(vals: list[str]) -> str:
    return "(" + ", ".join(_q(v) for v in vals) + ")"


ATOMS = st.one_of(
    st.builds(lambda v: f"proc.name = {_q(v)}", st.sampled_from(COMMS)),
    st.builds(lambda v: f"proc.name in {_lst(v)}", st.lists(st.sampled_from(COMMS), max_size=3)),
    st.builds(lambda v: f"proc.name startswith {_q(v)}", st.sampled_from(["ba", "ng", "c"])),
    st.builds(lambda v: f"user.uid = {v}", st.sampled_from([0, 1000])),
    st.builds(lambda v: f"user.uid in ({v}, 5)", st.sampled_from([0, 1000])),
    st.builds(
        lambda o, v: f"fd.name {o} {_q(v)}",
        st.sampled_from(["=", "!=", "startswith", "endswith", "contains", "glob"]),
        st.sampled_from([*PATHS, "/etc/*", "*.log", "/tmp/?"]),
    ),
    st.builds(lambda v: f"fd.name in {_lst(v)}", st.lists(st.sampled_from(PATHS), max_size=3)),
    st.builds(
        lambda v: f"fd.name pmatch {_lst(v)}",
        st.lists(st.sampled_from(["/etc", "/tmp", "/usr"]), min_size=1, max_size=2),
    ),
    st.builds(lambda v: f"fd.directory = {_q(v)}", st.sampled_from(["/etc", "/tmp", "/"])),
    st.builds(
        lambda v: f"fd.filename in {_lst(v)}",
        st.lists(st.sampled_from(["passwd", "x", "ls", "a.log"]), min_size=1, max_size=2),
    ),
    st.builds(lambda v: f"evt.is_open_write = {v}", st.sampled_from(["true", "false"])),
    st.builds(lambda v: f"evt.is_open_read = {v}", st.sampled_from(["true", "false"])),
    st.builds(lambda v: f"fd.sport = {v}", st.sampled_from(PORTS)),
    st.builds(lambda v: f"fd.rport in ({v}, 1)", st.sampled_from(PORTS)),
    st.builds(lambda v: f"fd.sip = {_q(v)}", st.sampled_from(IPS)),
    st.builds(lambda v: f"fd.snet in {_lst(v)}", st.lists(st.sampled_from(NETS), max_size=2)),
    st.builds(lambda v: f"fd.typechar = {_q(v)}", st.sampled_from(["4", "6", "u", "f"])),
    st.builds(
        lambda v: f"evt.type in {_lst(v)}",
        st.lists(st.sampled_from(["execve", "openat", "open", "connect"]), min_size=1),
    ),
    st.builds(lambda v: f"proc.pname = {_q(v)}", st.sampled_from(COMMS)),
    st.sampled_from(
        [
            "fd.num = -1",
            "fd.num >= 0",
            "fd.num > 2",
            "evt.res startswith E",
            "evt.res = SUCCESS",
            "evt.res = ENOENT",
            "evt.rawres < 0",
            "evt.rawres >= 0",
            "fd.nameraw contains '../'",
            "fd.nameraw glob '*../*'",
            "fd.nameraw startswith /etc",
        ]
    ),
)
CONDS = st.recursive(
    ATOMS,
    lambda kids: st.one_of(
        st.builds(lambda a: f"not ({a})", kids),
        st.builds(lambda a, b: f"({a} and {b})", kids, kids),
        st.builds(lambda a, b: f"({a} or {b})", kids, kids),
    ),
    max_leaves=6,
)


@st.composite
def kernel_events(draw: Any) -> tuple[KernelView, dict[str, Any]]:
    fam = draw(st.sampled_from(sorted(TYPES)))
    ret = draw(st.sampled_from([0, 3, -2, -13]))
    comm = draw(st.sampled_from(COMMS))[:15]
    uid = draw(st.sampled_from([0, 1000, 33]))
    ev: dict[str, Any] = {
        "evt.type": draw(st.sampled_from(TYPES[fam])),
        "evt.dir": "<",
        "proc.name": comm,
        "user.uid": uid,
        "proc.pname": draw(st.sampled_from(COMMS))[:15],
        "evt.rawres": ret,
        "evt.res": "SUCCESS" if ret >= 0 else {-2: "ENOENT", -13: "EACCES"}[ret],
    }
    if fam == "open":
        path = draw(st.sampled_from(PATHS))
        flags = draw(st.sampled_from([0, 1, 2, 0o101, 0o1102]))
        cwd = draw(st.sampled_from(CWDS))
        # the sensor's derivation: absolute, lexically normalised (sentinel.enrichment.event)
        full = os.path.normpath(path if path.startswith("/") else os.path.join(cwd, path))
        full = "/" + full.lstrip("/") if full.startswith("//") else full
        ev.update(
            {
                "fd.name": full,
                "fd.directory": os.path.dirname(full) or "/",
                "fd.filename": os.path.basename(full),
                "fd.typechar": "f",
                "fd.nameraw": path,
                "fd.num": ret if ret >= 0 else -1,
                "evt.is_open_write": (flags & 3) in (1, 2),
                "evt.is_open_read": (flags & 3) in (0, 2),
            }
        )
        # the kernel's walk of the base: usually known, sometimes unusable (truncated, bad fd)
        base = draw(st.sampled_from([cwd, cwd, None]))
        return KernelView(fam, comm, uid, path=path, flags=flags, ret=ret, base=base), ev
    if fam == "connect":
        ip = draw(st.sampled_from(IPS))
        port = draw(st.sampled_from(PORTS))
        a = ipaddress.ip_address(ip)
        shown = str(a.ipv4_mapped) if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped else ip
        fam_c = "6" if a.version == 6 else "4"
        ev.update(
            {
                "fd.sip": shown,
                "fd.rip": shown,
                "fd.snet": shown,
                "fd.sport": port,
                "fd.rport": port,
                "fd.typechar": fam_c,
                "fd.num": 5,
            }
        )
        return KernelView(fam, comm, uid, dport=port, daddr=ip, sock_family=fam_c, ret=ret), ev
    return KernelView(fam, comm, uid), ev


def _engine(tmp_path: Path, conds: list[str]) -> Engine:
    rules = [
        {
            "rule": f"R{i}",
            "desc": "d",
            "condition": c,
            "output": "o",
            "priority": "INFO",
            "warn_evttypes": False,
        }
        for i, c in enumerate(conds)
    ]
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(rules))
    return Engine(compile_rules(load_rules([p])), matching="all")


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(CONDS, min_size=1, max_size=4), st.lists(kernel_events(), min_size=1, max_size=8))
def test_kernel_filter_never_drops_a_matching_event(
    tmp_path: Path, conds: list[str], events: list[tuple[KernelView, dict[str, Any]]]
) -> None:
    engine = _engine(tmp_path, conds)
    tables = build_tables([(r.name, r.expr) for r in engine.rules])
    for kv, ev in events:
        if engine.match(ev):
            assert passes(tables, kv), (conds, kv, ev)


def test_storm_on_unmentioned_path_is_filtered_and_watched_path_passes(tmp_path: Path) -> None:
    engine = _engine(
        tmp_path,
        [
            "evt.type = openat and evt.is_open_write = true and fd.name startswith /etc/",
            "evt.type = openat and fd.name in (/var/run/secret, /root/.ssh/id_rsa)",
            "evt.type = execve and proc.name in (bash, sh)",
        ],
    )
    tables = build_tables([(r.name, r.expr) for r in engine.rules])
    assert not tables.families["open"].pass_all
    assert not passes(tables, KernelView("open", "cat", 0, path="/usr/lib/libc.so.6"))
    assert not passes(tables, KernelView("open", "cat", 0, path="/etc/passwd", flags=0))
    assert passes(tables, KernelView("open", "cat", 0, path="/etc/passwd", flags=1))
    assert passes(tables, KernelView("open", "cat", 0, path="/var/run/secret"))
    assert passes(tables, KernelView("open", "cat", 0, path="relative"))  # no base: kept
    # relative paths are judged on the walked base
    assert not passes(tables, KernelView("open", "cat", 0, path="libc.so.6", base="/usr/lib"))
    assert not passes(tables, KernelView("open", "cat", 0, path="etc/passwd", base="/"))
    assert passes(tables, KernelView("open", "cat", 0, path="passwd", flags=1, base="/etc"))
    assert passes(tables, KernelView("open", "cat", 0, path="etc/passwd", flags=1, base="/"))
    assert passes(tables, KernelView("open", "cat", 0, path="run/secret", base="/var"))
    # not canonical, or the base is unknown: kept
    assert passes(tables, KernelView("open", "cat", 0, path="./libc.so.6", base="/usr/lib"))
    assert passes(tables, KernelView("open", "cat", 0, path="../lib/libc.so.6", base="/usr/lib"))
    assert passes(tables, KernelView("open", "cat", 0, path="libc.so.6", base=None))
    # "." is the base and ".." its parent
    assert not passes(tables, KernelView("open", "cat", 0, path="..", base="/usr/lib"))
    assert passes(tables, KernelView("open", "cat", 0, path="..", flags=1, base="/etc/ssh/k"))
    assert not passes(tables, KernelView("open", "cat", 0, path="..", flags=1, base="/etc/ssh"))
    assert passes(tables, KernelView("open", "cat", 0, path=".", flags=1, base="/etc/ssh"))
    assert not passes(tables, KernelView("open", "cat", 0, path=".", flags=1, base="/etc"))
    assert not passes(tables, KernelView("exec", "ls", 0))
    assert passes(tables, KernelView("exec", "bash", 0))
    # no rule can match a connect: every connect is dropped
    assert not passes(tables, KernelView("connect", "curl", 0, dport=1, daddr="1.1.1.1"))


def test_falco_stable_rules_plan() -> None:
    rules = load_rules([CORPUS / "falco_rules.yaml"])
    engine = Engine(compile_rules(rules))
    tables = build_tables([(r.name, r.expr) for r in engine.rules])
    fam = tables.families["open"]
    # the open family is filterable with the stable rules: a read of a library is dropped
    assert not fam.pass_all, fam.reason
    assert not passes(tables, KernelView("open", "cat", 1000, path="/usr/lib/x.so"))
