// SPDX-License-Identifier: GPL-2.0
/*
 * What the BPF LSM hooks (lsm.c) and the kill mode's tracepoint programs (kill.c) share: the
 * policy maps, the identity lookup, the exec walk, the address match and the event they emit.
 *
 * Constants and structs come from sentinel/enforcement/abi.py (generated text placed before
 * this file); struct offsets of the running kernel come from BTF as -D OFF_* flags
 * (sentinel/enforcement/cflags.py). sentinel/enforcement/program.py defines ACTION
 * (ACTION_DENY or ACTION_KILL) before this file.
 *
 * Why identities and no path walk for writes: every inode of a protected tree (and every
 * ancestor of it) is in `idents` by (superblock dev, inode number), and nothing can be added to
 * a protected tree while the policy holds. So whether an object is protected is one lookup of
 * the inode the hook was handed, however that inode was reached: through a bind mount, a
 * stacking file system's real file (overlayfs copies and writes the real inode through these
 * very hooks), or a dentry that is not connected to its parent (open_by_handle_at). Execs
 * below a denied directory still need the walk (files may be created there).
 */

/*
 * Two policy slots live side by side in every policy map (the `slot` in each key): a reload
 * fills the inactive slot, then publishes it by bumping the generation in config[CFG_GEN]. A
 * hook reads the generation once and looks only at that generation's slot, so it sees either
 * the whole old policy or the whole new one. User space empties a slot only after a full RCU
 * grace period (membarrier) since it stopped being current.
 */
BPF_F_TABLE("hash", struct ident_key, struct ident_val, idents, 2 * MAX_IDENTS,
            BPF_F_NO_PREALLOC);
BPF_LPM_TRIE(net_trie, struct net_key, u32, 2 * MAX_NETS);
BPF_HASH(net_ports, struct port_key, u32, 2 * MAX_NET_PORTS);
BPF_HASH(devs, struct dev_key, u32, 2 * MAX_DEVS);
BPF_HASH(mounts, struct mount_key, u32, 2 * MAX_MOUNTS);
BPF_ARRAY(slot_cfg, struct slot_cfg, 2);
BPF_ARRAY(config, u32, CFG_N);
BPF_RINGBUF_OUTPUT(deny_events, RING_PAGES);
/* 0: ring buffer reserve failures (event lost, operation still stopped), 1: stops. */
BPF_PERCPU_ARRAY(counters, u64, 2);

/* The generation a program works with, read once at its start. */
struct pol {
    u32 gen; /* as stored in config[CFG_GEN]: the Gray code of the generation number */
    u32 slot;
    u32 flags;
};

struct walk_result {
    u64 ident_ino;
    u32 ident_dev;
    u32 nnames;
    u32 truncated;
    u32 exhausted; /* the walk could not place the object: too deep, or disconnected */
    u64 names[MAX_NAMES];
};

static __always_inline void *rd_ptr(const void *base, u32 off)
{
    void *p = 0;
    bpf_probe_read_kernel(&p, sizeof(p), (const char *)base + off);
    return p;
}

static __always_inline u32 rd_u32(const void *base, u32 off)
{
    u32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
    return v;
}

static __always_inline void count(u32 idx)
{
    u64 *c = counters.lookup(&idx);
    if (c)
        *c += 1;
}

static __always_inline u32 config_word(u32 idx)
{
    u32 *w = config.lookup(&idx);
    return w ? *(volatile u32 *)w : 0;
}

