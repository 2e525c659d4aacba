"""The default rules about processes and containers (rules/sentinel_rules.yaml), live: one
``sentinel run``.

Attacks are real and their effect is checked: ptrace really rewrites a variable in another
process, a container really escapes into the host's mount namespace (a file appears on the
host) or gets root in a new user namespace, a release_agent really holds the attacker's path.
Containers are podman + runc on a busybox root file system (no registry). Near misses (a
debugger's own TRACEME child, nsenter on the host, a program from the image...) must not alert.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.rules_live import (
    Containers,
    LiveRun,
    busybox_rootfs,
    by_rule,
    check_rule_metadata,
    fields,
    marker,
    mentions,
    sentinel_run,
    wait_for,
)

pytestmark = pytest.mark.kernel

APPLETS = ("sh", "true", "cat", "cp", "echo", "id", "mkdir", "mount", "nsenter", "unshare")


@pytest.fixture(scope="module")
def run() -> Iterator[LiveRun]:
    with sentinel_run() as r:
        yield r


@pytest.fixture(scope="module")
def containers(tmp_path_factory: pytest.TempPathFactory) -> Containers:
    root = busybox_rootfs(tmp_path_factory.mktemp("rootfs"), APPLETS)
    return Containers(root, tmp_path_factory.mktemp("podman"))


# ---- ptrace -------------------------------------------------------------------------------------

VICTIM = r"""
#include <stdio.h>
#include <unistd.h>
static volatile long secret = 1;
int main(void) {
    printf("%p\n", (void *)&secret);
    fflush(stdout);
    for (int i = 0; i < 3000 && secret == 1; i++)
        usleep(10000);
    printf("%ld\n", secret);
    return 0;
}
"""

# Attaches to the victim, writes 42 into its variable, detaches.
INJECT = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
pid, addr = int(sys.argv[1]), int(sys.argv[2], 16)
assert libc.ptrace(16, pid, None, None) == 0, os.strerror(ctypes.get_errno())  # ATTACH
os.waitpid(pid, 0)
assert libc.ptrace(5, pid, ctypes.c_void_p(addr), ctypes.c_void_p(42)) == 0  # POKEDATA
assert libc.ptrace(17, pid, None, None) == 0  # DETACH
"""

TRACEME = """
import ctypes
ctypes.CDLL(None).ptrace(0, 0, None, None)  # PTRACE_TRACEME
"""


def test_ptrace_injection(run: LiveRun, tmp_path: Path) -> None:
    src = tmp_path / "victim.c"
    src.write_text(VICTIM)
    exe = tmp_path / "victim"
    subprocess.run(["gcc", "-O0", "-o", str(exe), str(src)], check=True)
    victim = subprocess.Popen([str(exe)], stdout=subprocess.PIPE, text=True)
    assert victim.stdout is not None
    addr = victim.stdout.readline().strip()
    attacker = subprocess.run([sys.executable, "-c", INJECT, str(victim.pid), addr], check=True)
    out, _ = victim.communicate(timeout=30)
    assert out.strip() == "42"  # the attacker rewrote the victim's memory
    hits = wait_for(
        run,
        lambda a: (
            a["rule"] == "Process Injection via ptrace"
            and f"pid={victim.pid}(" in fields(a)["evt.args"]
        ),
    )
    requests = sorted(fields(a)["evt.arg.request"] for a in hits)
    assert requests == ["PTRACE_ATTACH", "PTRACE_POKEDATA"], hits  # DETACH is not injection
    assert attacker.returncode == 0
    for a in hits:
        assert fields(a)["proc.name"].startswith("python")
        check_rule_metadata(a)


def test_ptrace_anti_debugging(run: LiveRun) -> None:
    m = marker()
    subprocess.run([sys.executable, "-c", TRACEME, m], check=True)
    # Near miss: strace's child asks to be traced by strace itself.
    if shutil.which("strace") is None:
        raise AssertionError("strace is missing: run scripts/setup.sh")
    subprocess.run(["strace", "-o", "/dev/null", "/bin/true", f"near-{m}"], check=True)
    hits = wait_for(run, lambda a: a["rule"] == "Anti-Debugging with ptrace" and mentions(a, m))
    assert len(hits) == 1, run.alerts
    assert fields(hits[0])["proc.name"].startswith("python")
    check_rule_metadata(hits[0])
    later = by_rule(run.settle(0.5), "Anti-Debugging with ptrace")
    assert not [a for a in later if fields(a)["proc.pname"] == "strace"], later


# ---- kernel modules -----------------------------------------------------------------------------


