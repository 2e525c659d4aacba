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
    "OFF_TASK_CRED": ("task_struct", "cred"),
    "OFF_CRED_CAP_INHERITABLE": ("cred", "cap_inheritable"),
    "OFF_CRED_CAP_PERMITTED": ("cred", "cap_permitted"),
    "OFF_CRED_CAP_EFFECTIVE": ("cred", "cap_effective"),
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
    "OFF_SK_DADDR": ("sock", "__sk_common.skc_daddr"),
    "OFF_SK_V6_DADDR": ("sock", "__sk_common.skc_v6_daddr"),
    "OFF_SK_DPORT": ("sock", "__sk_common.skc_dport"),
    "OFF_SK_STATE": ("sock", "__sk_common.skc_state"),
    "OFF_FILE_F_INODE": ("file", "f_inode"),
    "OFF_INODE_I_MODE": ("inode", "i_mode"),
    "OFF_INODE_I_INO": ("inode", "i_ino"),
    "OFF_INODE_I_UID": ("inode", "i_uid"),
    "OFF_INODE_I_GID": ("inode", "i_gid"),
    "OFF_INODE_I_NLINK": ("inode", "i_nlink"),
    "OFF_INODE_I_SB": ("inode", "i_sb"),
    "OFF_DENTRY_D_INODE": ("dentry", "d_inode"),
    "OFF_SB_S_MAGIC": ("super_block", "s_magic"),
    "OFF_MM_ENV_START": ("mm_struct", "env_start"),
    "OFF_MM_ENV_END": ("mm_struct", "env_end"),
}

# enum pid_type has been PID, TGID, PGID, SID since 4.19; checked against BTF below when present.
PIDTYPE_PGID = 2
PIDTYPE_SID = 3


# Where the first four syscall arguments sit in the saved user registers (struct pt_regs), per
# architecture: the sensor reads them at sys_exit, so it never attaches sys_enter tracepoints.
SYSCALL_ARG_REGS: dict[str, tuple[str, ...]] = {
    "x86_64": ("di", "si", "dx", "r10", "r8", "r9"),
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
    flags += _inode_times(btf)
    flags.append(f"-DOFF_OVL_UPPERDENTRY={_ovl_upperdentry(btf)}")
    flags += detect(btf, disable=disable).cflags
    return flags


def _ovl_upperdentry(btf: Btf) -> int:
    """Where an overlayfs inode's upper dentry is, from the inode it embeds. From BTF when
    overlayfs is built in (struct ovl_inode is in vmlinux's BTF); as a module its types are in
    the module's split BTF, which is not read: then right after the inode, where
    fs/overlayfs/ovl_entry.h has kept ``__upperdentry`` since 4.x (tests/kernel checks both
    agree where BTF has the type)."""
    if btf.has_member("ovl_inode", "__upperdentry"):
        return btf.offsetof("ovl_inode", "__upperdentry") - btf.offsetof("ovl_inode", "vfs_inode")
    return btf.sizeof("inode")


def _inode_times(btf: Btf) -> list[str]:
    """Where an inode's ctime and mtime seconds and nanoseconds are: the field moved twice
    (i_ctime, a timespec64; __i_ctime in 6.6; i_ctime_sec/i_ctime_nsec in 6.11)."""
    out = []
    for which in ("ctime", "mtime"):
        if btf.has_member("inode", f"i_{which}_sec"):
            sec, nsec = f"i_{which}_sec", f"i_{which}_nsec"
        else:
            base = f"__i_{which}" if btf.has_member("inode", f"__i_{which}") else f"i_{which}"
            sec, nsec = f"{base}.tv_sec", f"{base}.tv_nsec"
        out.append(f"-DOFF_INODE_{which.upper()}_SEC={btf.offsetof('inode', sec)}")
        out.append(f"-DOFF_INODE_{which.upper()}_NSEC={btf.offsetof('inode', nsec)}")
    return out


# io_uring (bpf/sensor/uring.h): where a request keeps its opcode, its descriptor and, in the
# command area at the request's start, each operation's arguments (the kernel's copies).
URING_OFFSETS: dict[str, tuple[str, str]] = {
    "OFF_REQ_OPCODE": ("io_kiocb", "opcode"),
    "OFF_REQ_FD": ("io_kiocb", "cqe.fd"),
    "OFF_REQ_FLAGS": ("io_kiocb", "flags"),
    "OFF_REQ_CMD": ("io_kiocb", "cmd"),
    "OFF_OPEN_DFD": ("io_open", "dfd"),
    "OFF_OPEN_SLOT": ("io_open", "file_slot"),
    "OFF_OPEN_FILENAME": ("io_open", "filename"),
    "OFF_OPEN_FLAGS": ("io_open", "how.flags"),
    "OFF_OPEN_MODE": ("io_open", "how.mode"),
    "OFF_UNLINK_DFD": ("io_unlink", "dfd"),
    "OFF_UNLINK_FLAGS": ("io_unlink", "flags"),
    "OFF_UNLINK_FILENAME": ("io_unlink", "filename"),
    "OFF_MKDIR_DFD": ("io_mkdir", "dfd"),
    "OFF_MKDIR_MODE": ("io_mkdir", "mode"),
    "OFF_MKDIR_FILENAME": ("io_mkdir", "filename"),
    "OFF_RENAME_OLD_DFD": ("io_rename", "old_dfd"),
    "OFF_RENAME_NEW_DFD": ("io_rename", "new_dfd"),
    "OFF_RENAME_OLDPATH": ("io_rename", "oldpath"),
    "OFF_RENAME_NEWPATH": ("io_rename", "newpath"),
    "OFF_RENAME_FLAGS": ("io_rename", "flags"),
    "OFF_LINK_OLD_DFD": ("io_link", "old_dfd"),
    "OFF_LINK_NEW_DFD": ("io_link", "new_dfd"),
    "OFF_LINK_OLDPATH": ("io_link", "oldpath"),
    "OFF_LINK_NEWPATH": ("io_link", "newpath"),
    "OFF_LINK_FLAGS": ("io_link", "flags"),
    "OFF_CONNECT_ADDR": ("io_connect", "addr"),
    "OFF_CONNECT_ADDRLEN": ("io_connect", "addr_len"),
    "OFF_ACCEPT_FLAGS": ("io_accept", "flags"),
    "OFF_FILENAME_NAME": ("filename", "name"),
}
URING_OPS = ("OPENAT", "OPENAT2", "CONNECT", "ACCEPT", "RENAMEAT", "UNLINKAT", "MKDIRAT",
             "SYMLINKAT", "LINKAT")  # fmt: skip


def uring_cflags(btf: Btf) -> list[str] | None:
    """The ``-D`` flags bpf/sensor/uring.h needs (offsets and the opcodes, from BTF), or None
    when this kernel's BTF lacks any of them (io_uring is then not traced: older kernels keep
    requests differently)."""
    if not all(btf.has_member(s, m) for s, m in URING_OFFSETS.values()):
        return None
    ops = btf.enumerators("io_uring_op")
    if not all(f"IORING_OP_{op}" in ops for op in URING_OPS):
        return None
    flags = btf.cflags(URING_OFFSETS)
    flags += [f"-DOP_{op}={ops[f'IORING_OP_{op}']}" for op in URING_OPS]
    return flags
