// Sentinel's sensor: process, file-open and connect events into one BPF ring buffer.
//
// Compiled by bcc at run time against whatever kernel headers exist (usually NOT the running
// kernel's). Therefore no kernel struct is ever dereferenced through a header layout: every
// struct field is read with bpf_probe_read_kernel() at an OFF_* byte offset that user space
// computed from the running kernel's BTF (sentinel/kernel/btf.py) and passed as -DOFF_X=N.
// Tracepoint arguments (args->..., ctx->args[]) are safe: bcc builds them from tracefs.
//
// Record layouts are mirrored in sentinel/kernel/records.py; keep both in step.

#include <uapi/linux/ptrace.h>

#define EV_EXEC 1
#define EV_FORK 2
#define EV_EXIT 3
#define EV_OPEN 4
#define EV_CONNECT 5

#define SC_OPEN 1
#define SC_OPENAT 2
#define SC_OPENAT2 3
#define SC_CREAT 4

#define FLAG_ARGS_TRUNC 1
#define FLAG_PATH_TRUNC 2
#define FLAG_CWD_TRUNC 4
#define FLAG_EXE_TRUNC 8
#define FLAG_THREAD 16
#define FLAG_BASE_DIRFD 32
#define FLAG_BASE_BAD 64
#define FLAG_BASE_TRUNC 128
#define FLAG_EXECVEAT 256       // exec: made by execveat(2), not execve(2)

// Falco event types, for the per-type counters: keep in step with EVT_TYPES in
// sentinel/kernel/sensor.py. Per type, [t * C_N + C_*] counts events the prefilter dropped,
// events that passed it (sent or lost), and events lost (ring buffer full).
#define T_EXECVE 0
#define T_EXECVEAT 1
#define T_CLONE 2
#define T_PROCEXIT 3
#define T_OPEN 4
#define T_OPENAT 5
#define T_OPENAT2 6
#define T_CONNECT 7
#define T_CREAT 8
#define T_MAX 9
#define C_FILTERED 0
#define C_PASSED 1
#define C_LOST 2
#define C_N 3

#define ARGS_SIZE 1024          // power of two: bounded reads mask with ARGS_SIZE - 1
#define FNAME_SIZE 256
#define PATH_SIZE 256           // the path argument of open()
#define WALK_SIZE 768           // a dentry walk: NUL-separated components, leaf first
#define WALK_LIMIT 512          // stop writing components past this offset
#define NAME_MAX_READ 256
#define EXE_END 512             // the executable's path ends here in exec_ev.exe (right-aligned)
// Components per dentry walk. Every iteration is verified separately (bcc cannot emit the
// bpf_loop() callback that would avoid it), so depth is start-up time: 16 keeps the load under
// half a second. A deeper path is flagged truncated and user space falls back to /proc.
#ifndef WALK_DEPTH
#define WALK_DEPTH 16
#endif
#define SOCKADDR_SIZE 112

// Wakeups: only exec records wake the reader at once. A wakeup is an irq_work self-IPI, which
// in a VM is a VM exit costing microseconds: measured here, waking every 64th open record
// cost ~300 ns per record on average. Other records wake the reader once per WAKEUP_EVERY per
// CPU (a safety net); otherwise user space finds them at its next poll, whose timeout bounds
// their delay (sentinel.kernel.sensor.POLL_MS), and while it is busy it never sleeps anyway.
#define WAKEUP_EVERY 4096

struct hdr {
    u64 ts;           // bpf_ktime_get_boot_ns()
    u32 type;         // EV_*
    u32 pid;          // tgid
    u32 tid;
    u32 ppid;         // real_parent's tgid
    u32 uid;
    u32 gid;
    u32 loginuid;
    u32 flags;        // FLAG_*
    u64 cgroup_id;    // v2 cgroup id
    char comm[16];
};                    // 64 bytes

