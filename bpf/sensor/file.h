// The file family (sentinel/events/file.py): operations on one path (open, openat, openat2,
// creat, unlink, unlinkat). The generated stubs call emit_path at the syscall's exit with the
// event code and the arguments as (dirfd, path, flags, mode), read from the saved registers.

struct file_scratch_t {
    struct file_ev r;               // the record (its first bytes are sent)
    u32 nc;                         // walk steps taken (see walk_path)
    u16 at[2 * WALK_DEPTH];         // offsets of r.base reached at each walk step
};

// Per-CPU scratch where a record is assembled, then copied into the ring buffer with only the
// bytes it uses (bpf_ringbuf_output): a short path costs 2 cache lines of ring instead of 6,
// and ring lines are what the producer pays for (the reader on the other CPU last touched
// them).
BPF_PERCPU_ARRAY(file_scratch, struct file_scratch_t, 1);

// A u64 of user memory (openat2's struct open_how: flags at 0, mode at 8).
static __always_inline u64 how_u64(u64 uptr, u32 off) {
    u64 v = 0;
    bpf_probe_read_user(&v, sizeof(v), (void *)(uptr + off));
    return v;
}

// Directory a relative path starts from: the cwd, or the file behind dirfd.
static __always_inline u32 walk_base(char *buf, void *task, s32 dirfd, u32 *flags, u16 *at,
                                     u32 *nc) {
    void *fs = rd_ptr(task, OFF_TASK_FS);
    void *root_mnt = rd_ptr(fs, OFF_FS_ROOT + OFF_PATH_MNT);
    void *root_dentry = rd_ptr(fs, OFF_FS_ROOT + OFF_PATH_DENTRY);
    void *dentry, *mnt;
    u32 trunc = 0;
    if (dirfd == AT_FDCWD_VAL) {
        dentry = rd_ptr(fs, OFF_FS_PWD + OFF_PATH_DENTRY);
        mnt = rd_ptr(fs, OFF_FS_PWD + OFF_PATH_MNT);
    } else {
        *flags |= FLAG_BASE_DIRFD;
        void *file = fd_file(task, dirfd);
        if (!file) {
            *flags |= FLAG_BASE_BAD;
            return 0;
        }
        dentry = rd_ptr(file, OFF_FILE_F_PATH + OFF_PATH_DENTRY);
        mnt = rd_ptr(file, OFF_FILE_F_PATH + OFF_PATH_MNT);
    }
    u32 n = walk_path(buf, dentry, mnt, root_dentry, root_mnt, &trunc, at, nc);
    if (trunc)
        *flags |= FLAG_BASE_TRUNC;
    return n;
}

#ifdef PREFILTER_FILE
// The end of a relative path the prefilter may have left pending: judge it on the walk of the
// base directory (in the scratch record), then emit the record. A separate program, reached by
// a tail call, so the verifier checks it once, alone: inline, it was checked once per way the
// walk can end (2.5x the instructions, over a second more start-up per program).
BPF_PROG_ARRAY(open_tail, 1);

int open_judge(void *ctx) {
    u32 zero = 0;
    struct file_scratch_t *r = file_scratch.lookup(&zero);
    if (!r)
        return 0;
    u32 fl = r->r.h.flags;
    u32 t = r->r.h.type;
    if (!prefilter_file_base(r->r.base, r->at, r->nc, fl & (FLAG_BASE_BAD | FLAG_BASE_TRUNC))) {
        // emit_path counted it passed before this verdict: move it to filtered (per-CPU, and
        // this runs on the CPU that counted it)
        u32 i = t * C_N + C_PASSED;
        u64 *v = counts.lookup(&i);
        if (v && *v)
            *v -= 1;
        count(t, C_FILTERED);
        return 0;
    }
    if (events.ringbuf_output(&r->r, sizeof(struct file_ev), wakeup_flags(t)) != 0)
        count(t, C_LOST);
    return 0;
}
#endif

// after: walk the cwd whatever the path (chdir, fchdir: at their exit it is the new cwd, the
// call's result); the prefilter then judges no path (the walk is not the path's base).
static __always_inline int emit_path_walk(void *ctx, long ret, u32 t, s32 dirfd, u64 path,
                                          u64 flags, u64 mode, int after) {
    if (is_self())
        return 0;
    if (!counted(t, prefilter_file(t, (u32)flags, after ? 0 : (const char *)path, ret)))
        return 0;
    u32 zero = 0;
    struct file_scratch_t *r = file_scratch.lookup(&zero);
    if (!r)
        return 0;
    struct file_ev *e = &r->r;
    void *task = (void *)bpf_get_current_task();
    // The record is filled before the walk, as when the walk came last: values kept live
    // across the walk multiply the states the verifier explores in it (measured: 4x).
    fill_hdr(&e->h, t);
    e->res = ret;
    e->flags = (u32)flags;
    e->mode = (u32)mode;
    e->dirfd = dirfd;
    e->pad = 0;
    int n = bpf_probe_read_user_str(&e->path, sizeof(e->path), (void *)path);
    e->path_len = n > 0 ? n - 1 : 0;
    if (n == PATH_SIZE)
        e->h.flags |= FLAG_PATH_TRUNC;
    if (n <= 0)
        e->path[0] = 0;
    e->base_len = 0;
    u64 size;
    if (after) {
        u32 fl = FLAG_BASE_AFTER;
        e->base_len = walk_base(e->base, task, AT_FDCWD_VAL, &fl, r->at, &r->nc);
        e->h.flags |= fl;
        size = sizeof(struct file_ev);
    } else if (n > 0 && e->path[0] == '/') {
        size = sizeof(struct file_ev) - PATH_SIZE - WALK_SIZE + ((u32)n & (2 * PATH_SIZE - 1));
        if (!prefilter_file_base(0, 0, 0, 1))
            return 0;                   // (never: bad keeps; settles a relative verdict left
                                        // pending if the path changed under us)
    } else {
        // The base is walked once, into the record, and the prefilter judges on that walk.
        u32 fl = 0;
        r->nc = 0;
        e->base_len = walk_base(e->base, task, dirfd, &fl, r->at, &r->nc);
        e->h.flags |= fl;
#ifdef PREFILTER_FILE
        // open_judge: returns here only if the call failed (nothing installed): then the event
        // is kept, the verdict left pending is overwritten by the next kept event's
        // (f_file_exit), and this event is missing from the kept count.
        open_tail.call(ctx, 0);
#endif
        size = sizeof(struct file_ev);
    }
    if (events.ringbuf_output(e, size, wakeup_flags(t)) != 0)
        count(t, C_LOST);
    return 0;
}

static __always_inline int emit_path(void *ctx, long ret, u32 t, s32 dirfd, u64 path, u64 flags,
                                     u64 mode) {
    return emit_path_walk(ctx, ret, t, dirfd, path, flags, mode, 0);
}

// chdir (path) and fchdir (fd, kept in the record's mode): the record carries the cwd after
// the call.
static __always_inline int emit_chdir(void *ctx, long ret, u32 t, u64 path, u64 fd) {
    return emit_path_walk(ctx, ret, t, AT_FDCWD_VAL, path, 0, fd, 1);
}
