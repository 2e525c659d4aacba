"""Devices that hold protected data, found through sysfs, for the policy's ``devs`` map.

Why: a file system's blocks can be written without any file hook by writing the device
under it, and the loop driver writes its backing file with no hook at all for direct I/O and
discard. So writes (write-opens, writes, discard/zero-out/SCSI/NVMe ioctls, io_uring commands,
shared mappings) are denied on:

* the block device each protected tree's file system lives on, and the devices it is built
  from (``slaves``: the disk partitions under an LVM volume or a RAID);
* every loop device (and its partitions) whose backing file is protected: a write to the
  device writes the file.

Not the whole disk a protected partition is on: boot loaders rewrite the disk's first
sectors (``grub-install``), and a write's offset is not visible to the hooks. Loop devices
attached later over a protected file are judged in the kernel (``loop_file_rule`` in
``bpf/enforcement/common.h``), not here.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from sentinel.enforcement.abi import DEV_BLOCK, LOOP_GET_STATUS64

SYS_DEV_BLOCK = Path("/sys/dev/block")
SYS_BLOCK = Path("/sys/block")


def kernel_dev(major: int, minor: int) -> int:
    return (major << 20) | minor


def _read_dev(path: Path) -> tuple[int, int] | None:
    try:
        major, minor = path.read_text().strip().split(":")
    except (OSError, ValueError):
        return None
    return int(major), int(minor)


def _name(major: int, minor: int) -> str | None:
    link = SYS_DEV_BLOCK / f"{major}:{minor}"
    try:
        return os.path.basename(os.readlink(link))
    except OSError:
        return None


def _lower(major: int, minor: int) -> list[tuple[int, int]]:
    """The devices this one is built from (device-mapper, md)."""
    out = []
    slaves = SYS_DEV_BLOCK / f"{major}:{minor}" / "slaves"
    if slaves.is_dir():
        for s in slaves.iterdir():
            dev = _read_dev(s / "dev")
            if dev:
                out.append(dev)
    return out


def fs_devices(st_devs: Iterable[int]) -> dict[tuple[int, int], str]:
    """Block devices holding these file systems (user-space st_dev values) and the devices
    under them; (kind, kernel dev) -> /dev name."""
    out: dict[tuple[int, int], str] = {}
    todo = [(os.major(d), os.minor(d)) for d in st_devs]
    while todo:
        major, minor = todo.pop()
        name = _name(major, minor)
        if name is None:
            continue  # not a block device (tmpfs, overlay...)
        key = (DEV_BLOCK, kernel_dev(major, minor))
        if key in out:
            continue
        out[key] = f"/dev/{name}"
        todo.extend(_lower(major, minor))
    return out


class _LoopInfo64(ctypes.Structure):
    _fields_ = [
        ("lo_device", ctypes.c_uint64),
        ("lo_inode", ctypes.c_uint64),
        ("lo_rdevice", ctypes.c_uint64),
        ("rest", ctypes.c_uint8 * 208),
    ]


def loop_backing(name: str) -> tuple[int, int] | None:
    """(kernel dev, inode) of the file behind /dev/<name>, or None (not attached)."""
    try:
        fd = os.open(f"/dev/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = _LoopInfo64()
        fcntl.ioctl(fd, LOOP_GET_STATUS64, info)
    except OSError:
        return None
    finally:
        os.close(fd)
    dev = info.lo_device  # huge_encode_dev(): the user-space encoding
    return kernel_dev(os.major(dev), os.minor(dev)), int(info.lo_inode)


def loops_over(rule_of: Callable[[int, int], int]) -> dict[tuple[int, int], tuple[str, int]]:
    """Loop devices (and their partitions) whose backing file is protected: key -> (/dev name,
    the backing file's rule); ``rule_of(kernel dev, inode)`` is 0 for an unprotected file."""
    out: dict[tuple[int, int], tuple[str, int]] = {}
    if not SYS_BLOCK.is_dir():
        return out
    for entry in sorted(SYS_BLOCK.glob("loop*")):
        if not (entry / "loop" / "backing_file").exists():
            continue
        backing = loop_backing(entry.name)
        rule = rule_of(*backing) if backing is not None else 0
        if not rule:
            continue
        for dev_file in [entry / "dev", *entry.glob(f"{entry.name}p*/dev")]:
            dev = _read_dev(dev_file)
            if dev:
                out[(DEV_BLOCK, kernel_dev(*dev))] = (f"/dev/{dev_file.parent.name}", rule)
    return out
