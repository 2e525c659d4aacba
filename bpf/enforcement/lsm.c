// SPDX-License-Identifier: GPL-2.0
/*
 * Sentinel BPF LSM enforcement: deny writes under protected paths, execs of forbidden
 * binaries and connects to forbidden addresses, before they happen.
 *
 * Why this shape (the full reasoning is in sentinel/kernel/lsm.py):
 *  - Paths are never read from user memory. Every hook gets kernel objects (file, path,
 *    dentry, sockaddr already copied into the kernel) and we walk the dentry chain from the
 *    object up to the root, crossing mount points through struct mount, looking each
 *    (s_dev, i_ino) up in a hash of protected identities. No string compare, no TOCTOU,
 *    bind mounts / chroots / relative paths / symlinks all resolve to the same identities.
 *  - Struct fields are read at offsets taken from the running kernel's BTF and passed in as
 *    -D macros (OFF_*): the installed headers do not describe the running kernel.
 *  - Hooks that the running kernel lacks are compiled out (HAVE_<hook>); hooks whose argument
 *    lists changed between kernels take the position of the interesting argument as a macro.
 */

#define SENTINEL_EPERM 1

#define MAX_DEPTH 32     /* dentry levels walked (incl. mount crossings) */
#define MAX_NAMES 8      /* path components reported per event */
#define NAME_LEN 64

/* Hook ids (keep in sync with HOOKS in sentinel/kernel/lsm.py). */
#define H_BPRM_CHECK 1
#define H_FILE_OPEN 2
#define H_FILE_PERMISSION 3
#define H_PATH_TRUNCATE 4
#define H_FILE_TRUNCATE 5
#define H_PATH_UNLINK 6
#define H_PATH_RENAME 7
#define H_PATH_LINK 8
#define H_PATH_SYMLINK 9
#define H_PATH_MKNOD 10
#define H_PATH_MKDIR 11
#define H_PATH_RMDIR 12
#define H_PATH_CHMOD 13
#define H_PATH_CHOWN 14
#define H_INODE_SETATTR 15
#define H_INODE_SETXATTR 16
#define H_INODE_REMOVEXATTR 17
#define H_MMAP_FILE 18
#define H_FILE_MPROTECT 19
#define H_SOCKET_CONNECT 20
#define H_INODE_SET_ACL 21
#define H_INODE_REMOVE_ACL 22
#define H_SB_MOUNT 23
#define H_MOVE_MOUNT 24
#define H_FILE_FREE 25

/* Operations (keep in sync with OPERATIONS in sentinel/kernel/lsm.py). */
#define OP_EXEC 1
#define OP_OPEN_WRITE 2
#define OP_OPEN_TRUNC 3
#define OP_WRITE 4
#define OP_TRUNCATE 5
#define OP_UNLINK 6
#define OP_RENAME_FROM 7
#define OP_RENAME_TO 8
#define OP_LINK_FROM 9
#define OP_LINK_TO 10
#define OP_SYMLINK 11
#define OP_MKNOD 12
#define OP_MKDIR 13
#define OP_RMDIR 14
#define OP_CHMOD 15
#define OP_CHOWN 16
#define OP_SETATTR 17
#define OP_SETXATTR 18
#define OP_REMOVEXATTR 19
#define OP_MMAP_SHARED_WRITE 20
#define OP_MPROTECT_SHARED_WRITE 21
#define OP_CONNECT 22
#define OP_SET_ACL 23
#define OP_REMOVE_ACL 24
#define OP_MOUNT 25
#define OP_MMAP_EXEC 26
#define OP_MPROTECT_EXEC 27

/* Walk modes. */
#define MODE_WRITE 1 /* the object or any ancestor is write-protected */
#define MODE_MOVE 2  /* as WRITE, or the object itself is an ancestor of a protected path */
#define MODE_EXEC 3  /* exact binary identity, or an ancestor is an exec-denied directory */

/* uapi constants (stable ABI, spelled out so no kernel header is needed). */
#define FMODE_WRITE_ 0x2
#define O_TRUNC_ 01000
#define MAY_WRITE_ 0x2
#define MAY_APPEND_ 0x8
#define PROT_WRITE_ 0x2
#define PROT_EXEC_ 0x4
#define MAP_SHARED_ 0x1
#define VM_SHARED_ 0x8
#define AF_INET_ 2
#define AF_INET6_ 10

