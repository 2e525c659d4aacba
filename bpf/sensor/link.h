// The link family (sentinel/events/link.py): operations on two paths (rename, renameat,
// renameat2, link, linkat, symlink, symlinkat). The generated stubs reach emit_path2 with
// (dirfd0, path0, dirfd1, path1, flags); each relative path's base directory (the cwd or its
// dirfd's file) is walked, as the file family does for one path. A dirfd of -1 means "a plain
// string, no base" (symlink's target).

struct link_scratch_t {
    struct link_ev r;
    u16 at[2 * WALK_DEPTH];         // (walk_base wants them; the prefilter does not judge here)
    u32 nc;
    u32 pad;
};
BPF_PERCPU_ARRAY(link_scratch, struct link_scratch_t, 1);

static __always_inline u32 read_path(char *dst, u64 uptr, u32 *flags, u32 trunc_flag,
                                     u32 hflags) {
    int n = read_path_arg(dst, PATH_SIZE, uptr, hflags);
    if (n <= 0) {
        dst[0] = 0;
        return 0;
    }
    if (n == PATH_SIZE)
        *flags |= trunc_flag;
    return n - 1;
}

static __always_inline int emit_path2(void *ctx, long ret, u32 t, s32 dirfd0, u64 path0,
                                      s32 dirfd1, u64 path1, u64 flags) {
    if (is_self())
        return 0;
    if (!counted(t, prefilter_plain(t, ret)))
        return 0;
    u32 zero = 0;
    struct link_scratch_t *r = link_scratch.lookup(&zero);
    if (!r)
        return 0;
    struct link_ev *e = &r->r;
    void *task = (void *)bpf_get_current_task();
    fill_hdr(&e->h, t);
    e->res = ret;
    e->dirfd0 = dirfd0;
    e->dirfd1 = dirfd1;
    e->flags = (u32)flags;
    e->pad = 0;
    u32 via = call_hflags();
    u32 fl = via;
    e->len0 = read_path(e->path0, path0, &fl, FLAG_PATH_TRUNC, via);
    e->len1 = read_path(e->path1, path1, &fl, FLAG_PATH1_TRUNC, via);
    e->base0_len = 0;
    e->base1_len = 0;
    // Each relative path's base, walked into the record (bad/truncated walks are flagged).
    if (dirfd0 != -1 && e->len0 && e->path0[0] != '/') {
        u32 f0 = 0;
        e->base0_len = walk_base(e->base0, task, dirfd0, &f0, r->at, &r->nc);
        fl |= f0 & (FLAG_BASE_BAD | FLAG_BASE_TRUNC);
    }
    if (e->len1 && e->path1[0] != '/') {
        u32 f1 = 0;
        e->base1_len = walk_base(e->base1, task, dirfd1, &f1, r->at, &r->nc);
        if (f1 & FLAG_BASE_BAD)
            fl |= FLAG_BASE1_BAD;
        if (f1 & FLAG_BASE_TRUNC)
            fl |= FLAG_BASE1_TRUNC;
    }
    e->h.flags |= fl;
    if (events.ringbuf_output(e, sizeof(struct link_ev), wakeup_flags(t)) != 0)
        count(t, C_LOST);
    return 0;
}