struct exec_ev {
    struct hdr h;
    u32 tty;          // new_encode_dev(major, minor), as /proc/<pid>/stat's tty_nr
    u32 sid;
    u32 pgid;
    u32 args_len;     // bytes of args[] used (NUL-separated argv)
    u32 exe_len;      // length of the executable's path, which ends at exe[EXE_END]
    u32 cwd_len;      // bytes of cwd[] used (walk of fs->pwd)
    u32 old_pid;
    s32 res;          // 0 (sched_process_exec), or -errno of a failed execve/execveat
    char filename[FNAME_SIZE];
    char args[ARGS_SIZE];
    char exe[WALK_SIZE];
    char cwd[WALK_SIZE];
};

struct fork_ev {
    struct hdr h;
    u32 child_pid;    // tgid of the child
    u32 child_tid;
};

struct exit_ev {
    struct hdr h;
    s32 exit_code;
    u32 pad;
};

struct open_ev {
    struct hdr h;
    s64 ret;
    u32 oflags;
    u32 mode;
    s32 dirfd;
    u32 syscall;      // SC_*
    u32 path_len;
    u32 base_len;     // 0: path is absolute (or unresolvable); else bytes of base[] used
    char path[PATH_SIZE];
};

struct open_ev_rel {
    struct open_ev e;
    char base[WALK_SIZE];
};

struct open_scratch_t {
    struct open_ev_rel r;           // the record (its first bytes are sent)
    u32 nc;                         // walk steps taken (see walk_path)
    u16 at[2 * WALK_DEPTH];         // offsets of r.base reached at each walk step
};

struct connect_ev {
    struct hdr h;
    s64 ret;
    s32 fd;
    u32 addrlen;
    u16 sock_type;    // SOCK_STREAM, SOCK_DGRAM...
    u16 protocol;     // IPPROTO_*
    u16 lport;        // local port after connect (host order), 0 if unknown
    u16 pad;
    u8 laddr[16];     // local address after connect
    u8 addr[SOCKADDR_SIZE];  // the sockaddr as passed
};

// The arguments of a syscall, read at its exit from the task's saved user registers
// (bpf_task_pt_regs): only sys_exit_* tracepoints are attached, never sys_enter_*, which halves
// the tracepoint cost every syscall of every task pays, and no enter->exit stash map is needed.
struct sc_args {
    u64 a0, a1, a2, a3;
};

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(counts, u64, T_MAX * C_N);
BPF_PERCPU_ARRAY(pending, u64, 1);
// Per-CPU scratch where an open record is assembled, then copied into the ring buffer with
// only the bytes it uses (bpf_ringbuf_output): a short path costs 2 cache lines of ring
// instead of 6, and ring lines are what the producer pays for (the reader on the other CPU
// last touched them).
BPF_PERCPU_ARRAY(open_scratch, struct open_scratch_t, 1);
// Per-CPU scratch for the executable's path: built once, before the prefilter judges it and
// the record is reserved, then copied into the record.
struct exe_buf {
    char b[WALK_SIZE];
    u32 len;
    u32 trunc;
};
BPF_PERCPU_ARRAY(exe_scratch, struct exe_buf, 1);

static __always_inline void count(u32 t, u32 what) {
    u32 i = t * C_N + what;
    u64 *v = counts.lookup(&i);
    if (v)
        *v += 1;
}

// Whether the prefilter keeps an event of Falco type t; counts the verdict.
static __always_inline int counted(u32 t, int keep) {
    count(t, keep ? C_PASSED : C_FILTERED);
    return keep;
}

static __always_inline void *rd_ptr(void *base, u32 off) {
    void *v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), base + off);
    return v;
}

static __always_inline u32 rd_u32(void *base, u32 off) {
    u32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), base + off);
    return v;
}

// Sentinel's own process is never reported: evaluating an event makes the sensor open files
// (passwd lookups, /proc reads), which would produce events about itself without end.
static __always_inline int is_self(void) {
#ifdef SELF_TGID
    return (bpf_get_current_pid_tgid() >> 32) == SELF_TGID;
#else
    return 0;
#endif
}