/*
 * Two policy slots live side by side in every policy map (the `slot` in each key): a reload
 * fills the inactive slot, then publishes it by bumping the generation in config[1]. A hook
 * reads the generation once and looks only at that generation's slot, so it sees either the
 * whole old policy or the whole new one, never a mix and never a gap. User space empties a
 * slot only after a full RCU grace period (membarrier) since it stopped being current, and
 * every hook runs inside an RCU read-side section, so no hook can still be reading it.
 */
struct ident_key {
    u32 dev; /* kernel-internal dev_t of the superblock: MAJOR << 20 | MINOR */
    u32 slot;
    u64 ino;
};

struct ident_val {
    u32 write_rule;       /* everything at or below this object is write-protected */
    u32 exec_prefix_rule; /* execs of anything at or below are denied */
    u32 exec_exact_rule;  /* execs of exactly this inode are denied */
    u32 ancestor_rule;    /* an ancestor of a protected path: may not be moved or removed */
};

struct net_key {
    u32 prefixlen; /* 8 (the slot byte) + the address prefix length */
    u8 slot;
    u8 addr[16]; /* IPv6, or IPv4 mapped as ::ffff:a.b.c.d */
    u8 pad[3];
};

struct port_key {
    u32 slot;
    u32 entry; /* CIDR entry id from net_trie; 0 = any address */
    u32 port;  /* host byte order; 0 = any port */
};

/* What a slot holds, so that hooks with nothing to check return at once. */
#define F_WRITE 1   /* protected paths (write/move checks) */
#define F_EXEC 2    /* exec denials */
#define F_CONNECT 4 /* connect denials */

struct slot_cfg {
    u32 flags;
    u32 deep_exec_rule; /* rule index that denies execs too deep to check (0: none) */
};

/* The generation a hook works with, read once at its start. */
struct pol {
    u32 gen; /* as stored in config[1]: the Gray code of the generation number */
    u32 slot;
    u32 flags;
};

struct deny_event {
    u64 ident_ino;
    u32 ident_dev;
    u32 rule;
    u32 pid;
    u32 tid;
    u32 ppid;
    u32 uid;
    u8 hook;
    u8 op;
    u8 family;
    u8 nnames;
    u16 port;
    u8 truncated;
    u8 pad;
    u32 gen; /* config[1] when the hook ran: which policy's rule index `rule` is */
    u8 addr[16];
    char comm[16];
    char names[MAX_NAMES][NAME_LEN];
};

struct walk_result {
    u64 ident_ino;
    u32 ident_dev;
    u32 nnames;
    u32 truncated;
    u32 exhausted;
    u64 names[MAX_NAMES];
};

/* Room for two full policies (the current one and the one being loaded). */
BPF_HASH(idents, struct ident_key, struct ident_val, 2 * MAX_IDENTS);
BPF_LPM_TRIE(net_trie, struct net_key, u32, 2 * MAX_NETS);
BPF_HASH(net_ports, struct port_key, u32, 2 * MAX_NET_PORTS);
BPF_ARRAY(slot_cfg, struct slot_cfg, 2);
/*
 * Files opened for writing which file_open allowed, with the generation that allowed them. A
 * file's path never changes, and every way of bringing it under a protected path later (rename
 * or link into one, moving an ancestor, mounting onto one) is denied while that generation is
 * current, so file_permission may trust the verdict instead of walking again on every write().
 * A verdict of another generation is not trusted (the new policy may protect the file). Entries
 * go away in file_free_security; a full map only means falling back to the walk.
 */
BPF_HASH(write_ok, u64, u32, MAX_OPEN_FILES);
/*
 * [0] = 1 once the programs are attached; before that nothing is cached.
 * [1] = the current generation as a Gray code: consecutive generations differ in one bit, so
 *       even a torn read of a concurrent update sees the old or the new value, and the slot
 *       (the generation's parity) is the parity of the code's bits.
 */
BPF_ARRAY(config, u32, 2);
BPF_RINGBUF_OUTPUT(deny_events, RING_PAGES);
/* 0: ring buffer reserve failures (event lost, operation still denied), 1: denials. */
BPF_PERCPU_ARRAY(counters, u64, 2);