def test_kernel_module_load_attempt(run: LiveRun, tmp_path: Path) -> None:
    """This host's kernel has no module support (no /proc/modules, no init_module/finit_module
    tracepoints): the attempt through insmod/modprobe is what can be seen and tested here."""
    m = marker()
    ko = tmp_path / f"rootkit-{m}.ko"
    ko.write_bytes(b"\x7fELF not really a module")
    for tool in ("insmod", "modprobe"):
        if shutil.which(tool) is None:
            raise AssertionError(f"{tool} is missing (kmod): run scripts/setup.sh")
    subprocess.run(["insmod", str(ko)], capture_output=True)
    subprocess.run(["modprobe", f"rootkit_{m}"], capture_output=True)
    # Near misses: modprobe options that load nothing.
    subprocess.run(["modprobe", "-r", f"near_{m}"], capture_output=True)
    subprocess.run(["modprobe", "--show-depends", f"near_{m}"], capture_output=True)
    hits = wait_for(run, lambda a: a["rule"] == "Kernel Module Load" and mentions(a, m))
    run.settle(0.5)
    hits = [a for a in by_rule(run.alerts, "Kernel Module Load") if mentions(a, m)]
    got = sorted(fields(a)["proc.name"] for a in hits)
    assert got == ["insmod", "modprobe"], [a["output"] for a in hits]
    assert not [a for a in hits if mentions(a, f"near_{m}")]
    for a in hits:
        check_rule_metadata(a)


# ---- executables --------------------------------------------------------------------------------

MEMFD_EXEC = """
import os, sys
fd = os.memfd_create("payload", 0)
with open("/bin/echo", "rb") as f:
    os.write(fd, f.read())
os.execv(f"/proc/self/fd/{fd}", ["payload", sys.argv[1]])
"""


def test_fileless_execution(run: LiveRun) -> None:
    m = marker()
    got = subprocess.run([sys.executable, "-c", MEMFD_EXEC, m], capture_output=True, text=True)
    assert got.stdout.strip() == m  # the memfd's program ran
    subprocess.run(["/bin/echo", f"near-{m}"], capture_output=True, check=True)
    hits = wait_for(run, lambda a: a["rule"] == "Fileless Execution from Memory" and mentions(a, m))
    assert len(hits) == 1, run.alerts
    check_rule_metadata(hits[0])
    assert not [a for a in run.settle(0.5) if mentions(a, f"near-{m}")]


def test_program_run_from_dev_shm(run: LiveRun) -> None:
    m = marker()
    exe = Path(f"/dev/shm/sentinel-{m}")
    shutil.copy("/bin/echo", exe)
    try:
        out = subprocess.run([str(exe), m], capture_output=True, text=True, check=True).stdout
        assert out.strip() == m
    finally:
        exe.unlink()
    hits = wait_for(run, lambda a: a["rule"] == "Program Run from /dev/shm" and mentions(a, m))
    assert len(hits) == 1, run.alerts
    assert fields(hits[0])["proc.exepath"] == str(exe)
    check_rule_metadata(hits[0])


# ---- containers ---------------------------------------------------------------------------------


def test_shell_in_container(run: LiveRun, containers: Containers) -> None:
    m = marker()
    subprocess.run(["/bin/sh", "-c", f": host-{m}"], check=True)  # a host shell: no alert
    # The container's shell starts a second one, which busybox runs as /proc/self/exe.
    res = containers.run(f"sh -c ': inner-{m}'; : {m}")
    assert res.returncode == 0, res.stderr
    hits = wait_for(
        run, lambda a: a["rule"] == "Shell Spawned in a Container" and mentions(a, f"inner-{m}")
    )
    outer = [a for a in hits if fields(a)["proc.cmdline"].endswith(f": {m}")]
    inner = [a for a in hits if fields(a)["proc.cmdline"].endswith(f": inner-{m}")]
    assert len(outer) == 1 and len(inner) == 1, [a["output"] for a in hits]
    assert fields(outer[0])["proc.name"] == "sh"
    assert fields(inner[0])["proc.name"] in ("sh", "exe")
    for a in hits:
        f = fields(a)
        assert f["container.id"] != "host" and len(f["container.id"]) == 12
        check_rule_metadata(a)
    assert not [a for a in run.settle(0.5) if mentions(a, f"host-{m}")]