// ---- prefilter hooks ---------------------------------------------------------------------
// Return 0 to drop an event before it costs a ring-buffer reservation. Each hook gets what the
// kernel knows at that point (the call's arguments and result). By default they keep
// everything; the in-kernel prefilter (bpf/filter.h, filled from the compiler's kernel plan)
// replaces a hook by defining PREFILTER_<FAMILY> and its own function, in source prepended to
// this file. Sentinel's own events are dropped before the hooks, and not counted.
#ifndef PREFILTER_PROC
static __always_inline int prefilter_proc(u32 type) {
    return 1;
}
#endif
#ifndef PREFILTER_EXEC
// An exec, in two steps: _pre() returns 0 (drop), 1 (keep) or 2 (ask _path() with the
// executable's path: len bytes, exactly what user space reports as proc.exepath, or len 0 when
// it is not known here, for a failed exec or a walk cut short). The path is walked only for 2.
// The state between the two lives on the caller's stack (the prefilter renames the struct).
struct pf_exec_state {
    u32 unused;
};
static __always_inline int prefilter_exec_pre(struct pf_exec_state *st) {
    return 1;
}
static __always_inline int prefilter_exec_path(struct pf_exec_state *st, const char *exe,
                                               u32 len) {
    return 1;
}
#endif
// prefilter_open_base is called for every open prefilter_open kept, with the walk of the base
// directory of a relative path (bad: the walk is unusable, or there is none): the prefilter
// may have left the verdict on a relative path to it.
#ifndef PREFILTER_OPEN
static __always_inline int prefilter_open(u32 oflags, const char *upath, long ret) {
    return 1;
}
static __always_inline int prefilter_open_base(const char *walk, const u16 *at, u32 nc, u32 bad) {
    return 1;
}
#endif
#ifndef PREFILTER_CONNECT
static __always_inline int prefilter_connect(const void *uaddr, u32 addrlen, long ret) {
    return 1;
}
#endif

static __always_inline u64 wakeup_flags(u32 type) {
    u64 flags = BPF_RB_FORCE_WAKEUP;
    if (type != EV_EXEC) {
        u32 zero = 0;
        u64 *n = pending.lookup(&zero);
        if (n && ((++*n) % WAKEUP_EVERY) != 0)
            flags = BPF_RB_NO_WAKEUP;
    }
    return flags;
}

static __always_inline void submit(void *rec, u32 type) {
    events.ringbuf_submit(rec, wakeup_flags(type));
}

// Hot path: the task pointer from bpf_get_current_task_btf() is typed by the kernel's BTF, so
// fields are read with plain loads at BTF offsets (the verifier checks each against BTF and
// makes it fault-safe); far cheaper than a bpf_probe_read_kernel() call per field.
static __always_inline void fill_hdr(struct hdr *h, u32 type, void *task_unused) {
    u64 pt = bpf_get_current_pid_tgid();
    u64 ug = bpf_get_current_uid_gid();
    char *t = (char *)bpf_get_current_task_btf();
    char *parent = *(char **)(t + OFF_TASK_REAL_PARENT);
    h->ts = bpf_ktime_get_boot_ns();
    h->type = type;
    h->pid = pt >> 32;
    h->tid = (u32)pt;
    h->uid = (u32)ug;
    h->gid = ug >> 32;
    h->flags = 0;
    h->cgroup_id = bpf_get_current_cgroup_id();
    h->ppid = *(u32 *)(parent + OFF_TASK_TGID);
    h->loginuid = *(u32 *)(t + OFF_TASK_LOGINUID);
    bpf_get_current_comm(&h->comm, sizeof(h->comm));
}