static __always_inline void *rd_ptr(const void *base, u32 off)
{
    void *p = 0;
    bpf_probe_read_kernel(&p, sizeof(p), (const char *)base + off);
    return p;
}

static __always_inline void count(u32 idx)
{
    u64 *c = counters.lookup(&idx);
    if (c)
        *c += 1;
}

static __always_inline void read_policy(struct pol *p)
{
    u32 one = 1;
    u32 *g = config.lookup(&one);
    u32 gen = g ? *(volatile u32 *)g : 0;
    u32 x = gen;
    x ^= x >> 16;
    x ^= x >> 8;
    x ^= x >> 4;
    x ^= x >> 2;
    x ^= x >> 1;
    u32 slot = x & 1;
    p->gen = gen;
    p->slot = slot;
    struct slot_cfg *c = slot_cfg.lookup(&slot);
    p->flags = c ? c->flags : 0;
}

/* The superblock's dev_t, read once per file system crossed (all its dentries share it). */
static __always_inline u32 sb_dev(void *dentry)
{
    u32 dev = 0;
    void *sb = rd_ptr(dentry, OFF_DENTRY_D_SB);
    if (sb)
        bpf_probe_read_kernel(&dev, sizeof(dev), (char *)sb + OFF_SB_S_DEV);
    return dev;
}

/*
 * Walk from `dentry` (on mount `mnt`, which may be NULL when the hook gives no mount) to the
 * root. Returns the rule index that denies, or 0. With `collect` (only used again on the deny
 * path, so the common allow path stays at three reads and one lookup per level), component
 * names passed on the way are remembered (as kernel pointers) for the event.
 */
static __always_inline u32 walk(struct walk_result *res, void *dentry, void *mnt, u32 mode,
                                int collect, u32 slot)
{
    int first = 1;
    struct ident_key k = {};
    k.slot = slot;
    k.dev = dentry ? sb_dev(dentry) : 0;
    res->nnames = 0;
    res->truncated = 0;
    res->exhausted = 0;
#pragma clang loop unroll(disable)
    for (int i = 0; i < MAX_DEPTH; i++) {
        if (!dentry)
            return 0;
        void *inode = rd_ptr(dentry, OFF_DENTRY_D_INODE);
        if (inode) {
            bpf_probe_read_kernel(&k.ino, sizeof(k.ino), (char *)inode + OFF_INODE_I_INO);
            struct ident_val *v = idents.lookup(&k);
            if (v) {
                u32 r = 0;
                if (mode == MODE_EXEC) {
                    if (first)
                        r = v->exec_exact_rule;
                    if (!r)
                        r = v->exec_prefix_rule;
                } else {
                    r = v->write_rule;
                    if (!r && first && mode == MODE_MOVE)
                        r = v->ancestor_rule;
                }
                if (r) {
                    res->ident_dev = k.dev;
                    res->ident_ino = k.ino;
                    return r;
                }
            }
        }
        void *parent = rd_ptr(dentry, OFF_DENTRY_D_PARENT);
        if (parent == dentry || !parent) {
            /* Root of this file system: continue at the mount point, if we know the mount. */
            if (!mnt)
                return 0;
            void *m = (char *)mnt - OFF_MOUNT_MNT;
            void *mp = rd_ptr(m, OFF_MOUNT_MNT_PARENT);
            if (!mp || mp == m)
                return 0;
            dentry = rd_ptr(m, OFF_MOUNT_MNT_MOUNTPOINT);
            mnt = (char *)mp + OFF_MOUNT_MNT;
            if (dentry)
                k.dev = sb_dev(dentry);
            continue; /* the mount point is the same path component: `first` unchanged */
        }
        if (collect) {
            u32 n = res->nnames;
            if (n < MAX_NAMES) {
                res->names[n & (MAX_NAMES - 1)] = (u64)rd_ptr(dentry, OFF_DENTRY_D_NAME_NAME);
                res->nnames = n + 1;
            } else {
                res->truncated = 1;
            }
        }
        first = 0;
        dentry = parent;
    }
    res->exhausted = 1; /* deeper than MAX_DEPTH: the caller decides (see check()) */
    return 0;
}

