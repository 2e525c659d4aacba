// SPDX-License-Identifier: GPL-2.0
/*
 * Sentinel BPF LSM enforcement: deny modifications of protected trees, execs of forbidden
 * binaries and traffic to forbidden addresses, before they happen. Follows common.h (the
 * maps, identities, the exec walk, the address match), which follows the generated header
 * (sentinel/enforcement/program.py assembles the text; ACTION is ACTION_DENY).
 *
 * Which hooks, and why these (the reasoning is in sentinel/enforcement/lsm.py):
 *  - inode_* hooks, not path_*: the VFS calls them for every caller, stacking file systems
 *    (overlayfs writing its upper directory), nfsd and handle-based opens included, while
 *    path_* hooks only see system calls;
 *  - file_open/file_permission/mmap_file/file_mprotect/file_ioctl judge the file's inode
 *    (f_inode: the real inode, also for overlayfs' backing files), and devices that hold
 *    protected data (a loop device over a protected file, the disk of a protected tree);
 *  - execs are judged at file_open with FMODE_EXEC (every file exec opens: the binary, its
 *    interpreter, overlayfs' real file) and at executable mmaps (ld.so /path);
 *  - mounts that could hide a protected path are judged only when they reach Sentinel's mount
 *    namespace (its own, or a shared mount that propagates); propagation changes and remounts
 *    never hide anything and pass;
 *  - addresses: connect, sendmsg with an address (UDP, raw, TCP Fast Open, SCTP's implicit
 *    associations and their extra destinations), and SCTP's own address-list hook.
 */

/* LSM hooks stop by returning -EPERM; nothing else to do to the process. */
static __always_inline void stop_current(void)
{
}

/* Every hook starts with POLICY: the generation it checks against, read once. */
#define POLICY                                                                                 \
    struct pol p = {};                                                                         \
    read_policy(&p)

/* ---- files ------------------------------------------------------------------------------ */

LSM_PROBE(file_open, void *file)
{
    u32 flags = rd_u32(file, OFF_FILE_F_FLAGS);
    if (flags & FMODE_EXEC_) {
        POLICY;
        return check_exec(file, 1, H_FILE_OPEN, OP_EXEC, &p);
    }
    u32 fmode = rd_u32(file, OFF_FILE_F_MODE);
    if (!(fmode & FMODE_WRITE_) && !(flags & O_TRUNC_))
        return 0;
    POLICY;
    if (!(p.flags & (F_WRITE | F_DEVS)))
        return 0;
    return check_file_write(file, 0, H_FILE_OPEN, (flags & O_TRUNC_) ? OP_OPEN_TRUNC : OP_OPEN_WRITE,
                            OP_DEVICE_WRITE, &p);
}

/* Writes through any descriptor (also ones opened before the policy), fallocate, splice,
 * copy_file_range, reflinks, io_uring and AIO writes. */
LSM_PROBE(file_permission, void *file, int mask)
{
    if (!(mask & (MAY_WRITE_ | MAY_APPEND_)))
        return 0;
    POLICY;
    if (!(p.flags & (F_WRITE | F_DEVS)))
        return 0;
    return check_file_write(file, 1, H_FILE_PERMISSION, OP_WRITE, OP_DEVICE_WRITE, &p);
}

/* ioctls that modify a file even through a read-only descriptor, or write a device. */
static __always_inline int check_ioctl(void *file, u32 cmd, u8 hook)
{
    if (!FILE_IOCTL_MODIFIES(cmd) && !DEVICE_IOCTL_WRITES(cmd))
        return 0;
    POLICY;
    void *inode = rd_ptr(file, OFF_FILE_F_INODE);
    struct ident_key k = {};
    if (FILE_IOCTL_MODIFIES(cmd)) {
        if (!(p.flags & F_WRITE))
            return 0;
        return check_inode(inode, 0, 0, hook, OP_IOCTL, &p);
    }
    u32 r = dev_rule(inode, &p, &k);
    if (!r)
        r = loop_file_rule(file, &p, &k);
    if (!r)
        return 0;
    return report_ident(r, hook, OP_DEVICE_IOCTL, &k, 0, &p);
}

