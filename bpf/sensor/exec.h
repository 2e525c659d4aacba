// The exec family (sentinel/events/exec.py): execve and execveat.
//
// A successful exec is reported by sched_process_exec, with the new image; a failed one at
// its own syscall exit (emit_exec_failure, called by the generated stubs of sys_exit_execve
// and sys_exit_execveat, attached only when other syscall tracepoints are).

// Per-CPU scratch for the executable's path: built once, before the prefilter judges it and
// the record is reserved, then copied into the record.
BPF_PERCPU_ARRAY(exe_scratch, struct path_buf, 1);
BPF_PERCPU_ARRAY(exec_verdict, u32, 1);  // the prefilter's first verdict, for exec_walk
BPF_PROG_ARRAY(exec_tail, 3);
BPF_ARRAY(exec_opts, u32, 1);  // what user space wants copied (EXEC_SKIP_ENV...); 0: all
#define EXEC_EMIT 0                 // exec_emit: builds the record
#define EXEC_JUDGE 1                // exec_judge: the prefilter judges the path, then emits
#define EXEC_WALK 2                 // exec_walk: walks the executable's path, then one of those

// execve or execveat. The syscall number is gone by now (x86 resets the saved registers for
// the new image), but an execveat that names its file by a directory fd (fexecve, fileless
// memfd execution, a path relative to a dirfd) leaves bprm->fdpath ("/dev/fd/N[/name]").
// An execveat with AT_FDCWD or an absolute path is indistinguishable from execve here and
// counts as execve (failed ones are told apart exactly, at their own syscall exits).
static __always_inline u32 exec_type(void *bprm) {
    return rd_ptr(bprm, OFF_BPRM_FDPATH) ? EVT_EXECVEAT : EVT_EXECVE;
}

// What the kernel knows of the new image beyond its path: the capability sets after exec's
// transformation (a set-uid-root file gains them), the environment the new image starts with
// (env_start..env_end of the new mm, written by the kernel: no thread of the new image has
// run yet), and the executable's inode: number, times, owner, mode, and where it lives (a
// memfd; overlayfs, and its upper layer: a file written in a container).
static __always_inline void exec_facts(struct exec_ev *e, void *task, void *mm, void *file) {
    void *cred = rd_ptr(task, OFF_TASK_CRED);
    e->cap_inheritable = 0;
    e->cap_permitted = 0;
    e->cap_effective = 0;
    bpf_probe_read_kernel(&e->cap_inheritable, 8, cred + OFF_CRED_CAP_INHERITABLE);
    bpf_probe_read_kernel(&e->cap_permitted, 8, cred + OFF_CRED_CAP_PERMITTED);
    bpf_probe_read_kernel(&e->cap_effective, 8, cred + OFF_CRED_CAP_EFFECTIVE);

    u64 es = 0, ee = 0;
    bpf_probe_read_kernel(&es, sizeof(es), mm + OFF_MM_ENV_START);
    bpf_probe_read_kernel(&ee, sizeof(ee), mm + OFF_MM_ENV_END);
    u64 elen = ee > es ? ee - es : 0;
    if (elen > ENV_SIZE) {
        elen = ENV_SIZE;
        e->h.flags |= FLAG_ENV_TRUNC;
    }
    e->env_len = 0;
    u32 zero = 0;
    u32 *opts = exec_opts.lookup(&zero);
    if (opts && (*opts & EXEC_SKIP_ENV))
        elen = 0;                       // no loaded rule reads proc.env
    if (elen > 0 && bpf_probe_read_user(&e->env, elen & (ENV_SIZE - 1) ? elen & (ENV_SIZE - 1) : ENV_SIZE, (void *)es) == 0)
        e->env_len = elen;
    if (BENCH_CUT == STAGE_EXEC_ENV)
        return;

    e->exe_ino = 0;
    e->exe_ctime = 0;
    e->exe_mtime = 0;
    e->exe_mode = 0;
    e->exe_uid = 0;
    e->exe_gid = 0;
    e->exe_flags = 0;
    e->pad = 0;
    if (!file)
        return;
    void *inode = rd_ptr(file, OFF_FILE_F_INODE);
    if (!inode)
        return;
    u16 mode = 0;
    u32 nlink = 1;
    s64 sec = 0;
    u32 nsec = 0;
    bpf_probe_read_kernel(&e->exe_ino, sizeof(e->exe_ino), inode + OFF_INODE_I_INO);
    bpf_probe_read_kernel(&mode, sizeof(mode), inode + OFF_INODE_I_MODE);
    bpf_probe_read_kernel(&e->exe_uid, sizeof(e->exe_uid), inode + OFF_INODE_I_UID);
    bpf_probe_read_kernel(&e->exe_gid, sizeof(e->exe_gid), inode + OFF_INODE_I_GID);
    bpf_probe_read_kernel(&nlink, sizeof(nlink), inode + OFF_INODE_I_NLINK);
    bpf_probe_read_kernel(&sec, sizeof(sec), inode + OFF_INODE_CTIME_SEC);
    bpf_probe_read_kernel(&nsec, sizeof(nsec), inode + OFF_INODE_CTIME_NSEC);
    // (6.13's multigrain timestamps keep a flag in the top bit of the ctime's nanoseconds)
    e->exe_ctime = (u64)sec * 1000000000ULL + (nsec & 0x3fffffff);
    bpf_probe_read_kernel(&sec, sizeof(sec), inode + OFF_INODE_MTIME_SEC);
    bpf_probe_read_kernel(&nsec, sizeof(nsec), inode + OFF_INODE_MTIME_NSEC);
    e->exe_mtime = (u64)sec * 1000000000ULL + (nsec & 0x3fffffff);
    e->exe_mode = mode;
    // memfd_create's files are named "memfd:<name>" and are linked nowhere. (One compare of
    // the name's first six bytes, little-endian: a branch per byte multiplied the verifier's
    // paths through the rest of the program.)
    u64 name = 0;
    void *dentry = rd_ptr(file, OFF_FILE_F_PATH + OFF_PATH_DENTRY);
    bpf_probe_read_kernel(&name, 6, rd_ptr(dentry, OFF_DENTRY_D_NAME_NAME));
    if (nlink == 0 && name == 0x3a64666d656dULL)  // "memfd:"
        e->exe_flags |= EXE_MEMFD;
    // overlayfs: the inode is embedded in struct ovl_inode, whose __upperdentry is set when
    // the file exists in the upper (writable) layer.
    u64 magic = 0;
    bpf_probe_read_kernel(&magic, sizeof(magic), rd_ptr(inode, OFF_INODE_I_SB) + OFF_SB_S_MAGIC);
    if (magic == OVERLAYFS_SUPER_MAGIC) {
        e->exe_flags |= EXE_OVERLAY;
        void *upper = rd_ptr(inode, OFF_OVL_UPPERDENTRY);
        if (upper && rd_ptr(upper, OFF_DENTRY_D_INODE))
            e->exe_flags |= EXE_UPPER;
    }
}

