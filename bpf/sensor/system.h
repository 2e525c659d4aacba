// The system family (sentinel/events/system.py): calls whose arguments are numbers and short
// strings (credentials, namespaces, ptrace, signals, BPF, memfd, io_uring, modules, mount).
// The generated stubs call emit_args with six values and three user string pointers (0: none).

static __always_inline int emit_args(void *ctx, long ret, u32 t, u64 v0, u64 v1, u64 v2, u64 v3,
                                     u64 v4, u64 v5, u64 s0, u64 s1, u64 s2) {
    if (is_self())
        return 0;
    if (!counted(t, prefilter_sys(t, v0, ret)))
        return 0;
    struct sys_ev *e = events.ringbuf_reserve(sizeof(struct sys_ev));
    if (!e) {
        count(t, C_LOST);
        return 0;
    }
    fill_hdr(&e->h, t);
    e->res = ret;
    e->v0 = v0;
    e->v1 = v1;
    e->v2 = v2;
    e->v3 = v3;
    e->v4 = v4;
    e->v5 = v5;
    // The task's capability sets after the call (a credential change shows in them).
    void *cred = rd_ptr((void *)bpf_get_current_task(), OFF_TASK_CRED);
    e->cap_inheritable = 0;
    e->cap_permitted = 0;
    e->cap_effective = 0;
    bpf_probe_read_kernel(&e->cap_inheritable, 8, cred + OFF_CRED_CAP_INHERITABLE);
    bpf_probe_read_kernel(&e->cap_permitted, 8, cred + OFF_CRED_CAP_PERMITTED);
    bpf_probe_read_kernel(&e->cap_effective, 8, cred + OFF_CRED_CAP_EFFECTIVE);
    int n;
    e->s0_len = e->s1_len = e->s2_len = e->pad = 0;
    e->s0[0] = e->s1[0] = e->s2[0] = 0;
    if (s0 && (n = bpf_probe_read_user_str(e->s0, sizeof(e->s0), (void *)s0)) > 0)
        e->s0_len = n - 1;
    if (s1 && (n = bpf_probe_read_user_str(e->s1, sizeof(e->s1), (void *)s1)) > 0)
        e->s1_len = n - 1;
    if (s2 && (n = bpf_probe_read_user_str(e->s2, sizeof(e->s2), (void *)s2)) > 0)
        e->s2_len = n - 1;
    submit(e, t);
    return 0;
}
