"""The kernel struct offsets ``bpf/sensor.bpf.c`` reads, taken from the running kernel's BTF.

Each entry is ``macro -> (struct, member path)``; :func:`sensor_cflags` turns the table into
``-D`` flags. If the running kernel lacks a member, start-up fails naming it (rather than the
BPF code silently reading a wrong field, which is what header layouts would do here).
"""

from __future__ import annotations

import platform
from collections.abc import Iterable

from sentinel.kernel.btf import Btf
from sentinel.kernel.features import detect

OFFSETS: dict[str, tuple[str, str]] = {
    "OFF_TASK_REAL_PARENT": ("task_struct", "real_parent"),
    "OFF_TASK_TGID": ("task_struct", "tgid"),
    "OFF_TASK_PID": ("task_struct", "pid"),
    "OFF_TASK_MM": ("task_struct", "mm"),
    "OFF_TASK_FS": ("task_struct", "fs"),
    "OFF_TASK_FILES": ("task_struct", "files"),
    "OFF_TASK_SIGNAL": ("task_struct", "signal"),
    "OFF_TASK_LOGINUID": ("task_struct", "loginuid"),
    "OFF_TASK_EXIT_CODE": ("task_struct", "exit_code"),
    "OFF_MM_ARG_START": ("mm_struct", "arg_start"),
    "OFF_MM_ARG_END": ("mm_struct", "arg_end"),
    "OFF_FS_PWD": ("fs_struct", "pwd"),
    "OFF_FS_ROOT": ("fs_struct", "root"),
    "OFF_PATH_MNT": ("path", "mnt"),
    "OFF_PATH_DENTRY": ("path", "dentry"),
    "OFF_DENTRY_D_PARENT": ("dentry", "d_parent"),
    "OFF_DENTRY_D_NAME_NAME": ("dentry", "d_name.name"),
    "OFF_DENTRY_D_NAME_LEN": ("dentry", "d_name.len"),
    "OFF_VFSMOUNT_MNT_ROOT": ("vfsmount", "mnt_root"),
    "OFF_MOUNT_MNT": ("mount", "mnt"),
    "OFF_MOUNT_MNT_PARENT": ("mount", "mnt_parent"),
    "OFF_MOUNT_MNT_MOUNTPOINT": ("mount", "mnt_mountpoint"),
    "OFF_FILE_F_PATH": ("file", "f_path"),
    "OFF_FILE_PRIVATE_DATA": ("file", "private_data"),
    "OFF_FILES_FDT": ("files_struct", "fdt"),
    "OFF_FDT_FD": ("fdtable", "fd"),
    "OFF_FDT_MAX_FDS": ("fdtable", "max_fds"),
    "OFF_BPRM_FILENAME": ("linux_binprm", "filename"),
    "OFF_BPRM_FILE": ("linux_binprm", "file"),
    "OFF_BPRM_FDPATH": ("linux_binprm", "fdpath"),
    "OFF_SIGNAL_TTY": ("signal_struct", "tty"),
    "OFF_SIGNAL_PIDS": ("signal_struct", "pids"),
    "OFF_PID_NUMBERS": ("pid", "numbers"),
    "OFF_UPID_NR": ("upid", "nr"),
    "OFF_TTY_INDEX": ("tty_struct", "index"),
    "OFF_TTY_DRIVER": ("tty_struct", "driver"),
    "OFF_TTYDRV_MAJOR": ("tty_driver", "major"),
    "OFF_TTYDRV_MINOR_START": ("tty_driver", "minor_start"),
    "OFF_SOCKET_TYPE": ("socket", "type"),
    "OFF_SOCKET_SK": ("socket", "sk"),
    "OFF_SK_PROTOCOL": ("sock", "sk_protocol"),
    "OFF_SK_NUM": ("sock", "__sk_common.skc_num"),
    "OFF_SK_FAMILY": ("sock", "__sk_common.skc_family"),
    "OFF_SK_RCV_SADDR": ("sock", "__sk_common.skc_rcv_saddr"),
    "OFF_SK_V6_RCV_SADDR": ("sock", "__sk_common.skc_v6_rcv_saddr"),
}

# enum pid_type has been PID, TGID, PGID, SID since 4.19; checked against BTF below when present.
PIDTYPE_PGID = 2
PIDTYPE_SID = 3


# Where the first four syscall arguments sit in the saved user registers (struct pt_regs), per
# architecture: the sensor reads them at sys_exit, so it never attaches sys_enter tracepoints.
SYSCALL_ARG_REGS: dict[str, tuple[str, str, str, str]] = {
    "x86_64": ("di", "si", "dx", "r10"),
}


class UnsupportedArch(Exception):
    pass


def sensor_cflags(btf: Btf, machine: str | None = None, disable: Iterable[str] = ()) -> list[str]:
    """All ``-D`` flags the sensor program needs on this kernel: struct offsets, and the
    kernel's features (:mod:`sentinel.kernel.features`, which may raise UnsupportedKernel;
    ``disable`` names optional features to compile the fallback of)."""
    machine = machine or platform.machine()
    regs = SYSCALL_ARG_REGS.get(machine)
    if regs is None:
        raise UnsupportedArch(f"the sensor does not support {machine} yet (x86_64 only)")
    flags = btf.cflags(OFFSETS)
    flags += [f"-DOFF_REGS_ARG{i}={btf.offsetof('pt_regs', r)}" for i, r in enumerate(regs)]
    flags += [f"-DPIDTYPE_PGID_IDX={PIDTYPE_PGID}", f"-DPIDTYPE_SID_IDX={PIDTYPE_SID}"]
    flags += detect(btf, disable=disable).cflags
    return flags
