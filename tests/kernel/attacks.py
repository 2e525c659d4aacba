"""The actions Falco's rules watch for, performed for real: ``python attacks.py NAME MARKER
REPORT [ARGS...]``.

Each action makes the exact system calls its Falco event types name (through ``syscall(2)``
with x86-64 numbers, so no libc wrapper substitutes another call: glibc's ``dup`` may be
``fcntl``, Python's ``os.dup`` is), checks the state it changed (a link's inode, a file's mode,
a namespace, a tracer) and writes what it found to REPORT as JSON: its stdout may be a socket
by then (the reverse-shell action dup2s one over it). MARKER is only carried in argv, so the
alerts of this process (and of its forks, which share the command line) can be told apart from
everything else on the machine.

Standard library only: the container actions run this file with the host's /usr/bin/python3
bind-mounted into a busybox container.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

AT_FDCWD = -100
AT_REMOVEDIR, AT_EMPTY_PATH = 0x200, 0x1000
CLONE_NEWNET, CLONE_NEWUSER, CLONE_NEWNS = 0x40000000, 0x10000000, 0x20000
NR = {
    "open": 2, "dup": 32, "dup2": 33, "accept": 43, "ptrace": 101, "setuid": 105, "creat": 85,
    "link": 86, "unlink": 87, "symlink": 88, "chmod": 90, "fchmod": 91, "mkdir": 83,
    "rename": 82, "rmdir": 84, "mkdirat": 258, "unlinkat": 263, "renameat": 264, "linkat": 265,
    "symlinkat": 266, "fchmodat": 268, "dup3": 292, "setns": 308, "renameat2": 316,
    "memfd_create": 319, "bpf": 321, "execveat": 322, "userfaultfd": 323, "openat2": 437,
    "unshare": 272, "openat": 257,
}  # fmt: skip
PTRACE_TRACEME, PTRACE_PEEKDATA, PTRACE_ATTACH, PTRACE_DETACH = 0, 2, 16, 17
BPF_MAP_CREATE, BPF_PROG_LOAD = 0, 5
UFFD_USER_MODE_ONLY = 1
MARKER = ""  # this run's marker (argv), for the children an action starts itself


def sys_call(name: str, *args: Any) -> int:
    """The raw system call; -errno on failure (as the kernel returns it)."""
    r = int(libc.syscall(NR[name], *args))
    return -ctypes.get_errno() if r == -1 else r


def b(path: str) -> bytes:
    return path.encode()


def fd_target(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


# ---- files -------------------------------------------------------------------------------------


def links(d: str) -> dict[str, Any]:
    """Symlinks and hard links over /etc/shadow, each call once; and a symlink to a harmless
    file (no alert). linkat and symlinkat name their new link relative to a directory fd."""
    dirfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    res = {
        "symlink": sys_call("symlink", b"/etc/shadow", b(f"{d}/shadow-symlink")),
        "symlinkat": sys_call("symlinkat", b"/etc/shadow", dirfd, b"shadow-symlinkat"),
        "link": sys_call("link", b"/etc/shadow", b(f"{d}/shadow-link")),
        "linkat": sys_call("linkat", AT_FDCWD, b"/etc/shadow", dirfd, b"shadow-linkat", 0),
        "harmless": sys_call("symlink", b"/etc/hostname", b(f"{d}/hostname-symlink")),
    }
    shadow = os.stat("/etc/shadow").st_ino
    return {
        "res": res,
        "symlinks": {n: os.readlink(f"{d}/{n}") for n in ("shadow-symlink", "shadow-symlinkat")},
        "same_inode": [
            os.stat(f"{d}/{n}").st_ino == shadow for n in ("shadow-link", "shadow-linkat")
        ],
    }


def chmods(d: str) -> dict[str, Any]:
    """The set-uid and set-gid bits, through chmod, fchmod and fchmodat (relative to a
    directory fd); a plain 0755 chmod as the near miss."""
    for n in ("a", "b", "c", "plain"):
        open(f"{d}/{n}", "w").close()
    dirfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    fd = os.open(f"{d}/b", os.O_RDONLY)
    res = {
        "chmod": sys_call("chmod", b(f"{d}/a"), 0o4755),
        "fchmod": sys_call("fchmod", fd, 0o2755),
        "fchmodat": sys_call("fchmodat", dirfd, b"c", 0o6711),
        "plain": sys_call("chmod", b(f"{d}/plain"), 0o755),
    }
    modes = {n: oct(stat.S_IMODE(os.stat(f"{d}/{n}").st_mode)) for n in ("a", "b", "c", "plain")}
    return {"res": res, "modes": modes}


def bindir(marker: str) -> dict[str, Any]:
    """mkdir, mkdirat, rename, renameat, renameat2, rmdir, unlinkat and unlink below /usr/bin,
    each checked on disk; everything made is gone at the end."""
    base = f"/usr/bin/sntl-{marker}"
    usrbin = os.open("/usr/bin", os.O_RDONLY | os.O_DIRECTORY)
    seen: dict[str, Any] = {}
    try:
        seen["mkdir"] = (sys_call("mkdir", b(base), 0o755), os.path.isdir(base))
        rel = f"sntl-{marker}-at"
        seen["mkdirat"] = (
            sys_call("mkdirat", usrbin, b(rel), 0o755),
            os.path.isdir(f"/usr/bin/{rel}"),
        )
        seen["rename"] = (sys_call("rename", b(base), b(base + "-r")), os.path.isdir(base + "-r"))
        args = (AT_FDCWD, b(base + "-r"), usrbin, b(f"sntl-{marker}-ra"))
        seen["renameat"] = (sys_call("renameat", *args), os.path.isdir(f"{base}-ra"))
        args2 = (AT_FDCWD, b(base + "-ra"), AT_FDCWD, b(base + "-r2"), 0)
        seen["renameat2"] = (sys_call("renameat2", *args2), os.path.isdir(base + "-r2"))
        seen["rmdir"] = (sys_call("rmdir", b(base + "-r2")), not os.path.exists(base + "-r2"))
        args3 = (usrbin, b(rel), AT_REMOVEDIR)
        seen["unlinkat"] = (sys_call("unlinkat", *args3), not os.path.exists(f"/usr/bin/{rel}"))
        open(base + "-file", "w").close()
        seen["unlink"] = (sys_call("unlink", b(base + "-file")), not os.path.exists(base + "-file"))
    finally:
        for p in (base, base + "-r", base + "-ra", base + "-r2", f"/usr/bin/sntl-{marker}-at"):
            if os.path.isdir(p):
                os.rmdir(p)
        if os.path.exists(base + "-file"):
            os.unlink(base + "-file")
    return seen


def history(d: str) -> dict[str, Any]:
    """Shell history wiped: truncated on open, renamed away, deleted."""
    bash, zsh, fish = f"{d}/.bash_history", f"{d}/.zsh_history", f"{d}/.ash_history"
    for p in (bash, zsh, fish):
        with open(p, "x") as f:  # O_CREAT|O_EXCL, not "w": O_TRUNC would already match
            f.write("ssh root@192.0.2.1\n")
    fd = os.open(bash, os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    return {
        "truncated": os.path.getsize(bash),
        "rename": sys_call("rename", b(zsh), b(f"{d}/zsh.bak")),
        "unlink": sys_call("unlink", b(fish)),
        "gone": [not os.path.exists(p) for p in (zsh, fish)],
    }


def clear_log(marker: str) -> dict[str, Any]:
    """A log file below /var/log truncated in place."""
    path = f"/var/log/sntl-{marker}.log"
    with open(path, "x") as f:  # created without O_TRUNC: only the truncation matches
        f.write("Nov 29 sshd[1]: Accepted password for root from 192.0.2.1\n")
    try:
        before = os.path.getsize(path)
        os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))
        return {"path": path, "before": before, "after": os.path.getsize(path)}
    finally:
        os.unlink(path)


def opens(marker: str) -> dict[str, Any]:
    """/etc/shadow read through open, openat and openat2; a file created below /dev by creat."""
    how = struct.pack("<QQQ", os.O_RDONLY, 0, 0)  # struct open_how
    fds = {
        "open": sys_call("open", b"/etc/shadow", os.O_RDONLY, 0),
        "openat": sys_call("openat", AT_FDCWD, b"/etc/shadow", os.O_RDONLY, 0),
        "openat2": sys_call("openat2", AT_FDCWD, b"/etc/shadow", how, len(how)),
    }
    read = {k: len(os.read(fd, 64)) > 0 for k, fd in fds.items() if fd >= 0}
    dev = f"/dev/sntl-{marker}"
    fd = sys_call("creat", b(dev), 0o600)
    try:
        created = stat.S_ISREG(os.stat(dev).st_mode)
    finally:
        os.unlink(dev)
    return {"fds": fds, "read": read, "creat": fd, "dev": dev, "created": created}


# ---- processes ---------------------------------------------------------------------------------


def _child(fn: Callable[[], int]) -> int:
    """Run ``fn`` in a forked child (same command line, so same marker); its exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(fn())
        except BaseException:
            os._exit(255)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def execs(marker: str) -> dict[str, Any]:
    """`find ... -name id_rsa` started through execve, and through execveat relative to a
    directory fd of /usr/bin (what a loader that avoids execve's path does)."""

    def via_execve() -> int:
        os.execv("/usr/bin/find", ["find", f"/nonexistent-{marker}", "-name", "id_rsa"])
        return 99

    def via_execveat() -> int:
        d = os.open("/usr/bin", os.O_RDONLY | os.O_DIRECTORY)
        argv = (ctypes.c_char_p * 5)(b"find", b(f"/nonexistent-{marker}"), b"-name", b"id_ed25519")
        envp = (ctypes.c_char_p * 1)()
        sys_call("execveat", d, b"find", argv, envp, 0)
        return 99

    return {"execve": _child(via_execve), "execveat": _child(via_execveat)}


