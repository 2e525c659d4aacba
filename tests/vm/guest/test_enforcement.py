"""BPF LSM enforcement on a real kernel (runs inside the VM; see tests/vm/test_vm.py).

Every denial test: the operation fails with EPERM, the protected file is byte-for-byte (and
mode/owner/xattr) unchanged, and exactly one DenyEvent with the right rule, hook, operation,
path and process fields arrives. Allowed operations must still succeed. The last test stops
the enforcer (everything works again, no lsm program left) and starts a new one (denied again).
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sentinel.enforcement.lsm import DenyEvent, LsmEnforcer

from .conftest import CONTENT, Events, Layout, make_policy, sha

_libc = ctypes.CDLL(None, use_errno=True)


def _state(p: Path) -> tuple[str, int, int, int, bytes | None]:
    st = os.lstat(p)
    try:
        xattr: bytes | None = os.getxattr(p, "trusted.sentinel")
    except OSError:
        xattr = None
    return sha(p) if p.is_file() else "dir", st.st_mode, st.st_uid, st.st_gid, xattr


def assert_denied(
    ev: Events,
    op: Callable[[], object],
    *,
    hook: str | tuple[str, ...],
    operation: str,
    path: Path,
    rule: str = "protect-dir",
    watch: Path | None = None,
) -> DenyEvent:
    """Run ``op``: EPERM, ``watch`` unchanged, exactly one matching event (returned)."""
    watched = watch or path
    before = _state(watched)
    with pytest.raises(PermissionError) as exc:
        op()
    assert exc.value.errno == errno.EPERM
    assert _state(watched) == before, "protected object changed despite the denial"
    got = ev.wait(1)
    assert len(got) == 1, f"expected exactly one deny event, got {got}"
    e = got[0]
    hooks = (hook,) if isinstance(hook, str) else hook
    assert e.rule == rule
    assert e.hook in hooks
    assert e.operation == operation
    assert e.path == str(path)
    assert e.uid == os.getuid()
    assert e.time_ns > 0
    return e


def assert_own_process(e: DenyEvent) -> None:
    assert e.pid == os.getpid()
    assert e.ppid == os.getppid()
    assert e.comm.startswith("python")


# -- protected directory: every way of modifying the file --------------------------------------


@pytest.mark.parametrize(
    ("flags", "operation"),
    [
        (os.O_WRONLY, "open_write"),
        (os.O_RDWR, "open_write"),
        (os.O_WRONLY | os.O_APPEND, "open_write"),
        (os.O_WRONLY | os.O_TRUNC, "open_trunc"),
        (os.O_RDONLY | os.O_TRUNC, "open_trunc"),  # truncates although opened read-only
        (os.O_WRONLY | os.O_CREAT, "open_write"),
    ],
    ids=["write", "rdwr", "append", "wronly-trunc", "rdonly-trunc", "creat-existing"],
)
def test_open_for_write_denied(layout: Layout, ev: Events, flags: int, operation: str) -> None:
    e = assert_denied(
        ev,
        lambda: os.open(layout.target, flags),
        hook="file_open",
        operation=operation,
        path=layout.target,
    )
    assert_own_process(e)


def test_shell_redirect_denied(layout: Layout, ev: Events) -> None:
    """`>>` from a shell: a different process, so the event names that process."""
    before = sha(layout.target)
    r = subprocess.run(
        ["sh", "-c", f'echo evil >> "{layout.target}"'], capture_output=True, text=True
    )
    assert r.returncode != 0
    assert "Operation not permitted" in r.stderr
    assert sha(layout.target) == before
    (e,) = ev.wait(1)
    assert (e.hook, e.operation, e.path) == ("file_open", "open_write", str(layout.target))
    assert e.comm == "sh"
    assert e.ppid == os.getpid()


def test_truncate_denied(layout: Layout, ev: Events) -> None:
    assert_denied(
        ev,
        lambda: os.truncate(layout.target, 0),
        hook="inode_setattr",
        operation="truncate",
        path=layout.target,
    )


def test_ftruncate_on_earlier_descriptor_denied(layout: Layout, ev: Events) -> None:
    assert_denied(
        ev,
        lambda: os.ftruncate(layout.pre_fd, 0),
        hook="inode_setattr",
        operation="truncate",
        path=layout.target,
    )


def test_write_through_descriptor_opened_before_policy_denied(layout: Layout, ev: Events) -> None:
    assert_denied(
        ev,
        lambda: os.pwrite(layout.pre_fd, b"evil", 0),
        hook="file_permission",
        operation="write",
        path=layout.target,
    )


def test_fallocate_on_earlier_descriptor_denied(layout: Layout, ev: Events) -> None:
    assert_denied(
        ev,
        lambda: os.posix_fallocate(layout.pre_fd, 0, 1 << 20),
        hook="file_permission",
        operation="write",
        path=layout.target,
    )


def test_unlink_denied(layout: Layout, ev: Events) -> None:
    assert_denied(
        ev,
        lambda: os.unlink(layout.target),
        hook="inode_unlink",
        operation="unlink",
        path=layout.target,
    )
    assert layout.target.exists()


def test_rename_over_protected_file_denied(layout: Layout, ev: Events) -> None:
    evil = layout.outside / "evil.txt"
    evil.write_bytes(b"evil")
    assert_denied(
        ev,
        lambda: os.rename(evil, layout.target),
        hook="inode_rename",
        operation="rename_to",
        path=layout.target,
    )
    assert evil.read_bytes() == b"evil"


def test_rename_protected_file_away_denied(layout: Layout, ev: Events) -> None:
    assert_denied(
        ev,
        lambda: os.rename(layout.target, layout.outside / "stolen.txt"),
        hook="inode_rename",
        operation="rename_from",
        path=layout.target,
    )
    assert not (layout.outside / "stolen.txt").exists()


def test_rename_protected_directory_away_denied(layout: Layout, ev: Events) -> None:
    assert_denied(
        ev,
        lambda: os.rename(layout.prot, layout.base / "prot-moved"),
        hook="inode_rename",
        operation="rename_from",
        path=layout.prot,
    )
    assert layout.target.read_bytes() == CONTENT


def test_rename_ancestor_of_protected_directory_denied(layout: Layout, ev: Events) -> None:
    """Moving /x (parent of /x/prot) away would let a fresh /x/prot appear."""
    assert_denied(
        ev,
        lambda: os.rename(layout.base, layout.base.with_name("lsm-base-moved")),
        hook="inode_rename",
        operation="rename_from",
        path=layout.base,
    )


def test_rename_into_protected_directory_denied(layout: Layout, ev: Events) -> None:
    new = layout.outside / "newfile.txt"
    new.write_bytes(b"new")
    assert_denied(
        ev,
        lambda: os.rename(new, layout.prot / "planted.txt"),
        hook="inode_rename",
        operation="rename_to",
        path=layout.prot / "planted.txt",
        watch=layout.prot,
    )
    assert not (layout.prot / "planted.txt").exists()


def test_hard_link_out_denied(layout: Layout, ev: Events) -> None:
    assert_denied(
        ev,
        lambda: os.link(layout.target, layout.outside / "link.txt"),
        hook="inode_link",
        operation="link_from",
        path=layout.target,
    )
    assert not (layout.outside / "link.txt").exists()


def test_hard_link_into_protected_directory_denied(layout: Layout, ev: Events) -> None:
    src = layout.outside / "linksrc.txt"
    src.write_bytes(b"x")
    assert_denied(
        ev,
        lambda: os.link(src, layout.prot / "planted-link.txt"),
        hook="inode_link",
        operation="link_to",
        path=layout.prot / "planted-link.txt",
        watch=layout.prot,
    )


def test_write_through_hard_link_made_before_policy_denied(layout: Layout, ev: Events) -> None:
    """The link lives outside prot/; the file is still the protected inode."""
    assert os.stat(layout.prelink).st_ino == os.stat(layout.target).st_ino
    assert_denied(
        ev,
        lambda: os.open(layout.prelink, os.O_WRONLY),
        hook="file_open",
        operation="open_write",
        path=layout.target,
    )


def test_chmod_denied(layout: Layout, ev: Events) -> None:
    assert_denied(
        ev,
        lambda: os.chmod(layout.target, 0o777),
        hook="inode_setattr",
        operation="chmod",
        path=layout.target,
    )


def test_chown_denied(layout: Layout, ev: Events) -> None:
    assert_denied(
        ev,
        lambda: os.chown(layout.target, 1234, 1234),
        hook="inode_setattr",
        operation="chown",
        path=layout.target,
    )


def test_chmod_of_protected_directory_denied(layout: Layout, ev: Events) -> None:
    assert_denied(
        ev,
        lambda: os.chmod(layout.prot, 0o777),
        hook="inode_setattr",
        operation="chmod",
        path=layout.prot,
    )


def test_utime_denied(layout: Layout, ev: Events) -> None:
    before = os.stat(layout.target).st_mtime_ns
    assert_denied(
        ev,
        lambda: os.utime(layout.target, (0, 0)),
        hook="inode_setattr",
        operation="setattr",
        path=layout.target,
    )
    assert os.stat(layout.target).st_mtime_ns == before


def test_setxattr_denied(layout: Layout, ev: Events) -> None:
    assert_denied(
        ev,
        lambda: os.setxattr(layout.target, "trusted.sentinel", b"after"),
        hook="inode_setxattr",
        operation="setxattr",
        path=layout.target,
    )


def test_removexattr_denied(layout: Layout, ev: Events) -> None:
    assert_denied(
        ev,
        lambda: os.removexattr(layout.target, "trusted.sentinel"),
        hook="inode_removexattr",
        operation="removexattr",
        path=layout.target,
    )


def test_create_file_in_protected_directory_denied(layout: Layout, ev: Events) -> None:
    new = layout.prot / "new.txt"
    assert_denied(
        ev,
        lambda: os.open(new, os.O_WRONLY | os.O_CREAT, 0o644),
        hook="inode_create",
        operation="create",
        path=new,
        watch=layout.prot,
    )
    assert not new.exists()


def test_mkdir_in_protected_directory_denied(layout: Layout, ev: Events) -> None:
    assert_denied(
        ev,
        lambda: os.mkdir(layout.prot / "newdir"),
        hook="inode_mkdir",
        operation="mkdir",
        path=layout.prot / "newdir",
        watch=layout.prot,
    )


def test_symlink_in_protected_directory_denied(layout: Layout, ev: Events) -> None:
    assert_denied(
        ev,
        lambda: os.symlink("/etc/passwd", layout.prot / "ln"),
        hook="inode_symlink",
        operation="symlink",
        path=layout.prot / "ln",
        watch=layout.prot,
    )


def test_rmdir_in_protected_directory_denied(layout: Layout, ev: Events) -> None:
    assert_denied(
        ev,
        lambda: os.rmdir(layout.sub),
        hook="inode_rmdir",
        operation="rmdir",
        path=layout.sub,
    )
    assert layout.sub.is_dir()


def test_deep_file_write_reports_full_path(layout: Layout, ev: Events) -> None:
    leaf = layout.prot / "deeper" / "a" / "b" / "leaf.txt"
    assert_denied(
        ev,
        lambda: os.open(leaf, os.O_WRONLY),
        hook="file_open",
        operation="open_write",
        path=leaf,
    )


def test_shared_writable_mmap_denied(layout: Layout, ev: Events) -> None:
    assert_denied(
        ev,
        lambda: mmap.mmap(
            layout.pre_fd, len(CONTENT), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
        ),
        hook="mmap_file",
        operation="mmap_shared_write",
        path=layout.target,
    )


def test_mprotect_shared_mapping_to_writable_denied(layout: Layout, ev: Events) -> None:
    libc = _libc
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]  # fmt: skip
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    addr = libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_SHARED, layout.pre_fd, 0)
    assert addr not in (None, ctypes.c_void_p(-1).value), "read-only shared mapping must work"
    ev.wait(0, timeout=0, settle=0.2)
    assert ev.items == [], "a read-only mapping is not a denial"

    def op() -> None:
        if libc.mprotect(addr, 4096, mmap.PROT_READ | mmap.PROT_WRITE) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    try:
        assert_denied(
            ev,
            op,
            hook="file_mprotect",
            operation="mprotect_shared_write",
            path=layout.target,
        )
    finally:
        libc.munmap(addr, 4096)


# -- mounts ----------------------------------------------------------------------------------


def _mount(source: str, target: Path, fstype: str | None, flags: int = 0) -> None:
    libc = _libc
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_void_p]  # fmt: skip
    fs = fstype.encode() if fstype else None
    if libc.mount(source.encode(), str(target).encode(), fs, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(target))


MS_BIND = 4096


def test_mount_over_protected_subdirectory_denied(layout: Layout, ev: Events) -> None:
    e = assert_denied(
        ev,
        lambda: _mount("none", layout.sub, "tmpfs"),
        hook="sb_mount",
        operation="mount",
        path=layout.sub,
    )
    assert_own_process(e)


def test_mount_over_ancestor_denied(layout: Layout, ev: Events) -> None:
    assert_denied(
        ev,
        lambda: _mount("none", layout.base, "tmpfs"),
        hook="sb_mount",
        operation="mount",
        path=layout.base,
        rule="protect-dir",
    )


def test_write_through_bind_mount_of_protected_directory_denied(layout: Layout, ev: Events) -> None:
    """Identities, not strings: another path to the same directory is just as protected."""
    view = layout.outside / "bindview"
    view.mkdir(exist_ok=True)
    _mount(str(layout.prot), view, None, MS_BIND)  # bind-mounting *from* it is allowed
    try:
        assert ev.wait(0, timeout=0) == []
        assert (view / "target.txt").read_bytes() == CONTENT
        assert_denied(
            ev,
            lambda: os.open(view / "target.txt", os.O_WRONLY),
            hook="file_open",
            operation="open_write",
            path=layout.target,
        )
    finally:
        subprocess.run(["umount", str(view)], check=True)


# -- allowed operations ------------------------------------------------------------------------


def test_reading_protected_file_still_works(layout: Layout, ev: Events) -> None:
    assert layout.target.read_bytes() == CONTENT
    assert os.pread(layout.pre_fd, 5, 0) == CONTENT[:5]
    n = len(CONTENT)
    with mmap.mmap(layout.pre_fd, n, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE) as m:
        m[:4] = b"priv"  # private copy-on-write mapping: never reaches the file
    assert layout.target.read_bytes() == CONTENT
    assert ev.wait(0, timeout=0) == []


def test_writing_elsewhere_still_works(layout: Layout, ev: Events) -> None:
    f = layout.outside / "free.txt"
    f.write_bytes(b"one")
    with open(f, "ab") as fh:
        fh.write(b"two")
    os.truncate(f, 2)
    os.chmod(f, 0o600)
    os.rename(f, layout.outside / "free2.txt")
    os.link(layout.outside / "free2.txt", layout.outside / "free3.txt")
    os.unlink(layout.outside / "free2.txt")
    assert (layout.outside / "free3.txt").read_bytes() == b"on"
    (layout.outside / "d").mkdir()
    (layout.outside / "d").rmdir()
    # A sibling of prot/ whose name shares its prefix is not under it (component-wise match).
    sib = layout.base / "prot-sibling"
    sib.mkdir()
    (sib / "x").write_bytes(b"x")
    assert ev.wait(0, timeout=0) == []


# -- exec -----------------------------------------------------------------------------------


def test_exec_denied(layout: Layout, ev: Events) -> None:
    with pytest.raises(PermissionError) as exc:
        subprocess.run([str(layout.denied_exe)], check=False)
    assert exc.value.errno == errno.EPERM
    (e,) = ev.wait(1)
    assert (e.rule, e.hook, e.operation) == ("deny-exec", "file_open", "exec")
    assert e.path == str(layout.denied_exe)
    assert e.ppid == os.getpid()  # the forked child tried to exec
    assert e.fields()["evt.type"] == "execve"
    assert e.fields()["proc.exepath"] == str(layout.denied_exe)


def test_exec_denied_from_shell(layout: Layout, ev: Events) -> None:
    r = subprocess.run(["sh", "-c", str(layout.denied_exe)], capture_output=True, text=True)
    assert r.returncode == 126, r
    (e,) = ev.wait(1)
    assert (e.rule, e.path, e.comm) == ("deny-exec", str(layout.denied_exe), "sh")


def test_exec_under_denied_directory_denied(layout: Layout, ev: Events) -> None:
    with pytest.raises(PermissionError):
        subprocess.run([str(layout.badbin_exe)], check=False)
    (e,) = ev.wait(1)
    assert (e.rule, e.hook, e.path) == ("deny-badbin", "file_open", str(layout.badbin_exe))


def test_exec_too_deep_to_check_is_denied(layout: Layout, ev: Events) -> None:
    """Nesting below the walk's reach must not escape an exec-prefix rule: fail closed."""
    deep = layout.badbin_exe.parent / Path(*["n"] * 40)
    deep.mkdir(parents=True)
    exe = deep / "tool"
    shutil.copy2(layout.allowed_exe, exe)
    with pytest.raises(PermissionError):
        subprocess.run([str(exe)], check=False)
    (e,) = ev.wait(1)
    assert (e.rule, e.hook, e.operation) == ("deny-badbin", "file_open", "exec")
    assert e.path is not None and e.path.endswith("/n/n/tool")


