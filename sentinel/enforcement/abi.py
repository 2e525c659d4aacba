"""Every number and struct the enforcement BPF programs share with Python, defined once.

``bpf/enforcement/common.h``, ``lsm.c`` and ``kill.c`` spell none of these: :func:`header`
generates them as C text placed in front of the sources (the way :mod:`sentinel.events.cgen`
does it for the sensor), and Python uses the same definitions to fill the maps and decode the
events. ``tests/enforcement/test_abi.py`` compiles the generated structs with gcc and compares
every member's offset and size with the ctypes definitions here, and the ioctl and mount
numbers with the system's uapi headers: a mismatch fails a test, not a run in production.

Where a number is a stable user-space ABI that Python's standard library already knows
(``os.O_TRUNC``, ``mmap.PROT_EXEC``, ``socket.MSG_FASTOPEN``...), it is taken from there.
Kernel-internal values (``FMODE_WRITE``, ``MNT_SHARED``...) are written here once, with the
header they come from; they have been stable since long before the oldest kernel supported.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import socket
import stat
from typing import Any

# ---- what happened: hooks (LSM hooks and the kill mode's tracepoints) and operations ------------

# BPF LSM hooks, by the name the kernel gives them (``bpf_lsm_<name>``). An event names the hook
# that denied by its position here (1-based).
LSM_HOOKS = (
    "file_open",
    "file_permission",
    "file_ioctl",
    "file_ioctl_compat",
    "mmap_file",
    "file_mprotect",
    "inode_create",
    "inode_mknod",
    "inode_mkdir",
    "inode_symlink",
    "inode_link",
    "inode_unlink",
    "inode_rmdir",
    "inode_rename",
    "inode_setattr",
    "inode_setxattr",
    "inode_removexattr",
    "inode_set_acl",
    "inode_remove_acl",
    "sb_mount",
    "move_mount",
    "sb_umount",
    "sb_pivotroot",
    "sb_kern_mount",
    "socket_connect",
    "socket_sendmsg",
    "sctp_bind_connect",
    "uring_cmd",
)
# Hooks compiled only when the running kernel has them (BTF says); absence is reported.
OPTIONAL_HOOKS = ("file_ioctl_compat", "inode_set_acl", "inode_remove_acl", "uring_cmd")
# The kill mode's programs (``enforcement.unavailable: kill``), named as tracepoints.
KILL_PROBES = (
    "sched_process_exec",
    "sys_exit_open",
    "sys_exit_openat",
    "sys_exit_openat2",
    "sys_exit_creat",
    "sys_enter_write",
    "sys_enter_pwrite64",
    "sys_enter_writev",
    "sys_enter_pwritev",
    "sys_enter_pwritev2",
    "sys_exit_connect",
    "sys_exit_sendto",
    "sys_exit_sendmsg",
    "sys_exit_sendmmsg",
)
HOOKS: dict[int, str] = dict(enumerate((*LSM_HOOKS, *KILL_PROBES), start=1))

# What the denied (or killed) process was doing, and the Falco event type an alert names.
OPERATIONS: dict[str, str] = {
    "exec": "execve",
    "exec_memfd": "execve",
    "exec_upper_layer": "execve",
    "open_write": "openat",
    "open_trunc": "openat",
    "write": "write",
    "truncate": "truncate",
    "unlink": "unlinkat",
    "rename_from": "renameat2",
    "rename_to": "renameat2",
    "link_from": "linkat",
    "link_to": "linkat",
    "symlink": "symlinkat",
    "create": "openat",
    "mknod": "mknodat",
    "mkdir": "mkdirat",
    "rmdir": "unlinkat",
    "chmod": "fchmodat",
    "chown": "fchownat",
    "setattr": "utimensat",
    "setxattr": "setxattr",
    "removexattr": "removexattr",
    "set_acl": "setxattr",
    "remove_acl": "removexattr",
    "ioctl": "ioctl",
    "mmap_shared_write": "mmap",
    "mprotect_shared_write": "mprotect",
    "mmap_exec": "mmap",
    "mprotect_exec": "mprotect",
    "mount": "mount",
    "move_mount": "move_mount",
    "umount": "umount2",
    "pivot_root": "pivot_root",
    "device_write": "write",
    "device_ioctl": "ioctl",
    "device_mount": "mount",
    "device_uring_cmd": "io_uring_enter",
    "connect": "connect",
    "sendmsg": "sendmsg",
    "sctp_connect": "setsockopt",
}
OP_IDS: dict[str, int] = {name: i for i, name in enumerate(OPERATIONS, start=1)}

# How the process was stopped (deny_event.action).
ACTION_DENY = 1  # a BPF LSM hook returned -EPERM: the operation did not happen
ACTION_KILL = 2  # a tracepoint program sent SIGKILL (enforcement.unavailable: kill)
ACTIONS = {ACTION_DENY: "deny", ACTION_KILL: "kill"}

# ---- sizes --------------------------------------------------------------------------------------

MAX_DEPTH = 32  # dentry levels an exec walk follows (mount crossings included)
MAX_NAMES = 8  # path components an event reports below the identity that matched
NAME_LEN = 64
MAX_IDENTS = 1 << 18  # identities one policy may hold (each map holds two policies)
MAX_NETS = 4096
MAX_NET_PORTS = 16384
MAX_DEVS = 1024
MAX_MOUNTS = 4096
SCTP_MAX_ADDRS = 8  # addresses of one sctp_connectx() checked; more are denied (fail closed)
MAX_CMSGS = 8  # control messages of one SCTP sendmsg() checked; more are denied

# ---- policy words -------------------------------------------------------------------------------

# slot_cfg.flags: what a policy holds, so that hooks with nothing to check return at once.
F_WRITE = 1  # protected identities (write and move checks)
F_EXEC = 2  # exec denials of any kind
F_CONNECT = 4  # connect denials
F_DEVS = 8  # devices that hold protected data
# Exec walk modes (MODE_EXEC: exact identity, or an exec-denied directory above).
MODE_EXEC = 3
# config array: the generation word (a Gray code, see lsm_maps) and Sentinel's mount
# namespace (its ns inode number), which decides whether a mount change can hide a path.
CFG_GEN = 0
CFG_MNTNS = 1
CFG_N = 2
# devs map key kinds (a block and a character device may share major:minor).
DEV_BLOCK = 1
DEV_CHAR = 2

# ---- kernel and uapi numbers the C code tests ---------------------------------------------------

# include/linux/fs.h (kernel-internal, stable)
FMODE_WRITE = 0x2
FMODE_EXEC = 0x20  # also __FMODE_EXEC, the f_flags bit open_exec() sets
MAY_WRITE = 0x2
MAY_APPEND = 0x8
SB_RDONLY = 0x1
# include/linux/fs.h ATTR_* (struct iattr.ia_valid)
ATTR_MODE = 0x1
ATTR_UID = 0x2
ATTR_GID = 0x4
ATTR_SIZE = 0x8
# include/linux/mm.h
VM_SHARED = 0x8
# include/linux/mount.h, fs/mount.h
MNT_SHARED = 0x1000
MNT_NS_INTERNAL = -22  # ERR_PTR(-EINVAL): the namespace of kernel-internal mounts (shm_mnt)
# include/uapi/linux/magic.h
OVERLAYFS_SUPER_MAGIC = 0x794C7630
BDEVFS_MAGIC = 0x62646576  # the block devices' own inodes (a bdev file's mapping host)
# include/uapi/linux/major.h
LOOP_MAJOR = 7
# include/linux/dcache.h: the flag exportfs leaves on a dentry it could not connect to its
# parent (open_by_handle_at). 6.15+ kernels declare it in an enum, read from BTF instead.
DCACHE_DISCONNECTED = 0x20
# include/uapi/linux/mount.h (MS_* mount(2) flags)
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
# include/uapi/linux/sctp.h (setsockopt names, and what the LSM hook is told)
SCTP_SOCKOPT_CONNECTX_OLD = 107
SCTP_SOCKOPT_CONNECTX = 110
SCTP_SOCKOPT_CONNECTX3 = 111
SCTP_PRIMARY_ADDR = 6
SCTP_SENDMSG_CONNECT = 126
SCTP_DSTADDRV4 = 7  # control messages naming extra destinations of a new association
SCTP_DSTADDRV6 = 8
SCTP_PARAM_ADD_IP = 0x01C0  # cpu_to_be16(0xc001) as the little-endian int the hook gets
SCTP_PARAM_SET_PRIMARY = 0x04C0  # cpu_to_be16(0xc004)
SOL_SCTP = socket.IPPROTO_SCTP

# ---- ioctl numbers (include/uapi/asm-generic/ioctl.h encoding) ----------------------------------

_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction: int, kind: str | int, nr: int, size: int) -> int:
    t = ord(kind) if isinstance(kind, str) else kind
    return (direction << 30) | (size << 16) | (t << 8) | nr


# On a protected file or directory these change it through any descriptor, even one opened
# read-only (inode flags, verity, encryption policy, ext4's extent swaps).
FILE_IOCTLS: dict[str, int] = {
    "FS_IOC_SETFLAGS": _ioc(_IOC_WRITE, "f", 2, 8),
    "FS_IOC32_SETFLAGS": _ioc(_IOC_WRITE, "f", 2, 4),
    "FS_IOC_FSSETXATTR": _ioc(_IOC_WRITE, "X", 32, 28),  # struct fsxattr
    "FS_IOC_SETVERSION": _ioc(_IOC_WRITE, "v", 2, 8),
    "FS_IOC32_SETVERSION": _ioc(_IOC_WRITE, "v", 2, 4),
    "FS_IOC_ENABLE_VERITY": _ioc(_IOC_WRITE, "f", 133, 128),  # struct fsverity_enable_arg
    "FS_IOC_SET_ENCRYPTION_POLICY": _ioc(_IOC_READ, "f", 19, 12),  # struct fscrypt_policy_v1
    "EXT4_IOC_MOVE_EXT": _ioc(_IOC_READ | _IOC_WRITE, "f", 15, 40),  # struct move_extent
    "EXT4_IOC_SWAP_BOOT": _ioc(0, "f", 17, 0),
}
# On a device that holds protected data these write it without a write().
DEVICE_IOCTLS: dict[str, int] = {
    "BLKDISCARD": _ioc(0, 0x12, 119, 0),
    "BLKSECDISCARD": _ioc(0, 0x12, 125, 0),
    "BLKZEROOUT": _ioc(0, 0x12, 127, 0),
    "BLKPG": _ioc(0, 0x12, 105, 0),  # partition table changes
    "SG_IO": 0x2285,  # SCSI commands, WRITE among them (include/uapi/scsi/sg.h)
    "NVME_IOCTL_SUBMIT_IO": _ioc(_IOC_WRITE, "N", 0x42, 48),
    "NVME_IOCTL_IO_CMD": _ioc(_IOC_READ | _IOC_WRITE, "N", 0x43, 72),
    "NVME_IOCTL_IO64_CMD": _ioc(_IOC_READ | _IOC_WRITE, "N", 0x48, 80),
    "NVME_IOCTL_IO64_CMD_VEC": _ioc(_IOC_READ | _IOC_WRITE, "N", 0x49, 80),
}
LOOP_GET_STATUS64 = 0x4C05  # include/uapi/linux/loop.h

# ---- the structs both sides read ----------------------------------------------------------------

_C_NAMES: dict[Any, str] = {
    ctypes.c_uint8: "u8",
    ctypes.c_uint16: "u16",
    ctypes.c_uint32: "u32",
    ctypes.c_uint64: "u64",
    ctypes.c_char: "char",
}


class IdentKey(ctypes.Structure):
    """A file's identity: its superblock's dev_t (kernel encoding) and inode number."""

    _fields_ = [("dev", ctypes.c_uint32), ("slot", ctypes.c_uint32), ("ino", ctypes.c_uint64)]


class IdentVal(ctypes.Structure):
    """Rule indexes (1-based, 0 = none) of one identity."""

    _fields_ = [
        ("write_rule", ctypes.c_uint32),  # at or below it nothing may be modified
        ("exec_prefix_rule", ctypes.c_uint32),  # execs of anything at or below are denied
        ("exec_exact_rule", ctypes.c_uint32),  # execs of exactly this inode are denied
        ("ancestor_rule", ctypes.c_uint32),  # above a protected path: not moved or hidden
    ]


class NetKey(ctypes.Structure):
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),  # 8 (the slot byte) + the address prefix length
        ("slot", ctypes.c_uint8),
        ("addr", ctypes.c_uint8 * 16),  # IPv6, or IPv4 mapped as ::ffff:a.b.c.d
        ("pad", ctypes.c_uint8 * 3),
    ]


class PortKey(ctypes.Structure):
    _fields_ = [
        ("slot", ctypes.c_uint32),
        ("entry", ctypes.c_uint32),  # CIDR entry id from net_trie; 0 = any address
        ("port", ctypes.c_uint32),  # host byte order; 0 = any port
    ]


class DevKey(ctypes.Structure):
    """A device that holds protected data (the file system's disk, a loop device over a
    protected file, a SCSI generic node of that disk)."""

    _fields_ = [("dev", ctypes.c_uint32), ("kind", ctypes.c_uint32), ("slot", ctypes.c_uint32)]


class MountKey(ctypes.Structure):
    """A mount (its id) on the way to a protected path or below one, in Sentinel's mount
    namespace: unmounting or moving it would change what the path names."""

    _fields_ = [("id", ctypes.c_uint32), ("slot", ctypes.c_uint32)]


class SlotCfg(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint32),  # F_*
        ("deep_exec_rule", ctypes.c_uint32),  # denies execs the walk cannot place (0: none)
        ("memfd_exec_rule", ctypes.c_uint32),  # proc.is_exe_from_memfd = true
        ("upper_exec_rule", ctypes.c_uint32),  # proc.is_exe_upper_layer = true
        ("any_write_rule", ctypes.c_uint32),  # names a fail-closed mount denial (0: none)
        ("any_connect_rule", ctypes.c_uint32),  # names a fail-closed address denial
    ]


class DenyEvent(ctypes.Structure):
    """One denial (or kill), as the programs emit it on the ring buffer."""

    _fields_ = [
        ("ident_ino", ctypes.c_uint64),
        ("ident_dev", ctypes.c_uint32),
        ("rule", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("ppid", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("gen", ctypes.c_uint32),  # the generation word when it ran: whose rule index `rule` is
        ("port", ctypes.c_uint16),
        ("hook", ctypes.c_uint8),
        ("op", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("nnames", ctypes.c_uint8),
        ("truncated", ctypes.c_uint8),
        ("action", ctypes.c_uint8),
        ("addr", ctypes.c_uint8 * 16),
        ("comm", ctypes.c_char * 16),
        ("names", ctypes.c_uint8 * (MAX_NAMES * NAME_LEN)),  # name i at i * NAME_LEN, leaf first
        ("pad", ctypes.c_uint32),
    ]


STRUCTS: dict[str, type[ctypes.Structure]] = {
    "ident_key": IdentKey,
    "ident_val": IdentVal,
    "net_key": NetKey,
    "port_key": PortKey,
    "dev_key": DevKey,
    "mount_key": MountKey,
    "slot_cfg": SlotCfg,
    "deny_event": DenyEvent,
}


class AbiError(ValueError):
    pass


def c_struct(name: str, cls: type[ctypes.Structure]) -> str:
    """The C declaration of ``cls``. Implicit padding is refused (declare it), so that gcc,
    clang's BPF target and ctypes cannot place a member differently."""
    lines = [f"struct {name} {{"]
    off = 0
    for fname, ftype in cls._fields_:  # type: ignore[misc]
        field = getattr(cls, fname)
        if field.offset != off:
            raise AbiError(f"{name}.{fname} at {field.offset}, expected {off}: declare padding")
        elem: Any = getattr(ftype, "_type_", None)
        if isinstance(ftype, type) and issubclass(ftype, ctypes.Array):
            lines.append(f"    {_C_NAMES[elem]} {fname}[{ftype._length_}];")
        else:
            lines.append(f"    {_C_NAMES[ftype]} {fname};")
        off += field.size
    if off != ctypes.sizeof(cls):
        raise AbiError(f"{name} has trailing padding: declare it")
    lines.append(f"}};  // {off} bytes")
    return "\n".join(lines)


