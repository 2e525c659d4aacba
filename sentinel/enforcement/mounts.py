"""This process's mounts, from ``/proc/self/mountinfo``, and which mount a path is on.

Why the policy needs them: a protected path names what the mounts on its way make it name.
Unmounting or moving one of those mounts (or one inside a protected tree) would make the
path name something else without touching a protected file, so the LSM programs deny it for
exactly these mounts, by mount id (``struct mount.mnt_id``, mountinfo's first field). And an
identity taken with stat() is the kernel's only if the file system reports its superblock's
device: overlayfs and btrfs subvolumes do not, which mountinfo's ``major:minor`` (the
superblock's ``s_dev``) reveals.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True, slots=True)
class Mount:
    id: int
    parent: int
    major: int
    minor: int
    root: str  # the directory of its file system mounted here
    point: str  # where, in this mount namespace
    fstype: str
    source: str
    super_options: str

    @property
    def kernel_dev(self) -> int:
        """The superblock's dev_t as the kernel stores it (MAJOR << 20 | MINOR)."""
        return (self.major << 20) | self.minor


def parse(text: str) -> list[Mount]:
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        f = left.split()
        r = right.split()
        major, minor = f[2].split(":")
        out.append(
            Mount(
                id=int(f[0]),
                parent=int(f[1]),
                major=int(major),
                minor=int(minor),
                root=_unescape(f[3]),
                point=_unescape(f[4]),
                fstype=r[0],
                source=_unescape(r[1]) if len(r) > 1 else "",
                super_options=r[2] if len(r) > 2 else "",
            )
        )
    return out


def mounts() -> list[Mount]:
    return parse(MOUNTINFO.read_text())


def mount_id_of(path: str) -> int:
    """The id of the mount ``path`` is on (its fdinfo's ``mnt_id``; symlinks not followed)."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW)
    try:
        for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    finally:
        os.close(fd)
    raise OSError(f"no mnt_id for {path}")


def on_the_way(point: str, path: str) -> bool:
    """Is a mount at ``point`` on the way to ``path`` (``point`` is ``path`` or above it)?"""
    return point == path or point == "/" or path.startswith(point.rstrip("/") + "/")