static __always_inline void fill_task(struct deny_event *e)
{
    u64 id = bpf_get_current_pid_tgid();
    e->pid = id >> 32;
    e->tid = (u32)id;
    e->uid = (u32)bpf_get_current_uid_gid();
    bpf_get_current_comm(e->comm, sizeof(e->comm));
    void *task = (void *)bpf_get_current_task();
    void *parent = rd_ptr(task, OFF_TASK_REAL_PARENT);
    u32 ppid = 0;
    if (parent)
        bpf_probe_read_kernel(&ppid, sizeof(ppid), (char *)parent + OFF_TASK_TGID);
    e->ppid = ppid;
}

/* Report a path denial. The operation is denied whether or not the event fits the ring. */
static __always_inline int deny_path(u32 rule, u8 hook, u8 op, struct walk_result *res,
                                     struct pol *p)
{
    count(1);
    struct deny_event *e = deny_events.ringbuf_reserve(sizeof(struct deny_event));
    if (!e) {
        count(0);
        return -SENTINEL_EPERM;
    }
    __builtin_memset(e, 0, sizeof(*e));
    e->rule = rule;
    e->gen = p->gen;
    e->hook = hook;
    e->op = op;
    e->ident_dev = res->ident_dev;
    e->ident_ino = res->ident_ino;
    e->truncated = res->truncated;
    fill_task(e);
    u32 n = res->nnames;
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < MAX_NAMES; i++) {
        if (i >= n)
            break;
        bpf_probe_read_kernel_str(e->names[i], NAME_LEN, (void *)res->names[i]);
    }
    e->nnames = n;
    deny_events.ringbuf_submit(e, 0);
    return -SENTINEL_EPERM;
}

/*
 * An exec whose path is deeper than the walk can follow might be below an exec-denied
 * directory (anyone can nest directories in /tmp), so with exec-prefix rules loaded it is
 * denied in the name of the slot's deep_exec_rule, the first of them: fail closed. Writes need
 * no such rule: nothing can be created below a protected directory, and lsm_policy refuses
 * protected trees that are already too deep.
 */
static __always_inline u32 depth_rule(struct walk_result *res, u32 mode, struct pol *p)
{
    if (mode != MODE_EXEC || !res->exhausted)
        return 0;
    /*
     * Looked up again rather than carried in `p`: a value the verifier has to track from the
     * hook's start through two walks multiplies its states (mmap_file went over its limit).
     */
    u32 slot = p->slot;
    struct slot_cfg *c = slot_cfg.lookup(&slot);
    return c ? c->deep_exec_rule : 0;
}

/* Does the current policy have anything to check in this mode? */
static __always_inline int wanted(struct pol *p, u32 mode)
{
    return p->flags & (mode == MODE_EXEC ? F_EXEC : F_WRITE);
}

static __always_inline int check(void *dentry, void *mnt, u32 mode, u8 hook, u8 op,
                                 struct pol *p)
{
    if (!wanted(p, mode))
        return 0;
    struct walk_result res = {};
    if (!walk(&res, dentry, mnt, mode, 0, p->slot) && !depth_rule(&res, mode, p))
        return 0;
    /* Denied: walk again, now collecting the names below the match for the event. */
    u32 rule = walk(&res, dentry, mnt, mode, 1, p->slot);
    if (!rule)
        rule = depth_rule(&res, mode, p);
    if (!rule)
        return -SENTINEL_EPERM; /* cannot happen (a slot is not changed while current) */
    return deny_path(rule, hook, op, &res, p);
}

static __always_inline int check_file(void *file, u32 mode, u8 hook, u8 op, struct pol *p)
{
    if (!file)
        return 0;
    return check(rd_ptr(file, OFF_FILE_F_PATH_DENTRY), rd_ptr(file, OFF_FILE_F_PATH_MNT), mode,
                 hook, op, p);
}

static __always_inline int check_path(const void *path, u32 mode, u8 hook, u8 op,
                                      struct pol *p)
{
    if (!path)
        return 0;
    return check(rd_ptr(path, OFF_PATH_DENTRY), rd_ptr(path, OFF_PATH_MNT), mode, hook, op, p);
}