// Walk from (dentry, vfsmount) up to the task's root, writing the components leaf-first,
// each NUL-terminated. Crosses mount points through struct mount (container_of vfsmount).
// Returns bytes written; sets *trunc when the depth or buffer limit cut the walk short.
// With at (2 * WALK_DEPTH entries), also the offset reached at the start of each step, *nc the
// steps taken: step i wrote a component (at[i] .. at[i + 1] - 1, its NUL included) unless
// at[i] == at[i + 1] (it crossed a mount). The prefilter composes the absolute path from them.
// Indexed by the step, not by a component counter: that would be one more precise scalar and
// multiply the verifier's states.
static __always_inline u32 walk_path(char *buf, void *dentry, void *vfsmnt, void *root_dentry,
                                     void *root_mnt, u32 *trunc, u16 *at, u32 *nc) {
    u32 off = 0;
    void *mnt = vfsmnt - OFF_MOUNT_MNT;
    int i;
    *trunc = 1;
    for (i = 0; i < WALK_DEPTH; i++) {
        if (at)
            at[i & (2 * WALK_DEPTH - 1)] = off;
        if (dentry == root_dentry && vfsmnt == root_mnt) {
            *trunc = 0;
            break;
        }
        void *mnt_root = rd_ptr(vfsmnt, OFF_VFSMOUNT_MNT_ROOT);
        if (dentry == mnt_root) {
            void *parent_mnt = rd_ptr(mnt, OFF_MOUNT_MNT_PARENT);
            if (parent_mnt == mnt || !parent_mnt) {
                *trunc = 0;
                break;
            }
            dentry = rd_ptr(mnt, OFF_MOUNT_MNT_MOUNTPOINT);
            mnt = parent_mnt;
            vfsmnt = mnt + OFF_MOUNT_MNT;
            continue;
        }
        void *parent = rd_ptr(dentry, OFF_DENTRY_D_PARENT);
        if (parent == dentry || !parent) {
            *trunc = 0;
            break;
        }
        if (off >= WALK_LIMIT)
            break;
        void *name = rd_ptr(dentry, OFF_DENTRY_D_NAME_NAME);
        int n = bpf_probe_read_kernel_str(&buf[off & (WALK_LIMIT - 1)], NAME_MAX_READ, name);
        if (n <= 0)
            break;
        off += n;
        dentry = parent;
    }
    if (at)
        *nc = i;
    return off;
}

// Walk like walk_path(), but write the path forward ("/usr/bin/ls"), right-aligned so that it
// ends at buf[EXE_END]: one string that the prefilter looks up and user space reads as is.
// Names are copied by their d_name length. Sets x->len to the path's length (0 when the file
// is the root itself or has no name) and x->trunc when depth or room ran out.
static __always_inline void walk_path_fwd(struct exe_buf *x, void *dentry, void *vfsmnt,
                                          void *root_dentry, void *root_mnt) {
    char *buf = x->b;
    u32 pos = EXE_END;
    void *mnt = vfsmnt - OFF_MOUNT_MNT;
    u32 trunc_v = 1;
    u32 *trunc = &trunc_v;
    int i;
    for (i = 0; i < WALK_DEPTH; i++) {
        if (dentry == root_dentry && vfsmnt == root_mnt) {
            *trunc = 0;
            break;
        }
        void *mnt_root = rd_ptr(vfsmnt, OFF_VFSMOUNT_MNT_ROOT);
        if (dentry == mnt_root) {
            void *parent_mnt = rd_ptr(mnt, OFF_MOUNT_MNT_PARENT);
            if (parent_mnt == mnt || !parent_mnt) {
                *trunc = 0;
                break;
            }
            dentry = rd_ptr(mnt, OFF_MOUNT_MNT_MOUNTPOINT);
            mnt = parent_mnt;
            vfsmnt = mnt + OFF_MOUNT_MNT;
            continue;
        }
        void *parent = rd_ptr(dentry, OFF_DENTRY_D_PARENT);
        if (parent == dentry || !parent) {
            *trunc = 0;
            break;
        }
        u32 len = rd_u32(dentry, OFF_DENTRY_D_NAME_LEN);
        if (len == 0 || len >= NAME_MAX_READ || len + 1 > pos)
            break;                      // no room left (or a nameless dentry): truncated
        asm volatile("" : "+r"(len));   // keep the mask below: it bounds the copy for the verifier
        pos -= len;
        void *name = rd_ptr(dentry, OFF_DENTRY_D_NAME_NAME);
        if (bpf_probe_read_kernel(&buf[pos & (EXE_END - 1)], len & (NAME_MAX_READ - 1), name))
            break;
        pos -= 1;
        buf[pos & (EXE_END - 1)] = '/';
        dentry = parent;
    }
    x->len = EXE_END - pos;
    x->trunc = trunc_v;
}

