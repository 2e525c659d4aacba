"""What an exec record says beyond the path, on the real kernel: the capability sets after the
exec, the new image's environment and the executable's inode (number, times, memfd, whether
the exec'ing user may write it). Falco's rules read these as thread.cap_*, proc.env,
proc.is_exe_from_memfd and proc.is_exe_writable; the upper-layer flag needs an overlayfs
container and is tested with the container rules.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.kernel.conftest import LiveSensor

pytestmark = pytest.mark.kernel
NOBODY = 65534


def _exec_of(
    live: LiveSensor, marker: str, name: str | None = None, exe: str | None = None
) -> dict[str, object]:
    """The one exec whose command line has ``marker`` (of the program ``name``, argv[0]
    ``exe``)."""
    evs = live.wait_for(lambda e: e["evt.type"] in ("execve", "execveat") and marker in (
        e.get("proc.cmdline") or "") and (name is None or e["proc.name"] == name)
        and (exe is None or e["proc.exe"] == exe))  # fmt: skip
    assert len(evs) == 1, evs
    return evs[0]


def test_root_exec_has_its_capabilities_environment_and_inode(live: LiveSensor) -> None:
    marker = f"e{uuid.uuid4().hex[:8]}"
    env = {"PATH": "/usr/bin:/bin", "SENTINEL_MARK": marker, "GLIBC_TUNABLES": "glibc.x=1"}
    subprocess.run(["/bin/sh", "-c", f"exit 0 # {marker}"], env=env, check=True)
    e = _exec_of(live, marker)
    with open("/proc/self/status") as f:
        eff = next(int(x.split()[1], 16) for x in f if x.startswith("CapEff:"))
    assert eff >> 21 & 1, "the test runs as root with CAP_SYS_ADMIN"
    assert "CAP_SYS_ADMIN" in str(e["thread.cap_effective"]).split(" ")
    assert "CAP_SYS_ADMIN" in str(e["thread.cap_permitted"]).split(" ")
    assert f"SENTINEL_MARK={marker}" in str(e["proc.env"]).split(" ")
    assert "GLIBC_TUNABLES=glibc.x=1" in str(e["proc.env"])
    st = os.stat(os.path.realpath("/bin/sh"))
    assert e["proc.exe_ino"] == st.st_ino
    assert e["proc.exe_ino.ctime"] == st.st_ctime_ns
    assert e["proc.exe_ino.mtime"] == st.st_mtime_ns
    assert e["proc.is_exe_from_memfd"] is False
    assert e["proc.is_exe_writable"] is True  # root with CAP_DAC_OVERRIDE, as libsinsp says
    assert e["proc.is_exe_upper_layer"] is False


def test_unprivileged_exec_has_no_capabilities_and_cannot_write_roots_binary(
    live: LiveSensor, tmp_path: Path
) -> None:
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "util-linux's setpriv is missing: run scripts/setup.sh"
    marker = f"u{uuid.uuid4().hex[:8]}"
    own = tmp_path / "own"
    own.mkdir()
    mine = own / f"tool{marker}"
    shutil.copy("/bin/true", mine)
    os.chown(own, NOBODY, NOBODY)
    os.chown(mine, NOBODY, NOBODY)
    tmp_path.chmod(0o755)
    drop = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all"]
    subprocess.run([*drop, "/bin/sh", "-c", f"exit 0 # {marker}"], check=True)
    e = _exec_of(live, marker, "sh")
    assert e["user.uid"] == NOBODY
    assert e["thread.cap_effective"] == "" and e["thread.cap_permitted"] == ""
    assert e["proc.is_exe_writable"] is False  # /bin/sh is root's, mode 0755
    subprocess.run([*drop, str(mine), marker], check=True)
    e = _exec_of(live, marker, f"tool{marker}"[:15])
    assert e["proc.is_exe_writable"] is True  # the user's own file
    assert e["evt.arg.flags"] == "EXE_WRITABLE"


MEMFD_EXEC = """
import os, sys
fd = os.memfd_create("payload", 0)
with open("/bin/true", "rb") as f:
    os.write(fd, f.read())
os.execve(fd, ["payload", sys.argv[1]], {})
"""


def test_exec_from_a_memfd_is_flagged(live: LiveSensor) -> None:
    marker = f"m{uuid.uuid4().hex[:8]}"
    subprocess.run([sys.executable, "-c", MEMFD_EXEC, marker], check=True)
    e = _exec_of(live, marker, exe="payload")
    assert e["evt.type"] == "execveat"  # fexecve: execveat(fd, "", AT_EMPTY_PATH)
    assert e["proc.is_exe_from_memfd"] is True
    assert str(e["proc.exepath"]).startswith("/memfd:payload")
    assert "EXE_FROM_MEMFD" in str(e["evt.arg.flags"]).split("|")
    # and a file of that name on disk is not a memfd
    marker2 = f"d{uuid.uuid4().hex[:8]}"
    subprocess.run(["/bin/true", marker2], check=True)
    assert _exec_of(live, marker2, "true")["proc.is_exe_from_memfd"] is False


def test_a_capability_drop_shows_in_later_events(live: LiveSensor, tmp_path: Path) -> None:
    """capset(2) after exec: the process table follows the record's sets."""
    marker = f"c{uuid.uuid4().hex[:8]}"
    code = (
        "import ctypes, os, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)\n"
        "data = (ctypes.c_uint32 * 6)(1 << 12, 1 << 12, 0, 0, 0, 0)\n"  # NET_ADMIN only
        "assert libc.capset(hdr, data) == 0, ctypes.get_errno()\n"
        f"open({str(tmp_path / marker)!r}, 'w').close()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    target = str(tmp_path / marker)
    evs = live.wait_for(lambda e: e.get("fd.name") == target)
    assert len(evs) == 1, evs
    assert evs[0]["thread.cap_effective"] == "CAP_NET_ADMIN"
    assert evs[0]["thread.cap_permitted"] == "CAP_NET_ADMIN"
    caps = live.wait_for(lambda e: e["evt.type"] == "capset" and e["proc.pid"] == evs[0][
        "proc.pid"])  # fmt: skip
    assert len(caps) == 1 and caps[0]["evt.arg.cap_effective"] == "0x1000"


def test_the_environment_is_copied_only_while_wanted(live: LiveSensor) -> None:
    """copy_env(False) (no loaded rule reads proc.env): the exec's record carries no
    environment, and everything else as before; copy_env(True) brings it back."""
    marker = f"v{uuid.uuid4().hex[:8]}"
    env = {"PATH": "/usr/bin:/bin", "SENTINEL_MARK": marker}
    live.sensor.copy_env(False)
    try:
        subprocess.run(["/bin/sh", "-c", f"exit 0 # {marker}-off"], env=env, check=True)
        off = _exec_of(live, f"{marker}-off")
    finally:
        live.sensor.copy_env(True)
    subprocess.run(["/bin/sh", "-c", f"exit 0 # {marker}-on"], env=env, check=True)
    on = _exec_of(live, f"{marker}-on")
    assert f"SENTINEL_MARK={marker}" not in str(off["proc.env"])
    assert not off["proc.env"]
    assert off["proc.exepath"] == on["proc.exepath"] == os.path.realpath("/bin/sh")
    assert f"SENTINEL_MARK={marker}" in str(on["proc.env"]).split(" ")
