"""The BTF reader against bpftool's own dump of the running kernel, plus a hand-built blob.

bpftool is only a test oracle here; Sentinel never runs it.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from sentinel.kernel.btf import VMLINUX, Btf, BtfError

HAVE_VMLINUX = VMLINUX.exists() and shutil.which("bpftool") is not None


def _bpftool_members() -> dict[str, list[tuple[str, int, int]]]:
    """struct name -> [(member name, type id, bit offset)] from ``bpftool ... format raw``."""
    out = subprocess.run(
        ["bpftool", "btf", "dump", "file", str(VMLINUX), "format", "raw"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    structs: dict[str, list[tuple[str, int, int]]] = {}
    current: list[tuple[str, int, int]] | None = None
    head = re.compile(r"^\[(\d+)\] (STRUCT|UNION) '([^']*)' size=(\d+) vlen=(\d+)")
    mem = re.compile(r"^\t'([^']*)' type_id=(\d+) bits_offset=(\d+)")
    for line in out.splitlines():
        m = head.match(line)
        if m:
            current = [] if m.group(3) == "(anon)" else structs.setdefault(m.group(3), [])
            continue
        if line.startswith("["):
            current = None
            continue
        mm = mem.match(line)
        if mm and current is not None:
            current.append((mm.group(1), int(mm.group(2)), int(mm.group(3))))
    return structs


@pytest.fixture(scope="module")
def vmlinux() -> Btf:
    if not HAVE_VMLINUX:
        pytest.skip(f"no {VMLINUX} or no bpftool on this machine")
    return Btf.load()


@pytest.fixture(scope="module")
def oracle() -> dict[str, list[tuple[str, int, int]]]:
    if not HAVE_VMLINUX:
        pytest.skip(f"no {VMLINUX} or no bpftool on this machine")
    return _bpftool_members()


@pytest.mark.parametrize(
    "name", ["file", "task_struct", "dentry", "mm_struct", "fs_struct", "linux_binprm", "mount"]
)
def test_top_level_offsets_match_bpftool(
    vmlinux: Btf, oracle: dict[str, list[tuple[str, int, int]]], name: str
) -> None:
    members = [m for m in oracle[name] if m[0] != "(anon)" and m[2] % 8 == 0]
    assert members, name
    for member, _tid, bits in members:
        assert vmlinux.offsetof(name, member) == bits // 8, (name, member)


def test_running_kernel_layout_is_not_the_61_headers(vmlinux: Btf) -> None:
    # KERNEL.md: f_path sits at 16 in the 6.1 headers; the reader must see the live layout.
    assert vmlinux.offsetof("file", "f_path") != 16
    assert vmlinux.offsetof("file", "f_path.dentry") == vmlinux.offsetof("file", "f_path") + 8
    assert vmlinux.sizeof("path") == 16


def test_anonymous_members_are_searched(vmlinux: Btf) -> None:
    # mm_struct's arg_start lives in an anonymous struct in recent kernels.
    off = vmlinux.offsetof("mm_struct", "arg_start")
    assert vmlinux.offsetof("mm_struct", "arg_end") == off + 8
    assert vmlinux.has_member("mm_struct", "arg_start")
    assert not vmlinux.has_member("mm_struct", "no_such_member")


def test_cflags_and_errors(vmlinux: Btf) -> None:
    flags = vmlinux.cflags({"OFF_FILE_F_PATH": ("file", "f_path")})
    assert flags == [f"-DOFF_FILE_F_PATH={vmlinux.offsetof('file', 'f_path')}"]
    with pytest.raises(BtfError, match="no_such"):
        vmlinux.cflags([("X", "file", "no_such")])
    with pytest.raises(BtfError, match="no struct"):
        vmlinux.offsetof("no_such_struct_xyz", "a")


def _blob() -> bytes:
    """A tiny BTF: int, struct inner{int a;int b;}, struct outer{int x; union{inner in; int y;};
    typedef}, hand-encoded so the anonymous-union and typedef paths are exercised exactly."""
    strings = b"\0int\0inner\0a\0b\0outer\0x\0in\0y\0inner_t\0"

    def s(name: str) -> int:
        return strings.index(b"\0" + name.encode() + b"\0") + 1

    types = b""
    # [1] int, size 4
    types += struct.pack("<III", s("int"), 1 << 24, 4) + struct.pack("<I", 32)
    # [2] struct inner size 8
    types += struct.pack("<III", s("inner"), (4 << 24) | 2, 8)
    types += struct.pack("<III", s("a"), 1, 0) + struct.pack("<III", s("b"), 1, 32)
    # [3] typedef inner_t -> 2
    types += struct.pack("<III", s("inner_t"), 8 << 24, 2)
    # [4] anonymous union size 8 { inner_t in; int y; }
    types += struct.pack("<III", 0, (5 << 24) | 2, 8)
    types += struct.pack("<III", s("in"), 3, 0) + struct.pack("<III", s("y"), 1, 0)
    # [5] struct outer size 16 { int x; <anon union> at 64 bits }
    types += struct.pack("<III", s("outer"), (4 << 24) | 2, 16)
    types += struct.pack("<III", s("x"), 1, 0) + struct.pack("<III", 0, 4, 64)
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return hdr + types + strings


def test_hand_built_blob() -> None:
    btf = Btf.from_bytes(_blob())
    assert btf.offsetof("outer", "x") == 0
    assert btf.offsetof("outer", "y") == 8
    assert btf.offsetof("outer", "in.b") == 12
    assert btf.sizeof("outer") == 16
    assert btf.member_size("outer", "in") == 8
    assert btf.has_member("outer", "in.a")
    assert not btf.has_member("outer", "in.c")


def test_bad_blobs(tmp_path: Path) -> None:
    with pytest.raises(BtfError, match="magic"):
        Btf.from_bytes(b"\0" * 64)
    with pytest.raises(BtfError, match="cannot read"):
        Btf.load(tmp_path / "missing")
    blob = bytearray(_blob())
    struct.pack_into("<I", blob, 12, 10_000)  # type_len beyond the blob
    with pytest.raises(BtfError):
        Btf.from_bytes(bytes(blob))