RAW_TRACEPOINT_PROBE(sched_process_exec) {
    if (is_self())
        return 0;
    // The process's name from now on (whatever the prefilter decides about this event).
    struct task_comm_t name = {};
    bpf_get_current_comm(&name.comm, sizeof(name.comm));
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    exec_comm.update(&tgid, &name);
    u32 t = exec_type((void *)ctx->args[2]);
    struct pf_exec_state pst = {};
    int verdict = prefilter_exec_pre(&pst, t);
    u32 zero = 0;
    u32 *v = exec_verdict.lookup(&zero);
    if (!v)
        return 0;
    *v = verdict;
    BENCH_STAGE(STAGE_EXEC_PRE);
    // Walking the executable's path, judging it, building the record: each in a program of
    // its own, which the verifier checks once, alone. Inline, it checked the walk once per
    // state the prefilter's first step left (0.5 s of start-up), the judgement once per way
    // the walk can end (2.4 s), and the record passed the verifier's limit.
    exec_tail.call(ctx, EXEC_WALK);
    count(t, C_LOST);  // the tail call failed: the event is lost, and counted so
    return 0;
}

// The executable's path (symlinks resolved), walked once into exe_scratch: the prefilter may
// judge it, and the record carries it. An exec no rule wants is still walked and emitted, for
// the process table only (FLAG_TABLE_ONLY: the facts of this process's later events stay true).
int exec_walk(struct bpf_raw_tracepoint_args *ctx) {
    void *task = (void *)ctx->args[0];
    void *bprm = (void *)ctx->args[2];
    u32 t = exec_type(bprm);
    u32 zero = 0;
    struct path_buf *xb = exe_scratch.lookup(&zero);
    u32 *v = exec_verdict.lookup(&zero);
    if (!xb || !v)
        return 0;
    void *fs = rd_ptr(task, OFF_TASK_FS);
    void *root_mnt = rd_ptr(fs, OFF_FS_ROOT + OFF_PATH_MNT);
    void *root_dentry = rd_ptr(fs, OFF_FS_ROOT + OFF_PATH_DENTRY);
    xb->len = 0;
    xb->trunc = 0;
    xb->flags = 0;
    void *file = rd_ptr(bprm, OFF_BPRM_FILE);
    if (file)
        walk_path_fwd(xb, rd_ptr(file, OFF_FILE_F_PATH + OFF_PATH_DENTRY),
                      rd_ptr(file, OFF_FILE_F_PATH + OFF_PATH_MNT), root_dentry, root_mnt);
    BENCH_STAGE(STAGE_EXEC_WALK);
    u32 verdict = *(volatile u32 *)v;
    if (verdict == 2) {
        exec_tail.call(ctx, EXEC_JUDGE);
        count(t, C_LOST);
        return 0;
    }
    if (!verdict) {
        count(t, C_FILTERED);
        xb->flags = FLAG_TABLE_ONLY;
    } else {
        count(t, C_PASSED);
    }
    exec_tail.call(ctx, EXEC_EMIT);
    count(t, C_LOST);  // the tail call failed: the event is lost, and counted so
    return 0;
}

