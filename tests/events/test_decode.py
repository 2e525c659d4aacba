"""Every event type's record, built as the BPF side writes it, decoded field by field
(libsinsp's ``test/libsinsp_e2e``/``events_*.ut.cpp`` are the model). No kernel needed.

Values follow Falco: ``evt.arg.<name>`` is libsinsp's resolved text when there is one (a
relative path joined to its directory, AT_FDCWD, an errno name, flag names, an fd's file),
``evt.args`` joins ``name=raw(resolved)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sentinel.enrichment.event import LiveEvent
from sentinel.events import EVENT_TYPES, decode
from sentinel.events.builder import build
from sentinel.events.record import UnknownEvent
from tests.events.conftest import PARENT, PID, SAMPLES, SHELL

Make = Callable[..., LiveEvent]


def fields(ev: LiveEvent, *names: str) -> dict[str, Any]:
    return {n: ev.get(n) for n in names}


def test_every_event_type_has_a_sample_and_decodes_to_its_own_type(event: Make) -> None:
    assert set(SAMPLES) == {t.name for t in EVENT_TYPES}
    for t in EVENT_TYPES:
        ev = event(t.name, **SAMPLES[t.name])
        assert ev.get("evt.type") == t.name
        assert ev.get("evt.category") == t.category.value
        assert ev.get("evt.dir") == "<"


def test_an_unknown_event_code_is_refused() -> None:
    raw = bytearray(build("open", path="/x"))
    raw[8:12] = (len(EVENT_TYPES) + 5).to_bytes(4, "little")
    with pytest.raises(UnknownEvent, match="unknown event code"):
        decode(bytes(raw))


# ---- file -----------------------------------------------------------------------------------


def test_openat_relative_to_a_dirfd(event: Make) -> None:
    ev = event("openat", path="shadow", base="/etc", dirfd=5, flags=0o2000000, res=3)
    expected = {"fd.name": "/etc/shadow", "fd.nameraw": "shadow", "fd.directory": "/etc"}
    expected.update({"fd.filename": "shadow", "fd.num": 3, "fd.type": "file"})
    assert fields(ev, *expected) == expected
    assert fields(ev, "fs.path.name", "fs.path.nameraw") == {
        "fs.path.name": "/etc/shadow",
        "fs.path.nameraw": "shadow",
    }
    assert ev.get("evt.arg.name") == "/etc/shadow"  # libsinsp resolves a relative path
    assert ev.get("evt.arg.dirfd") == "5"
    assert ev.get("evt.arg.fd") == "<f>/etc/shadow"
    assert ev.get("evt.arg.flags") == "O_RDONLY|O_CLOEXEC"
    assert ev.get("evt.arg[2]") == "/etc/shadow" and ev.get("evt.arg[name]") == "/etc/shadow"
    assert ev.get("evt.args") == (
        "fd=3(<f>/etc/shadow) dirfd=5 name=shadow(/etc/shadow) "
        "flags=524288(O_RDONLY|O_CLOEXEC) mode=0"
    )
    assert fields(ev, "evt.rawres", "evt.res", "evt.failed") == {
        "evt.rawres": 3,
        "evt.res": "SUCCESS",
        "evt.failed": False,
    }
    assert ev.get("evt.is_open_read") is True and ev.get("evt.is_open_write") is False


def test_open_absolute_path_is_normalised_in_fd_name_not_in_the_argument(event: Make) -> None:
    ev = event("open", path="/etc/../etc//passwd", flags=0o1, res=3)
    assert ev.get("fd.name") == "/etc/passwd"
    assert ev.get("evt.arg.name") == "/etc/../etc//passwd"  # absolute: as passed (libsinsp)
    assert ev.get("fd.nameraw") == "/etc/../etc//passwd"
    assert ev.get("evt.is_open_write") is True
    assert ev.get("evt.arg.dirfd") is None  # open(2) has no dirfd parameter


def test_openat_from_the_cwd_refreshes_proc_cwd(event: Make) -> None:
    ev = event("openat", path="notes", base="/home/u", flags=0, res=3)
    assert ev.get("fd.name") == "/home/u/notes"
    assert ev.get("evt.arg.dirfd") == "AT_FDCWD"
    assert ev.get("proc.cwd") == "/home/u/"  # the walk of the cwd is the freshest cwd


def test_failed_open(event: Make) -> None:
    ev = event("openat2", path="/nope/x", flags=0, res=-2)
    assert fields(ev, "fd.num", "evt.res", "evt.rawres", "evt.failed", "evt.arg.fd") == {
        "fd.num": -1,
        "evt.res": "ENOENT",
        "evt.rawres": -2,
        "evt.failed": True,
        "evt.arg.fd": "ENOENT",
    }
    assert ev.get("fd.name") == "/nope/x"


def test_creat_is_an_open_for_writing(event: Make) -> None:
    ev = event("creat", path="out.txt", base="/src", flags=0o1101, mode=0o755, res=6)
    assert ev.get("fd.name") == "/src/out.txt"
    assert ev.get("evt.arg.flags") == "O_WRONLY|O_CREAT|O_TRUNC"
    assert ev.get("evt.arg.mode") == "0755"
    assert ev.get("evt.is_open_write") is True and ev.get("evt.is_open_create") is True
    assert ev.get("evt.is_open_exec") is True  # created with an execute bit


def test_unlink_and_unlinkat_have_paths_but_no_descriptor(event: Make) -> None:
    ev = event("unlink", path="old.log", base="/var/log", res=0)
    assert ev.get("fs.path.name") == "/var/log/old.log"
    assert ev.get("evt.arg.path") == "/var/log/old.log"
    assert ev.get("evt.res") == "SUCCESS" and ev.get("evt.arg.res") == "0"
    assert ev.get("fd.name") is None and ev.get("fd.num") is None
    assert ev.get("evt.is_open_write") is None
    ev = event("unlinkat", path="sub/x", base="/var/tmp", dirfd=7, flags=0x200, res=-13)
    assert fields(
        ev, "fs.path.name", "fs.path.nameraw", "evt.arg.name", "evt.arg.dirfd", "evt.arg.flags"
    ) == {
        "fs.path.name": "/var/tmp/sub/x",
        "fs.path.nameraw": "sub/x",
        "evt.arg.name": "/var/tmp/sub/x",
        "evt.arg.dirfd": "7",
        "evt.arg.flags": "AT_REMOVEDIR",
    }
    assert ev.get("evt.res") == "EACCES" and ev.get("evt.arg.res") == "EACCES"
    assert ev.get("evt.args") == (
        "res=-13(EACCES) dirfd=7 name=sub/x(/var/tmp/sub/x) flags=512(AT_REMOVEDIR)"
    )


def test_a_bad_dirfd_falls_back_to_the_process(event: Make) -> None:
    # no walk (FLAG_BASE_BAD), the process is gone: its last known cwd
    ev = event("unlinkat", path="x", dirfd=99, flags=0, res=-9, hdr_flags=64 | 32)
    assert ev.get("fs.path.name") == "/src/x"


# ---- exec / process ---------------------------------------------------------------------------


def test_execve_updates_the_table_and_fills_process_fields(event: Make) -> None:
    ev = event("execve", **SAMPLES["execve"])
    expected = {"proc.name": "sh", "proc.exe": "/bin/sh", "proc.exepath": "/usr/bin/dash"}
    expected.update({"proc.args": "-c id", "proc.cmdline": "sh -c id", "proc.cwd": "/root/"})
    assert fields(ev, *expected) == expected
    assert fields(ev, "proc.pname", "proc.sname", "proc.tty", "proc.loginshellid") == {
        "proc.pname": "make",
        "proc.sname": "bash",
        "proc.tty": 34817,
        "proc.loginshellid": SHELL,
    }
    assert ev.get("proc.aname") == ["make", "bash", "systemd"]
    assert ev.get("proc.aname[2]") == "bash" and ev.get("proc.aname[0]") == "sh"
    assert fields(ev, "evt.arg.exe", "evt.arg.args", "evt.arg.filename", "evt.arg.cwd") == {
        "evt.arg.exe": "/bin/sh",
        "evt.arg.args": "-c id",
        "evt.arg.filename": "/bin/sh",
        "evt.arg.cwd": "/root",
    }
    assert ev.get("evt.arg.ptid") == "make"  # a pid parameter resolves to its process name
    assert ev.get("evt.res") == "SUCCESS"


def test_failed_execve_leaves_the_table_alone(event: Make) -> None:
    ev = event("execve", comm="tester", args=["nope", "-x"], filename="/nope", res=-2)
    assert ev.get("evt.res") == "ENOENT"
    assert ev.get("evt.arg.filename") == "/nope" and ev.get("evt.arg.args") == "-x"
    assert ev.get("proc.exepath") == "/opt/t/tester"  # the image is unchanged
    assert ev.get("evt.arg.cwd") is None


def test_execveat_is_its_own_type(event: Make) -> None:
    ev = event("execveat", **SAMPLES["execveat"])
    assert ev.get("evt.type") == "execveat"
    assert ev.get("proc.exepath") == "/memfd:x (deleted)"


def test_clone_adds_the_child_and_threads_are_not_processes(event: Make) -> None:
    ev = event("clone", child_pid=5000, child_tid=5000)
    assert ev.get("evt.rawres") == 5000 and ev.get("evt.res") == "SUCCESS"
    child = event("openat", pid=5000, path="/x", res=3)
    assert child.get("proc.pname") == "tester" and child.get("proc.exepath") == "/opt/t/tester"
    event("clone", child_pid=PID, child_tid=6000, hdr_flags=16)  # a thread of PID
    assert event("openat", pid=6000, path="/x", res=3).get("proc.ppid") != PID


def test_procexit(event: Make) -> None:
    ev = event("procexit", exit_code=(1 << 8))
    assert ev.get("proc.exitcode") == 256
    assert fields(ev, "evt.arg.status", "evt.arg.ret", "evt.arg.sig") == {
        "evt.arg.status": "256",
        "evt.arg.ret": "1",
        "evt.arg.sig": "0",
    }
    assert ev.get("evt.rawres") is None  # procexit has no result
    killed = event("procexit", exit_code=9)
    assert killed.get("evt.arg.sig") == "SIGKILL"


# ---- net -------------------------------------------------------------------------------------


def test_connect_ipv4(event: Make) -> None:
    ev = event("connect", **SAMPLES["connect"])
    assert fields(ev, "fd.name", "fd.sip", "fd.cip", "fd.sport", "fd.cport", "fd.l4proto") == {
        "fd.name": "10.0.0.2:40000->198.51.100.7:443",
        "fd.sip": "198.51.100.7",
        "fd.cip": "10.0.0.2",
        "fd.sport": 443,
        "fd.cport": 40000,
        "fd.l4proto": "tcp",
    }
    assert ev.get("fd.ip") == ["10.0.0.2", "198.51.100.7"]
    assert ev.get("fd.net") == ["10.0.0.2", "198.51.100.7"]
    assert ev.get("fd.port") == [40000, 443]
    assert fields(ev, "fd.typechar", "fd.sockfamily", "fd.connected", "fd.is_server") == {
        "fd.typechar": "4",
        "fd.sockfamily": "ip",
        "fd.connected": True,
        "fd.is_server": False,
    }
    assert ev.get("evt.arg.addr") == "198.51.100.7:443"
    assert ev.get("evt.arg.fd") == "<4t>10.0.0.2:40000->198.51.100.7:443"
    assert ev.get("evt.arg.tuple") == "10.0.0.2:40000->198.51.100.7:443"


def test_connect_ipv6_v4_mapped_and_unix(event: Make) -> None:
    ev = event(
        "connect",
        fd=4,
        res=-111,
        addr=("::ffff:10.1.2.3", 80),
        laddr="::ffff:10.0.0.2",
        sk_family=10,
    )
    assert ev.get("fd.sip") == "10.1.2.3" and ev.get("fd.cip") == "10.0.0.2"
    assert ev.get("evt.res") == "ECONNREFUSED" and ev.get("fd.connected") is False
    ev = event(
        "connect", fd=4, res=0, addr=("2001:db8::1", 22), laddr="2001:db8::2", lport=9, sk_family=10
    )
    assert ev.get("fd.name") == "[2001:db8::2]:9->[2001:db8::1]:22"
    assert ev.get("fd.typechar") == "6"
    ev = event("connect", fd=3, res=0, addr="/run/x.sock", sk_family=1)
    assert fields(ev, "fd.name", "fd.typechar", "fd.sockfamily", "fd.sip", "fd.ip") == {
        "fd.name": "/run/x.sock",
        "fd.typechar": "u",
        "fd.sockfamily": "unix",
        "fd.sip": None,
        "fd.ip": None,
    }


def test_a_dup_ed_socket_has_its_ends(event: Make) -> None:
    """dup2 of a connected socket onto stdout (a reverse shell): the new descriptor's ends are
    the socket's, as Falco's "Redirect STDOUT/STDIN to Network Connection" prints them; a
    dup'ed file has none."""
    ev = event("dup2", **SAMPLES["dup2"])
    assert fields(ev, "fd.name", "fd.sip", "fd.sport", "fd.lport", "fd.rport", "fd.l4proto") == {
        "fd.name": "10.0.0.2:40003->198.51.100.7:4444",
        "fd.sip": "198.51.100.7",
        "fd.sport": 4444,
        "fd.lport": 40003,
        "fd.rport": 4444,
        "fd.l4proto": "tcp",
    }
    assert fields(ev, "fd.cip", "fd.sockfamily", "fd.type", "evt.rawres") == {
        "fd.cip": "10.0.0.2",
        "fd.sockfamily": "ip",
        "fd.type": "ipv4",
        "evt.rawres": 0,
    }
    assert ev.get("evt.arg.res") == "<4t>10.0.0.2:40003->198.51.100.7:4444"
    assert ev.get("fd.ip") == ["10.0.0.2", "198.51.100.7"]
    dup = event("dup", **SAMPLES["dup"])
    assert fields(dup, "fd.name", "fd.sip", "fd.l4proto", "fd.sockfamily") == {
        "fd.name": "/etc/passwd",
        "fd.sip": None,
        "fd.l4proto": None,
        "fd.sockfamily": None,
    }


