"""Run-time detection of BPF LSM: can this kernel load *and attach* an LSM program?

Why a real load and not a config check: on the project's own machines
``/sys/kernel/security/lsm`` lists ``bpf`` and yet every ``lsm`` program is refused (EPERM).
Reading the LSM list alone would claim enforcement that does not happen. So we do both: read
the list (to explain a failure) and load a two-instruction program (``r0 = 0; exit``, i.e.
"allow") at ``bpf_lsm_file_open`` through the raw ``bpf(2)`` syscall, attach it, and detach it
at once. No compiler is involved, so the check takes milliseconds even under emulation.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
import subprocess
from pathlib import Path

from sentinel.enforcement.lsm_btf import lsm_hook_btf_id
from sentinel.kernel.btf import VMLINUX, BtfError, vmlinux_btf

LSM_LIST = Path("/sys/kernel/security/lsm")
SECURITYFS = Path("/sys/kernel/security")

_NR_BPF = 321  # x86_64
_BPF_PROG_LOAD = 5
_BPF_RAW_TRACEPOINT_OPEN = 17
_BPF_PROG_TYPE_LSM = 29
_BPF_LSM_MAC = 27
# mov64 r0, 0 ; exit
_INSNS = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)

HOW_TO_ENABLE = (
    "BPF LSM needs a kernel built with CONFIG_BPF_LSM=y that lists 'bpf' among its active "
    "LSMs: add lsm=<current list>,bpf to the kernel command line (e.g. append it to "
    "GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub, reboot), where <current list> "
    "is the content of /sys/kernel/security/lsm"
)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _bpf(libc: ctypes.CDLL, cmd: int, attr: ctypes.Array[ctypes.c_char]) -> tuple[int, int]:
    fd = int(libc.syscall(_NR_BPF, cmd, attr, len(attr)))
    return fd, (ctypes.get_errno() if fd < 0 else 0)


def read_lsm_list() -> list[str] | None:
    """Active LSMs, mounting securityfs if needed; None when it cannot be read."""
    if not LSM_LIST.exists() and os.geteuid() == 0:
        subprocess.run(
            ["mount", "-t", "securityfs", "securityfs", str(SECURITYFS)],
            check=False,
            capture_output=True,
        )
    try:
        return [x for x in LSM_LIST.read_text().strip().split(",") if x]
    except OSError:
        return None


def try_load_lsm_program() -> tuple[bool, str]:
    """Load and attach an always-allow program at ``file_open``; (ok, what happened)."""
    try:
        btf_id = lsm_hook_btf_id(vmlinux_btf(), "file_open")
    except BtfError as exc:
        return False, f"no usable kernel BTF ({exc}); BPF LSM needs {VMLINUX}"
    libc = _libc()
    insns = ctypes.create_string_buffer(_INSNS, len(_INSNS))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<II", attr, 0, _BPF_PROG_TYPE_LSM, len(_INSNS) // 8)
    struct.pack_into("<Q", attr, 8, ctypes.addressof(insns))
    struct.pack_into("<Q", attr, 16, ctypes.addressof(lic))
    struct.pack_into("<IIQ", attr, 24, 1, len(log), ctypes.addressof(log))
    struct.pack_into("16s", attr, 48, b"sentinel_probe")
    struct.pack_into("<I", attr, 68, _BPF_LSM_MAC)
    struct.pack_into("<I", attr, 108, btf_id)
    prog_fd, err = _bpf(libc, _BPF_PROG_LOAD, attr)
    if prog_fd < 0:
        detail = log.value.decode(errors="replace").strip().splitlines()
        return False, (
            f"the kernel refused to load a BPF LSM program ({errno.errorcode.get(err, err)}: "
            f"{os.strerror(err)})" + (f"; verifier: {detail[-1]}" if detail else "")
        )
    try:
        link_attr = ctypes.create_string_buffer(16)
        struct.pack_into("<QI", link_attr, 0, 0, prog_fd)
        link_fd, err = _bpf(libc, _BPF_RAW_TRACEPOINT_OPEN, link_attr)
        if link_fd < 0:
            return False, (
                "a BPF LSM program loaded but could not be attached "
                f"({errno.errorcode.get(err, err)}: {os.strerror(err)})"
            )
        os.close(link_fd)
    finally:
        os.close(prog_fd)
    return True, "a BPF LSM program loaded and attached"


def lsm_available() -> tuple[bool, str]:
    """(available, explanation). The explanation says how to enable BPF LSM when it is not."""
    lsms = read_lsm_list()
    ok, what = try_load_lsm_program()
    listed = (
        "cannot read the active LSM list (securityfs not mounted?)"
        if lsms is None
        else f"active LSMs: {','.join(lsms)}"
    )
    if ok:
        return True, f"BPF LSM is available: {what}; {listed}"
    if lsms is not None and "bpf" not in lsms:
        why = "'bpf' is not in the active LSM list"
    elif lsms is not None:
        why = "'bpf' is in the active LSM list, but the kernel still refuses LSM programs"
    else:
        why = "cannot tell which LSMs are active"
    return False, f"BPF LSM is not available: {what}; {why} ({listed}). {HOW_TO_ENABLE}"
