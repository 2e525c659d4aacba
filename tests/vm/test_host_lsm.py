"""Host-side tests of the BPF LSM pieces that do not need LSM programs to load.

* lsm_available() against an independent oracle (``bpftool feature probe``), and its message;
* LsmEnforcer refusing to start, with that message, when BPF LSM is unavailable;
* hook discovery and argument positions from the running kernel's BTF;
* policy resolution (identities, ancestors, hard links, CIDR/port encoding) and its errors.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sentinel.enforcement.lsm import (
    HOOKS,
    OPTIONAL_HOOKS,
    REQUIRED_HOOKS,
    ConnectDeny,
    DenyPolicy,
    LsmEnforcer,
    LsmError,
    PolicyError,
    _cflags,
    lsm_available,
)
from sentinel.enforcement.lsm_btf import arg_index, lsm_hook_btf_id, lsm_hooks
from sentinel.enforcement.policy import Ident, build_plan
from sentinel.kernel.btf import VMLINUX, vmlinux_btf

NEEDS_BTF = pytest.mark.skipif(not VMLINUX.exists(), reason="no kernel BTF (CI machines have it)")


def _bpftool_says_lsm_loads() -> bool:
    out = subprocess.run(
        ["bpftool", "feature", "probe", "kernel"], capture_output=True, text=True, check=False
    ).stdout
    lines = [ln for ln in out.splitlines() if "program_type lsm " in ln]
    assert lines, "bpftool did not report on the lsm program type"
    return "NOT available" not in lines[0]


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root; CI runs as root")


# -- detection --------------------------------------------------------------------------------


def test_lsm_available_matches_bpftool_and_explains() -> None:
    _require_root()
    assert shutil.which("bpftool"), "bpftool is installed by scripts/setup.sh"
    ok, msg = lsm_available()
    assert ok == _bpftool_says_lsm_loads(), msg
    if not ok:
        # On this project's hosts: 'bpf' is listed, yet LSM programs are refused (EPERM).
        assert msg.startswith("BPF LSM is not available")
        assert "lsm=" in msg and ",bpf" in msg, "must say how to enable it"
        assert "active LSMs:" in msg


def test_host_kernel_refuses_lsm_programs() -> None:
    """The measured fact from KERNEL.md this whole VM harness exists for."""
    _require_root()
    ok, msg = lsm_available()
    assert not ok, "BPF LSM works on this host: the VM suite is then not the only proof"
    assert "EPERM" in msg


def test_enforcer_refuses_to_start_without_lsm(tmp_path: Path) -> None:
    _require_root()
    if lsm_available()[0]:
        pytest.skip("BPF LSM works here; nothing to refuse (never the case on CI hosts)")
    (tmp_path / "p").mkdir()
    with pytest.raises(LsmError, match=r"BPF LSM is not available.*lsm="):
        LsmEnforcer(DenyPolicy(protect={str(tmp_path / "p"): "r"}), lambda e: None)


def test_enforcer_load_errors_come_back_from_the_loader_child(tmp_path: Path) -> None:
    """The programs are compiled and verified in a child process (no bcc in this one); the
    kernel's refusal (EPERM here) must come back as a clear LsmError naming the hook."""
    _require_root()
    if lsm_available()[0]:
        pytest.skip("BPF LSM works here; nothing is refused (never the case on CI hosts)")
    (tmp_path / "p").mkdir()
    with pytest.raises(LsmError, match=r"the kernel rejected the file_free_security program"):
        LsmEnforcer(
            DenyPolicy(protect={str(tmp_path / "p"): "r"}), lambda e: None, check_available=False
        )
    probe = (
        "import sys\n"
        "from sentinel.enforcement.lsm import DenyPolicy, LsmEnforcer, LsmError\n"
        "try:\n"
        f"    LsmEnforcer(DenyPolicy(protect={{{str(tmp_path / 'p')!r}: 'r'}}), print,"
        " check_available=False)\n"
        "except LsmError:\n"
        "    pass\n"
        "print('bcc' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out


# -- BTF hook discovery ----------------------------------------------------------------------


@NEEDS_BTF
def test_every_required_hook_exists_with_expected_arguments() -> None:
    hooks = lsm_hooks(vmlinux_btf())
    assert set(REQUIRED_HOOKS) <= set(hooks), set(REQUIRED_HOOKS) - set(hooks)
    assert hooks["file_open"] == ["file"]
    assert hooks["path_rename"][:4] == ["old_dir", "old_dentry", "new_dir", "new_dentry"]
    assert hooks["socket_connect"][:2] == ["sock", "address"]
    assert arg_index(hooks, "inode_setattr", "dentry") in (0, 1)
    assert lsm_hook_btf_id(vmlinux_btf(), "file_open") > 0
    assert set(HOOKS.values()) == set(REQUIRED_HOOKS) | set(OPTIONAL_HOOKS)


@NEEDS_BTF
def test_cflags_carry_btf_offsets_and_hook_presence() -> None:
    btf = vmlinux_btf()
    flags, lacking = _cflags(btf, lsm_hooks(btf))
    assert f"-DOFF_FILE_F_PATH_DENTRY={btf.offsetof('file', 'f_path.dentry')}" in flags
    for hook in OPTIONAL_HOOKS:
        assert (f"-DHAVE_{hook}=1" in flags) != (hook in lacking)
    # 6.2+ kernels (this host runs 6.18) have file_truncate.
    assert ("file_truncate" in lsm_hooks(btf)) == ("-DHAVE_file_truncate=1" in flags)


@NEEDS_BTF
def test_missing_required_hook_is_a_clear_error() -> None:
    btf = vmlinux_btf()
    hooks = dict(lsm_hooks(btf))
    del hooks["path_chown"]
    with pytest.raises(LsmError, match="path_chown"):
        _cflags(btf, hooks)


# -- policy resolution ------------------------------------------------------------------------


def test_protected_directory_ancestors_and_hardlinks(tmp_path: Path) -> None:
    prot = tmp_path / "prot"
    prot.mkdir()
    (prot / "a.txt").write_text("a")
    (prot / "linked.txt").write_text("l")
    os.link(prot / "linked.txt", tmp_path / "outside-link.txt")
    plan = build_plan(DenyPolicy(protect={str(prot): "keep"}))
    assert plan.rules == ["keep"]
    d = Ident.of(os.stat(prot))
    assert plan.idents[d].write_rule == 1
    assert plan.ident_paths[d] == str(prot)
    # Every ancestor up to / may not be moved or removed.
    for anc in (tmp_path, tmp_path.parent, Path("/")):
        v = plan.idents[Ident.of(os.lstat(anc))]
        assert v.ancestor_rule == 1
    # A file with another name outside prot/ is protected by its own identity...
    assert plan.idents[Ident.of(os.stat(prot / "linked.txt"))].write_rule == 1
    # ...a file without other names is covered by the directory alone.
    assert Ident.of(os.stat(prot / "a.txt")) not in plan.idents


def test_ident_uses_kernel_dev_encoding(tmp_path: Path) -> None:
    st = os.stat(tmp_path)
    ident = Ident.of(st)
    assert ident.dev >> 20 == os.major(st.st_dev)
    assert ident.dev & 0xFFFFF == os.minor(st.st_dev)
    assert ident.ino == st.st_ino


def test_symlinked_protected_path_protects_target_and_name(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "alias"
    link.symlink_to(real)
    plan = build_plan(DenyPolicy(protect={str(link): "r"}))
    assert plan.idents[Ident.of(os.stat(real))].write_rule == 1
    assert plan.idents[Ident.of(os.lstat(link))].write_rule == 1


def test_exec_exact_and_prefix(tmp_path: Path) -> None:
    exe = tmp_path / "tool"
    exe.write_bytes(b"#!/bin/sh\n")
    d = tmp_path / "bin"
    d.mkdir()
    plan = build_plan(DenyPolicy(exec_exact={str(exe): "x"}, exec_prefix={str(d): "p"}))
    assert plan.idents[Ident.of(os.stat(exe))].exec_exact_rule == plan.rules.index("x") + 1
    assert plan.idents[Ident.of(os.stat(d))].exec_prefix_rule == plan.rules.index("p") + 1
    with pytest.raises(PolicyError, match=r"rule 'x2'.*not a regular file"):
        build_plan(DenyPolicy(exec_exact={str(d): "x2"}))


@pytest.mark.parametrize(
    ("policy", "pattern"),
    [
        (DenyPolicy(protect={"/nonexistent/sentinel/x": "r1"}), r"rule 'r1'.*/nonexistent"),
        (DenyPolicy(protect={"relative/path": "r2"}), r"rule 'r2'.*must be absolute"),
        (DenyPolicy(exec_exact={"/nonexistent/bin/x": "r3"}), r"rule 'r3'.*cannot be resolved"),
        (DenyPolicy(connect=[ConnectDeny("r4", "10.0.0.1/8")]), r"rule 'r4'.*bad CIDR"),
        (DenyPolicy(connect=[ConnectDeny("r5", "not-an-ip")]), r"rule 'r5'.*bad CIDR"),
        (DenyPolicy(connect=[ConnectDeny("r6", None, (0,))]), r"rule 'r6'.*port 0"),
        (DenyPolicy(connect=[ConnectDeny("r7", None, (70000,))]), r"rule 'r7'.*port 70000"),
        (DenyPolicy(connect=[ConnectDeny("r8")]), r"rule 'r8'.*needs a CIDR, ports"),
    ],
)
def test_unenforceable_policy_names_rule_and_item(policy: DenyPolicy, pattern: str) -> None:
    with pytest.raises(PolicyError, match=pattern):
        build_plan(policy)


def _lookup(plan_nets: list[tuple[int, bytes, int]], addr: str) -> int | None:
    """What the kernel's LPM trie returns: the entry of the longest matching prefix."""
    ip = ipaddress.ip_address(addr)
    packed = (
        b"\0" * 10 + b"\xff\xff" + ip.packed if isinstance(ip, ipaddress.IPv4Address) else ip.packed
    )
    value = int.from_bytes(packed, "big")
    best: tuple[int, int] | None = None
    for plen, net, entry in plan_nets:
        mask = ((1 << plen) - 1) << (128 - plen) if plen else 0
        if value & mask == int.from_bytes(net, "big") and (best is None or plen > best[0]):
            best = (plen, entry)
    return None if best is None else best[1]


def _decide(plan_nets: list[tuple[int, bytes, int]], ports: dict[tuple[int, int], int],
            addr: str, port: int) -> int | None:  # fmt: skip
    """The same decision sequence as socket_connect in bpf/enforcement/lsm.c."""
    entry = _lookup(plan_nets, addr)
    if entry is not None:
        rule = ports.get((entry, port)) or ports.get((entry, 0))
        if rule:
            return rule
    return ports.get((0, port))


def test_connect_encoding_longest_prefix_inherits_shorter_ports() -> None:
    plan = build_plan(
        DenyPolicy(
            connect=[
                ConnectDeny("ssh-anywhere-in-10", "10.0.0.0/8", (22,)),
                ConnectDeny("web-in-10.1", "10.1.0.0/16", (80, 443)),
                ConnectDeny("all-of-host", "10.1.2.3/32"),
                ConnectDeny("port-any-addr", None, (6666,)),
                ConnectDeny("v6", "fd00::/8", (53,)),
            ]
        )
    )
    idx = {r: i + 1 for i, r in enumerate(plan.rules)}

    def d(a: str, p: int) -> int | None:
        return _decide(plan.nets, plan.ports, a, p)

    assert d("10.9.9.9", 22) == idx["ssh-anywhere-in-10"]
    assert d("10.1.9.9", 22) == idx["ssh-anywhere-in-10"]  # inherited by the /16 entry
    assert d("10.1.9.9", 443) == idx["web-in-10.1"]
    assert d("10.2.0.1", 443) is None
    assert d("10.1.2.3", 12345) == idx["all-of-host"]
    assert d("10.1.2.3", 22) == idx["ssh-anywhere-in-10"]  # own port rule wins over any-port
    assert d("192.168.1.1", 6666) == idx["port-any-addr"]
    assert d("10.1.9.9", 6666) == idx["port-any-addr"]
    assert d("fd12::1", 53) == idx["v6"]
    assert d("fe80::1", 53) is None
    assert d("127.0.0.1", 22) is None


def test_rejected_program_leaves_nothing_loaded(tmp_path: Path) -> None:
    """This host's kernel refuses LSM programs: a real rejection, after a real compile."""
    _require_root()
    if lsm_available()[0]:
        pytest.skip("BPF LSM works here; no rejection to provoke (never the case on CI hosts)")
    (tmp_path / "p").mkdir()

    def lsm_progs() -> int:
        out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, check=True)
        return sum(1 for p in json.loads(out.stdout) if p.get("type") == "lsm")

    before = lsm_progs()
    with pytest.raises(LsmError, match=r"the kernel rejected the \w+ program"):
        LsmEnforcer(
            DenyPolicy(protect={str(tmp_path / "p"): "r"}), lambda e: None, check_available=False
        )
    assert lsm_progs() == before == 0


def test_deny_event_as_falco_fields() -> None:
    from sentinel.enforcement.lsm import DenyEvent

    f = DenyEvent(
        "r", "file_open", "open_trunc", 10, 11, 1, 0, "sh", 123, path="/etc/shadow"
    ).fields()
    assert (f["evt.type"], f["fd.name"], f["proc.pid"], f["proc.ppid"]) == (
        "openat",
        "/etc/shadow",
        10,
        1,
    )
    assert (f["proc.name"], f["user.uid"], f["evt.time"]) == ("sh", 0, 123)
    assert "proc.exepath" not in f
    x = DenyEvent("r", "bprm_check_security", "exec", 1, 1, 0, 0, "a", 1, path="/bin/nc").fields()
    assert (x["evt.type"], x["proc.exepath"]) == ("execve", "/bin/nc")
    c = DenyEvent("r", "socket_connect", "connect", 1, 1, 0, 0, "a", 1, address="::1", port=22)
    assert c.fields()["fd.name"] == "[::1]:22"
    assert c.fields()["fd.sip"] == "::1"


def test_protected_tree_too_deep_for_the_walk_is_refused(tmp_path: Path) -> None:
    from sentinel.enforcement.policy import MAX_PROTECTED_DEPTH

    ok = tmp_path / "ok"
    (ok / Path(*["d"] * (MAX_PROTECTED_DEPTH - 1))).mkdir(parents=True)
    build_plan(DenyPolicy(protect={str(ok): "fine"}))
    deep = tmp_path / "deep"
    (deep / Path(*["d"] * MAX_PROTECTED_DEPTH)).mkdir(parents=True)
    with pytest.raises(PolicyError, match=r"rule 'too-deep'.*too deep"):
        build_plan(DenyPolicy(protect={str(deep): "too-deep"}))


def test_first_exec_prefix_rule_denies_execs_too_deep_to_check(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    exe = tmp_path / "x"
    exe.write_bytes(b"")
    only_exact = build_plan(DenyPolicy(exec_exact={str(exe): "e"}))
    assert only_exact.deep_exec_rule == 0
    plan = build_plan(
        DenyPolicy(exec_exact={str(exe): "e"}, exec_prefix={str(tmp_path / "a"): "pa"})
    )
    assert plan.rules[plan.deep_exec_rule - 1] == "pa"