# ---- the header ------------------------------------------------------------------------------


def test_a_socket_with_one_end_is_named_by_it(event: Make) -> None:
    """libsinsp names a bound or listening socket by its address ("ip:port", what bind
    passed) and a fresh socket by the empty string; never a made-up "None:None->" end."""
    ev = event("listen", **{**SAMPLES["listen"], "laddr": "192.0.2.1", "lport": 8088})
    assert fields(ev, "fd.name", "fd.sip", "fd.sport", "fd.cip") == {
        "fd.name": "192.0.2.1:8088",
        "fd.sip": "192.0.2.1",
        "fd.sport": 8088,
        "fd.cip": None,
    }
    assert ev.get("evt.arg.fd") == "<4t>192.0.2.1:8088"
    v6 = {"laddr": "2001:db8::1", "lport": 22, "sk_family": 10}
    six = event("listen", **{**SAMPLES["listen"], **v6})
    assert six.get("fd.name") == "[2001:db8::1]:22"
    assert event("socket", **SAMPLES["socket"]).get("fd.name") == ""


def test_header_fields(event: Make) -> None:
    ev = event("open", path="/x", res=3, uid=1000, gid=1000, loginuid=0xFFFFFFFF, tid=4243)
    assert fields(ev, "proc.pid", "thread.tid", "thread.ismain", "user.uid", "group.gid") == {
        "proc.pid": PID,
        "thread.tid": 4243,
        "thread.ismain": False,
        "user.uid": 1000,
        "group.gid": 1000,
    }
    assert ev.get("user.loginuid") == -1 and ev.get("user.loginname") is None
    assert ev.get("evt.time") == ev.clock.epoch(1_000_000_000)
    assert event("open", path="/x", ppid=PARENT).get("proc.ppid") == PARENT