/* A dentry inside directory `dir` (a struct path): the mount is dir's. */
static __always_inline int check_in_dir(const void *dir, void *dentry, u32 mode, u8 hook, u8 op,
                                        struct pol *p)
{
    return check(dentry, dir ? rd_ptr(dir, OFF_PATH_MNT) : 0, mode, hook, op, p);
}

/* ---- exec ------------------------------------------------------------------------------- */

/* Every hook starts with POLICY: the generation it checks against, read once. */
#define POLICY                                                                                 \
    struct pol p = {};                                                                         \
    read_policy(&p)

LSM_PROBE(bprm_check_security, void *bprm)
{
    POLICY;
    return check_file(rd_ptr(bprm, OFF_BPRM_FILE), MODE_EXEC, H_BPRM_CHECK, OP_EXEC, &p);
}

/* ---- files ------------------------------------------------------------------------------ */

LSM_PROBE(file_open, void *file)
{
    u32 fmode = 0, flags = 0;
    bpf_probe_read_kernel(&fmode, sizeof(fmode), (char *)file + OFF_FILE_F_MODE);
    if (!(fmode & FMODE_WRITE_)) {
        bpf_probe_read_kernel(&flags, sizeof(flags), (char *)file + OFF_FILE_F_FLAGS);
        if (!(flags & O_TRUNC_))
            return 0;
    }
    POLICY;
    if (!(p.flags & F_WRITE))
        return 0; /* nothing protected: nothing to check, nothing worth caching */
    bpf_probe_read_kernel(&flags, sizeof(flags), (char *)file + OFF_FILE_F_FLAGS);
    int ret = 0;
    if (flags & O_TRUNC_)
        ret = check_file(file, MODE_WRITE, H_FILE_OPEN, OP_OPEN_TRUNC, &p);
    else if (fmode & FMODE_WRITE_)
        ret = check_file(file, MODE_WRITE, H_FILE_OPEN, OP_OPEN_WRITE, &p);
    u32 zero = 0;
    u32 *ready = config.lookup(&zero);
    if (ret == 0 && (fmode & FMODE_WRITE_) && ready && *ready) {
        u64 key = (u64)file;
        u32 gen = p.gen;
        write_ok.update(&key, &gen);
    }
    return ret;
}

LSM_PROBE(file_free_security, void *file)
{
    u32 fmode = 0;
    bpf_probe_read_kernel(&fmode, sizeof(fmode), (char *)file + OFF_FILE_F_MODE);
    if (fmode & FMODE_WRITE_) {
        u64 key = (u64)file;
        write_ok.delete(&key);
    }
    return 0;
}

/* Writes through descriptors opened before the policy (and write(), fallocate, splice...). */
LSM_PROBE(file_permission, void *file, int mask)
{
    if (!(mask & (MAY_WRITE_ | MAY_APPEND_)))
        return 0;
    POLICY;
    if (!(p.flags & F_WRITE))
        return 0;
    u64 key = (u64)file;
    u32 *ok = write_ok.lookup(&key);
    if (ok && *ok == p.gen)
        return 0;
    return check_file(file, MODE_WRITE, H_FILE_PERMISSION, OP_WRITE, &p);
}

LSM_PROBE(path_truncate, const void *path)
{
    POLICY;
    return check_path(path, MODE_WRITE, H_PATH_TRUNCATE, OP_TRUNCATE, &p);
}

#ifdef HAVE_file_truncate
LSM_PROBE(file_truncate, void *file)
{
    POLICY;
    return check_file(file, MODE_WRITE, H_FILE_TRUNCATE, OP_TRUNCATE, &p);
}
#endif

LSM_PROBE(path_unlink, const void *dir, void *dentry)
{
    POLICY;
    return check_in_dir(dir, dentry, MODE_MOVE, H_PATH_UNLINK, OP_UNLINK, &p);
}

LSM_PROBE(path_rmdir, const void *dir, void *dentry)
{
    POLICY;
    return check_in_dir(dir, dentry, MODE_MOVE, H_PATH_RMDIR, OP_RMDIR, &p);
}

LSM_PROBE(path_mkdir, const void *dir, void *dentry, unsigned short mode)
{
    POLICY;
    return check_in_dir(dir, dentry, MODE_WRITE, H_PATH_MKDIR, OP_MKDIR, &p);
}