// ---------------------------------------------------------------------------------- exec

// execve or execveat. The syscall number is gone by now (x86 resets the saved registers for
// the new image), but an execveat that names its file by a directory fd (fexecve, fileless
// memfd execution, a path relative to a dirfd) leaves bprm->fdpath ("/dev/fd/N[/name]").
// An execveat with AT_FDCWD or an absolute path is indistinguishable from execve here and
// counts as execve (failed ones are told apart exactly, at their own syscall exits).
static __always_inline u32 exec_type(void *bprm) {
    return rd_ptr(bprm, OFF_BPRM_FDPATH) ? T_EXECVEAT : T_EXECVE;
}

RAW_TRACEPOINT_PROBE(sched_process_exec) {
    void *task = (void *)ctx->args[0];
    void *bprm = (void *)ctx->args[2];
    if (is_self())
        return 0;
    u32 t = exec_type(bprm);
    struct pf_exec_state pst = {};
    int verdict = prefilter_exec_pre(&pst);
    if (!verdict) {
        count(t, C_FILTERED);
        return 0;
    }
    // The executable's path (symlinks resolved), walked once: the prefilter may judge it, and
    // the record carries it.
    u32 zero = 0;
    struct exe_buf *xb = exe_scratch.lookup(&zero);
    if (!xb)
        return 0;
    void *fs = rd_ptr(task, OFF_TASK_FS);
    void *root_mnt = rd_ptr(fs, OFF_FS_ROOT + OFF_PATH_MNT);
    void *root_dentry = rd_ptr(fs, OFF_FS_ROOT + OFF_PATH_DENTRY);
    xb->len = 0;
    xb->trunc = 0;
    void *file = rd_ptr(bprm, OFF_BPRM_FILE);
    if (file)
        walk_path_fwd(xb, rd_ptr(file, OFF_FILE_F_PATH + OFF_PATH_DENTRY),
                      rd_ptr(file, OFF_FILE_F_PATH + OFF_PATH_MNT), root_dentry, root_mnt);
    // Read back through memory (volatile), so the filter below works on one unknown length
    // rather than on whatever clang can prove about each way the walk ends; every copy it
    // makes is bounded by masks of its own.
    u32 exe_len = *(volatile u32 *)&xb->len;
    u32 exe_trunc = *(volatile u32 *)&xb->trunc;
    u32 known = exe_trunc ? 0 : exe_len & (EXE_END - 1);
    if (verdict == 2 && !prefilter_exec_path(&pst, xb->b + EXE_END - known, known)) {
        count(t, C_FILTERED);
        return 0;
    }
    count(t, C_PASSED);
    struct exec_ev *e = events.ringbuf_reserve(sizeof(struct exec_ev));
    if (!e) {
        count(t, C_LOST);
        return 0;
    }
    fill_hdr(&e->h, EV_EXEC, task);
    if (t == T_EXECVEAT)
        e->h.flags |= FLAG_EXECVEAT;
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
    submit(e, EV_EXEC);
    return 0;
}

// ---------------------------------------------------------------------------- fork / exit

RAW_TRACEPOINT_PROBE(sched_process_fork) {
    void *child = (void *)ctx->args[1];
    if (is_self() || !counted(T_CLONE, prefilter_proc(EV_FORK)))
        return 0;
    struct fork_ev *e = events.ringbuf_reserve(sizeof(struct fork_ev));
    if (!e) {
        count(T_CLONE, C_LOST);
        return 0;
    }
    fill_hdr(&e->h, EV_FORK, (void *)bpf_get_current_task());
    e->child_pid = rd_u32(child, OFF_TASK_TGID);
    e->child_tid = rd_u32(child, OFF_TASK_PID);
    if (e->child_pid != e->child_tid)
        e->h.flags |= FLAG_THREAD;
    submit(e, EV_FORK);
    return 0;
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
    if (is_self() || !counted(T_PROCEXIT, prefilter_proc(EV_EXIT)))
        return 0;
    struct exit_ev *e = events.ringbuf_reserve(sizeof(struct exit_ev));
    if (!e) {
        count(T_PROCEXIT, C_LOST);
        return 0;
    }
    fill_hdr(&e->h, EV_EXIT, task);
    e->exit_code = (s32)rd_u32(task, OFF_TASK_EXIT_CODE);
    e->pad = 0;
    submit(e, EV_EXIT);
    return 0;
}