static __always_inline void read_policy(struct pol *p)
{
    u32 gen = config_word(CFG_GEN);
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

/* One of slot_cfg's rule fields, looked up again where needed (carrying it through the
 * program multiplies the verifier's states). */
static __always_inline struct slot_cfg *cfg_of(struct pol *p)
{
    u32 slot = p->slot;
    return slot_cfg.lookup(&slot);
}

/* ---- identities ----------------------------------------------------------------------- */

static __always_inline struct ident_val *ident(void *inode, u32 slot, struct ident_key *k)
{
    k->slot = slot;
    k->dev = 0;
    k->ino = 0;
    if (!inode)
        return 0;
    void *sb = rd_ptr(inode, OFF_INODE_I_SB);
    if (sb)
        k->dev = rd_u32(sb, OFF_SB_S_DEV);
    bpf_probe_read_kernel(&k->ino, sizeof(k->ino), (char *)inode + OFF_INODE_I_INO);
    return idents.lookup(k);
}

/* The rule that protects `inode` (and with `move`, one it is an ancestor of), or 0. */
static __always_inline u32 protected_rule(void *inode, struct pol *p, struct ident_key *k,
                                          int move)
{
    struct ident_val *v = ident(inode, p->slot, k);
    if (!v)
        return 0;
    u32 r = v->write_rule;
    if (!r && move)
        r = v->ancestor_rule;
    return r;
}

static __always_inline void *d_inode(void *dentry)
{
    return dentry ? rd_ptr(dentry, OFF_DENTRY_D_INODE) : 0;
}

/* ---- devices ---------------------------------------------------------------------------- */

/* A device node's entry in `devs` (the disk of a protected file system...), or 0. */
static __always_inline u32 dev_rule(void *inode, struct pol *p, struct ident_key *k)
{
    if (!(p->flags & F_DEVS) || !inode)
        return 0;
    u16 mode = 0;
    bpf_probe_read_kernel(&mode, sizeof(mode), (char *)inode + OFF_INODE_I_MODE);
    u32 kind = 0;
    if ((mode & S_IFMT_) == S_IFBLK_)
        kind = DEV_BLOCK;
    else if ((mode & S_IFMT_) == S_IFCHR_)
        kind = DEV_CHAR;
    else
        return 0;
    struct dev_key dk = {};
    dk.dev = rd_u32(inode, OFF_INODE_I_RDEV);
    dk.kind = kind;
    dk.slot = p->slot;
    u32 *r = devs.lookup(&dk);
    if (!r)
        return 0;
    k->dev = dk.dev;
    k->ino = 0;
    return *r;
}

#ifdef OFF_LOOP_DEVICE_LO_BACKING_FILE
/*
 * A block device opened as `file` that is a loop device over a protected file: the loop
 * driver writes its backing file without any hook (direct I/O, discard), so writes to the
 * device are judged on the backing file's identity. Read from the open file's mapping, whose
 * host is the block device's inode once blkdev_open ran (not yet in file_open).
 */
static __always_inline u32 loop_bdev_rule(void *bdev, struct pol *p, struct ident_key *k)
{
    if (!bdev || (rd_u32(bdev, OFF_BLOCK_DEVICE_BD_DEV) >> 20) != LOOP_MAJOR_)
        return 0;
    void *disk = rd_ptr(bdev, OFF_BLOCK_DEVICE_BD_DISK);
    void *lo = disk ? rd_ptr(disk, OFF_GENDISK_PRIVATE_DATA) : 0;
    void *backing = lo ? rd_ptr(lo, OFF_LOOP_DEVICE_LO_BACKING_FILE) : 0;
    if (!backing)
        return 0;
    return protected_rule(rd_ptr(backing, OFF_FILE_F_INODE), p, k, 0);
}

static __always_inline u32 loop_file_rule(void *file, struct pol *p, struct ident_key *k)
{
    if (!(p->flags & F_WRITE))
        return 0;
    void *mapping = rd_ptr(file, OFF_FILE_F_MAPPING);
    void *host = mapping ? rd_ptr(mapping, OFF_ADDRESS_SPACE_HOST) : 0;
    if (!host)
        return 0;
    void *sb = rd_ptr(host, OFF_INODE_I_SB);
    u64 magic = 0;
    if (sb)
        bpf_probe_read_kernel(&magic, sizeof(magic), (char *)sb + OFF_SB_S_MAGIC);
    if (magic != BDEVFS_MAGIC_)
        return 0;
    void *bdev = (char *)host - OFF_BDEV_INODE_VFS_INODE + OFF_BDEV_INODE_BDEV;
    return loop_bdev_rule(bdev, p, k);
}
#else
static __always_inline u32 loop_bdev_rule(void *bdev, struct pol *p, struct ident_key *k)
{
    return 0;
}
static __always_inline u32 loop_file_rule(void *file, struct pol *p, struct ident_key *k)
{
    return 0;
}
#endif

/* ---- events ----------------------------------------------------------------------------- */

static __always_inline void fill_task(struct deny_event *e)
{
    u64 id = bpf_get_current_pid_tgid();
    e->pid = id >> 32;
    e->tid = (u32)id;
    e->uid = (u32)bpf_get_current_uid_gid();
    bpf_get_current_comm(e->comm, sizeof(e->comm));
    void *task = (void *)bpf_get_current_task();
    void *parent = rd_ptr(task, OFF_TASK_REAL_PARENT);
    e->ppid = parent ? rd_u32(parent, OFF_TASK_TGID) : 0;
}

/* What the program does to the offender besides reporting (kill.c sends SIGKILL). */
static __always_inline void stop_current(void);

/* Report a stop; the operation is stopped whether or not the event fits the ring. */
static __always_inline int report(u32 rule, u8 hook, u8 op, struct walk_result *res,
                                  struct pol *p)
{
    stop_current();
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
    e->action = ACTION;
    e->ident_dev = res->ident_dev;
    e->ident_ino = res->ident_ino;
    e->truncated = res->truncated;
    fill_task(e);
    u32 n = res->nnames;
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < MAX_NAMES; i++) {
        if (i >= n)
            break;
        bpf_probe_read_kernel_str(&e->names[(i & (MAX_NAMES - 1)) * NAME_LEN], NAME_LEN,
                                  (void *)res->names[i & (MAX_NAMES - 1)]);
    }
    e->nnames = n;
    deny_events.ringbuf_submit(e, 0);
    return -SENTINEL_EPERM;
}