# ---- credentials, environment, the executable ---------------------------------------------


def test_exec_carries_capabilities_environment_and_executable_facts(event: Make) -> None:
    ev = event("execve", **SAMPLES["execve"])
    assert "CAP_SYS_ADMIN" in ev.get("thread.cap_effective").split(" ")
    assert ev.get("thread.cap_inheritable") == ""
    assert ev.get("proc.env") == "HOME=/root LD_PRELOAD=/tmp/x.so"
    assert ev.get("proc.env[LD_PRELOAD]") == "/tmp/x.so" and ev.get("proc.env[NOPE]") is None
    assert fields(ev, "proc.is_exe_upper_layer", "proc.is_exe_from_memfd") == {
        "proc.is_exe_upper_layer": True,
        "proc.is_exe_from_memfd": False,
    }
    assert ev.get("proc.is_exe_lower_layer") is False
    assert ev.get("proc.exe_ino") == 1234
    # root with CAP_DAC_OVERRIDE may write anything; Falco's flag names
    assert ev.get("evt.arg.flags") == "EXE_WRITABLE|EXE_UPPER_LAYER"
    assert ev.get("evt.arg.env") == "HOME=/root LD_PRELOAD=/tmp/x.so"
    # a later event of the same process: the table holds what the exec said
    later = event("open", path="/etc/hosts", res=3)
    assert later.get("proc.env[HOME]") == "/root" and later.get("proc.is_exe_upper_layer")
    ev = event("execveat", **SAMPLES["execveat"])
    assert ev.get("proc.is_exe_from_memfd") is True and ev.get("proc.is_exe_upper_layer") is False