// ------------------------------------------------------------------------- syscall args

static __always_inline void read_args(struct sc_args *a) {
    // BTF-typed pt_regs: plain loads (see fill_hdr).
    char *regs = (char *)bpf_task_pt_regs(bpf_get_current_task_btf());
    a->a0 = *(u64 *)(regs + OFF_REGS_ARG0);
    a->a1 = *(u64 *)(regs + OFF_REGS_ARG1);
    a->a2 = *(u64 *)(regs + OFF_REGS_ARG2);
    a->a3 = *(u64 *)(regs + OFF_REGS_ARG3);
}

// ----------------------------------------------------------------------- failed exec

// A successful exec is reported by sched_process_exec (with the new image); these report the
// failures, which only the syscall exit knows. Attached only when other syscall tracepoints
// are (then every syscall is on the slow path anyway and this costs one early return per
// execve); the process image is unchanged, so only the attempted path and argv are recorded.
#define FAILED_EXEC_ARGS 16

static __always_inline int emit_exec_failure(long ret, u64 fname, u64 argvp, u32 t) {
    if (ret >= 0 || is_self())
        return 0;
    struct pf_exec_state pst = {};
    int verdict = prefilter_exec_pre(&pst);  // the image is unchanged: no new executable path
    if (!counted(t, verdict == 2 ? prefilter_exec_path(&pst, 0, 0) : verdict))
        return 0;
    struct exec_ev *e = events.ringbuf_reserve(sizeof(struct exec_ev));
    if (!e) {
        count(t, C_LOST);
        return 0;
    }
    fill_hdr(&e->h, EV_EXEC, 0);
    if (t == T_EXECVEAT)
        e->h.flags |= FLAG_EXECVEAT;
    e->tty = 0;
    e->sid = 0;
    e->pgid = 0;
    e->exe_len = 0;
    e->cwd_len = 0;
    e->old_pid = 0;
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
    submit(e, EV_EXEC);
    return 0;
}

#ifdef ATTACH_EXECVE
TRACEPOINT_PROBE(syscalls, sys_exit_execve) {
    if (args->ret >= 0)
        return 0;
    struct sc_args a = {};
    read_args(&a);
    return emit_exec_failure(args->ret, a.a0, a.a1, T_EXECVE);
}

TRACEPOINT_PROBE(syscalls, sys_exit_execveat) {
    if (args->ret >= 0)
        return 0;
    struct sc_args a = {};
    read_args(&a);
    return emit_exec_failure(args->ret, a.a1, a.a2, T_EXECVEAT);
}
#endif

// ---------------------------------------------------------------------------------- open