/* Report a stop on an identity (and the name of a new entry below it, if any). */
static __always_inline int report_ident(u32 rule, u8 hook, u8 op, struct ident_key *k,
                                        void *name_dentry, struct pol *p)
{
    struct walk_result res = {};
    res.ident_dev = k->dev;
    res.ident_ino = k->ino;
    if (name_dentry) {
        res.names[0] = (u64)rd_ptr(name_dentry, OFF_DENTRY_D_NAME_NAME);
        res.nnames = 1;
    }
    return report(rule, hook, op, &res, p);
}

/* Stop if `inode` is protected (`move`: or above a protected path). */
static __always_inline int check_inode(void *inode, void *name_dentry, int move, u8 hook,
                                       u8 op, struct pol *p)
{
    struct ident_key k = {};
    u32 r = protected_rule(inode, p, &k, move);
    if (!r)
        return 0;
    return report_ident(r, hook, op, &k, name_dentry, p);
}

/* Stop a write through `file`: a protected file, a device holding protected data. */
static __always_inline int check_file_write(void *file, int opened, u8 hook, u8 op, u8 dev_op,
                                            struct pol *p)
{
    if (!file)
        return 0;
    void *inode = rd_ptr(file, OFF_FILE_F_INODE);
    struct ident_key k = {};
    u32 r = protected_rule(inode, p, &k, 0);
    if (r)
        return report_ident(r, hook, op, &k, 0, p);
    r = dev_rule(inode, p, &k);
    if (!r && opened)
        r = loop_file_rule(file, p, &k);
    if (r)
        return report_ident(r, hook, dev_op, &k, 0, p);
    return 0;
}

/* ---- exec ------------------------------------------------------------------------------- */

/* Is the dentry one exportfs could not connect to its parent (open_by_handle_at)? */
static __always_inline int disconnected(void *dentry)
{
    return rd_u32(dentry, OFF_DENTRY_D_FLAGS) & DCACHE_DISCONNECTED_;
}

/*
 * Walk from `dentry` (on mount `mnt`, or NULL: stay on its file system) to the root, looking
 * each ancestor's identity up for an exec-denied directory. Returns the rule, or 0. With
 * `collect` (only on the deny path), the names passed are kept for the event.
 */