def test_exec_through_dynamic_loader_denied(layout: Layout, ev: Events) -> None:
    """`ld.so /denied/binary` maps it PROT_EXEC without an execve of it: mmap_file denies."""
    ldso = next(
        (p for p in ("/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
         if os.path.exists(p)),
        None,
    )  # fmt: skip
    assert ldso, "the dynamic loader exists on every Debian amd64 system"
    # The loader itself runs a copy that is not denied:
    assert subprocess.run([ldso, str(layout.allowed_exe)]).returncode == 0
    assert ev.wait(0, timeout=0) == []
    r = subprocess.run([ldso, str(layout.denied_exe)], capture_output=True, text=True)
    assert r.returncode != 0
    got = ev.wait(1)
    assert got, "no deny event"
    assert {(e.rule, e.hook, e.operation, e.path) for e in got} == {
        ("deny-exec", "mmap_file", "mmap_exec", str(layout.denied_exe))
    }
    assert len(got) == 1, got


def test_other_execs_still_work(layout: Layout, ev: Events) -> None:
    assert subprocess.run([str(layout.allowed_exe)]).returncode == 0
    assert subprocess.run(["sh", "-c", "exit 7"]).returncode == 7
    assert ev.wait(0, timeout=0) == []


# -- connect --------------------------------------------------------------------------------


def _connect(host: str, port: int, family: int = socket.AF_INET) -> None:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect((host, port))


@pytest.mark.parametrize(
    ("host", "key", "rule", "family"),
    [
        ("127.0.0.1", "denied", "deny-port", socket.AF_INET),
        ("127.77.0.1", "cidr_in", "deny-cidr", socket.AF_INET),
        ("::1", "v6", "deny-v6", socket.AF_INET6),
    ],
    ids=["loopback-port", "cidr", "ipv6"],
)
def test_connect_denied(
    layout: Layout, ev: Events, host: str, key: str, rule: str, family: int
) -> None:
    port = layout.ports[key]
    with pytest.raises(PermissionError) as exc:
        _connect(host, port, family)
    assert exc.value.errno == errno.EPERM
    (e,) = ev.wait(1)
    assert (e.rule, e.hook, e.operation) == (rule, "socket_connect", "connect")
    assert (e.address, e.port) == (host, port)
    assert_own_process(e)
    f = e.fields()
    assert (f["evt.type"], f["fd.sip"], f["fd.sport"]) == ("connect", host, port)


def test_ipv4_mapped_ipv6_connect_denied(layout: Layout, ev: Events) -> None:
    """An AF_INET6 socket reaching 127.0.0.1 through ::ffff:127.0.0.1 is the same target."""
    with pytest.raises(PermissionError):
        _connect("::ffff:127.0.0.1", layout.ports["denied"], socket.AF_INET6)
    (e,) = ev.wait(1)
    assert (e.rule, e.address) == ("deny-port", "::ffff:127.0.0.1")


def test_other_connects_still_work(layout: Layout, ev: Events) -> None:
    _connect("127.0.0.1", layout.ports["allowed"])
    _connect("127.78.0.1", layout.ports["cidr_out"])
    assert ev.wait(0, timeout=0) == []


# -- accounting and lifecycle (keep last: it stops the session enforcer) -----------------------


def test_every_denial_delivered_once(enforcer: LsmEnforcer, ev: Events) -> None:
    """The kernel's denial counter equals the events delivered: none lost, none doubled."""
    assert enforcer.lost_events == 0
    assert enforcer.denials > 0
    assert enforcer.denials == ev.total


def _lsm_programs() -> list[dict[str, object]]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, check=True)
    return [p for p in json.loads(out.stdout) if p.get("type") == "lsm"]