@pytest.mark.parametrize(
    ("uid", "owner", "mode", "caps", "writable"),
    [
        (1000, 0, 0o100755, 0, False),  # a user and root's binary
        (1000, 1000, 0o100755, 0, True),  # the user's own
        (1000, 0, 0o100777, 0, True),  # world-writable
        (0, 1000, 0o100500, 1 << 1, True),  # CAP_DAC_OVERRIDE
        (0, 1000, 0o100500, 0, False),  # root without it (a container's dropped caps)
    ],
)
def test_exe_writable_follows_owner_mode_and_dac_override(
    event: Make, uid: int, owner: int, mode: int, caps: int, writable: bool
) -> None:
    ev = event(
        "execve", uid=uid, gid=uid, exe="/x", exe_uid=owner, exe_gid=owner, exe_mode=mode,
        cap_effective=caps,
    )  # fmt: skip
    assert ev.get("proc.is_exe_writable") is writable
    assert ("EXE_WRITABLE" in (ev.get("evt.arg.flags") or "")) is writable


def test_a_credential_change_updates_the_capabilities_of_later_events(event: Make) -> None:
    event("execve", **SAMPLES["execve"])
    ev = event("capset", res=0, cap_permitted=1 << 12, cap_effective=1 << 12)
    assert ev.get("evt.arg.cap_effective") == "0x1000"
    later = event("open", path="/etc/hosts", res=3)
    assert later.get("thread.cap_effective") == "CAP_NET_ADMIN"
    assert later.get("thread.cap_permitted") == "CAP_NET_ADMIN"


