"""The ``-D`` flags the enforcement programs need on the running kernel, all from BTF.

Installed headers do not describe the running kernel, so every struct member the programs
read is read at an offset from the running kernel's BTF (:mod:`sentinel.kernel.btf`),
including members of structs that live in modules (``loop``, ``overlay``: their split BTF
under /sys/kernel/btf). Hooks whose argument lists changed between kernels take the position
of the argument they need; hooks a kernel lacks are compiled out and reported.
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass, field

from sentinel.enforcement.abi import DCACHE_DISCONNECTED, LSM_HOOKS, OPTIONAL_HOOKS
from sentinel.enforcement.lsm_btf import arg_index
from sentinel.kernel.btf import Btf, BtfError, module_btf
from sentinel.kernel.offsets import SYSCALL_ARG_REGS

# struct member offsets the programs read: macro -> (struct, member path).
OFFSETS: dict[str, tuple[str, str]] = {
    "OFF_FILE_F_PATH_DENTRY": ("file", "f_path.dentry"),
    "OFF_FILE_F_PATH_MNT": ("file", "f_path.mnt"),
    "OFF_FILE_F_MODE": ("file", "f_mode"),
    "OFF_FILE_F_FLAGS": ("file", "f_flags"),
    "OFF_FILE_F_INODE": ("file", "f_inode"),
    "OFF_FILE_F_MAPPING": ("file", "f_mapping"),
    "OFF_PATH_DENTRY": ("path", "dentry"),
    "OFF_PATH_MNT": ("path", "mnt"),
    "OFF_DENTRY_D_PARENT": ("dentry", "d_parent"),
    "OFF_DENTRY_D_INODE": ("dentry", "d_inode"),
    "OFF_DENTRY_D_FLAGS": ("dentry", "d_flags"),
    "OFF_DENTRY_D_NAME_NAME": ("dentry", "d_name.name"),
    "OFF_DENTRY_D_ALIAS": ("dentry", "d_u.d_alias"),
    "OFF_INODE_I_INO": ("inode", "i_ino"),
    "OFF_INODE_I_SB": ("inode", "i_sb"),
    "OFF_INODE_I_MODE": ("inode", "i_mode"),
    "OFF_INODE_I_RDEV": ("inode", "i_rdev"),
    "OFF_INODE_I_DENTRY": ("inode", "i_dentry"),
    "OFF_SB_S_DEV": ("super_block", "s_dev"),
    "OFF_SB_S_MAGIC": ("super_block", "s_magic"),
    "OFF_SB_S_FLAGS": ("super_block", "s_flags"),
    "OFF_SB_S_BDEV": ("super_block", "s_bdev"),
    "OFF_MOUNT_MNT": ("mount", "mnt"),
    "OFF_MOUNT_MNT_PARENT": ("mount", "mnt_parent"),
    "OFF_MOUNT_MNT_MOUNTPOINT": ("mount", "mnt_mountpoint"),
    "OFF_MOUNT_MNT_NS": ("mount", "mnt_ns"),
    "OFF_MOUNT_MNT_ID": ("mount", "mnt_id"),
    "OFF_VFSMOUNT_MNT_ROOT": ("vfsmount", "mnt_root"),
    "OFF_VFSMOUNT_MNT_FLAGS": ("vfsmount", "mnt_flags"),
    "OFF_MNT_NAMESPACE_NS_INUM": ("mnt_namespace", "ns.inum"),
    "OFF_TASK_REAL_PARENT": ("task_struct", "real_parent"),
    "OFF_TASK_TGID": ("task_struct", "tgid"),
    "OFF_VMA_VM_FILE": ("vm_area_struct", "vm_file"),
    "OFF_VMA_VM_FLAGS": ("vm_area_struct", "vm_flags"),
    "OFF_IATTR_IA_VALID": ("iattr", "ia_valid"),
    "OFF_SOCKET_SK": ("socket", "sk"),
    "OFF_SK_PROTOCOL": ("sock", "sk_protocol"),
    "OFF_MSGHDR_MSG_NAME": ("msghdr", "msg_name"),
    "OFF_MSGHDR_MSG_NAMELEN": ("msghdr", "msg_namelen"),
    "OFF_MSGHDR_MSG_CONTROL": ("msghdr", "msg_control"),
    "OFF_MSGHDR_MSG_CONTROLLEN": ("msghdr", "msg_controllen"),
    "OFF_MSGHDR_MSG_FLAGS": ("msghdr", "msg_flags"),
    "OFF_ADDRESS_SPACE_HOST": ("address_space", "host"),
    "OFF_BDEV_INODE_BDEV": ("bdev_inode", "bdev"),
    "OFF_BDEV_INODE_VFS_INODE": ("bdev_inode", "vfs_inode"),
    "OFF_BLOCK_DEVICE_BD_DEV": ("block_device", "bd_dev"),
    "OFF_BLOCK_DEVICE_BD_DISK": ("block_device", "bd_disk"),
    "OFF_GENDISK_PRIVATE_DATA": ("gendisk", "private_data"),
}
# Only where the hook exists.
HOOK_OFFSETS: dict[str, dict[str, tuple[str, str]]] = {
    "uring_cmd": {"OFF_IO_URING_CMD_FILE": ("io_uring_cmd", "file")},
}
# Sizes the C code assumes for the members it reads by value.
SIZES: dict[tuple[str, str], int] = {
    ("file", "f_mode"): 4,
    ("file", "f_flags"): 4,
    ("dentry", "d_flags"): 4,
    ("super_block", "s_dev"): 4,
    ("super_block", "s_magic"): 8,
    ("super_block", "s_flags"): 8,
    ("inode", "i_ino"): 8,
    ("inode", "i_mode"): 2,
    ("inode", "i_rdev"): 4,
    ("mount", "mnt_id"): 4,
    ("vfsmount", "mnt_flags"): 4,
    ("mnt_namespace", "ns.inum"): 4,
    ("task_struct", "tgid"): 4,
    ("vm_area_struct", "vm_flags"): 8,
    ("iattr", "ia_valid"): 4,
    ("sock", "sk_protocol"): 2,
    ("msghdr", "msg_namelen"): 4,
    ("msghdr", "msg_controllen"): 8,
    ("msghdr", "msg_flags"): 4,
    ("block_device", "bd_dev"): 4,
}
# Hooks whose argument lists differ between kernels: macro -> (hook, argument name, allowed).
ARG_POSITIONS: dict[str, tuple[str, str, tuple[int, ...]]] = {
    "SETATTR_DENTRY_ARG": ("inode_setattr", "dentry", (0, 1)),
    "SETXATTR_DENTRY_ARG": ("inode_setxattr", "dentry", (0, 1)),
    "REMOVEXATTR_DENTRY_ARG": ("inode_removexattr", "dentry", (0, 1)),
}
REQUIRED_HOOKS = tuple(h for h in LSM_HOOKS if h not in OPTIONAL_HOOKS)
# What the kill mode's tracepoint programs read besides (bpf/enforcement/kill.c).
KILL_OFFSETS: dict[str, tuple[str, str]] = {
    "OFF_BPRM_FILE": ("linux_binprm", "file"),
    "OFF_TASK_PENDING_SIGNAL": ("task_struct", "pending.signal"),
    "OFF_TASK_FILES": ("task_struct", "files"),
    "OFF_FILES_FDT": ("files_struct", "fdt"),
    "OFF_FDT_FD": ("fdtable", "fd"),
    "OFF_FDT_MAX_FDS": ("fdtable", "max_fds"),
    "OFF_FILE_PRIVATE_DATA": ("file", "private_data"),
    "OFF_SK_FAMILY": ("sock", "__sk_common.skc_family"),
    "OFF_SK_DPORT": ("sock", "__sk_common.skc_dport"),
    "OFF_SK_DADDR": ("sock", "__sk_common.skc_daddr"),
    "OFF_SK_V6_DADDR": ("sock", "__sk_common.skc_v6_daddr"),
}


class CflagsError(RuntimeError):
    pass


@dataclass
class Cflags:
    flags: list[str] = field(default_factory=list)
    lacking: list[str] = field(default_factory=list)  # optional hooks this kernel does not have
    notes: list[str] = field(default_factory=list)  # coverage this kernel reduces (logged)


def _module_struct(btf: Btf, module: str, struct: str) -> Btf | None:
    """BTF that describes ``struct`` (vmlinux if built in, else the module's, loading the
    module once if needed: its devices can appear at any time after start)."""
    if btf.has_struct(struct):
        return btf
    found = module_btf(module, btf)
    if found is None:
        subprocess.run(["modprobe", "-q", module], capture_output=True, check=False)
        found = module_btf(module, btf)
    return found if found is not None and found.has_struct(struct) else None


def common(btf: Btf) -> Cflags:
    """Flags every enforcement program needs (offsets, module structs, kernel constants)."""
    out = Cflags()
    try:
        out.flags = btf.cflags(OFFSETS)
        for (s, m), size in SIZES.items():
            if btf.member_size(s, m) != size:
                raise CflagsError(f"struct {s}.{m} is {btf.member_size(s, m)} bytes, not {size}")
    except BtfError as exc:
        raise CflagsError(
            f"kernel BTF does not describe what bpf/enforcement reads: {exc}"
        ) from exc
    disconnected = btf.enum_value("DCACHE_DISCONNECTED")
    out.flags.append(f"-DDCACHE_DISCONNECTED_={disconnected or DCACHE_DISCONNECTED}")
    loop = _module_struct(btf, "loop", "loop_device")
    if loop is not None:
        out.flags.append(
            f"-DOFF_LOOP_DEVICE_LO_BACKING_FILE={loop.offsetof('loop_device', 'lo_backing_file')}"
        )
    else:
        out.notes.append(
            "no BTF for the loop driver (module not loadable here): writes to loop devices "
            "attached later over protected files are judged only at the files' own hooks"
        )
    ovl = _module_struct(btf, "overlay", "ovl_inode")
    if ovl is not None:
        upper = ovl.offsetof("ovl_inode", "__upperdentry") - ovl.offsetof("ovl_inode", "vfs_inode")
    else:
        # Where __upperdentry has sat since overlayfs' first ovl_inode (4.13): right after the
        # VFS inode. What Falco's and Kubescape's probes rely on without overlayfs' BTF.
        upper = btf.sizeof("inode")
        out.notes.append("no BTF for overlayfs: the upper dentry is taken to follow the inode")
    out.flags.append(f"-DOVL_UPPER_OFF={upper}")
    return out


def lsm(btf: Btf, hooks: dict[str, list[str]]) -> Cflags:
    """Flags for bpf/enforcement/lsm.c: ``common`` plus hook presence and argument positions."""
    missing = [h for h in REQUIRED_HOOKS if h not in hooks]
    if missing:
        raise CflagsError(f"this kernel lacks BPF LSM hooks Sentinel needs: {missing}")
    out = common(btf)
    try:
        for macro, (hook, arg, allowed) in ARG_POSITIONS.items():
            pos = arg_index(hooks, hook, arg)
            if pos not in allowed:
                raise CflagsError(f"BPF LSM hook {hook}: argument {arg!r} at unexpected {pos}")
            out.flags.append(f"-D{macro}={pos}")
        for hook in OPTIONAL_HOOKS:
            usable = hook in hooks and (
                hook not in ("inode_set_acl", "inode_remove_acl")
                or arg_index(hooks, hook, "dentry") == 1
            )
            if usable:
                out.flags.append(f"-DHAVE_{hook}=1")
                out.flags += btf.cflags(HOOK_OFFSETS.get(hook, {}))
            else:
                out.lacking.append(hook)
    except BtfError as exc:
        raise CflagsError(str(exc)) from exc
    return out


def kill(btf: Btf) -> Cflags:
    """Flags for bpf/enforcement/kill.c: ``common`` plus the tracepoint side's offsets and
    where the syscall arguments sit in the saved registers."""
    out = common(btf)
    try:
        out.flags += btf.cflags(KILL_OFFSETS)
        regs = SYSCALL_ARG_REGS.get(platform.machine())
        if regs is None:
            raise CflagsError(f"kill mode does not support {platform.machine()} (x86_64 only)")
        out.flags += [f"-DOFF_REGS_ARG{i}={btf.offsetof('pt_regs', r)}" for i, r in enumerate(regs)]
    except BtfError as exc:
        raise CflagsError(f"kernel BTF does not describe what kill.c reads: {exc}") from exc
    return out