def test_dropped_binary_in_container(run: LiveRun, containers: Containers) -> None:
    m = marker()
    # /bin/echo comes from the image (the lower layer); /tmp/echo is written in the container.
    script = f"echo near-{m}; cp /bin/busybox /tmp/echo; /tmp/echo {m}"
    res = containers.run(script, overlay=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [f"near-{m}", m]  # the dropped copy ran
    hits = wait_for(
        run, lambda a: a["rule"] == "Dropped Binary Executed in a Container" and mentions(a, m)
    )
    assert len(hits) == 1, run.alerts
    f = fields(hits[0])
    assert f["proc.exepath"] == "/tmp/echo"
    assert f["container.id"] != "host"
    check_rule_metadata(hits[0])
    later = by_rule(run.settle(0.5), "Dropped Binary Executed in a Container")
    assert not [a for a in later if mentions(a, f"near-{m}")]


def test_release_agent_escape(run: LiveRun, containers: Containers) -> None:
    """The privileged-container escape: mount a cgroup v1 hierarchy, point its release_agent at
    a program. (The hierarchy is a private named one, so the host's are never touched; it
    disappears with the container's mount namespace.)"""
    m = marker()
    script = textwrap.dedent(f"""
        mkdir -p /tmp/cg && mount -t cgroup -o none,name=sn{m} cgroup /tmp/cg
        cat /tmp/cg/release_agent
        echo 1 > /tmp/cg/notify_on_release
        echo /tmp/payload-{m} > /tmp/cg/release_agent
        cat /tmp/cg/release_agent
    """)
    res = containers.run(script, "--privileged")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == f"/tmp/payload-{m}"  # the agent is set
    hits = wait_for(run, lambda a: a["rule"] == "cgroup release_agent Written")
    hits = [a for a in hits if fields(a)["container.id"] != "host"]
    assert len(hits) == 1, run.alerts
    assert fields(hits[0])["fd.name"] == "/tmp/cg/release_agent"
    check_rule_metadata(hits[0])
    # The read of release_agent and the write of notify_on_release raised nothing.
    later = by_rule(run.settle(0.5), "cgroup release_agent Written")
    assert [fields(a)["fd.name"] for a in later] == ["/tmp/cg/release_agent"]


def test_setns_escape_from_container(run: LiveRun, containers: Containers) -> None:
    """A privileged container sharing the host's pid namespace enters the mount namespace of a
    host process (nsenter) and writes a file on the host."""
    m = marker()
    host_file = Path(f"/tmp/sentinel-escaped-{m}")
    anchor = subprocess.Popen(["sleep", "60"])
    try:
        # Near miss: nsenter on the host.
        subprocess.run(["nsenter", "-t", str(anchor.pid), "-m", "true", f"near-{m}"], check=True)
        script = f"nsenter -t {anchor.pid} -m -- /bin/sh -c 'echo {m} > {host_file}'"
        res = containers.run(script, "--privileged", "--pid=host")
        assert res.returncode == 0, res.stderr
        assert host_file.read_text().strip() == m  # written on the host, from the container
    finally:
        anchor.kill()
        anchor.wait()
        host_file.unlink(missing_ok=True)
    hits = wait_for(run, lambda a: a["rule"] == "Namespace Entered from a Container")
    mine = [a for a in hits if mentions(a, str(anchor.pid))]
    assert len(mine) == 1, [a["output"] for a in hits]
    f = fields(mine[0])
    # busybox's shell runs the applet by executing /proc/self/exe: the name at exec is "exe"
    assert f["proc.name"] in ("nsenter", "exe") and f["container.id"] != "host"
    assert "CLONE_NEWNS" in f["evt.arg.nstype"]
    check_rule_metadata(mine[0])
    assert not [a for a in run.settle(0.5) if mentions(a, f"near-{m}")]


def test_unshare_in_unprivileged_container(run: LiveRun, containers: Containers) -> None:
    m = marker()
    subprocess.run(["unshare", "-U", "-r", "true", f"near-{m}"], check=True)  # on the host
    res = containers.run(f"unshare -U -r -- /bin/sh -c 'id -u; : {m}'")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "0"  # root inside its new user namespace
    # Near miss: a privileged container (CAP_SYS_ADMIN) may make namespaces.
    res = containers.run(f"unshare -m -- /bin/true near-{m}", "--privileged")
    assert res.returncode == 0, res.stderr
    hits = wait_for(
        run,
        lambda a: (
            a["rule"] == "Namespace Created in an Unprivileged Container"
            and fields(a)["proc.cmdline"].endswith(f"id -u; : {m}")
            and fields(a)["container.id"] != "host"
        ),
    )
    assert len(hits) == 1, [a["output"] for a in run.alerts]
    # busybox's shell runs the applet by executing /proc/self/exe: the name at exec is "exe"
    assert fields(hits[0])["proc.name"] in ("unshare", "exe")
    assert "CLONE_NEWUSER" in fields(hits[0])["evt.arg.flags"]
    check_rule_metadata(hits[0])
    later = by_rule(run.settle(0.5), "Namespace Created in an Unprivileged Container")
    assert not [a for a in later if fields(a)["container.id"] == "host"]
    assert not [a for a in later if mentions(a, f"near-{m}")]
    # runc's own namespace set-up (every container start above) raises nothing either.
    assert not [a for a in later if fields(a)["proc.name"].startswith("runc")]