def test_close_lifts_enforcement_and_reload_restores_it(
    layout: Layout, enforcer: LsmEnforcer, events: Events
) -> None:
    assert len(_lsm_programs()) == len(enforcer.attached_hooks)
    enforcer.close()
    assert _lsm_programs() == [], "programs left attached after close()"
    events.clear()
    # Everything works again.
    os.pwrite(layout.pre_fd, b"P", 0)
    assert subprocess.run([str(layout.denied_exe)]).returncode == 0
    _connect("127.0.0.1", layout.ports["denied"])
    time.sleep(0.3)
    assert events.items == []
    os.pwrite(layout.pre_fd, CONTENT[:1], 0)
    assert layout.target.read_bytes() == CONTENT

    # Starting again restores enforcement. This one polls only when told to and has a
    # one-page ring, so that a real overflow shows the loss accounting.
    again: list[DenyEvent] = []
    with LsmEnforcer(make_policy(layout), again.append, thread=False, ring_pages=1) as enf2:
        with pytest.raises(PermissionError):
            os.pwrite(layout.pre_fd, b"evil", 0)
        with pytest.raises(PermissionError):
            subprocess.run([str(layout.denied_exe)])
        with pytest.raises(PermissionError):
            _connect("127.0.0.1", layout.ports["denied"])
        enf2.poll(100)
        assert [(e.rule, e.operation) for e in again] == [
            ("protect-dir", "write"),
            ("deny-exec", "exec"),
            ("deny-port", "connect"),
        ]
        assert len(_lsm_programs()) == len(enf2.attached_hooks)
        assert enf2.lost_events == 0

        # Nobody reads the ring: it fills after a few events; every denial still happens.
        storm = 200
        for _ in range(storm):
            with pytest.raises(PermissionError):
                os.pwrite(layout.pre_fd, b"evil", 0)
        enf2.poll(100)
        enf2.poll(0)
        assert enf2.denials == 3 + storm
        assert 0 < enf2.lost_events < storm
        assert len(again) + enf2.lost_events == enf2.denials, "every denial: delivered or counted"
    assert _lsm_programs() == []
    assert layout.target.read_bytes() == CONTENT