// An exec whose verdict depends on its executable's path (tail-called by exec_walk, on the
// same CPU: the walk is in exe_scratch). The prefilter's first step is taken again (its state
// holds a pointer into a map, which cannot wait in a map for this program): a comm and a uid
// lookup, for execs only some rule's path test can keep.
int exec_judge(struct bpf_raw_tracepoint_args *ctx) {
    u32 t = exec_type((void *)ctx->args[2]);
    u32 zero = 0;
    struct path_buf *xb = exe_scratch.lookup(&zero);
    if (!xb)
        return 0;
    // Read back through memory (volatile), so the filter works on one unknown length rather
    // than on whatever clang can prove; every copy it makes is bounded by masks of its own.
    u32 exe_len = *(volatile u32 *)&xb->len;
    u32 exe_trunc = *(volatile u32 *)&xb->trunc;
    u32 known = exe_trunc ? 0 : exe_len & (FWD_END - 1);
    struct pf_exec_state pst = {};
    int verdict = prefilter_exec_pre(&pst, t);
    if (verdict == 2)
        verdict = prefilter_exec_path(&pst, xb->b + FWD_END - known, known);
    if (!verdict) {
        count(t, C_FILTERED);
        xb->flags = FLAG_TABLE_ONLY;    // for the process table only: no rule wants it
    } else {
        count(t, C_PASSED);
    }
    exec_tail.call(ctx, EXEC_EMIT);
    count(t, C_LOST);
    return 0;
}

// The exec record of sched_process_exec (tail-called by it, on the same CPU: the walk of the
// executable is still in exe_scratch).
int exec_emit(struct bpf_raw_tracepoint_args *ctx) {
    void *task = (void *)ctx->args[0];
    void *bprm = (void *)ctx->args[2];
    u32 t = exec_type(bprm);
    u32 zero = 0;
    struct path_buf *xb = exe_scratch.lookup(&zero);
    if (!xb)
        return 0;
    void *fs = rd_ptr(task, OFF_TASK_FS);
    void *root_mnt = rd_ptr(fs, OFF_FS_ROOT + OFF_PATH_MNT);
    void *root_dentry = rd_ptr(fs, OFF_FS_ROOT + OFF_PATH_DENTRY);
    void *file = rd_ptr(bprm, OFF_BPRM_FILE);
    u32 exe_len = *(volatile u32 *)&xb->len;
    u32 exe_trunc = *(volatile u32 *)&xb->trunc;
    struct exec_ev *e = events.ringbuf_reserve(sizeof(struct exec_ev));
    if (!e) {
        count(t, C_LOST);
        return 0;
    }
    if (BENCH_CUT == STAGE_EXEC_RESERVE) {
        events.ringbuf_discard(e, 0);
        return 0;
    }
    fill_hdr(&e->h, t);
    e->h.flags |= *(volatile u32 *)&xb->flags;
    e->old_pid = (u32)ctx->args[1];
    e->res = 0;

    void *fname = rd_ptr(bprm, OFF_BPRM_FILENAME);
    e->filename[0] = 0;
    bpf_probe_read_kernel_str(&e->filename, sizeof(e->filename), fname);

    // argv from the new mm: arg_start..arg_end is the NUL-separated argument block.
    void *mm = rd_ptr(task, OFF_TASK_MM);
    u64 as = 0, ae = 0;
    bpf_probe_read_kernel(&as, sizeof(as), mm + OFF_MM_ARG_START);
    bpf_probe_read_kernel(&ae, sizeof(ae), mm + OFF_MM_ARG_END);
    u64 alen = ae > as ? ae - as : 0;
    if (alen > ARGS_SIZE) {
        alen = ARGS_SIZE;
        e->h.flags |= FLAG_ARGS_TRUNC;
    }
    e->args_len = 0;
    if (alen > 0 && bpf_probe_read_user(&e->args, alen & (ARGS_SIZE - 1) ? alen & (ARGS_SIZE - 1) : ARGS_SIZE, (void *)as) == 0)
        e->args_len = alen;
    if (BENCH_CUT == STAGE_EXEC_ARGS) {
        events.ringbuf_discard(e, 0);
        return 0;
    }

    // The executable's path, from the walk above; the cwd, as a dentry walk to the task's root.
    bpf_probe_read_kernel(e->exe, WALK_SIZE, xb->b);
    e->exe_len = exe_len;
    if (exe_trunc)
        e->h.flags |= FLAG_EXE_TRUNC;
    u32 trunc = 0;
    e->cwd_len = walk_path(e->cwd, rd_ptr(fs, OFF_FS_PWD + OFF_PATH_DENTRY),
                           rd_ptr(fs, OFF_FS_PWD + OFF_PATH_MNT), root_dentry, root_mnt, &trunc,
                           0, 0);
    if (trunc)
        e->h.flags |= FLAG_CWD_TRUNC;
    if (BENCH_CUT == STAGE_EXEC_CWD) {
        events.ringbuf_discard(e, 0);
        return 0;
    }

    // Controlling tty, session and process group (for proc.tty, proc.sname, vpgid leader).
    void *signal = rd_ptr(task, OFF_TASK_SIGNAL);
    void *tty = rd_ptr(signal, OFF_SIGNAL_TTY);
    e->tty = 0;
    if (tty) {
        u32 index = rd_u32(tty, OFF_TTY_INDEX);
        void *driver = rd_ptr(tty, OFF_TTY_DRIVER);
        u32 major = rd_u32(driver, OFF_TTYDRV_MAJOR);
        u32 minor = rd_u32(driver, OFF_TTYDRV_MINOR_START) + index;
        e->tty = (minor & 0xff) | (major << 8) | ((minor & ~0xffu) << 12);
    }
    void *sidp = rd_ptr(signal, OFF_SIGNAL_PIDS + 8 * PIDTYPE_SID_IDX);
    void *pgidp = rd_ptr(signal, OFF_SIGNAL_PIDS + 8 * PIDTYPE_PGID_IDX);
    e->sid = sidp ? rd_u32(sidp, OFF_PID_NUMBERS + OFF_UPID_NR) : 0;
    e->pgid = pgidp ? rd_u32(pgidp, OFF_PID_NUMBERS + OFF_UPID_NR) : 0;
    if (BENCH_CUT == STAGE_EXEC_TTY) {
        events.ringbuf_discard(e, 0);
        return 0;
    }
    exec_facts(e, task, mm, file);
    if (BENCH_CUT == STAGE_EXEC_ENV || BENCH_CUT == STAGE_EXEC_FACTS) {
        events.ringbuf_discard(e, 0);
        return 0;
    }
    submit(e, t);
    return 0;
}