LSM_PROBE(file_ioctl, void *file, unsigned int cmd, unsigned long arg)
{
    return check_ioctl(file, cmd, H_FILE_IOCTL);
}

#ifdef HAVE_file_ioctl_compat
LSM_PROBE(file_ioctl_compat, void *file, unsigned int cmd, unsigned long arg)
{
    return check_ioctl(file, cmd, H_FILE_IOCTL_COMPAT);
}
#endif

/*
 * Executable mappings of an exec-denied file are denied too: otherwise
 * `ld.so /denied/binary` (or dlopen of a denied library) runs its code without an exec.
 */
LSM_PROBE(mmap_file, void *file, unsigned long reqprot, unsigned long prot, unsigned long flags)
{
    if (!file)
        return 0;
    POLICY;
    if (prot & PROT_EXEC_) {
        int ret = check_exec(file, 0, H_MMAP_FILE, OP_MMAP_EXEC, &p);
        if (ret)
            return ret;
    }
    if (!(flags & MAP_SHARED_) || !(prot & PROT_WRITE_) || !(p.flags & (F_WRITE | F_DEVS)))
        return 0;
    return check_file_write(file, 1, H_MMAP_FILE, OP_MMAP_SHARED_WRITE, OP_DEVICE_WRITE, &p);
}

LSM_PROBE(file_mprotect, void *vma, unsigned long reqprot, unsigned long prot)
{
    POLICY;
    void *file = rd_ptr(vma, OFF_VMA_VM_FILE);
    if (!file)
        return 0;
    if (prot & PROT_EXEC_) {
        int ret = check_exec(file, 0, H_FILE_MPROTECT, OP_MPROTECT_EXEC, &p);
        if (ret)
            return ret;
    }
    if (!(prot & PROT_WRITE_) || !(p.flags & (F_WRITE | F_DEVS)))
        return 0;
    u64 vm_flags = 0;
    bpf_probe_read_kernel(&vm_flags, sizeof(vm_flags), (char *)vma + OFF_VMA_VM_FLAGS);
    if (!(vm_flags & VM_SHARED_))
        return 0;
    return check_file_write(file, 1, H_FILE_MPROTECT, OP_MPROTECT_SHARED_WRITE, OP_DEVICE_WRITE,
                            &p);
}

/* ---- directory entries and attributes: the VFS calls these for every caller -------------- */

#define WRITE_POLICY                                                                           \
    POLICY;                                                                                    \
    if (!(p.flags & F_WRITE))                                                                  \
    return 0

/* A new entry in `dir` (also open(O_CREAT) of a new file). */
LSM_PROBE(inode_create, void *dir, void *dentry, unsigned short mode)
{
    WRITE_POLICY;
    return check_inode(dir, dentry, 0, H_INODE_CREATE, OP_CREATE, &p);
}

LSM_PROBE(inode_mknod, void *dir, void *dentry, unsigned short mode, unsigned int dev)
{
    WRITE_POLICY;
    return check_inode(dir, dentry, 0, H_INODE_MKNOD, OP_MKNOD, &p);
}

LSM_PROBE(inode_mkdir, void *dir, void *dentry, unsigned short mode)
{
    WRITE_POLICY;
    return check_inode(dir, dentry, 0, H_INODE_MKDIR, OP_MKDIR, &p);
}

LSM_PROBE(inode_symlink, void *dir, void *dentry, const char *old_name)
{
    WRITE_POLICY;
    return check_inode(dir, dentry, 0, H_INODE_SYMLINK, OP_SYMLINK, &p);
}

LSM_PROBE(inode_link, void *old_dentry, void *dir, void *new_dentry)
{
    WRITE_POLICY;
    int ret = check_inode(d_inode(old_dentry), 0, 0, H_INODE_LINK, OP_LINK_FROM, &p);
    if (ret)
        return ret;
    return check_inode(dir, new_dentry, 0, H_INODE_LINK, OP_LINK_TO, &p);
}

/* Removing an entry: a protected object, an ancestor of one, or any entry of a protected
 * directory. */
static __always_inline int check_remove(void *dir, void *dentry, u8 hook, u8 op,
                                        struct pol *p)
{
    int ret = check_inode(d_inode(dentry), 0, 1, hook, op, p);
    if (ret)
        return ret;
    return check_inode(dir, dentry, 0, hook, op, p);
}