def memfd(marker: str) -> dict[str, Any]:
    """A program run from memory only: /usr/bin/true copied into a memfd and executed through
    execveat(fd, "", AT_EMPTY_PATH), as fileless malware does (no file on disk)."""
    fd = sys_call("memfd_create", b"payload", 0)
    with open("/usr/bin/true", "rb") as f:
        os.write(fd, f.read())

    def run() -> int:
        argv = (ctypes.c_char_p * 3)(b"payload", b(marker))
        envp = (ctypes.c_char_p * 1)()
        sys_call("execveat", fd, b"", argv, envp, AT_EMPTY_PATH)
        return 99

    return {"memfd": fd, "target": fd_target(fd), "status": _child(run)}


def env_execs(marker: str) -> dict[str, Any]:
    """Programs started with environment variables Falco's rules look for: curl with an
    HTTP_PROXY (``--version`` only: it exits before any transfer), and GLIBC_TUNABLES (the
    CVE-2023-4911 vector) for a harmless program."""

    def curl() -> int:
        env = {"HTTP_PROXY": "http://192.0.2.1:3128", "PATH": "/usr/bin:/bin"}
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, 1)
        os.execve("/usr/bin/curl", ["curl", "--version", marker], env)
        return 99

    def tunables() -> int:
        env = {"GLIBC_TUNABLES": "glibc.malloc.mxfast=0", "PATH": "/usr/bin:/bin"}
        os.execve("/usr/bin/true", ["true", marker], env)
        return 99

    return {"curl": _child(curl), "true": _child(tunables)}


