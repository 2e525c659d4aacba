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

from sentinel.enforcement.abi import LSM_HOOKS
from sentinel.enforcement.lsm import (
    OPTIONAL_HOOKS,
    REQUIRED_HOOKS,
    ConnectDeny,
    DenyPolicy,
    LsmEnforcer,
    LsmError,
    PolicyError,
    lsm_available,
    lsm_cflags,
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
    with pytest.raises(LsmError, match=r"the kernel rejected the file_open program"):
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
    assert hooks["inode_rename"][:4] == ["old_dir", "old_dentry", "new_dir", "new_dentry"]
    assert hooks["socket_sendmsg"][:2] == ["sock", "msg"]
    assert arg_index(hooks, "inode_setattr", "dentry") in (0, 1)
    assert lsm_hook_btf_id(vmlinux_btf(), "file_open") > 0
    assert set(LSM_HOOKS) == set(REQUIRED_HOOKS) | set(OPTIONAL_HOOKS)


@NEEDS_BTF
def test_cflags_carry_btf_offsets_and_hook_presence() -> None:
    btf = vmlinux_btf()
    built = lsm_cflags(btf, lsm_hooks(btf))
    assert f"-DOFF_FILE_F_PATH_DENTRY={btf.offsetof('file', 'f_path.dentry')}" in built.flags
    assert f"-DOFF_INODE_I_SB={btf.offsetof('inode', 'i_sb')}" in built.flags
    for hook in OPTIONAL_HOOKS:
        assert (f"-DHAVE_{hook}=1" in built.flags) != (hook in built.lacking)
    # This host (6.18) has io_uring commands, and the loop driver and overlayfs built in.
    assert "-DHAVE_uring_cmd=1" in built.flags
    loop = btf.offsetof("loop_device", "lo_backing_file")
    assert f"-DOFF_LOOP_DEVICE_LO_BACKING_FILE={loop}" in built.flags
    assert f"-DOVL_UPPER_OFF={btf.sizeof('inode')}" in built.flags
    assert built.notes == []


@NEEDS_BTF
def test_missing_required_hook_is_a_clear_error() -> None:
    btf = vmlinux_btf()
    hooks = dict(lsm_hooks(btf))
    del hooks["inode_rename"]
    with pytest.raises(LsmError, match="inode_rename"):
        lsm_cflags(btf, hooks)


# -- policy resolution ------------------------------------------------------------------------


def test_every_entry_of_a_protected_tree_and_every_ancestor(tmp_path: Path) -> None:
    prot = tmp_path / "prot"
    (prot / "d" / "e").mkdir(parents=True)
    (prot / "a.txt").write_text("a")
    (prot / "d" / "e" / "deep.txt").write_text("d")
    (prot / "linked.txt").write_text("l")
    (prot / "ln").symlink_to("/etc/passwd")
    os.link(prot / "linked.txt", tmp_path / "outside-link.txt")
    (tmp_path / "sibling.txt").write_text("s")
    plan = build_plan(DenyPolicy(protect={str(prot): "keep"}))
    assert plan.rules == ["keep"]
    inside = [prot, prot / "d", prot / "d" / "e", prot / "a.txt", prot / "d" / "e" / "deep.txt"]
    inside += [prot / "linked.txt", prot / "ln"]
    for p in inside:
        ident = Ident.of(os.lstat(p))
        assert plan.idents[ident].write_rule == 1, p
        assert plan.ident_paths[ident] == str(p)
    # Every ancestor up to / may not be moved or removed.
    for anc in (tmp_path, tmp_path.parent, Path("/")):
        v = plan.idents[Ident.of(os.lstat(anc))]
        assert v.ancestor_rule == 1
        assert v.write_rule == 0
    # The symlink is protected as itself, not what it points to; a sibling is free.
    assert Ident.of(os.stat("/etc/passwd")) not in plan.idents
    assert Ident.of(os.stat(tmp_path / "sibling.txt")) not in plan.idents


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


def test_deep_trees_are_protected_and_too_large_ones_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No walk judges writes any more, so depth is no limit; size is (the maps')."""
    from sentinel.enforcement import policy

    deep = tmp_path / "deep"
    leaf = deep / Path(*["d"] * 60)
    leaf.mkdir(parents=True)
    (leaf / "f").write_text("x")
    plan = build_plan(DenyPolicy(protect={str(deep): "deep"}))
    assert plan.idents[Ident.of(os.stat(leaf / "f"))].write_rule == 1
    monkeypatch.setattr(policy, "MAX_IDENTS", 20)
    with pytest.raises(PolicyError, match=r"rule 'big'.*more than 20 files"):
        build_plan(DenyPolicy(protect={str(deep): "big"}))


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


# -- what a policy pins besides identities: mounts and devices (root: mounts, loop devices) -------


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def test_protected_path_on_overlayfs_is_refused(tmp_path: Path) -> None:
    """overlayfs' stat() identities are not the inodes the hooks see: refuse, do not guess."""
    _require_root()
    for d in ("lower", "upper", "work", "merged"):
        (tmp_path / d).mkdir()
    (tmp_path / "lower" / "x").mkdir()
    merged = tmp_path / "merged"
    opts = (
        f"lowerdir={tmp_path / 'lower'},upperdir={tmp_path / 'upper'},workdir={tmp_path / 'work'}"
    )
    _run("mount", "-t", "overlay", "overlay", "-o", opts, str(merged))
    try:
        with pytest.raises(PolicyError, match=r"rule 'r'.*is on overlayfs"):
            build_plan(DenyPolicy(protect={str(merged / "x"): "r"}))
        # The directory it is built from is fine.
        build_plan(DenyPolicy(protect={str(tmp_path / "lower" / "x"): "r"}))
    finally:
        _run("umount", str(merged))


def test_mounts_on_the_way_and_inside_a_tree_are_pinned(tmp_path: Path) -> None:
    _require_root()
    from sentinel.enforcement import mounts

    prot = tmp_path / "prot"
    (prot / "m").mkdir(parents=True)
    other = tmp_path / "other"
    other.mkdir()
    _run("mount", "-t", "tmpfs", "tmpfs", str(prot / "m"))
    _run("mount", "-t", "tmpfs", "tmpfs", str(other))
    try:
        (prot / "m" / "inner.txt").write_text("i")
        plan = build_plan(DenyPolicy(protect={str(prot): "r"}))
        ids = {m.point: m.id for m in mounts.mounts()}
        assert ids["/"] in plan.mounts  # on the way
        assert ids[str(prot / "m")] in plan.mounts  # inside the tree
        assert ids[str(other)] not in plan.mounts
        # The tree's identities continue across the mount inside it.
        assert plan.idents[Ident.of(os.stat(prot / "m" / "inner.txt"))].write_rule == 1
        assert plan.idents[Ident.of(os.stat(prot / "m"))].write_rule == 1
    finally:
        _run("umount", str(prot / "m"))
        _run("umount", str(other))


def test_devices_holding_protected_data(tmp_path: Path) -> None:
    """The device a protected tree's file system is on, and a loop device whose backing file
    is protected; a protected file behind a read-write mount is refused."""
    _require_root()
    from sentinel.enforcement.abi import DEV_BLOCK
    from sentinel.enforcement.devices import kernel_dev

    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (8 << 20))
    image = tmp_path / "keep" / "image.img"
    image.parent.mkdir()
    image.write_bytes(b"\0" * (8 << 20))
    loops = []
    try:
        loops.append(_run("losetup", "-f", "--show", str(disk)))
        _run("mkfs.ext4", "-q", loops[0])
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        _run("mount", loops[0], str(mnt))
        try:
            (mnt / "prot").mkdir()
            st = os.stat(loops[0])
            plan = build_plan(DenyPolicy(protect={str(mnt / "prot"): "r"}))
            key = (DEV_BLOCK, kernel_dev(os.major(st.st_rdev), os.minor(st.st_rdev)))
            assert plan.devs.get(key) == 1 and plan.dev_paths[key] == loops[0]
        finally:
            _run("umount", str(mnt))
        loops.append(_run("losetup", "-f", "--show", str(image)))
        st = os.stat(loops[1])
        key = (DEV_BLOCK, kernel_dev(os.major(st.st_rdev), os.minor(st.st_rdev)))
        plan = build_plan(DenyPolicy(protect={str(image.parent): "img"}))
        assert plan.devs.get(key) == 1, plan.dev_paths
        _run("mkfs.ext4", "-q", loops[1])
        _run("mount", loops[1], str(mnt))
        try:
            with pytest.raises(
                PolicyError, match=rf"backing file of {loops[1]}, mounted read-write"
            ):
                build_plan(DenyPolicy(protect={str(image.parent): "img"}))
        finally:
            _run("umount", str(mnt))
    finally:
        for loop in loops:
            subprocess.run(["losetup", "-d", loop], check=False)