static __always_inline u32 walk(struct walk_result *res, void *dentry, void *mnt, int collect,
                                u32 slot)
{
    struct ident_key k = {};
    res->nnames = 0;
    res->truncated = 0;
    res->exhausted = 0;
#pragma clang loop unroll(disable)
    for (int i = 0; i < MAX_DEPTH; i++) {
        if (!dentry)
            return 0;
        struct ident_val *v = ident(d_inode(dentry), slot, &k);
        if (v && v->exec_prefix_rule) {
            res->ident_dev = k.dev;
            res->ident_ino = k.ino;
            return v->exec_prefix_rule;
        }
        void *parent = rd_ptr(dentry, OFF_DENTRY_D_PARENT);
        if (parent == dentry || !parent) {
            if (disconnected(dentry)) {
                res->exhausted = 1; /* cannot tell where it is: the caller fails closed */
                return 0;
            }
            /* Root of this file system: continue at the mount point, if we know the mount. */
            if (!mnt)
                return 0;
            void *m = (char *)mnt - OFF_MOUNT_MNT;
            void *mp = rd_ptr(m, OFF_MOUNT_MNT_PARENT);
            if (!mp || mp == m)
                return 0;
            dentry = rd_ptr(m, OFF_MOUNT_MNT_MOUNTPOINT);
            mnt = (char *)mp + OFF_MOUNT_MNT;
            continue;
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
        dentry = parent;
    }
    res->exhausted = 1; /* deeper than MAX_DEPTH */
    return 0;
}

/*
 * An exec the walk cannot place (deeper than it follows, or through a disconnected dentry)
 * might be below an exec-denied directory, so with such rules loaded it is stopped in the
 * name of the slot's deep_exec_rule: fail closed.
 */
static __always_inline u32 unplaced_rule(struct walk_result *res, struct pol *p)
{
    if (!res->exhausted)
        return 0;
    struct slot_cfg *c = cfg_of(p);
    return c ? c->deep_exec_rule : 0;
}

static __always_inline int check_exec_walk(void *dentry, void *mnt, u8 hook, u8 op,
                                           struct pol *p)
{
    struct walk_result res = {};
    if (!walk(&res, dentry, mnt, 0, p->slot) && !unplaced_rule(&res, p))
        return 0;
    u32 rule = walk(&res, dentry, mnt, 1, p->slot);
    if (!rule)
        rule = unplaced_rule(&res, p);
    if (!rule)
        return 0;
    return report(rule, hook, op, &res, p);
}

/* A memfd: a file of the kernel's internal tmpfs mount whose name is "memfd:..." */
static __always_inline int is_memfd(void *file)
{
    void *mnt = rd_ptr(file, OFF_FILE_F_PATH_MNT);
    if (!mnt)
        return 0;
    void *ns = rd_ptr((char *)mnt - OFF_MOUNT_MNT, OFF_MOUNT_MNT_NS);
    if ((long)ns != MNT_NS_INTERNAL_)
        return 0;
    char name[8] = {};
    void *dentry = rd_ptr(file, OFF_FILE_F_PATH_DENTRY);
    bpf_probe_read_kernel_str(name, sizeof(name), rd_ptr(dentry, OFF_DENTRY_D_NAME_NAME));
    return name[0] == 'm' && name[1] == 'e' && name[2] == 'm' && name[3] == 'f' &&
           name[4] == 'd' && name[5] == ':';
}

/* An overlayfs inode with an upper dentry: the file lives in (or was copied up to) the
 * container's writable layer. struct ovl_inode's __upperdentry is OVL_UPPER_OFF bytes after
 * the VFS inode (from overlayfs' BTF). */
static __always_inline int is_upper_layer(void *inode)
{
#ifdef OVL_UPPER_OFF
    void *sb = inode ? rd_ptr(inode, OFF_INODE_I_SB) : 0;
    u64 magic = 0;
    if (sb)
        bpf_probe_read_kernel(&magic, sizeof(magic), (char *)sb + OFF_SB_S_MAGIC);
    if (magic != OVERLAYFS_SUPER_MAGIC_)
        return 0;
    return rd_ptr(inode, OVL_UPPER_OFF) != 0;
#else
    return 0;
#endif
}

/*
 * Every check an exec of `file` gets: fileless (memfd), written into a container's writable
 * layer, an exec-denied identity, below an exec-denied directory. `file` is the file exec
 * opened (or mapped); for a stacking file system's real file (overlayfs opens it with the
 * same flags, its f_path being the overlay's), the walk starts at the real inode's dentry.
 */
static __always_inline int check_exec(void *file, int special, u8 hook, u8 op, struct pol *p)
{
    if (!file || !(p->flags & F_EXEC))
        return 0;
    void *inode = rd_ptr(file, OFF_FILE_F_INODE);
    struct ident_key k = {};
    if (special) {
        struct slot_cfg *c = cfg_of(p);
        u32 memfd_rule = c ? c->memfd_exec_rule : 0;
        u32 upper_rule = c ? c->upper_exec_rule : 0;
        u8 special_op = 0;
        u32 rule = 0;
        if (memfd_rule && is_memfd(file)) {
            rule = memfd_rule;
            special_op = OP_EXEC_MEMFD;
        } else if (upper_rule && is_upper_layer(inode)) {
            rule = upper_rule;
            special_op = OP_EXEC_UPPER_LAYER;
        }
        if (rule == memfd_rule && special_op == OP_EXEC_MEMFD)
            return report_ident(rule, hook, special_op, &k, rd_ptr(file, OFF_FILE_F_PATH_DENTRY),
                                p);
        if (rule) {
            /* No policy identity names the file: report the path the walk sees. */
            struct walk_result res = {};
            walk(&res, rd_ptr(file, OFF_FILE_F_PATH_DENTRY), rd_ptr(file, OFF_FILE_F_PATH_MNT),
                 1, p->slot);
            res.ident_dev = 0;
            res.ident_ino = 0;
            return report(rule, hook, special_op, &res, p);
        }
    }
    struct ident_val *v = ident(inode, p->slot, &k);
    if (v && v->exec_exact_rule)
        return report_ident(v->exec_exact_rule, hook, op, &k, 0, p);
    void *dentry = rd_ptr(file, OFF_FILE_F_PATH_DENTRY);
    void *mnt = rd_ptr(file, OFF_FILE_F_PATH_MNT);
    if (d_inode(dentry) != inode) {
        /* A stacking file system's real file: walk the real inode's own dentry. */
        void *first = rd_ptr(inode, OFF_INODE_I_DENTRY);
        dentry = first ? (char *)first - OFF_DENTRY_D_ALIAS : 0;
        mnt = 0;
    }
    return check_exec_walk(dentry, mnt, hook, op, p);
}

/* ---- network ---------------------------------------------------------------------------- */

/* Protocols whose addresses carry a port that rules may name. */
static __always_inline int port_based(u16 proto)
{
    return proto == IPPROTO_TCP_ || proto == IPPROTO_UDP_ || proto == IPPROTO_UDPLITE_ ||
           proto == IPPROTO_SCTP_ || proto == IPPROTO_MPTCP_;
}

struct net_hit {
    u32 rule;
    u16 family;
    u16 port;
    u8 addr[16];
};

/*
 * The rule denying traffic to `address` (a kernel copy of a sockaddr of `addrlen` bytes), or
 * 0. The lookup order is the policy's: the longest CIDR's (address, port) entry, its any-port
 * entry, then the any-address entry of the port.
 */
static __always_inline u32 net_rule(const void *address, int addrlen, int with_port,
                                    struct pol *p, struct net_hit *hit)
{
    u16 family = 0;
    bpf_probe_read_kernel(&family, sizeof(family), address);
    struct net_key key = {};
    u16 nport = 0;
    key.prefixlen = 8 + 128;
    key.slot = p->slot;
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
    u32 port = with_port ? (((nport & 0xff) << 8) | (nport >> 8)) : 0;
    struct port_key pk = {};
    pk.slot = p->slot;
    u32 *rule = 0;
    u32 *entry = net_trie.lookup(&key);
    if (entry) {
        pk.entry = *entry;
        pk.port = port;
        rule = net_ports.lookup(&pk);
        if (!rule && port) {
            pk.port = 0;
            rule = net_ports.lookup(&pk);
        }
    }
    if (!rule && port) {
        pk.entry = 0;
        pk.port = port;
        rule = net_ports.lookup(&pk);
    }
    if (!rule)
        return 0;
    hit->rule = *rule;
    hit->family = family;
    hit->port = port;
    __builtin_memcpy(hit->addr, key.addr, 16);
    return hit->rule;
}

static __always_inline int report_net(struct net_hit *hit, u8 hook, u8 op, struct pol *p)
{
    stop_current();
    count(1);
    struct deny_event *e = deny_events.ringbuf_reserve(sizeof(struct deny_event));
    if (!e) {
        count(0);
        return -SENTINEL_EPERM;
    }
    __builtin_memset(e, 0, sizeof(*e));
    e->rule = hit->rule;
    e->gen = p->gen;
    e->hook = hook;
    e->op = op;
    e->action = ACTION;
    e->family = hit->family;
    e->port = hit->port;
    __builtin_memcpy(e->addr, hit->addr, 16);
    fill_task(e);
    deny_events.ringbuf_submit(e, 0);
    return -SENTINEL_EPERM;
}

static __always_inline u16 sk_protocol(void *sk)
{
    u16 proto = 0;
    if (sk)
        bpf_probe_read_kernel(&proto, sizeof(proto), (char *)sk + OFF_SK_PROTOCOL);
    return proto;
}

/* Stop traffic to `address` if a rule denies it. */
static __always_inline int check_address(void *sk, const void *address, int addrlen, u8 hook,
                                         u8 op, struct pol *p)
{
    struct net_hit hit = {};
    if (!address || !net_rule(address, addrlen, port_based(sk_protocol(sk)), p, &hit))
        return 0;
    return report_net(&hit, hook, op, p);
}