LSM_PROBE(inode_unlink, void *dir, void *dentry)
{
    WRITE_POLICY;
    return check_remove(dir, dentry, H_INODE_UNLINK, OP_UNLINK, &p);
}

LSM_PROBE(inode_rmdir, void *dir, void *dentry)
{
    WRITE_POLICY;
    return check_remove(dir, dentry, H_INODE_RMDIR, OP_RMDIR, &p);
}

/* Both directions (the kernel calls it twice, swapped, for RENAME_EXCHANGE). */
LSM_PROBE(inode_rename, void *old_dir, void *old_dentry, void *new_dir, void *new_dentry)
{
    WRITE_POLICY;
    int ret = check_remove(old_dir, old_dentry, H_INODE_RENAME, OP_RENAME_FROM, &p);
    if (ret)
        return ret;
    ret = check_inode(d_inode(new_dentry), 0, 1, H_INODE_RENAME, OP_RENAME_TO, &p);
    if (ret)
        return ret;
    return check_inode(new_dir, new_dentry, 0, H_INODE_RENAME, OP_RENAME_TO, &p);
}

/* truncate, chmod, chown, utimes: all reach notify_change(), whichever route. */
static __always_inline int check_setattr(void *dentry, void *attr)
{
    WRITE_POLICY;
    u32 valid = attr ? rd_u32(attr, OFF_IATTR_IA_VALID) : 0;
    u8 op = OP_SETATTR;
    if (valid & ATTR_SIZE_)
        op = OP_TRUNCATE;
    else if (valid & ATTR_MODE_)
        op = OP_CHMOD;
    else if (valid & (ATTR_UID_ | ATTR_GID_))
        op = OP_CHOWN;
    return check_inode(d_inode(dentry), 0, 0, H_INODE_SETATTR, op, &p);
}

/* Arguments before the dentry differ across kernels (user_namespace, mnt_idmap, none). */
#if SETATTR_DENTRY_ARG == 0
LSM_PROBE(inode_setattr, void *dentry, void *attr)
{
    return check_setattr(dentry, attr);
}
#else
LSM_PROBE(inode_setattr, void *idmap, void *dentry, void *attr)
{
    return check_setattr(dentry, attr);
}
#endif

#if SETXATTR_DENTRY_ARG == 0
LSM_PROBE(inode_setxattr, void *dentry)
#else
LSM_PROBE(inode_setxattr, void *idmap, void *dentry)
#endif
{
    WRITE_POLICY;
    return check_inode(d_inode(dentry), 0, 0, H_INODE_SETXATTR, OP_SETXATTR, &p);
}

#if REMOVEXATTR_DENTRY_ARG == 0
LSM_PROBE(inode_removexattr, void *dentry)
#else
LSM_PROBE(inode_removexattr, void *idmap, void *dentry)
#endif
{
    WRITE_POLICY;
    return check_inode(d_inode(dentry), 0, 0, H_INODE_REMOVEXATTR, OP_REMOVEXATTR, &p);
}

/* POSIX ACLs have their own hooks since 6.2 (before, they went through the xattr hooks). */
#ifdef HAVE_inode_set_acl
LSM_PROBE(inode_set_acl, void *idmap, void *dentry)
{
    WRITE_POLICY;
    return check_inode(d_inode(dentry), 0, 0, H_INODE_SET_ACL, OP_SET_ACL, &p);
}
#endif

#ifdef HAVE_inode_remove_acl
LSM_PROBE(inode_remove_acl, void *idmap, void *dentry)
{
    WRITE_POLICY;
    return check_inode(d_inode(dentry), 0, 0, H_INODE_REMOVE_ACL, OP_REMOVE_ACL, &p);
}
#endif

/* ---- mounts: only changes that can hide a protected path from Sentinel's view ------------ */