/* Also reached by open(O_CREAT) of a new file. */
LSM_PROBE(path_mknod, const void *dir, void *dentry, unsigned short mode, unsigned int dev)
{
    POLICY;
    return check_in_dir(dir, dentry, MODE_WRITE, H_PATH_MKNOD, OP_MKNOD, &p);
}

LSM_PROBE(path_symlink, const void *dir, void *dentry, const char *old_name)
{
    POLICY;
    return check_in_dir(dir, dentry, MODE_WRITE, H_PATH_SYMLINK, OP_SYMLINK, &p);
}

LSM_PROBE(path_link, void *old_dentry, const void *new_dir, void *new_dentry)
{
    POLICY;
    /* A hard link never crosses mounts, so new_dir's mount is also old_dentry's. */
    int ret = check_in_dir(new_dir, old_dentry, MODE_WRITE, H_PATH_LINK, OP_LINK_FROM, &p);
    if (ret)
        return ret;
    return check_in_dir(new_dir, new_dentry, MODE_WRITE, H_PATH_LINK, OP_LINK_TO, &p);
}

LSM_PROBE(path_rename, const void *old_dir, void *old_dentry, const void *new_dir,
          void *new_dentry)
{
    POLICY;
    int ret = check_in_dir(old_dir, old_dentry, MODE_MOVE, H_PATH_RENAME, OP_RENAME_FROM, &p);
    if (ret)
        return ret;
    return check_in_dir(new_dir, new_dentry, MODE_MOVE, H_PATH_RENAME, OP_RENAME_TO, &p);
}

LSM_PROBE(path_chmod, const void *path)
{
    POLICY;
    return check_path(path, MODE_WRITE, H_PATH_CHMOD, OP_CHMOD, &p);
}

LSM_PROBE(path_chown, const void *path)
{
    POLICY;
    return check_path(path, MODE_WRITE, H_PATH_CHOWN, OP_CHOWN, &p);
}

/* Arguments before the dentry differ across kernels (user_namespace, mnt_idmap, none). */
#if SETATTR_DENTRY_ARG == 0
LSM_PROBE(inode_setattr, void *dentry)
#else
LSM_PROBE(inode_setattr, void *idmap, void *dentry)
#endif
{
    POLICY;
    return check(dentry, 0, MODE_WRITE, H_INODE_SETATTR, OP_SETATTR, &p);
}

#if SETXATTR_DENTRY_ARG == 0
LSM_PROBE(inode_setxattr, void *dentry)
#else
LSM_PROBE(inode_setxattr, void *idmap, void *dentry)
#endif
{
    POLICY;
    return check(dentry, 0, MODE_WRITE, H_INODE_SETXATTR, OP_SETXATTR, &p);
}

#if REMOVEXATTR_DENTRY_ARG == 0
LSM_PROBE(inode_removexattr, void *dentry)
#else
LSM_PROBE(inode_removexattr, void *idmap, void *dentry)
#endif
{
    POLICY;
    return check(dentry, 0, MODE_WRITE, H_INODE_REMOVEXATTR, OP_REMOVEXATTR, &p);
}

/* POSIX ACLs have their own hooks since 6.2 (before, they went through the xattr hooks). */
#ifdef HAVE_inode_set_acl
LSM_PROBE(inode_set_acl, void *idmap, void *dentry)
{
    POLICY;
    return check(dentry, 0, MODE_WRITE, H_INODE_SET_ACL, OP_SET_ACL, &p);
}
#endif

#ifdef HAVE_inode_remove_acl
LSM_PROBE(inode_remove_acl, void *idmap, void *dentry)
{
    POLICY;
    return check(dentry, 0, MODE_WRITE, H_INODE_REMOVE_ACL, OP_REMOVE_ACL, &p);
}
#endif

/*
 * Executable mappings of an exec-denied file are denied too: otherwise
 * `ld.so /denied/binary` (or dlopen of a denied library) runs its code without an execve.
 */
