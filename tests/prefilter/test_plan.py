"""The kernel prefilter's invariant: it never drops an event the full rule would match.

Checked here against the Python model of the maps (``sentinel.prefilter.tables.passes``),
which mirrors ``bpf/prefilter/filter.h``; the real-kernel tests check the BPF side on a sample.
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
from sentinel.engine import Engine
from sentinel.loader import load_rules
from sentinel.prefilter.model import KernelView, passes
from sentinel.prefilter.tables import build_tables
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
EXES = [
    "/usr/bin/ls",
    "/usr/bin/bash",
    "/bin/sh",
    "/opt/x/tool",
    "/opt/x",
    "/opt/xy/tool",
    "/tmp/.hidden/nc",
    "/usr/local/bin/ncat",
    "/" + "d" * 120 + "/" + "e" * 150 + "/tool",  # longer than an exact key or an LPM key
]
EXE_PARTS = ["/opt/x/", "/usr/", "/usr/bin/*", "*/nc", "/opt/?/tool", "ls", "/ls", "tool", "/nc"]
EXE_PARTS += ["/" + "d" * 120 + "/" + "e" * 150, "e" * 150 + "/tool", "/" + "d" * 120 + "/*"]
IPS = ["10.0.0.1", "10.1.2.3", "192.168.1.5", "::1", "2001:db8::1", "::ffff:10.0.0.1", "8.8.8.8"]
NETS = ["10.0.0.0/8", "192.168.0.0/16", "2001:db8::/32", "0.0.0.0/0", "10.0.0.1"]
PORTS = [22, 80, 443, 5432]
TYPES = {
    "exec": ["execve", "execveat"],
    "file": ["openat", "open", "openat2", "creat", "unlink", "unlinkat"],
    "connect": ["connect"],
}
OPENS = ("openat", "open", "openat2", "creat")


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
        lambda o, v: f"fs.path.name {o} {_q(v)}",
        st.sampled_from(["=", "!=", "startswith", "endswith", "glob"]),
        st.sampled_from([*PATHS, "/etc", "/tmp/*"]),
    ),
    st.builds(lambda v: f"fs.path.name pmatch ({_q(v)})", st.sampled_from(["/etc", "/tmp"])),
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
        st.lists(
            st.sampled_from(["execve", "openat", "open", "connect", "unlink", "unlinkat"]),
            min_size=1,
        ),
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


def _exe_part(op: str, exe: str, k: int) -> str:
    """A value that an executable path of the sample may (or, cut further, may not) match."""
    k = min(k, len(exe) - 1)
    if op in ("startswith", "pmatch"):
        return exe[: len(exe) - k]
    if op == "endswith":
        return exe[k:]
    if op == "glob":
        return exe[: len(exe) - k] + "*"
    return exe


EXE_ATOMS = st.one_of(
    st.builds(
        lambda op, exe, k: (
            f"proc.exepath {op} {_lst([_exe_part(op, exe, k)])}"
            if op == "pmatch"
            else f"proc.exepath {op} {_q(_exe_part(op, exe, k))}"
        ),
        st.sampled_from(["=", "startswith", "endswith", "glob", "pmatch"]),
        st.sampled_from(EXES),
        st.integers(0, 30),
    ),
    st.builds(
        lambda op, v: f"proc.exepath {op} {_q(v)}",
        st.sampled_from(["=", "!=", "startswith", "endswith", "glob", "contains"]),
        st.sampled_from([*EXES, *EXE_PARTS]),
    ),
    st.builds(lambda v: f"proc.exepath in {_lst(v)}", st.lists(st.sampled_from(EXES), max_size=3)),
    st.builds(
        lambda v: f"proc.exepath pmatch {_lst(v)}",
        st.lists(st.sampled_from(["/opt/x", "/usr/bin", "/usr/bin/ls", "/opt/x/"]), min_size=1),
    ),
    st.builds(lambda v: f"proc.exe = {_q(v)}", st.sampled_from([*EXES, "ls"])),
)
CONDS = st.recursive(
    st.one_of(ATOMS, EXE_ATOMS),
    lambda kids: st.one_of(
        st.builds(lambda a: f"not ({a})", kids),
        st.builds(lambda a, b: f"({a} and {b})", kids, kids),
        st.builds(lambda a, b: f"({a} or {b})", kids, kids),
    ),
    max_leaves=6,
)


@st.composite
def kernel_events(draw: Any, family: str | None = None) -> tuple[KernelView, dict[str, Any]]:
    fam = family or draw(st.sampled_from(sorted(TYPES)))
    evt_type = draw(st.sampled_from(TYPES[fam]))
    ret = draw(st.sampled_from([0, 3, -2, -13]))
    comm = draw(st.sampled_from(COMMS))[:15]
    uid = draw(st.sampled_from([0, 1000, 33]))
    ev: dict[str, Any] = {
        "evt.type": evt_type,
        "evt.dir": "<",
        "proc.name": comm,
        "user.uid": uid,
        "proc.pname": draw(st.sampled_from(COMMS))[:15],
        "evt.rawres": ret,
        "evt.res": "SUCCESS" if ret >= 0 else {-2: "ENOENT", -13: "EACCES"}[ret],
    }
    if fam == "file":
        path = draw(st.sampled_from(PATHS))
        flags = draw(st.sampled_from([0, 1, 2, 0o101, 0o1102]))
        cwd = draw(st.sampled_from(CWDS))
        # the sensor's derivation: absolute, lexically normalised (sentinel.events.file)
        full = os.path.normpath(path if path.startswith("/") else os.path.join(cwd, path))
        full = "/" + full.lstrip("/") if full.startswith("//") else full
        ev.update({"fs.path.name": full, "fs.path.nameraw": path})
        if ev["evt.type"] not in OPENS:  # unlink, unlinkat: no descriptor, no open flags
            base = draw(st.sampled_from([cwd, cwd, None]))
            return KernelView(evt_type, comm, uid, path=path, flags=0, ret=ret, base=base), ev
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
        return KernelView(evt_type, comm, uid, path=path, flags=flags, ret=ret, base=base), ev
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
        return KernelView(evt_type, comm, uid, dport=port, daddr=ip, sock_family=fam_c, ret=ret), ev
    exe = draw(st.sampled_from(EXES))
    ev["proc.exepath"] = exe
    ev["proc.exe"] = draw(st.sampled_from([exe, os.path.basename(exe), "ls"]))  # argv[0]
    if ret < 0:  # a failed exec: the image (and proc.exepath) is the old one, unknown in BPF
        return KernelView(evt_type, comm, uid, path=None, ret=ret), ev
    return KernelView(evt_type, comm, uid, path=exe), ev


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


EXEC_CONDS = st.recursive(
    st.one_of(
        EXE_ATOMS,
        st.builds(lambda v: f"proc.name = {_q(v)}", st.sampled_from(COMMS)),
        st.builds(lambda v: f"user.uid = {v}", st.sampled_from([0, 1000])),
    ),
    lambda kids: st.one_of(
        st.builds(lambda a: f"not ({a})", kids),
        st.builds(lambda a, b: f"({a} and {b})", kids, kids),
        st.builds(lambda a, b: f"({a} or {b})", kids, kids),
    ),
    max_leaves=4,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(EXEC_CONDS.map(lambda c: f"evt.type in (execve, execveat) and {c}"), max_size=3),
    st.lists(kernel_events("exec"), min_size=1, max_size=8),
)
def test_exec_filter_never_drops_a_matching_exec(
    tmp_path: Path, conds: list[str], events: list[tuple[KernelView, dict[str, Any]]]
) -> None:
    """Focused on execs, so that most samples have a filtered exec family (one rule without a
    kernel test leaves the family unfiltered, which proves nothing)."""
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
    assert not tables.types["openat"].pass_all
    assert not passes(tables, KernelView("openat", "cat", 0, path="/usr/lib/libc.so.6"))
    assert not passes(tables, KernelView("openat", "cat", 0, path="/etc/passwd", flags=0))
    assert passes(tables, KernelView("openat", "cat", 0, path="/etc/passwd", flags=1))
    assert passes(tables, KernelView("openat", "cat", 0, path="/var/run/secret"))
    assert passes(tables, KernelView("openat", "cat", 0, path="relative"))  # no base: kept
    # relative paths are judged on the walked base
    assert not passes(tables, KernelView("openat", "cat", 0, path="libc.so.6", base="/usr/lib"))
    assert not passes(tables, KernelView("openat", "cat", 0, path="etc/passwd", base="/"))
    assert passes(tables, KernelView("openat", "cat", 0, path="passwd", flags=1, base="/etc"))
    assert passes(tables, KernelView("openat", "cat", 0, path="etc/passwd", flags=1, base="/"))
    assert passes(tables, KernelView("openat", "cat", 0, path="run/secret", base="/var"))
    # not canonical, or the base is unknown: kept
    assert passes(tables, KernelView("openat", "cat", 0, path="./libc.so.6", base="/usr/lib"))
    assert passes(tables, KernelView("openat", "cat", 0, path="../lib/libc.so.6", base="/usr/lib"))
    assert passes(tables, KernelView("openat", "cat", 0, path="libc.so.6", base=None))
    # "." is the base and ".." its parent
    assert not passes(tables, KernelView("openat", "cat", 0, path="..", base="/usr/lib"))
    assert passes(tables, KernelView("openat", "cat", 0, path="..", flags=1, base="/etc/ssh/k"))
    assert not passes(tables, KernelView("openat", "cat", 0, path="..", flags=1, base="/etc/ssh"))
    assert passes(tables, KernelView("openat", "cat", 0, path=".", flags=1, base="/etc/ssh"))
    assert not passes(tables, KernelView("openat", "cat", 0, path=".", flags=1, base="/etc"))
    assert not passes(tables, KernelView("execve", "ls", 0, path="/usr/bin/ls"))
    assert passes(tables, KernelView("execve", "bash", 0, path="/usr/bin/bash"))
    # no rule can match a connect: every connect is dropped
    assert not passes(tables, KernelView("connect", "curl", 0, dport=1, daddr="1.1.1.1"))


def test_falco_stable_rules_plan() -> None:
    rules = load_rules([CORPUS / "falco_rules.yaml"])
    engine = Engine(compile_rules(rules))
    tables = build_tables([(r.name, r.expr) for r in engine.rules])
    fam = tables.types["openat"]
    # the open family is filterable with the stable rules: a read of a library is dropped
    assert not fam.pass_all, fam.reason
    assert not passes(tables, KernelView("openat", "cat", 1000, path="/usr/lib/x.so"))


def test_exepath_is_a_kernel_dimension_of_execs(tmp_path: Path) -> None:
    engine = _engine(
        tmp_path,
        [
            "evt.type in (execve, execveat) and proc.exepath startswith /opt/x/",
            "evt.type = execve and proc.exepath in (/usr/bin/nc, /bin/nc)",
            "evt.type = execve and proc.exepath endswith /ncat and user.uid = 0",
            "evt.type = execve and proc.exe = nc",  # argv[0]: never a kernel test
            "evt.type = openat and proc.exepath = /usr/bin/ls",  # not an exec: fd.name unaffected
        ],
    )
    tables = build_tables([(r.name, r.expr) for r in engine.rules])
    fam = tables.types["execve"]
    assert fam.pass_all and "'R3'" in fam.reason  # the proc.exe rule leaves execs unfiltered
    engine = _engine(tmp_path, _EXE_RULES)
    tables = build_tables([(r.name, r.expr) for r in engine.rules])
    assert not tables.types["execve"].pass_all
    assert passes(tables, KernelView("execve", "tool", 1000, path="/opt/x/tool"))
    assert passes(tables, KernelView("execve", "tool", 1000, path="/opt/x/a/b/c"))
    assert not passes(tables, KernelView("execve", "tool", 1000, path="/opt/xy/tool"))
    assert passes(tables, KernelView("execve", "nc", 1000, path="/bin/nc"))
    assert not passes(tables, KernelView("execve", "nc", 1000, path="/bin/nc.openbsd"))
    assert passes(tables, KernelView("execve", "ncat", 0, path="/usr/local/bin/ncat"))
    assert not passes(tables, KernelView("execve", "ncat", 1000, path="/usr/local/bin/ncat"))
    assert not passes(tables, KernelView("execve", "ls", 0, path="/usr/bin/ls"))
    # unknown executable path (failed exec, walk cut short): the kernel cannot judge, keeps it
    assert passes(tables, KernelView("execve", "ls", 0, path=None))
    plan = next(p for p in tables.plans if p.rule == "R0" and p.evt_type == "execve")
    assert plan.describe() == ["proc.exepath starts with {/opt/x/}"]


_EXE_RULES = [
    "evt.type in (execve, execveat) and proc.exepath startswith /opt/x/",
    "evt.type = execve and proc.exepath in (/usr/bin/nc, /bin/nc)",
    "evt.type = execve and proc.exepath endswith /ncat and user.uid = 0",
    "evt.type = openat and proc.exepath = /usr/bin/ls",
]


def test_explain_names_the_executable_path(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    rules = [
        {"rule": f"R{i}", "desc": "d", "condition": c, "output": "o", "priority": "INFO"}
        for i, c in enumerate(_EXE_RULES)
    ]
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(rules))
    # cwd: this checkout's sentinel (another test may have left the process elsewhere)
    repo = Path(__file__).resolve().parents[2]
    res = subprocess.run(
        [sys.executable, "-m", "sentinel", "explain", str(p)],
        capture_output=True,
        text=True,
        cwd=repo,
    )
    assert res.returncode == 0, res.stderr
    assert "    - proc.exepath starts with {/opt/x/}" in res.stdout
    assert "    - proc.exepath is {/bin/nc, /usr/bin/nc}" in res.stdout
    assert "proc.exepath ends with {/ncat} and uid is {0}" in res.stdout
    res = subprocess.run(
        [sys.executable, "-m", "sentinel", "explain", "--json", str(p)],
        capture_output=True,
        text=True,
        cwd=repo,
    )
    fams = json.loads(res.stdout)["event_types"]
    assert fams["execve"]["filtered"] is True
    assert fams["execve"]["exact_entries"]["proc.exepath"] == 2
    assert fams["execve"]["lpm_entries"] == {"proc.exepath prefix": 1, "proc.exepath suffix": 1}


def test_exact_path_longer_than_a_hash_key_becomes_a_prefix_the_trie_holds(
    tmp_path: Path,
) -> None:
    """An fd.name too long for the exact-path hash is kept as its head: that head must fit an
    LPM key (the kernel and the model look up at most LPM_PAYLOAD bytes), or the long path
    itself would be dropped."""
    long_path = "/" + "a" * 150 + "/" + "b" * 150
    engine = _engine(tmp_path, [f"evt.type = openat and fd.name = {long_path}"])
    tables = build_tables([(r.name, r.expr) for r in engine.rules])
    assert passes(tables, KernelView("openat", "cat", 0, path=long_path))
    assert not passes(tables, KernelView("openat", "cat", 0, path="/usr/lib/x.so"))
    payloads = [p for lpm in tables.types["openat"].lpm.values() for p in lpm]
    assert payloads and all(len(p) <= 252 for p in payloads)


def test_negated_checks_drop_in_the_kernel(tmp_path: Path) -> None:
    """Falco's exceptions (`not proc.name in (...)`), `!=` and excluded networks become
    negative constraints: the excluded values are dropped in the kernel, every other value
    (and a value the maps hold for another rule) passes, and an unknown one is kept."""
    engine = _engine(
        tmp_path,
        [
            'evt.type = connect and fd.snet != "127.0.0.0/8" and not fd.snet in ("10.0.0.0/8")',
            "evt.type = openat and evt.is_open_read = true and not proc.name in (cat, sh)"
            " and not fd.name startswith /proc/ and fd.name != /etc/hosts",
            "evt.type = openat and fd.name = /proc/self/status",  # an entry under /proc/
        ],
    )
    tables = build_tables([(r.name, r.expr) for r in engine.rules])
    plans = [p for p in tables.plans if p.rule == "R1" and p.evt_type == "openat"]
    assert "comm is not {cat, sh}" in plans[0].describe()[0]
    assert "fd.name does not start with {/proc/}" in plans[0].describe()[0]

    def conn(ip: str | None) -> bool:
        return passes(
            tables, KernelView("connect", "curl", 0, dport=443, daddr=ip, sock_family="4")
        )

    assert not conn("127.0.0.1") and not conn("10.1.2.3")
    assert conn("8.8.8.8") and conn("192.168.1.5") and conn(None)

    def op(comm: str, path: str, flags: int = 0) -> bool:
        return passes(tables, KernelView("openat", comm, 0, path="/x", flags=flags, kpath=path))

    assert not op("cat", "/etc/passwd") and not op("sh", "/etc/passwd")
    assert op("bash", "/etc/passwd") and op("verylongprocess", "/etc/passwd")
    assert not op("bash", "/proc/1/stat") and not op("bash", "/etc/hosts")
    assert op("bash", "/proc/self/status")  # R2 wants it, under R1's excluded prefix
    assert not op("bash", "/etc/passwd", flags=1)  # a write: R1 wants reads only


NEG_PATHS = ["/tmp/a/b/c", "/tmp/a/x", "/etc/ssl/x.pem", "/etc/passwd", "/tmp/z", "/usr/bin/ls"]
NEG_VALUES = ["/tmp/", "/tmp/a/", "/tmp/a/b/", "/etc/", "/etc/ssl/", *NEG_PATHS]
NEG_NETS = ["10.0.0.0/8", "10.1.0.0/16", "127.0.0.0/8", "0.0.0.0/0", "8.8.8.8/32"]
NEG_IPS = ["10.1.2.3", "10.9.9.9", "127.0.0.1", "8.8.8.8", "192.168.1.5"]
NEG_COMM_ATOMS = [
    st.builds(lambda v: f"proc.name in {_lst(v)}", st.lists(st.sampled_from(COMMS), max_size=2)),
    st.builds(lambda v: f"proc.name != {_q(v)}", st.sampled_from(COMMS)),
]
NEG_PATH_ATOMS = st.one_of(
    st.builds(
        lambda o, v: f"fd.name {o} {_q(v)}",
        st.sampled_from(["startswith", "endswith", "=", "!="]),
        st.sampled_from([*NEG_VALUES, ".pem", "c", "/passwd", "x"]),
    ),
    st.builds(lambda v: f"fd.name in {_lst(v)}", st.lists(st.sampled_from(NEG_PATHS), max_size=2)),
    *NEG_COMM_ATOMS,
)
NEG_NET_ATOMS = st.one_of(
    st.builds(lambda v: f"fd.snet in {_lst(v)}", st.lists(st.sampled_from(NEG_NETS), max_size=2)),
    st.builds(lambda v: f"fd.snet != {_q(v)}", st.sampled_from(NEG_NETS)),
    st.builds(lambda v: f"fd.sip = {_q(v)}", st.sampled_from(NEG_IPS)),
    *NEG_COMM_ATOMS,
)


def _neg_conds(atoms: Any) -> Any:
    return st.recursive(
        atoms,
        lambda kids: st.one_of(
            st.builds(lambda a: f"not ({a})", kids),
            st.builds(lambda a, b: f"({a} and {b})", kids, kids),
            st.builds(lambda a, b: f"({a} and not {b})", kids, kids),
            st.builds(lambda a, b: f"({a} or {b})", kids, kids),
        ),
        max_leaves=4,
    )


@st.composite
def neg_events(draw: Any, evt_type: str) -> tuple[KernelView, dict[str, Any]]:
    comm = draw(st.sampled_from(COMMS))[:15]
    base = {"evt.dir": "<", "proc.name": comm, "user.uid": 0, "evt.rawres": 3}
    if evt_type == "openat":
        p = draw(st.sampled_from(NEG_PATHS))
        ev = base | {"evt.type": "openat", "fd.name": p, "fd.nameraw": p, "fd.num": 3}
        ev |= {"fd.directory": os.path.dirname(p), "fd.filename": os.path.basename(p)}
        ev |= {"fd.typechar": "f", "evt.is_open_read": True, "evt.is_open_write": False}
        return KernelView("openat", comm, 0, path=p, flags=0, ret=3, kpath=p), ev
    ip = draw(st.sampled_from(NEG_IPS))
    ev = base | {"evt.type": "connect", "fd.sip": ip, "fd.rip": ip, "fd.snet": ip}
    ev |= {"fd.sport": 443, "fd.rport": 443, "fd.typechar": "4", "fd.num": 3}
    return KernelView("connect", comm, 0, dport=443, daddr=ip, sock_family="4", ret=0), ev


@st.composite
def neg_cases(draw: Any) -> tuple[str, list[str], list[tuple[KernelView, dict[str, Any]]]]:
    """Rules and events of one type, over a small vocabulary, so that rules match often (and
    no rule about the other type leaves the type unfiltered, which would prove nothing)."""
    t = draw(st.sampled_from(["openat", "connect"]))
    conds = draw(st.lists(_neg_conds(NEG_PATH_ATOMS if t == "openat" else NEG_NET_ATOMS),
                          min_size=1, max_size=3))  # fmt: skip
    return t, conds, draw(st.lists(neg_events(t), min_size=4, max_size=12))


@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(neg_cases())
def test_negative_constraints_never_drop_a_matching_event(
    tmp_path: Path, case: tuple[str, list[str], list[tuple[KernelView, dict[str, Any]]]]
) -> None:
    """Negations and exceptions: every event a rule matches passes the kernel's tables
    (positive prefixes with excepted ones, excluded networks, excluded names)."""
    t, conds, events = case
    engine = _engine(tmp_path, [f"evt.type = {t} and {c}" for c in conds])
    tables = build_tables([(r.name, r.expr) for r in engine.rules])
    for kv, ev in events:
        if engine.match(ev):
            assert passes(tables, kv), (conds, kv, ev)


def test_too_many_negated_terms_fall_back_to_the_plan_without_them(tmp_path: Path) -> None:
    """Falco's exceptions are often `not (a and b)`: each doubles the terms. Past the limit the
    rule is planned with its negated checks widened, not widened to "always" (which would
    leave the whole event type unfiltered, as Falco's 'Write below etc' once did)."""
    excs = " and ".join(
        f"not (proc.name = p{i} and fd.name startswith /etc/x{i}/)" for i in range(7)
    )
    engine = _engine(tmp_path, [f"evt.type = openat and fd.name startswith /etc/ and {excs}"])
    tables = build_tables([(r.name, r.expr) for r in engine.rules])
    ft = tables.types["openat"]
    assert not ft.pass_all and ft.nterms == 1
    plan = next(p for p in tables.plans if p.evt_type == "openat")
    assert any("planned without them" in a for a in plan.approximated)
    assert not passes(tables, KernelView("openat", "cat", 0, path="/x", kpath="/usr/lib/a"))
    assert passes(tables, KernelView("openat", "p1", 0, path="/x", kpath="/etc/x1/y"))
