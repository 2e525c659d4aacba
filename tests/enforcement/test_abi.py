"""The enforcement ABI: what bpf/enforcement/*.c and Python share, checked by a C compiler.

Tetragon's ``pkg/alignchecker`` is the model: gcc (x86-64, the same natural alignment as
clang's BPF target for these types) compiles the structs :func:`abi.header` generates, a
program prints every member's offset and size, and they must equal the ctypes definitions
Python fills the maps with and decodes the events with. The ioctl, mount and SCTP numbers
defined in abi.py are compared with the system's uapi headers the same way.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from sentinel.enforcement import abi

TYPEDEFS = """
#include <stddef.h>
#include <stdio.h>
typedef unsigned char u8; typedef unsigned short u16;
typedef unsigned int u32; typedef unsigned long long u64;
"""

UAPI = """
#include <stdio.h>
#include <stdint.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <linux/fs.h>
#include <linux/blkpg.h>
#include <linux/fsverity.h>
#include <linux/fscrypt.h>
#include <linux/loop.h>
#include <linux/nvme_ioctl.h>
#include <linux/sctp.h>
#include <scsi/sg.h>
/* fs/ext4/ext4.h (not exported as a uapi header by this libc) */
struct move_extent { uint32_t reserved; uint32_t donor_fd; uint64_t orig_start;
                     uint64_t donor_start; uint64_t len; uint64_t moved_len; };
#define EXT4_IOC_MOVE_EXT _IOWR('f', 15, struct move_extent)
#define EXT4_IOC_SWAP_BOOT _IO('f', 17)
#define P(name) printf(#name " %llu\\n", (unsigned long long)(name));
int main(void) {
"""


def _gcc(tmp: Path, src: str) -> str:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to check C layouts (scripts/setup.sh installs it)")
    (tmp / "t.c").write_text(src)
    cmd = ["gcc", "-std=gnu11", "-Wall", "-Werror", "-o", str(tmp / "t"), str(tmp / "t.c")]
    subprocess.run(cmd, check=True)
    return subprocess.run([str(tmp / "t")], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, tuple[int, int]]]:
    prints = []
    for sname, cls in abi.STRUCTS.items():
        for fname, _t in cls._fields_:
            prints.append(
                f'printf("{sname} {fname} %zu %zu\\n", offsetof(struct {sname}, {fname}),'
                f" sizeof(((struct {sname} *)0)->{fname}));"
            )
        prints.append(f'printf("{sname} sizeof %zu 0\\n", sizeof(struct {sname}));')
    src = TYPEDEFS + abi.header() + "int main(void) {\n" + "\n".join(prints) + "\nreturn 0; }\n"
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for line in _gcc(tmp_path_factory.mktemp("abi"), src).splitlines():
        sname, member, off, size = line.split()
        out.setdefault(sname, {})[member] = (int(off), int(size))
    return out


@pytest.mark.parametrize("name", list(abi.STRUCTS))
def test_struct_layouts_match_c(name: str, c_layout: dict[str, dict[str, tuple[int, int]]]) -> None:
    cls = abi.STRUCTS[name]
    c = c_layout[name]
    assert c["sizeof"][0] == ctypes.sizeof(cls)
    for fname, _t in cls._fields_:
        field = getattr(cls, fname)
        assert c[fname] == (field.offset, field.size), f"{name}.{fname}"


def test_implicit_padding_is_refused() -> None:
    """Where ctypes and a C compiler could disagree, the generator refuses to guess."""

    class Gap(ctypes.Structure):
        _fields_ = [("a", ctypes.c_uint8), ("b", ctypes.c_uint32)]

    class Tail(ctypes.Structure):
        _fields_ = [("a", ctypes.c_uint64), ("b", ctypes.c_uint8)]

    with pytest.raises(abi.AbiError, match=r"gap\.b at 4, expected 1"):
        abi.c_struct("gap", Gap)
    with pytest.raises(abi.AbiError, match="trailing padding"):
        abi.c_struct("tail", Tail)


def test_numbers_match_the_uapi_headers(tmp_path: Path) -> None:
    names = [
        *abi.FILE_IOCTLS,
        *abi.DEVICE_IOCTLS,
        "LOOP_GET_STATUS64",
        "MS_REMOUNT",
        "MS_BIND",
        "MS_MOVE",
        "MS_SHARED",
        "MS_PRIVATE",
        "MS_SLAVE",
        "MS_UNBINDABLE",
        "SCTP_SOCKOPT_CONNECTX_OLD",
        "SCTP_SOCKOPT_CONNECTX",
        "SCTP_SOCKOPT_CONNECTX3",
        "SCTP_PRIMARY_ADDR",
        "SCTP_SENDMSG_CONNECT",
        "SCTP_DSTADDRV4",
        "SCTP_DSTADDRV6",
    ]
    src = UAPI + "".join(f"P({n})" for n in names) + "P(sizeof(struct loop_info64))\nreturn 0; }\n"
    got = dict(line.rsplit(" ", 1) for line in _gcc(tmp_path, src).splitlines())
    ours = {**abi.FILE_IOCTLS, **abi.DEVICE_IOCTLS}
    for n in names:
        mine = ours.get(n, getattr(abi, n, None))
        assert mine is not None, n
        assert int(got[n]) == mine, f"{n}: uapi {int(got[n]):#x}, abi.py {mine:#x}"
    # devices.py reads struct loop_info64 with its own ctypes mirror
    from sentinel.enforcement.devices import _LoopInfo64

    assert int(got["sizeof(struct loop_info64)"]) == ctypes.sizeof(_LoopInfo64)


def test_hooks_and_operations_are_numbered_once() -> None:
    consts = abi.constants()
    hook_ids = [v for k, v in consts.items() if k.startswith("H_")]
    op_ids = [v for k, v in consts.items() if k.startswith("OP_")]
    assert len(set(hook_ids)) == len(hook_ids) == len(abi.HOOKS)
    assert len(set(op_ids)) == len(op_ids) == len(abi.OPERATIONS)
    assert max(hook_ids) < 256 and max(op_ids) < 256  # the event carries them in a u8


def test_the_c_sources_spell_no_shared_number() -> None:
    """Every H_/OP_/F_ name the sources use is generated; none is #defined there."""
    src_dir = Path(__file__).resolve().parents[2] / "bpf" / "enforcement"
    for f in src_dir.iterdir():
        text = f.read_text()
        for line in text.splitlines():
            if line.startswith("#define"):
                name = line.split()[1].split("(")[0]
                assert name not in abi.constants(), f"{f.name} redefines {name}"