LSM_PROBE(mmap_file, void *file, unsigned long reqprot, unsigned long prot, unsigned long flags)
{
    if (!file)
        return 0;
    POLICY;
    if (prot & PROT_EXEC_) {
        int ret = check_file(file, MODE_EXEC, H_MMAP_FILE, OP_MMAP_EXEC, &p);
        if (ret)
            return ret;
    }
    if (!(flags & MAP_SHARED_) || !(prot & PROT_WRITE_))
        return 0;
    return check_file(file, MODE_WRITE, H_MMAP_FILE, OP_MMAP_SHARED_WRITE, &p);
}

LSM_PROBE(file_mprotect, void *vma, unsigned long reqprot, unsigned long prot)
{
    POLICY;
    if (prot & PROT_EXEC_) {
        int ret = check_file(rd_ptr(vma, OFF_VMA_VM_FILE), MODE_EXEC, H_FILE_MPROTECT,
                             OP_MPROTECT_EXEC, &p);
        if (ret)
            return ret;
    }
    if (!(prot & PROT_WRITE_))
        return 0;
    u64 vm_flags = 0;
    bpf_probe_read_kernel(&vm_flags, sizeof(vm_flags), (char *)vma + OFF_VMA_VM_FLAGS);
    if (!(vm_flags & VM_SHARED_))
        return 0;
    return check_file(rd_ptr(vma, OFF_VMA_VM_FILE), MODE_WRITE, H_FILE_MPROTECT,
                      OP_MPROTECT_SHARED_WRITE, &p);
}

/* ---- mounts: mounting onto (or moving a mount onto) a protected path or an ancestor ------- */

LSM_PROBE(sb_mount, const char *dev_name, const void *path)
{
    POLICY;
    return check_path(path, MODE_MOVE, H_SB_MOUNT, OP_MOUNT, &p);
}

LSM_PROBE(move_mount, const void *from_path, const void *to_path)
{
    POLICY;
    return check_path(to_path, MODE_MOVE, H_MOVE_MOUNT, OP_MOUNT, &p);
}

/* ---- network ---------------------------------------------------------------------------- */

LSM_PROBE(socket_connect, void *sock, void *address, int addrlen)
{
    POLICY;
    if (!(p.flags & F_CONNECT))
        return 0;
    u16 family = 0;
    bpf_probe_read_kernel(&family, sizeof(family), address);
    struct net_key key = {};
    u16 nport = 0;
    key.prefixlen = 8 + 128;
    key.slot = p.slot;
    if (family == AF_INET_) {
        if (addrlen < 8)
            return 0;
        bpf_probe_read_kernel(&nport, sizeof(nport), (char *)address + 2);
        key.addr[10] = 0xff;
        key.addr[11] = 0xff;
        bpf_probe_read_kernel(&key.addr[12], 4, (char *)address + 4);
    } else if (family == AF_INET6_) {
        if (addrlen < 24)
            return 0;
        bpf_probe_read_kernel(&nport, sizeof(nport), (char *)address + 2);
        bpf_probe_read_kernel(&key.addr[0], 16, (char *)address + 8);
    } else {
        return 0;
    }
    u32 port = ((nport & 0xff) << 8) | (nport >> 8);
    struct port_key pk = {};
    pk.slot = p.slot;
    u32 *rule = 0;
    u32 *entry = net_trie.lookup(&key);
    if (entry) {
        pk.entry = *entry;
        pk.port = port;
        rule = net_ports.lookup(&pk);
        if (!rule) {
            pk.port = 0;
            rule = net_ports.lookup(&pk);
        }
    }
    if (!rule) {
        pk.entry = 0;
        pk.port = port;
        rule = net_ports.lookup(&pk);
    }
    if (!rule)
        return 0;
    u32 r = *rule;
    count(1);
    struct deny_event *e = deny_events.ringbuf_reserve(sizeof(struct deny_event));
    if (!e) {
        count(0);
        return -SENTINEL_EPERM;
    }
    __builtin_memset(e, 0, sizeof(*e));
    e->rule = r;
    e->gen = p.gen;
    e->hook = H_SOCKET_CONNECT;
    e->op = OP_CONNECT;
    e->family = family;
    e->port = port;
    __builtin_memcpy(e->addr, key.addr, 16);
    fill_task(e);
    deny_events.ringbuf_submit(e, 0);
    return -SENTINEL_EPERM;
}