// The Falco event type of an open-like syscall, for the per-type counters.
static __always_inline u32 open_type(u32 sc) {
    if (sc == SC_OPEN)
        return T_OPEN;
    if (sc == SC_OPENAT)
        return T_OPENAT;
    return sc == SC_CREAT ? T_CREAT : T_OPENAT2;
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
        void *files = rd_ptr(task, OFF_TASK_FILES);
        void *fdt = rd_ptr(files, OFF_FILES_FDT);
        u32 max_fds = rd_u32(fdt, OFF_FDT_MAX_FDS);
        if (dirfd < 0 || (u32)dirfd >= max_fds) {
            *flags |= FLAG_BASE_BAD;
            return 0;
        }
        void *fd_array = rd_ptr(fdt, OFF_FDT_FD);
        void *file = rd_ptr(fd_array, (u32)dirfd * 8);
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

#ifdef PREFILTER_OPEN
// The end of a relative open the prefilter may have left pending: judge its path on the walk
// of the base directory (in the scratch record), then emit the record. A separate program,
// reached by a tail call, so the verifier checks it once, alone: inline, it was checked once
// per way the walk can end (2.5x the instructions, over a second more start-up per program).
BPF_PROG_ARRAY(open_tail, 1);

int open_judge(void *ctx) {
    u32 zero = 0;
    struct open_scratch_t *r = open_scratch.lookup(&zero);
    if (!r)
        return 0;
    u32 fl = r->r.e.h.flags;
    u32 sc = r->r.e.syscall;
    u32 t = open_type(sc);
    if (!prefilter_open_base(r->r.base, r->at, r->nc, fl & (FLAG_BASE_BAD | FLAG_BASE_TRUNC))) {
        // emit_open counted it passed before this verdict: move it to filtered (per-CPU, and
        // this runs on the CPU that counted it)
        u32 i = t * C_N + C_PASSED;
        u64 *v = counts.lookup(&i);
        if (v && *v)
            *v -= 1;
        count(t, C_FILTERED);
        return 0;
    }
    if (events.ringbuf_output(&r->r, sizeof(struct open_ev_rel), wakeup_flags(EV_OPEN)) != 0)
        count(t, C_LOST);
    return 0;
}
#endif

static __always_inline int emit_open(void *ctx, long ret, u32 sc) {
    if (is_self())
        return 0;
    struct sc_args a = {};
    read_args(&a);
    u64 path, flags, mode;
    s32 dirfd;
    if (sc == SC_OPEN) {
        path = a.a0;
        flags = a.a1;
        mode = a.a2;
        dirfd = AT_FDCWD_VAL;
    } else if (sc == SC_CREAT) {
        path = a.a0;
        flags = 0x241;                  // creat(2) is open(O_CREAT | O_WRONLY | O_TRUNC)
        mode = a.a1;
        dirfd = AT_FDCWD_VAL;
    } else if (sc == SC_OPENAT) {
        dirfd = (s32)a.a0;
        path = a.a1;
        flags = a.a2;
        mode = a.a3;
    } else {
        u64 how[2] = {};
        bpf_probe_read_user(&how, sizeof(how), (void *)a.a2);
        dirfd = (s32)a.a0;
        path = a.a1;
        flags = how[0];
        mode = how[1];
    }
    u32 t = open_type(sc);
    if (!counted(t, prefilter_open((u32)flags, (const char *)path, ret)))
        return 0;
    u32 zero = 0;
    struct open_scratch_t *r = open_scratch.lookup(&zero);
    if (!r)
        return 0;
    struct open_ev *e = &r->r.e;
    void *task = (void *)bpf_get_current_task();
    // The record is filled before the walk, as when the walk came last: values kept live
    // across the walk multiply the states the verifier explores in it (measured: 4x).
    fill_hdr(&e->h, EV_OPEN, task);
    e->ret = ret;
    e->oflags = (u32)flags;
    e->mode = (u32)mode;
    e->dirfd = dirfd;
    e->syscall = sc;
    int n = bpf_probe_read_user_str(&e->path, sizeof(e->path), (void *)path);
    e->path_len = n > 0 ? n - 1 : 0;
    if (n == PATH_SIZE)
        e->h.flags |= FLAG_PATH_TRUNC;
    e->base_len = 0;
    u64 size;
    if (n > 0 && e->path[0] == '/') {
        size = sizeof(struct open_ev) - PATH_SIZE + ((u32)n & (2 * PATH_SIZE - 1));
        if (!prefilter_open_base(0, 0, 0, 1))
            return 0;                   // (never: bad keeps; settles a relative verdict left
                                        // pending if the path changed under us)
    } else {
        // The base is walked once, into the record, and the prefilter judges on that walk.
        u32 fl = 0;
        r->nc = 0;
        e->base_len = walk_base(r->r.base, task, dirfd, &fl, r->at, &r->nc);
        e->h.flags |= fl;
#ifdef PREFILTER_OPEN
        // open_judge: returns here only if the call failed (nothing installed): then the event
        // is kept, the verdict left pending is overwritten by the next kept open's
        // (f_open_exit), and this open is missing from the kept count.
        open_tail.call(ctx, 0);
#endif
        size = sizeof(struct open_ev_rel);
    }
    if (events.ringbuf_output(e, size, wakeup_flags(EV_OPEN)) != 0)
        count(t, C_LOST);
    return 0;
}

#ifdef ATTACH_OPEN
TRACEPOINT_PROBE(syscalls, sys_exit_open) { return emit_open(args, args->ret, SC_OPEN); }
#endif

#ifdef ATTACH_OPENAT
TRACEPOINT_PROBE(syscalls, sys_exit_openat) { return emit_open(args, args->ret, SC_OPENAT); }
#endif

#ifdef ATTACH_OPENAT2
TRACEPOINT_PROBE(syscalls, sys_exit_openat2) { return emit_open(args, args->ret, SC_OPENAT2); }
#endif

#ifdef ATTACH_CREAT
TRACEPOINT_PROBE(syscalls, sys_exit_creat) { return emit_open(args, args->ret, SC_CREAT); }
#endif

// ------------------------------------------------------------------------------- connect

#ifdef ATTACH_CONNECT
TRACEPOINT_PROBE(syscalls, sys_exit_connect) {
    if (is_self())
        return 0;
    struct sc_args a = {};
    read_args(&a);
    if (!counted(T_CONNECT, prefilter_connect((const void *)a.a1, (u32)a.a2, args->ret)))
        return 0;
    struct connect_ev *e = events.ringbuf_reserve(sizeof(struct connect_ev));
    if (!e) {
        count(T_CONNECT, C_LOST);
        return 0;
    }
    void *task = (void *)bpf_get_current_task();
    fill_hdr(&e->h, EV_CONNECT, task);
    e->ret = args->ret;
    e->fd = (s32)a.a0;
    e->addrlen = (u32)a.a2;
    // Constant-size reads (clang defeats the verifier's bounds on a variable length); user
    // space parses only addrlen bytes. A full unix address first, then an IPv6, then IPv4 one,
    // in case the larger read runs into an unmapped page.
    __builtin_memset(e->addr, 0, sizeof(e->addr));
    if (bpf_probe_read_user(&e->addr, SOCKADDR_SIZE, (void *)a.a1) != 0 &&
        bpf_probe_read_user(&e->addr, 28, (void *)a.a1) != 0)
        bpf_probe_read_user(&e->addr, 16, (void *)a.a1);
    e->sock_type = 0;
    e->protocol = 0;
    e->lport = 0;
    e->pad = 0;
    __builtin_memset(e->laddr, 0, sizeof(e->laddr));
    // The socket behind fd: type, protocol and the local address the connect bound.
    s32 fd = e->fd;
    void *files = rd_ptr(task, OFF_TASK_FILES);
    void *fdt = rd_ptr(files, OFF_FILES_FDT);
    u32 max_fds = rd_u32(fdt, OFF_FDT_MAX_FDS);
    if (fd >= 0 && (u32)fd < max_fds) {
        void *fd_array = rd_ptr(fdt, OFF_FDT_FD);
        void *file = rd_ptr(fd_array, (u32)fd * 8);
        void *sock = file ? rd_ptr(file, OFF_FILE_PRIVATE_DATA) : 0;
        if (sock) {
            u16 st = 0;
            bpf_probe_read_kernel(&st, sizeof(st), sock + OFF_SOCKET_TYPE);
            e->sock_type = st;
            void *sk = rd_ptr(sock, OFF_SOCKET_SK);
            if (sk) {
                u16 proto = 0, lport = 0;
                bpf_probe_read_kernel(&proto, sizeof(proto), sk + OFF_SK_PROTOCOL);
                bpf_probe_read_kernel(&lport, sizeof(lport), sk + OFF_SK_NUM);
                e->protocol = proto;
                e->lport = lport;
                u16 fam = 0;
                bpf_probe_read_kernel(&fam, sizeof(fam), sk + OFF_SK_FAMILY);
                if (fam == 10)
                    bpf_probe_read_kernel(&e->laddr, 16, sk + OFF_SK_V6_RCV_SADDR);
                else
                    bpf_probe_read_kernel(&e->laddr, 4, sk + OFF_SK_RCV_SADDR);
            }
        }
    }
    submit(e, EV_CONNECT);
    return 0;
}
#endif