def test_unshare_and_setns_of_a_user_namespace_give_every_capability(event: Make) -> None:
    """After unshare(CLONE_NEWUSER) the task has every capability in its new namespace: the
    event and later ones carry the sets after the call, as libsinsp's thread.cap_* do (its
    parser sets them to all on a successful unshare/setns of a user namespace, before any rule
    sees the event: Falco's "Change namespace privileges via unshare" fires on refused calls)."""
    full = (1 << 41) - 1
    for name in ("unshare", "setns"):
        event("execve", **{**SAMPLES["execve"], "cap_permitted": 1 << 12, "cap_effective": 1 << 12})
        ev = event(name, **{**SAMPLES[name], "cap_permitted": full, "cap_effective": full})
        assert "CAP_SYS_ADMIN" in ev.get("thread.cap_permitted").split(" "), name
        later = event("open", path="/etc/hosts", res=3)
        assert "CAP_SYS_ADMIN" in later.get("thread.cap_effective").split(" "), name


def test_a_descriptor_argument_is_signed(event: Make) -> None:
    """finit_module(-1, ...) and setns(-1, ...): the handler keeps the register as a u64, so
    the descriptor arrives as 2**64 - 1 (seen on 5.10, whose module syscalls the host lacks);
    it is an int: -1, which libsinsp renders as an errno name (a negative PT_FD), not the
    number 18446744073709551615."""
    for name in ("finit_module", "setns"):
        ev = event(name, **{**SAMPLES[name], "res": -9, "v0": (1 << 64) - 1})
        assert ev.get("evt.arg.fd") == "EPERM", name
        ok = event(name, **{**SAMPLES[name], "v0": 3})
        assert str(ok.get("evt.arg.fd")).startswith("3"), name
