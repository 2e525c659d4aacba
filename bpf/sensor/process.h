// The process family (sentinel/events/process.py): clone and procexit, from sched raw
// tracepoints that are always attached (they keep the process table exact; never filtered).

RAW_TRACEPOINT_PROBE(sched_process_fork) {
    void *child = (void *)ctx->args[1];
    // A new process keeps its parent's exec-time name (task.h) until it execs.
    u32 ctgid = rd_u32(child, OFF_TASK_TGID);
    u32 ptgid = bpf_get_current_pid_tgid() >> 32;
    if (ctgid != ptgid) {
        struct task_comm_t *pc = exec_comm.lookup(&ptgid);
        if (pc) {
            struct task_comm_t copy = {};
            __builtin_memcpy(copy.comm, pc->comm, 16);
            exec_comm.update(&ctgid, &copy);
        }
    }
    if (is_self() || !counted(EVT_CLONE, 1))
        return 0;
    struct proc_ev *e = events.ringbuf_reserve(sizeof(struct proc_ev));
    if (!e) {
        count(EVT_CLONE, C_LOST);
        return 0;
    }
    fill_hdr(&e->h, EVT_CLONE);
    e->child_pid = rd_u32(child, OFF_TASK_TGID);
    e->child_tid = rd_u32(child, OFF_TASK_PID);
    e->exit_code = 0;
    e->pad = 0;
    if (e->child_pid != e->child_tid)
        e->h.flags |= FLAG_THREAD;
    submit(e, EVT_CLONE);
    return 0;
}

// The exit record (the exec-time name is dropped after it: the record still carries it).
static __always_inline void emit_exit(void *task) {
    if (is_self() || !counted(EVT_PROCEXIT, 1))
        return;
    struct proc_ev *e = events.ringbuf_reserve(sizeof(struct proc_ev));
    if (!e) {
        count(EVT_PROCEXIT, C_LOST);
        return;
    }
    fill_hdr(&e->h, EVT_PROCEXIT);
    e->child_pid = 0;
    e->child_tid = 0;
    e->exit_code = (s32)rd_u32(task, OFF_TASK_EXIT_CODE);
    e->pad = 0;
    submit(e, EVT_PROCEXIT);
}

RAW_TRACEPOINT_PROBE(sched_process_exit) {
    void *task = (void *)ctx->args[0];
#ifdef EXIT_HAS_GROUP_DEAD
    if (!(u8)ctx->args[1])
        return 0;  // a thread, not the last one: the process lives on
#else
    u64 pt = bpf_get_current_pid_tgid();
    if ((u32)pt != (u32)(pt >> 32))
        return 0;
#endif
    emit_exit(task);
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    exec_comm.delete(&tgid);
    return 0;
}
