"""The default rules about files (rules/sentinel_rules.yaml), live: one ``sentinel run``.

Each attack is real and its effect is checked (the credential file's bytes were read, the file
below /usr/local/bin exists, the log is empty, the mode has S_ISUID...); its alert is found by
the attacking process's pid or a path only this test uses and must name the real file. Near
misses (a read of /etc/hostname, an append to a log, a symlink to a harmless file, a rename
inside /etc...) must raise nothing. Test files below system paths have unique names and are
removed at the end; the test process itself is not ignored by the sensor, so it never creates
them in a way a rule would see (no O_TRUNC below /var/log, no rename into /etc).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.rules_live import (
    Alert,
    LiveRun,
    by_rule,
    check_rule_metadata,
    fields,
    marker,
    mentions,
    sentinel_run,
    wait_for,
)

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def run() -> Iterator[LiveRun]:
    with sentinel_run() as r:
        yield r


def sh(script: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """``sh -c script`` in a child; returns it (its pid is not known after the fact, so the
    tests find alerts by path)."""
    return subprocess.run(
        ["/bin/sh", "-c", script], cwd=cwd, capture_output=True, text=True, check=True
    )


def same_fs_dir(other: str) -> Path:
    """A scratch directory on the file system of ``other`` (renames and hard links do not
    cross file systems)."""
    dev = os.stat(other).st_dev
    bases = ["/var/tmp", "/root", "/tmp", "/"]
    if os.environ.get("SENTINEL_IN_VM"):
        # the VM guest's /etc and /usr/local/bin are overlays of their own (its / is the host's,
        # read-only): a throwaway directory in that directory itself
        bases.append(other if os.path.isdir(other) else os.path.dirname(other) or "/")
    for base in bases:
        if os.path.isdir(base) and os.stat(base).st_dev == dev and os.access(base, os.W_OK):
            return Path(tempfile.mkdtemp(prefix="sentinel-rules-", dir=base))
    raise AssertionError(f"no writable directory on the file system of {other}")


def one(alerts: list[Alert], rule: str) -> Alert:
    hits = by_rule(alerts, rule)
    assert len(hits) == 1, [(a["rule"], a["output"]) for a in alerts]
    check_rule_metadata(hits[0])
    return hits[0]


# ---- credential files ---------------------------------------------------------------------------


def test_credential_file_read(run: LiveRun, tmp_path: Path) -> None:
    shadow = Path("/etc/shadow").read_bytes()
    # Absolute, relative to the cwd, and through a non-canonical path: the same file.
    for how, script, cwd in (
        ("absolute", "cat /etc/shadow", None),
        ("relative", "cat ./shadow", "/etc"),
        ("dotdot", "cat /tmp/../etc/./shadow", None),
    ):
        got = subprocess.run(["/bin/sh", "-c", script], cwd=cwd, capture_output=True, check=True)
        assert got.stdout == shadow, how  # the attack really read the hashes
        hits = wait_for(
            run, lambda a, s=script: a["rule"] == "Credential File Read" and mentions(a, s)
        )
        assert len(hits) == 1, (how, run.alerts)
        f = fields(hits[0])
        assert f["fd.name"] == "/etc/shadow", how
        assert f["proc.name"] == "cat"
        check_rule_metadata(hits[0])
        assert "T1003.008" in hits[0]["tags"]


def test_private_key_read_and_near_misses(run: LiveRun, tmp_path: Path) -> None:
    ssh = tmp_path / "home" / "alice" / ".ssh"
    ssh.mkdir(parents=True)
    key = ssh / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a real key\n")
    (ssh / "id_ed25519.pub").write_text("ssh-ed25519 AAAA test\n")
    m = marker()
    sh(f"cat {key} > /dev/null; : {m}")
    # Near misses: the public key, a harmless /etc file, the shadow file read by chage (a
    # program whose job it is).
    sh(f"cat {ssh}/id_ed25519.pub /etc/hostname > /dev/null; : near-{m}")
    subprocess.run(["chage", "-l", "root"], capture_output=True, check=True)
    hits = wait_for(run, lambda a: a["rule"] == "Credential File Read" and mentions(a, str(ssh)))
    assert [fields(a)["fd.name"] for a in hits] == [str(key)]
    later = run.settle(0.5)
    assert not [a for a in later if mentions(a, f"near-{m}")]
    assert not [a for a in by_rule(later, "Credential File Read") if mentions(a, "chage")]


def test_links_to_sensitive_files(run: LiveRun) -> None:
    scratch = same_fs_dir("/etc")
    try:
        sym, rel, hard, harmless = (scratch / n for n in ("s", "r", "h", "ok"))
        sh(f"ln -s /etc/shadow {sym}; ln -s ../../../../etc/shadow {rel}")
        sh(f"ln /etc/shadow {hard}; ln -s /etc/hostname {harmless}")
        assert os.readlink(sym) == "/etc/shadow"
        assert os.stat(hard).st_ino == os.stat("/etc/shadow").st_ino  # a second name for it
        hits = wait_for(
            run,
            lambda a: a["rule"] == "Link to a Sensitive File Created" and mentions(a, str(scratch)),
        )
        got = {(fields(a)["evt.type"], fields(a)["fs.path.source"]) for a in hits}
        assert got == {("symlinkat", str(sym)), ("symlinkat", str(rel)), ("linkat", str(hard))}
        targets = {fields(a)["fs.path.source"]: fields(a)["fs.path.target"] for a in hits}
        assert targets[str(hard)] == "/etc/shadow"
        assert targets[str(rel)] == "../../../../etc/shadow"
        for a in hits:
            check_rule_metadata(a)
    finally:
        for p in sorted(scratch.iterdir()):
            p.unlink()
        scratch.rmdir()


# ---- binary directories -------------------------------------------------------------------------


def test_write_below_binary_dir(run: LiveRun, tmp_path: Path) -> None:
    target = Path("/usr/local/bin") / f"sentinel-test-{marker()}"
    try:
        sh(f"printf '#!/bin/sh\\necho owned\\n' > {target}; chmod 755 {target}")
        assert subprocess.run([str(target)], capture_output=True, text=True).stdout == "owned\n"
    finally:
        target.unlink(missing_ok=True)
    sh(f"cat /usr/bin/env > /dev/null; : > {tmp_path / 'x'}")  # near misses
    hits = wait_for(run, lambda a: mentions(a, str(target)))
    a = one(hits, "Write Below a Binary Directory")
    assert fields(a)["fd.name"] == str(target)
    assert fields(a)["proc.name"] == "sh"
    names = {fields(x).get("fd.name") for x in run.settle(0.5)}
    assert "/usr/bin/env" not in names and str(tmp_path / "x") not in names


def test_binary_dir_entries(run: LiveRun, tmp_path: Path) -> None:
    m = marker()
    src = same_fs_dir("/usr/local/bin")
    moved = Path(f"/usr/local/bin/sentinel-mv-{m}")
    link = Path(f"/usr/local/bin/sentinel-ln-{m}")
    hidden = Path(f"/usr/local/bin/.sentinel-dir-{m}")
    try:
        (src / "tool").write_bytes(b"#!/bin/sh\n")
        sh(f"mv {src}/tool {moved}; ln -s /tmp/evil-{m} {link}; mkdir {hidden}")
        assert moved.exists() and link.is_symlink() and hidden.is_dir()
        sh(f"rm {moved} {link}; rmdir {hidden}")
        assert not moved.exists() and not link.is_symlink() and not hidden.exists()
        # Near misses: a rename inside a scratch directory, a symlink elsewhere that points
        # at a binary.
        sh(f"touch {tmp_path}/a; mv {tmp_path}/a {tmp_path}/b; ln -s /usr/bin/env {tmp_path}/e")
    finally:
        for p in (moved, link):
            p.unlink(missing_ok=True)
        if hidden.exists():
            hidden.rmdir()
        for p in src.iterdir():
            p.unlink()
        src.rmdir()
    hits = wait_for(
        run, lambda a: a["rule"] == "Binary Directory Entry Changed" and mentions(a, m), timeout=15
    )
    run.settle(0.5)
    hits = [a for a in by_rule(run.alerts, "Binary Directory Entry Changed") if mentions(a, m)]
    got = sorted(
        (fields(a)["evt.type"], fields(a)["fs.path.name"] or fields(a)["fs.path.source"])
        for a in hits
    )
    assert got == sorted(
        [
            ("renameat2", str(src / "tool")),
            ("symlinkat", str(link)),
            ("mkdir", str(hidden)),
            ("unlinkat", str(moved)),
            ("unlinkat", str(link)),
            ("rmdir", str(hidden)),
        ]
    ), [(a["rule"], a["output"]) for a in hits]
    renamed = next(a for a in hits if fields(a)["evt.type"] == "renameat2")
    assert fields(renamed)["fs.path.target"] == str(moved)
    assert not [a for a in run.alerts if mentions(a, str(tmp_path))]


# ---- system configuration -----------------------------------------------------------------------


def test_write_below_etc(run: LiveRun, tmp_path: Path) -> None:
    target = Path("/etc") / f"sentinel-test-{marker()}"
    other = tmp_path / "harmless.txt"
    try:
        sh(f"cat /etc/hostname > /dev/null; : > {other}; echo 'x ALL=(ALL) ALL' > {target}")
        assert target.read_text() == "x ALL=(ALL) ALL\n"
    finally:
        target.unlink(missing_ok=True)
    a = one(
        wait_for(run, lambda a: fields(a).get("fd.name") == str(target)),
        "Write Below System Configuration",
    )
    assert fields(a)["proc.name"] == "sh"
    assert "O_WRONLY" in fields(a)["evt.arg.flags"]
    names = {fields(x).get("fd.name") for x in run.settle(0.5)}
    assert "/etc/hostname" not in names
    assert str(other) not in names


def test_write_below_etc_through_creat(run: LiveRun) -> None:
    """creat(2) (what glibc's creat() issues on x86-64) is an open for writing as well."""
    target = Path("/etc") / f"sentinel-creat-{marker()}"
    code = (
        "import ctypes, os, sys\n"
        "fd = ctypes.CDLL(None, use_errno=True).creat(sys.argv[1].encode(), 0o600)\n"
        "assert fd >= 0, os.strerror(ctypes.get_errno())\n"
        "os.close(fd)\n"
    )
    try:
        subprocess.run([sys.executable, "-c", code, str(target)], check=True)
        assert target.exists()
    finally:
        target.unlink(missing_ok=True)
    a = one(
        wait_for(run, lambda a: fields(a).get("fd.name") == str(target)),
        "Write Below System Configuration",
    )
    assert fields(a)["evt.type"] == "creat"
    assert "O_CREAT" in fields(a)["evt.arg.flags"]


def test_moved_or_linked_into_etc(run: LiveRun) -> None:
    m = marker()
    src = same_fs_dir("/etc")
    moved = Path(f"/etc/sentinel-mv-{m}")
    again = Path(f"/etc/sentinel-mv2-{m}")
    link = Path(f"/etc/sentinel-ln-{m}")
    try:
        (src / "cronjob").write_text("* * * * * root /tmp/x\n")
        sh(f"mv {src}/cronjob {moved}; ln -s {src}/unit {link}")
        assert moved.read_text() == "* * * * * root /tmp/x\n" and link.is_symlink()
        sh(f"mv {moved} {again}")  # near miss: a rename inside /etc
        assert again.exists()
    finally:
        for p in (moved, again, link):
            p.unlink(missing_ok=True)
        src.rmdir()
    wait_for(
        run,
        lambda a: a["rule"] == "File Moved or Linked into System Configuration" and mentions(a, m),
    )
    hits = [
        a
        for a in by_rule(run.settle(0.5), "File Moved or Linked into System Configuration")
        if mentions(a, m)
    ]
    got = sorted((fields(a)["evt.type"], fields(a)["fs.path.target"]) for a in hits)
    assert got == [("renameat2", str(moved)), ("symlinkat", f"{src}/unit")], hits


# ---- logs and modes -----------------------------------------------------------------------------


def test_log_cleared_or_deleted(run: LiveRun, tmp_path: Path) -> None:
    m = marker()
    log = Path(f"/var/log/sentinel-test-{m}.log")
    # Created without O_TRUNC (this process is watched too).
    fd = os.open(log, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    os.write(fd, b"Nov 29 sshd[1]: Accepted password for mallory\n")
    os.close(fd)
    try:
        sh(f"echo more >> {log}; : > {tmp_path / 'other.log'}")  # near misses
        sh(f": > {log}")
        assert log.stat().st_size == 0  # the evidence is gone
        sh(f"rm {log}")
        assert not log.exists()
    finally:
        log.unlink(missing_ok=True)
    wait_for(run, lambda a: a["rule"] == "Log File Cleared or Deleted" and mentions(a, m))
    hits = [a for a in by_rule(run.settle(0.5), "Log File Cleared or Deleted") if mentions(a, m)]
    kinds = sorted(fields(a)["evt.type"] for a in hits)
    assert kinds == ["openat", "unlinkat"], [a["output"] for a in hits]
    trunc = next(a for a in hits if fields(a)["evt.type"] == "openat")
    assert fields(trunc)["fd.name"] == str(log)
    assert "O_TRUNC" in fields(trunc)["evt.arg.flags"]
    rm = next(a for a in hits if fields(a)["evt.type"] == "unlinkat")
    assert fields(rm)["fs.path.name"] == str(log)
    assert not [a for a in run.alerts if mentions(a, str(tmp_path))]


def test_setuid_bit(run: LiveRun, tmp_path: Path) -> None:
    shell = tmp_path / "rootshell"
    sh(f"cp /bin/true {shell}; chmod 0755 {shell}")  # near miss: no set-id bit
    sh(f"chmod u+s {shell}")
    assert os.stat(shell).st_mode & stat.S_ISUID
    other = tmp_path / "setgid"
    other.write_bytes(b"")
    code = "import os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\nos.fchmod(fd, 0o2755)\n"
    subprocess.run([sys.executable, "-c", code, str(other)], check=True)
    assert os.stat(other).st_mode & stat.S_ISGID
    wait_for(run, lambda a: a["rule"] == "Set-uid or Set-gid Bit Set" and mentions(a, str(other)))
    hits = [a for a in run.settle(0.5) if a["rule"] == "Set-uid or Set-gid Bit Set"]
    mine = sorted(
        (fields(a)["evt.type"], fields(a).get("fs.path.name") or fields(a).get("fd.name"))
        for a in hits
        if mentions(a, str(tmp_path))
    )
    assert mine == [("fchmod", str(other)), ("fchmodat", str(shell))], hits
    for a in hits:
        check_rule_metadata(a)
    assert any("S_ISUID" in fields(a)["evt.arg.mode"] for a in hits)