def ptrace(marker: str) -> dict[str, Any]:
    """PTRACE_TRACEME in a child (anti-debugging); PTRACE_ATTACH to a sleeping child, checked
    by its TracerPid; PTRACE_PEEKDATA (reading, no alert) then detach."""
    traceme = _child(lambda: 0 if sys_call("ptrace", PTRACE_TRACEME, 0, 0, 0) == 0 else 1)
    victim = os.fork()
    if victim == 0:
        time.sleep(60)
        os._exit(0)
    try:
        attach = sys_call("ptrace", PTRACE_ATTACH, victim, 0, 0)
        os.waitpid(victim, os.WUNTRACED)
        with open(f"/proc/{victim}/status") as f:
            status = f.read()
        tracer = int(status.split("TracerPid:")[1].split()[0])
        sys_call("ptrace", PTRACE_PEEKDATA, victim, 0, 0)
        sys_call("ptrace", PTRACE_DETACH, victim, 0, 0)
    finally:
        os.kill(victim, 9)
        os.waitpid(victim, 0)
    return {
        "traceme": traceme,
        "attach": attach,
        "victim": victim,
        "tracer": tracer,
        "me": os.getpid(),
    }


def setns(netns: str) -> dict[str, Any]:
    """Join another network namespace (/run/netns/NAME) by setns."""
    before = os.readlink("/proc/self/ns/net")
    fd = os.open(netns, os.O_RDONLY)
    res = sys_call("setns", fd, CLONE_NEWNET)
    return {"res": res, "before": before, "after": os.readlink("/proc/self/ns/net")}