/* Is `vfsmnt` in Sentinel's mount namespace? */
static __always_inline int mount_is_ours(void *vfsmnt)
{
    if (!vfsmnt)
        return 0;
    void *ns = rd_ptr((char *)vfsmnt - OFF_MOUNT_MNT, OFF_MOUNT_MNT_NS);
    if (!ns || (long)ns == MNT_NS_INTERNAL_)
        return 0;
    return rd_u32(ns, OFF_MNT_NAMESPACE_NS_INUM) == config_word(CFG_MNTNS);
}

/* Does a mount made on `vfsmnt` propagate to its peers (one of which may be ours)? */
static __always_inline int mount_shared(void *vfsmnt)
{
    return vfsmnt && (rd_u32(vfsmnt, OFF_VFSMOUNT_MNT_FLAGS) & MNT_SHARED_);
}

/* A mount on the way to a protected path, or below one, as the policy loaded it. */
static __always_inline u32 pinned_rule(void *vfsmnt, struct pol *p, struct ident_key *k)
{
    struct mount_key mk = {};
    mk.id = rd_u32((char *)vfsmnt - OFF_MOUNT_MNT, OFF_MOUNT_MNT_ID);
    mk.slot = p->slot;
    u32 *r = mounts.lookup(&mk);
    if (!r)
        return 0;
    ident(d_inode(rd_ptr(vfsmnt, OFF_VFSMOUNT_MNT_ROOT)), p->slot, k);
    return *r;
}

/* Stop in the name of the policy's first write rule: the hook cannot tell which path. */
static __always_inline int fail_closed(void *dentry, u8 hook, u8 op, struct pol *p)
{
    struct slot_cfg *c = cfg_of(p);
    u32 r = c ? c->any_write_rule : 0;
    if (!r)
        return 0;
    struct ident_key k = {};
    ident(d_inode(dentry), p->slot, &k);
    return report_ident(r, hook, op, &k, dentry, p);
}

LSM_PROBE(sb_mount, const char *dev_name, const void *path, const char *type,
          unsigned long flags)
{
    WRITE_POLICY;
    if (flags & MS_REMOUNT_)
        return 0; /* options of an existing mount: hides nothing */
    if (!(flags & MS_BIND_) && (flags & MS_PROPAGATION_))
        return 0; /* propagation type only: what every path names stays the same */
    void *mnt = rd_ptr(path, OFF_PATH_MNT);
    void *dentry = rd_ptr(path, OFF_PATH_DENTRY);
    int ours = mount_is_ours(mnt);
    if (!ours && !mount_shared(mnt))
        return 0; /* a private or slave mount elsewhere: Sentinel's view cannot change */
    /* mount(2)'s MS_MOVE names its source as a string this hook cannot resolve. */
    if (ours && (flags & MS_MOVE_) && !(flags & MS_BIND_))
        return fail_closed(dentry, H_SB_MOUNT, OP_MOUNT, &p);
    return check_inode(d_inode(dentry), 0, 1, H_SB_MOUNT, OP_MOUNT, &p);
}

LSM_PROBE(move_mount, const void *from_path, const void *to_path)
{
    WRITE_POLICY;
    void *from = rd_ptr(from_path, OFF_PATH_MNT);
    struct ident_key k = {};
    if (mount_is_ours(from)) {
        u32 r = pinned_rule(from, &p, &k);
        if (r)
            return report_ident(r, H_MOVE_MOUNT, OP_MOVE_MOUNT, &k, 0, &p);
    }
    void *to = rd_ptr(to_path, OFF_PATH_MNT);
    if (!mount_is_ours(to) && !mount_shared(to))
        return 0;
    return check_inode(d_inode(rd_ptr(to_path, OFF_PATH_DENTRY)), 0, 1, H_MOVE_MOUNT, OP_MOUNT,
                       &p);
}

LSM_PROBE(sb_umount, void *mnt, int flags)
{
    WRITE_POLICY;
    struct ident_key k = {};
    if (mount_is_ours(mnt)) {
        u32 r = pinned_rule(mnt, &p, &k);
        if (r)
            return report_ident(r, H_SB_UMOUNT, OP_UMOUNT, &k, 0, &p);
        return 0;
    }
    /* Elsewhere: an unmount under a shared parent propagates to its peers; Sentinel's own
     * mounts are not known there, so judge the mount's root (fail closed). */
    void *m = (char *)mnt - OFF_MOUNT_MNT;
    void *parent = rd_ptr(m, OFF_MOUNT_MNT_PARENT);
    if (!parent || parent == m || !mount_shared((char *)parent + OFF_MOUNT_MNT))
        return 0;
    return check_inode(d_inode(rd_ptr(mnt, OFF_VFSMOUNT_MNT_ROOT)), 0, 1, H_SB_UMOUNT,
                       OP_UMOUNT, &p);
}

