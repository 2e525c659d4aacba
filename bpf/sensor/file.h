// The file family (sentinel/events/file.py): operations on one path (opens, unlink, mkdir,
// chmod, chdir...). The generated stubs call emit_path (emit_open, emit_chdir) at the
// syscall's exit with the event code and the arguments as (dirfd, path, flags, mode), read
// from the saved registers.

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

// A successful open: the file it installed is the truth (open_done).
BPF_PROG_ARRAY(open_done_tail, 1);
BPF_PERCPU_ARRAY(kpath_scratch, struct path_buf, 1);

// The open's record with the kernel's path of the file installed at descriptor res (tail-called
// by emit_path_walk, on the same CPU: the record's passed path and members are in
// file_scratch). The path is walked forward from the task's root (symlinks and magic links such
// as /proc/self/root resolved: the file itself), judged by the prefilter as such, and sent in
// the base buffer, left-aligned (FLAG_KPATH).
int open_done(void *ctx) {
    u32 zero = 0;
    struct file_scratch_t *r = file_scratch.lookup(&zero);
    struct path_buf *xb = kpath_scratch.lookup(&zero);
    if (!r || !xb)
        return 0;
    struct file_ev *e = &r->r;
    u32 t = e->h.type;
    long ret = e->res;
    u32 pflags = e->h.flags;
    BENCH_STAGE(STAGE_OPEN_DONE);
    // Every dimension but the path first: an open they drop costs no walk.
    int pre = prefilter_file_opened_pre(t, e->flags, e->path, ret);
    if (!pre) {
        count(t, C_FILTERED);
        return 0;
    }
    BENCH_STAGE(STAGE_OPEN_PRE);
    xb->pad = pre;  // read back after the walk (through memory: one unknown, not a state each)
    void *task = (void *)bpf_get_current_task();
    void *file = fd_file(task, (s32)ret);
    xb->len = 0;
    xb->trunc = 1;
    if (file) {
        void *fs = rd_ptr(task, OFF_TASK_FS);
        walk_path_fwd(xb, rd_ptr(file, OFF_FILE_F_PATH + OFF_PATH_DENTRY),
                      rd_ptr(file, OFF_FILE_F_PATH + OFF_PATH_MNT),
                      rd_ptr(fs, OFF_FS_ROOT + OFF_PATH_DENTRY),
                      rd_ptr(fs, OFF_FS_ROOT + OFF_PATH_MNT));
    }
    BENCH_STAGE(STAGE_OPEN_WALK);
    u32 klen = *(volatile u32 *)&xb->len;
    u32 ktrunc = *(volatile u32 *)&xb->trunc;
    u32 known = ktrunc ? 0 : klen & (FWD_END - 1);
    if (*(volatile u32 *)&xb->pad == 2 &&
        !prefilter_file_opened_path(xb->b + FWD_END - known, known)) {
        count(t, C_FILTERED);
        return 0;
    }
    count(t, C_PASSED);
    fill_hdr(&e->h, t);
    e->h.flags |= pflags | FLAG_KPATH | (ktrunc ? FLAG_BASE_TRUNC : 0);
    asm volatile("" : "+r"(known));
    e->base_len = known;
    bpf_probe_read_kernel(e->base, known & (FWD_END - 1), xb->b + ((FWD_END - known) & (FWD_END - 1)));
    u64 size = sizeof(struct file_ev) - WALK_SIZE + (known & (FWD_END - 1));
    if (events.ringbuf_output(e, size, wakeup_flags(t)) != 0)
        count(t, C_LOST);
    return 0;
}

// how: EMIT_AFTER: walk the cwd whatever the path (chdir, fchdir: at their exit it is the new
// cwd, the call's result); the prefilter then judges no path (the walk is not the path's base).
// EMIT_OPEN: an open, whose success installs a file (then open_done reports it).
#define EMIT_AFTER 1
#define EMIT_OPEN 2
static __always_inline int emit_path_walk(void *ctx, long ret, u32 t, s32 dirfd, u64 path,
                                          u64 flags, u64 mode, int how) {
    if (is_self())
        return 0;
    u32 zero = 0;
    struct file_scratch_t *r = file_scratch.lookup(&zero);
    if (!r)
        return 0;
    struct file_ev *e = &r->r;
    int after = how & EMIT_AFTER;
    // The path as passed, read once from the caller's memory: what the prefilter judges is
    // what the record carries.
    u32 via = call_hflags();  // FLAG_IO_URING: the path is the kernel's copy
    int n = read_path_arg(e->path, sizeof(e->path), path, via);
    if (n <= 0)
        e->path[0] = 0;
    e->path_len = n > 0 ? n - 1 : 0;
    e->res = ret;
    e->flags = (u32)flags;
    e->mode = (u32)mode;
    e->dirfd = dirfd;
    e->pad = 0;
    if ((how & EMIT_OPEN) && ret >= 0) {
        e->h.type = t;
        e->h.flags = via | (n == PATH_SIZE ? FLAG_PATH_TRUNC : 0);
        open_done_tail.call(ctx, 0);
        // (no program installed: judged and reported on the passed path, below)
    }
    if (!counted(t, prefilter_file(t, (u32)flags, after ? 0 : e->path, ret)))
        return 0;
    void *task = (void *)bpf_get_current_task();
    // The record is filled before the walk, as when the walk came last: values kept live
    // across the walk multiply the states the verifier explores in it (measured: 4x).
    fill_hdr(&e->h, t);
    e->h.flags |= via;
    if (n == PATH_SIZE)
        e->h.flags |= FLAG_PATH_TRUNC;
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

// open, openat, openat2, creat.
static __always_inline int emit_open(void *ctx, long ret, u32 t, s32 dirfd, u64 path, u64 flags,
                                     u64 mode) {
    return emit_path_walk(ctx, ret, t, dirfd, path, flags, mode, EMIT_OPEN);
}

// chdir (path) and fchdir (fd, kept in the record's mode): the record carries the cwd after
// the call.
static __always_inline int emit_chdir(void *ctx, long ret, u32 t, u64 path, u64 fd) {
    return emit_path_walk(ctx, ret, t, AT_FDCWD_VAL, path, 0, fd, EMIT_AFTER);
}