def _ioctl_test(macro: str, values: dict[str, int]) -> str:
    cases = " || ".join(f"(c) == {v:#x}U" for v in values.values())
    return f"#define {macro}(c) ({cases})"


def constants() -> dict[str, int]:
    """Every shared number, by its C name."""
    out: dict[str, int] = {f"H_{name.upper()}": i for i, name in HOOKS.items()}
    out.update({f"OP_{name.upper()}": i for name, i in OP_IDS.items()})
    out.update({f"ACTION_{v.upper()}": k for k, v in ACTIONS.items()})
    out.update(
        MAX_DEPTH=MAX_DEPTH,
        MAX_NAMES=MAX_NAMES,
        NAME_LEN=NAME_LEN,
        MAX_IDENTS=MAX_IDENTS,
        MAX_NETS=MAX_NETS,
        MAX_NET_PORTS=MAX_NET_PORTS,
        MAX_DEVS=MAX_DEVS,
        MAX_MOUNTS=MAX_MOUNTS,
        SCTP_MAX_ADDRS=SCTP_MAX_ADDRS,
        MAX_CMSGS=MAX_CMSGS,
        F_WRITE=F_WRITE,
        F_EXEC=F_EXEC,
        F_CONNECT=F_CONNECT,
        F_DEVS=F_DEVS,
        MODE_EXEC=MODE_EXEC,
        CFG_GEN=CFG_GEN,
        CFG_MNTNS=CFG_MNTNS,
        CFG_N=CFG_N,
        DEV_BLOCK=DEV_BLOCK,
        DEV_CHAR=DEV_CHAR,
        FMODE_WRITE_=FMODE_WRITE,
        FMODE_EXEC_=FMODE_EXEC,
        MAY_WRITE_=MAY_WRITE,
        MAY_APPEND_=MAY_APPEND,
        SB_RDONLY_=SB_RDONLY,
        ATTR_MODE_=ATTR_MODE,
        ATTR_UID_=ATTR_UID,
        ATTR_GID_=ATTR_GID,
        ATTR_SIZE_=ATTR_SIZE,
        VM_SHARED_=VM_SHARED,
        MNT_SHARED_=MNT_SHARED,
        MNT_NS_INTERNAL_=MNT_NS_INTERNAL,
        OVERLAYFS_SUPER_MAGIC_=OVERLAYFS_SUPER_MAGIC,
        BDEVFS_MAGIC_=BDEVFS_MAGIC,
        LOOP_MAJOR_=LOOP_MAJOR,
        MS_REMOUNT_=MS_REMOUNT,
        MS_BIND_=MS_BIND,
        MS_MOVE_=MS_MOVE,
        MS_PROPAGATION_=MS_SHARED | MS_PRIVATE | MS_SLAVE | MS_UNBINDABLE,
        SCTP_SOCKOPT_CONNECTX_=SCTP_SOCKOPT_CONNECTX,
        SCTP_PRIMARY_ADDR_=SCTP_PRIMARY_ADDR,
        SCTP_SENDMSG_CONNECT_=SCTP_SENDMSG_CONNECT,
        SCTP_PARAM_ADD_IP_=SCTP_PARAM_ADD_IP,
        SCTP_PARAM_SET_PRIMARY_=SCTP_PARAM_SET_PRIMARY,
        SCTP_DSTADDRV4_=SCTP_DSTADDRV4,
        SCTP_DSTADDRV6_=SCTP_DSTADDRV6,
        SOL_SCTP_=SOL_SCTP,
        # from Python's standard library (libc's headers)
        O_TRUNC_=os.O_TRUNC,
        PROT_WRITE_=mmap.PROT_WRITE,
        PROT_EXEC_=mmap.PROT_EXEC,
        MAP_SHARED_=mmap.MAP_SHARED,
        AF_INET_=socket.AF_INET,
        AF_INET6_=socket.AF_INET6,
        SOCK_STREAM_=socket.SOCK_STREAM,
        MSG_FASTOPEN_=socket.MSG_FASTOPEN,
        IPPROTO_TCP_=socket.IPPROTO_TCP,
        IPPROTO_UDP_=socket.IPPROTO_UDP,
        IPPROTO_UDPLITE_=136,  # not in Python's socket module; include/uapi/linux/in.h
        IPPROTO_SCTP_=socket.IPPROTO_SCTP,
        IPPROTO_MPTCP_=262,  # include/uapi/linux/in.h
        S_IFMT_=0o170000,
        S_IFBLK_=stat.S_IFBLK,
        S_IFCHR_=stat.S_IFCHR,
        SIGKILL_=signal.SIGKILL,
        SENTINEL_EPERM=1,
    )
    return out


def header() -> str:
    """The text placed before the enforcement sources: macros, ioctl tests, structs."""
    lines = ["// Generated from sentinel/enforcement/abi.py: do not edit."]
    lines += [f"#define {k} {v}" for k, v in constants().items()]
    lines.append(_ioctl_test("FILE_IOCTL_MODIFIES", FILE_IOCTLS))
    lines.append(_ioctl_test("DEVICE_IOCTL_WRITES", DEVICE_IOCTLS))
    lines += [c_struct(name, cls) for name, cls in STRUCTS.items()]
    return "\n".join(lines) + "\n"