def nobody(_: str) -> dict[str, Any]:
    """As user nobody: setuid(0) (refused: no sudo, no set-uid binary) and userfaultfd in user
    mode (allowed unprivileged: the fd is real)."""
    r, w = os.pipe()

    def body() -> int:
        os.setgid(65534)
        os.setuid(65534)
        got = {"uid": os.getuid(), "setuid": sys_call("setuid", 0), "uid_after": os.geteuid()}
        fd = sys_call("userfaultfd", UFFD_USER_MODE_ONLY)
        got["userfaultfd"] = fd
        got["uffd_target"] = fd_target(fd) if fd >= 0 else None
        os.write(w, json.dumps(got).encode())
        return 0

    status = _child(body)
    os.close(w)
    return {"status": status, **json.loads(os.read(r, 4096))}


def bpf(_: str) -> dict[str, Any]:
    """A (trivial, "r0 = 0; exit") socket filter loaded by BPF_PROG_LOAD; a map created by
    BPF_MAP_CREATE (no alert: not a program)."""
    insns = (ctypes.c_uint64 * 2)(0xB7, 0x95)
    lic = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQ", attr, 0, 1, 2, ctypes.addressof(insns), ctypes.addressof(lic))
    prog = sys_call("bpf", BPF_PROG_LOAD, attr, 128)
    mattr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIII", mattr, 0, 2, 4, 4, 1)  # array, key 4, value 4, 1 entry
    amap = sys_call("bpf", BPF_MAP_CREATE, mattr, 128)
    return {"prog": prog, "prog_target": fd_target(prog) if prog >= 0 else None, "map": amap}


# ---- network (run inside a test network namespace) -----------------------------------------------


def net(server: str) -> dict[str, Any]:
    """TCP listen, connect, accept4 (Python's accept) and accept (the raw call); unconnected UDP
    sendto/recvfrom and sendmsg/recvmsg; a UDP connect. ``server`` is a TEST-NET address on the
    namespace's loopback; every peer checks what arrived."""
    srv = socket.create_server((server, 8088))  # SO_REUSEADDR, bind, listen
    c1 = socket.create_connection((server, 8088))
    a1, peer1 = srv.accept()
    c2 = socket.create_connection((server, 8088))
    a2 = sys_call("accept", srv.fileno(), None, None)
    c1.sendall(b"hello")
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((server, 5353))
    # The sender binds its address (port 0: the kernel picks one). Unbound, an unconnected UDP
    # socket's own address is 0.0.0.0 at the send, for Falco's driver too, and Falco's
    # outbound macro (fd.ip != "0.0.0.0", which must hold for both ends) excludes it.
    v = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    v.bind((server, 0))
    v.sendto(b"query-1", (server, 5353))
    got1, sender = u.recvfrom(100)
    v.sendmsg([b"query-2"], [], 0, (server, 5353))
    got2 = u.recvmsg(100)[0]
    w = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    w.connect((server, 9999))
    # A shell's own network connection (bash's /dev/tcp), with the marker as its $0.
    shell_srv = socket.create_server((server, 8090))
    script = f"exec 3<>/dev/tcp/{server}/8090; echo hi >&3"
    subprocess.run(["bash", "-c", script, MARKER], check=True, timeout=30)
    conn, shell_peer = shell_srv.accept()
    return {
        "shell_got": conn.recv(2).decode(),
        "shell_port": shell_peer[1],
        "accepted": a1.recv(5).decode(),
        "client_port": peer1[1],
        "accept_fd": a2,
        "accept_peer_port": c2.getsockname()[1],
        "udp": [got1.decode(), got2.decode()],
        "udp_sender": list(sender),
        "udp_connect_port": w.getsockname()[1],
    }


