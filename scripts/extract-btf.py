#!/usr/bin/env python3
"""Extract the raw BTF (what /sys/kernel/btf/vmlinux serves) from a compressed kernel image.

    scripts/extract-btf.py /boot/vmlinuz-X OUT

Why: the host-side tests check every VM kernel's struct offsets, BPF helpers and LSM hooks from
its BTF in milliseconds, before any VM boots (tests/vm/test_kernel_btf.py). A bzImage carries
vmlinux compressed (Debian: xz for 5.10 and 6.1, zstd for 6.12); vmlinux's ``.BTF`` ELF section
is that blob. Decompressors: Python's lzma and gzip, the zstd command for zstd.
"""

from __future__ import annotations

import gzip
import lzma
import struct
import subprocess
import sys
import zlib
from pathlib import Path

MAGICS = (
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x1f\x8b\x08", "gzip"),
)


def _decompress(kind: str, data: bytes) -> bytes:
    if kind == "xz":
        return lzma.LZMADecompressor().decompress(data)
    if kind == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
    out = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, check=False).stdout
    return out


def vmlinux(image: bytes) -> bytes:
    """The ELF vmlinux inside a bzImage: the first compressed stream that decompresses to ELF."""
    for magic, kind in MAGICS:
        pos = image.find(magic)
        while pos >= 0:
            try:
                out = _decompress(kind, image[pos:])
            except (lzma.LZMAError, zlib.error, EOFError, gzip.BadGzipFile):
                out = b""
            if out[:4] == b"\x7fELF":
                return out
            pos = image.find(magic, pos + 1)
    raise SystemExit("extract-btf: no compressed ELF vmlinux found in the image")


def section(elf: bytes, name: str) -> bytes:
    """One section of a little-endian ELF64 file."""
    if elf[4] != 2 or elf[5] != 1:
        raise SystemExit("extract-btf: not a little-endian ELF64 vmlinux")
    shoff = struct.unpack_from("<Q", elf, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        name_off, _type, _flags, _addr, off, size = struct.unpack_from(
            "<IIQQQQ", elf, shoff + i * shentsize
        )
        return name_off, off, size

    _, str_off, _ = header(shstrndx)
    for i in range(shnum):
        name_off, off, size = header(i)
        end = elf.index(b"\0", str_off + name_off)
        if elf[str_off + name_off : end].decode() == name:
            return elf[off : off + size]
    raise SystemExit(f"extract-btf: vmlinux has no {name} section (no CONFIG_DEBUG_INFO_BTF?)")


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    btf = section(vmlinux(Path(sys.argv[1]).read_bytes()), ".BTF")
    Path(sys.argv[2]).write_bytes(btf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