/* pivot_root in Sentinel's namespace moves every path (elsewhere it cannot propagate). */
LSM_PROBE(sb_pivotroot, const void *old_path, const void *new_path)
{
    WRITE_POLICY;
    if (!mount_is_ours(rd_ptr(new_path, OFF_PATH_MNT)))
        return 0;
    return fail_closed(rd_ptr(new_path, OFF_PATH_DENTRY), H_SB_PIVOTROOT, OP_PIVOT_ROOT, &p);
}

/* A read-write mount of a loop device over a protected file: the file system would write
 * the file through the loop driver, where no hook sees it. */
LSM_PROBE(sb_kern_mount, void *sb)
{
    WRITE_POLICY;
    u64 sflags = 0;
    bpf_probe_read_kernel(&sflags, sizeof(sflags), (char *)sb + OFF_SB_S_FLAGS);
    if (sflags & SB_RDONLY_)
        return 0;
    struct ident_key k = {};
    u32 r = loop_bdev_rule(rd_ptr(sb, OFF_SB_S_BDEV), &p, &k);
    if (!r)
        return 0;
    return report_ident(r, H_SB_KERN_MOUNT, OP_DEVICE_MOUNT, &k, 0, &p);
}

#ifdef HAVE_uring_cmd
/* io_uring commands go straight to a driver (block discard, NVMe passthrough). */
LSM_PROBE(uring_cmd, void *ioucmd)
{
    POLICY;
    if (!(p.flags & (F_WRITE | F_DEVS)))
        return 0;
    void *file = rd_ptr(ioucmd, OFF_IO_URING_CMD_FILE);
    if (!file)
        return 0;
    struct ident_key k = {};
    u32 r = dev_rule(rd_ptr(file, OFF_FILE_F_INODE), &p, &k);
    if (!r)
        r = loop_file_rule(file, &p, &k);
    if (!r)
        return 0;
    return report_ident(r, H_URING_CMD, OP_DEVICE_URING_CMD, &k, 0, &p);
}
#endif

/* ---- network ---------------------------------------------------------------------------- */

#define CONNECT_POLICY                                                                         \
    POLICY;                                                                                    \
    if (!(p.flags & F_CONNECT))                                                                \
    return 0

LSM_PROBE(socket_connect, void *sock, void *address, int addrlen)
{
    CONNECT_POLICY;
    return check_address(rd_ptr(sock, OFF_SOCKET_SK), address, addrlen, H_SOCKET_CONNECT,
                         OP_CONNECT, &p);
}

/* Extra destinations of a new SCTP association, as SCTP_DSTADDRV4/V6 control messages (the
 * kernel adds them without asking any LSM). `name` is the primary one: its port is theirs. */