# ---- in a container ------------------------------------------------------------------------------


def container(server: str) -> dict[str, Any]:
    """Inside a podman container joined to the test namespace: a packet socket; a TCP
    connection dup'ed over stdin, stdout and stderr (dup, dup2, dup3: a reverse shell's
    plumbing); unshare of a user namespace; connections to the cloud metadata address and to a
    Kubernetes NodePort; a file made executable (drift)."""
    out: dict[str, Any] = {}
    pkt = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    out["packet"] = pkt.fileno()
    srv = socket.create_server((server, 4444))
    shell = socket.create_connection((server, 4444))
    peer, _ = srv.accept()
    out["reverse_port"] = shell.getsockname()[1]
    os.close(0)
    out["dup"] = sys_call("dup", shell.fileno())
    out["dup2"] = sys_call("dup2", shell.fileno(), 1)
    out["dup3"] = sys_call("dup3", shell.fileno(), 2, 0)
    os.write(1, b"id\n")  # through the dup'ed stdout: the listener reads it
    out["listener_read"] = peer.recv(3).decode()
    meta = socket.create_server(("169.254.169.254", 80))
    m = socket.create_connection(("169.254.169.254", 80))
    out["metadata_port"] = m.getsockname()[1]
    out["metadata_accepted"] = meta.accept()[1][1] == out["metadata_port"]
    node = socket.create_server((server, 31000))
    n = socket.create_connection((server, 31000))
    out["nodeport_port"] = n.getsockname()[1]
    out["nodeport_accepted"] = node.accept()[1][1] == out["nodeport_port"]
    drift = "/tmp/dropped"
    with open(drift, "w") as f:
        f.write("#!/bin/sh\n")
    out["chmod"] = sys_call("chmod", b(drift), 0o755)
    out["drift_mode"] = oct(stat.S_IMODE(os.stat(drift).st_mode))
    # A new mount namespace without CAP_SYS_ADMIN: refused, and what Falco's rule reports (the
    # process keeps the container's capabilities).
    mnt = os.readlink("/proc/self/ns/mnt")
    out["unshare_mnt"] = sys_call("unshare", CLONE_NEWNS)
    out["mntns_changed"] = os.readlink("/proc/self/ns/mnt") != mnt
    # Last (in a new user namespace this process has no capability over the network
    # namespace): a user namespace, allowed; the task then holds every capability in it, so
    # libsinsp sets the thread's capabilities to all, and the rule, which wants a caller
    # without CAP_SYS_ADMIN, stays quiet.
    before = os.readlink("/proc/self/ns/user")
    out["unshare"] = sys_call("unshare", CLONE_NEWUSER)
    out["userns_changed"] = os.readlink("/proc/self/ns/user") != before
    return out


FILES = (links, chmods, bindir, history, clear_log, opens)
PROCESSES = (execs, memfd, env_execs, ptrace, setns, nobody, bpf)
ACTIONS: dict[str, Callable[[str], dict[str, Any]]] = {
    f.__name__: f for f in (*FILES, *PROCESSES, net, container)
}


def main() -> None:
    """NAME MARKER REPORT [ARG]: the action gets ARG (a directory, an address...), or the
    marker when there is none."""
    global MARKER
    name, marker, report, *rest = sys.argv[1:]
    MARKER = marker
    try:
        facts = ACTIONS[name](rest[0] if rest else marker)
    except BaseException:  # stderr may be a socket by now: the report carries the failure
        facts = {"error": traceback.format_exc()}
    with open(report, "w") as f:
        json.dump(facts, f)


if __name__ == "__main__":
    main()