// A failed execve/execveat (the generated stubs call this at the syscall exit): the process
// image is unchanged, so only the attempted path and argv are recorded.
static __always_inline int emit_exec_failure(void *ctx, long ret, u32 t, u64 fname, u64 argvp) {
    if (ret >= 0 || is_self())
        return 0;
    struct pf_exec_state pst = {};
    int verdict = prefilter_exec_pre(&pst, t);  // the image is unchanged: no new executable path
    if (!counted(t, verdict == 2 ? prefilter_exec_path(&pst, 0, 0) : verdict))
        return 0;
    struct exec_ev *e = events.ringbuf_reserve(sizeof(struct exec_ev));
    if (!e) {
        count(t, C_LOST);
        return 0;
    }
    fill_hdr(&e->h, t);
    e->tty = 0;
    e->sid = 0;
    e->pgid = 0;
    e->exe_len = 0;
    e->cwd_len = 0;
    e->old_pid = 0;
    e->env_len = 0;
    e->cap_inheritable = 0;
    e->cap_permitted = 0;
    e->cap_effective = 0;
    e->exe_ino = 0;
    e->exe_ctime = 0;
    e->exe_mtime = 0;
    e->exe_mode = 0;
    e->exe_uid = 0;
    e->exe_gid = 0;
    e->exe_flags = 0;
    e->pad = 0;
    e->res = (s32)ret;
    e->filename[0] = 0;
    bpf_probe_read_user_str(&e->filename, sizeof(e->filename), (void *)fname);
    u32 off = 0;
    int i;
    for (i = 0; i < FAILED_EXEC_ARGS; i++) {
        u64 p = 0;
        if (bpf_probe_read_user(&p, sizeof(p), (void *)(argvp + i * 8)) != 0 || !p)
            break;
        if (off > ARGS_SIZE - NAME_MAX_READ) {
            e->h.flags |= FLAG_ARGS_TRUNC;
            break;
        }
        int n = bpf_probe_read_user_str(&e->args[off & (ARGS_SIZE - 1)], NAME_MAX_READ,
                                        (void *)p);
        if (n <= 0)
            break;
        off += n;
    }
    e->args_len = off;
    submit(e, t);
    return 0;
}