static __always_inline int check_sctp_cmsgs(void *sk, void *msg, void *name, struct pol *p)
{
    void *ctl = rd_ptr(msg, OFF_MSGHDR_MSG_CONTROL);
    u64 len = 0;
    bpf_probe_read_kernel(&len, sizeof(len), (char *)msg + OFF_MSGHDR_MSG_CONTROLLEN);
    if (!ctl || !len)
        return 0;
    u16 nport = 0;
    bpf_probe_read_kernel(&nport, sizeof(nport), (char *)name + 2);
    u64 off = 0;
#pragma clang loop unroll(disable)
    for (int i = 0; i < MAX_CMSGS; i++) {
        if (off + 16 > len)
            return 0;
        u64 clen = 0;
        int hdr[2] = {};
        bpf_probe_read_kernel(&clen, sizeof(clen), (char *)ctl + off);
        bpf_probe_read_kernel(hdr, sizeof(hdr), (char *)ctl + off + 8);
        if (clen < 16)
            return 0; /* the kernel refuses the message */
        if (hdr[0] == SOL_SCTP_ && (hdr[1] == SCTP_DSTADDRV4_ || hdr[1] == SCTP_DSTADDRV6_)) {
            u8 sa[28] = {};
            u16 fam = hdr[1] == SCTP_DSTADDRV4_ ? AF_INET_ : AF_INET6_;
            __builtin_memcpy(sa, &fam, 2);
            __builtin_memcpy(sa + 2, &nport, 2);
            if (fam == AF_INET_)
                bpf_probe_read_kernel(sa + 4, 4, (char *)ctl + off + 16);
            else
                bpf_probe_read_kernel(sa + 8, 16, (char *)ctl + off + 16);
            int ret = check_address(sk, sa, 28, H_SOCKET_SENDMSG, OP_SENDMSG, p);
            if (ret)
                return ret;
        }
        off += (clen + 7) & ~7ULL;
    }
    if (off + 16 > len)
        return 0;
    /* More control messages than checked: fail closed. */
    struct slot_cfg *c = cfg_of(p);
    struct net_hit hit = {};
    hit.rule = c ? c->any_connect_rule : 0;
    if (!hit.rule)
        return 0;
    return report_net(&hit, H_SOCKET_SENDMSG, OP_SENDMSG, p);
}

/* sendto/sendmsg with an address: UDP and raw sockets reach it without connect(); TCP Fast
 * Open (MSG_FASTOPEN) connects inside sendmsg; SCTP sets up an association implicitly. */
LSM_PROBE(socket_sendmsg, void *sock, void *msg, int size)
{
    CONNECT_POLICY;
    void *name = rd_ptr(msg, OFF_MSGHDR_MSG_NAME);
    if (!name)
        return 0;
    void *sk = rd_ptr(sock, OFF_SOCKET_SK);
    u16 proto = sk_protocol(sk);
    if ((proto == IPPROTO_TCP_ || proto == IPPROTO_MPTCP_) &&
        !(rd_u32(msg, OFF_MSGHDR_MSG_FLAGS) & MSG_FASTOPEN_))
        return 0; /* a connected stream ignores the address */
    int namelen = rd_u32(msg, OFF_MSGHDR_MSG_NAMELEN);
    int ret = check_address(sk, name, namelen, H_SOCKET_SENDMSG, OP_SENDMSG, &p);
    if (ret || proto != IPPROTO_SCTP_)
        return ret;
    return check_sctp_cmsgs(sk, msg, name, &p);
}

/*
 * SCTP's address lists: sctp_connectx() (several destinations at once), the implicit
 * association of sendmsg, a new primary destination, and addresses a peer adds (ASCONF).
 * Local (bind-side) addresses are not judged.
 */
LSM_PROBE(sctp_bind_connect, void *sk, int optname, void *address, int addrlen)
{
    if (optname != SCTP_SOCKOPT_CONNECTX_ && optname != SCTP_SENDMSG_CONNECT_ &&
        optname != SCTP_PRIMARY_ADDR_ && optname != SCTP_PARAM_ADD_IP_ &&
        optname != SCTP_PARAM_SET_PRIMARY_)
        return 0;
    CONNECT_POLICY;
    int off = 0;
#pragma clang loop unroll(disable)
    for (int i = 0; i < SCTP_MAX_ADDRS; i++) {
        if (off >= addrlen)
            return 0;
        u16 fam = 0;
        bpf_probe_read_kernel(&fam, sizeof(fam), (char *)address + off);
        int len = fam == AF_INET_ ? 16 : (fam == AF_INET6_ ? 28 : 0);
        if (!len)
            return 0; /* the kernel refuses the list */
        int ret = check_address(sk, (char *)address + off, len, H_SCTP_BIND_CONNECT,
                                OP_SCTP_CONNECT, &p);
        if (ret)
            return ret;
        off += len;
    }
    if (off >= addrlen)
        return 0;
    struct slot_cfg *c = cfg_of(&p);
    struct net_hit hit = {};
    hit.rule = c ? c->any_connect_rule : 0;
    if (!hit.rule)
        return 0;
    return report_net(&hit, H_SCTP_BIND_CONNECT, OP_SCTP_CONNECT, &p);
}
