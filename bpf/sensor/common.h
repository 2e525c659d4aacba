// Sentinel's sensor, the part every family shares: the ring buffer, the per-event-type
// counters, the record header, dentry walks, syscall arguments, and the prefilter hooks'
// defaults. One source file per family follows it (exec.h, process.h, file.h, net.h), then the
// tracepoint stubs generated from the event table (sentinel.events.cgen).
//
// The program is assembled by user space (sentinel.kernel.program) as ONE text: bcc rewrites
// map calls such as events.ringbuf_reserve() only in the main source, not in #included files.
// Before this file come the generated header (event codes EVT_*, flag bits FLAG_*, sizes, the
// record structs: sentinel/events is the one definition of all of them) and, when the
// prefilter is on, bpf/prefilter/filter.h with its hooks.
//
// Compiled by bcc at run time against whatever kernel headers exist (usually NOT the running
// kernel's). Therefore no kernel struct is ever dereferenced through a header layout: every
// struct field is read at an OFF_* byte offset that user space computed from the running
// kernel's BTF (sentinel/kernel/offsets.py) and passed as -DOFF_X=N. Tracepoint arguments
// (args->..., ctx->args[]) are safe: bcc builds them from tracefs.

#define NAME_MAX_READ 256
#define WALK_LIMIT 512          // stop writing components past this offset
// WALK_DEPTH: components per dentry walk. Every iteration is verified separately (bcc cannot
// emit the bpf_loop() callback that would avoid it), so depth is start-up time: 16 keeps the
// load under half a second. A deeper path is flagged truncated and user space falls back to
// /proc.

// Wakeups: only exec records wake the reader at once (at most one per WAKE_GAP_NS: see
// wakeup_flags). A wakeup is an irq_work self-IPI, which
// in a VM is a VM exit costing microseconds: measured here, waking every 64th open record
// cost ~300 ns per record on average. Other records wake the reader once per WAKEUP_EVERY per
// CPU (a safety net); otherwise user space finds them at its next poll, whose timeout bounds
// their delay (sentinel.kernel.sensor.POLL_MS), and while it is busy it never sleeps anyway.
#define WAKEUP_EVERY 4096

// The arguments of a syscall, read at its exit from the task's saved user registers
// (read_args): only sys_exit_* tracepoints are attached, never sys_enter_*, which halves
// the tracepoint cost every syscall of every task pays, and no enter->exit stash map is needed.
struct sc_args {
    u64 a0, a1, a2, a3, a4, a5;
};

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(counts, u64, EVT_MAX * C_N);
BPF_PERCPU_ARRAY(pending, u64, 1);
BPF_ARRAY(last_wake, u64, 1);  // when an exec last woke the reader (ns; any CPU)

static __always_inline void count(u32 t, u32 what) {
    u32 i = t * C_N + what;
    u64 *v = counts.lookup(&i);
    if (v)
        *v += 1;
}

// Whether the prefilter keeps an event of type t; counts the verdict.
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

// One step of a dentry walk needs the parent and the name (length and pointer). In struct
// dentry d_parent and d_name (a qstr: hash, len, name) are neighbours on every kernel BTF has
// shown us (24..48): one read of the span instead of three helper calls per step. The offsets
// still come from BTF; a kernel where they are not neighbours gets the three reads.
struct dent_step {
    void *parent;
    void *name;
    u32 len;
};
#define DENT_SPAN (OFF_DENTRY_D_NAME_NAME + 8 - OFF_DENTRY_D_PARENT)
#if OFF_DENTRY_D_NAME_LEN > OFF_DENTRY_D_PARENT && OFF_DENTRY_D_NAME_NAME > OFF_DENTRY_D_PARENT && DENT_SPAN <= 32
#define DENT_ONE_READ 1
#endif

static __always_inline void rd_dent(void *dentry, struct dent_step *d) {
#ifdef DENT_ONE_READ
    u64 span[4] = {};
    bpf_probe_read_kernel(span, DENT_SPAN, dentry + OFF_DENTRY_D_PARENT);
    char *c = (char *)span;
    d->parent = *(void **)c;
    d->len = *(u32 *)(c + (OFF_DENTRY_D_NAME_LEN - OFF_DENTRY_D_PARENT));
    d->name = *(void **)(c + (OFF_DENTRY_D_NAME_NAME - OFF_DENTRY_D_PARENT));
#else
    d->parent = rd_ptr(dentry, OFF_DENTRY_D_PARENT);
    d->len = rd_u32(dentry, OFF_DENTRY_D_NAME_LEN);
    d->name = rd_ptr(dentry, OFF_DENTRY_D_NAME_NAME);
#endif
}

// Sentinel's own process is never reported: evaluating an event makes the sensor open files
// (passwd lookups, /proc reads), which would produce events about itself without end. Its pid
// is a map value set at load time (0: none), not a cflag: the program text, and so the cached
// compile (sentinel/kernel/bpfcache.py), stay the same from one start to the next.
BPF_ARRAY(self_tgid, u32, 1);

static __always_inline int is_self(void) {
    u32 zero = 0;
    u32 *self = self_tgid.lookup(&zero);
    return self && *self && (bpf_get_current_pid_tgid() >> 32) == *self;
}

// ---- prefilter hooks ---------------------------------------------------------------------
// Return 0 to drop an event before it costs a ring-buffer reservation. Each hook gets the event
// code (t: the prefilter judges each event type on its own terms) and what the kernel knows at
// that point (the call's arguments and result). By default they keep
// everything; the in-kernel prefilter (bpf/prefilter/filter.h, filled from the kernel plan)
// replaces a family's hooks by defining PREFILTER_<FAMILY> and its own functions, in source
// placed before this file. Sentinel's own events are dropped before the hooks, and not counted.
#ifndef PREFILTER_EXEC
// An exec, in two steps: _pre() returns 0 (drop), 1 (keep) or 2 (ask _path() with the
// executable's path: len bytes, exactly what user space reports as proc.exepath, or len 0 when
// it is not known here, for a failed exec or a walk cut short). The path is walked only for 2.
// The state between the two lives on the caller's stack (the prefilter renames the struct).
struct pf_exec_state {
    u32 unused;
};
static __always_inline int prefilter_exec_pre(struct pf_exec_state *st, u32 t) {
    return 1;
}
static __always_inline int prefilter_exec_path(struct pf_exec_state *st, const char *exe,
                                               u32 len) {
    return 1;
}
#endif
// prefilter_file judges a file event on the path as passed (path: the record's copy of it);
// prefilter_file_base is called for every file event prefilter_file kept, with the walk of the
// base directory of a relative path (bad: the walk is unusable, or there is none): the
// prefilter may have left the verdict on a relative path to it. A successful open is judged
// in two steps: prefilter_file_opened_pre on all but the path (the passed path, raw, only for
// fd.nameraw): 0 drop, 1 keep, 2 the kernel's path of the file it installed decides
// (prefilter_file_opened_path, kpath, klen bytes; 0: unknown), so that the path is walked for
// the verdict only when some rule needs it.
#ifndef PREFILTER_FILE
static __always_inline int prefilter_file(u32 t, u32 oflags, const char *path, long ret) {
    return 1;
}
static __always_inline int prefilter_file_opened_pre(u32 t, u32 oflags, const char *raw,
                                                     long ret) {
    return 1;
}
static __always_inline int prefilter_file_opened_path(const char *kpath, u32 klen) {
    return 1;
}
static __always_inline int prefilter_file_base(const char *walk, const u16 *at, u32 nc, u32 bad) {
    return 1;
}
#endif
#ifndef PREFILTER_SYS
// A call of the system family: key is its key argument (ptrace's request, kill's signal...).
static __always_inline int prefilter_sys(u32 t, u64 key, long ret) {
    return 1;
}
#endif
#ifndef PREFILTER_PLAIN
static __always_inline int prefilter_plain(u32 t, long ret) {
    return 1;
}
#endif
#ifndef PREFILTER_SOCK
// A socket call: its key argument (socket's domain), its server end (famc '4', '6', 'u' or 0; port; address, ver 4 or 6 or 0),
// whether the socket is connected, and the result.
static __always_inline int prefilter_sock(u32 t, u64 key, u32 famc, u32 port, const u8 *addr,
                                          u32 ver, u32 connected, long ret) {
    return 1;
}
#endif

static __always_inline u64 wakeup_flags(u32 evt) {
    // An exec wakes the reader at once: its alert (a shell in a container) should not wait
    // for the poll timeout. The wakeup is an irq_work, an interrupt per exec: ~10 us of the
    // exec's BPF time in this VM (bench/bench_stages.py: its last stage). So only when no
    // exec woke the reader in the last WAKE_GAP_NS: after a batch the reader looks again
    // within that gap (Sensor.poll), so a record that skipped its wakeup waits at most about
    // the gap (the kernel's adaptive default was tried: a sleeping reader never woke for an
    // exec that followed the fork's unwoken record, and the alert waited up to POLL_MS).
    // Racing CPUs may both wake it: harmless. Counted as C_WOKEN per event type.
    u32 zero = 0;
    if (evt == EVT_EXECVE || evt == EVT_EXECVEAT) {
        u64 *last = last_wake.lookup(&zero);
        u64 now = bpf_ktime_get_ns();
        if (last && now - *last < WAKE_GAP_NS)
            return BPF_RB_NO_WAKEUP;
        if (last)
            *last = now;
        count(evt, C_WOKEN);
        return BPF_RB_FORCE_WAKEUP;
    }
    u64 flags = BPF_RB_FORCE_WAKEUP;
    u64 *n = pending.lookup(&zero);
    if (n && ((++*n) % WAKEUP_EVERY) != 0)
        flags = BPF_RB_NO_WAKEUP;
    return flags;
}

static __always_inline void submit(void *rec, u32 evt) {
    events.ringbuf_submit(rec, wakeup_flags(evt));
}

// The current task and loads from it. Hot path: where the kernel has bpf_get_current_task_btf
// (5.11+; HAVE_TASK_BTF, from sentinel.kernel.features) the pointer is typed by the kernel's
// BTF, so fields are read with plain loads at BTF offsets (the verifier checks each against BTF
// and makes it fault-safe); far cheaper than a bpf_probe_read_kernel() call per field, which is
// the fallback on older kernels (same values).
#ifdef HAVE_TASK_BTF
#define CUR_TASK() ((char *)bpf_get_current_task_btf())
#define TASK_LD(type, addr) (*(type *)(addr))
#else
#define CUR_TASK() ((char *)bpf_get_current_task())
#define TASK_LD(type, addr) ({ type __v = 0; bpf_probe_read_kernel(&__v, sizeof(__v), (addr)); __v; })
#endif

static __always_inline void fill_hdr(struct hdr *h, u32 evt) {
    u64 pt = bpf_get_current_pid_tgid();
    u64 ug = bpf_get_current_uid_gid();
    char *t = CUR_TASK();
    char *parent = TASK_LD(char *, t + OFF_TASK_REAL_PARENT);
    h->ts = bpf_ktime_get_boot_ns();
    h->type = evt;
    h->pid = pt >> 32;
    h->tid = (u32)pt;
    h->uid = (u32)ug;
    h->gid = ug >> 32;
    h->flags = 0;
    h->cgroup_id = bpf_get_current_cgroup_id();
    h->ppid = TASK_LD(u32, parent + OFF_TASK_TGID);
    h->loginuid = TASK_LD(u32, t + OFF_TASK_LOGINUID);
    task_comm(h->comm);  // the name at the last exec (task.h); the thread's own below
    bpf_get_current_comm(&h->tcomm, sizeof(h->tcomm));
}

static __always_inline void read_args(struct sc_args *a) {
#ifdef HAVE_TASK_PT_REGS
    // BTF-typed pt_regs: plain loads (see fill_hdr).
    char *regs = (char *)bpf_task_pt_regs(bpf_get_current_task_btf());
    a->a0 = *(u64 *)(regs + OFF_REGS_ARG0);
    a->a1 = *(u64 *)(regs + OFF_REGS_ARG1);
    a->a2 = *(u64 *)(regs + OFF_REGS_ARG2);
    a->a3 = *(u64 *)(regs + OFF_REGS_ARG3);
    a->a4 = *(u64 *)(regs + OFF_REGS_ARG4);
    a->a5 = *(u64 *)(regs + OFF_REGS_ARG5);
#else
    // Before 5.15: where the kernel's task_pt_regs() finds them, at the top of the task's
    // kernel stack (THREAD_SIZE_VAL and PT_REGS_SIZE from sentinel.kernel.features). The stack
    // pointer is untyped (void *), so every read is a bpf_probe_read_kernel().
    char *regs = (char *)rd_ptr((void *)bpf_get_current_task(), OFF_TASK_STACK) +
                 THREAD_SIZE_VAL - PT_REGS_SIZE;
    a->a0 = (u64)rd_ptr(regs, OFF_REGS_ARG0);
    a->a1 = (u64)rd_ptr(regs, OFF_REGS_ARG1);
    a->a2 = (u64)rd_ptr(regs, OFF_REGS_ARG2);
    a->a3 = (u64)rd_ptr(regs, OFF_REGS_ARG3);
    a->a4 = (u64)rd_ptr(regs, OFF_REGS_ARG4);
    a->a5 = (u64)rd_ptr(regs, OFF_REGS_ARG5);
#endif
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

// A path built forward by walk_path_fwd, in a per-CPU scratch buffer.
struct path_buf {
    char b[WALK_SIZE];
    u32 len;
    u32 trunc;
    u32 flags;                          // header flags for the record built from it
    u32 pad;
};

// Walk like walk_path(), but write the path forward ("/usr/bin/ls"), right-aligned so that it
// ends at buf[FWD_END]: one string that the prefilter looks up and user space reads as is.
// Names are copied by their d_name length. Sets x->len to the path's length (0 when the file
// is the root itself or has no name) and x->trunc when depth or room ran out.
static __always_inline void walk_path_fwd(struct path_buf *x, void *dentry, void *vfsmnt,
                                          void *root_dentry, void *root_mnt) {
    char *buf = x->b;
    u32 pos = FWD_END;
    void *mnt = vfsmnt - OFF_MOUNT_MNT;
    u32 trunc_v = 1;
    u32 *trunc = &trunc_v;
    void *lone = 0;
    // the mount's root changes only where the walk crosses a mount: read there, not per step
    void *mnt_root = rd_ptr(vfsmnt, OFF_VFSMOUNT_MNT_ROOT);
    int i;
    for (i = 0; i < WALK_DEPTH; i++) {
        if (dentry == root_dentry && vfsmnt == root_mnt) {
            *trunc = 0;
            break;
        }
        if (dentry == mnt_root) {
            void *parent_mnt = rd_ptr(mnt, OFF_MOUNT_MNT_PARENT);
            if (parent_mnt == mnt || !parent_mnt) {
                *trunc = 0;
                break;
            }
            dentry = rd_ptr(mnt, OFF_MOUNT_MNT_MOUNTPOINT);
            mnt = parent_mnt;
            vfsmnt = mnt + OFF_MOUNT_MNT;
            mnt_root = rd_ptr(vfsmnt, OFF_VFSMOUNT_MNT_ROOT);
            continue;
        }
        struct dent_step d;
        rd_dent(dentry, &d);
        void *parent = d.parent;
        if (parent == dentry || !parent) {
            *trunc = 0;
            if (i == 0)
                lone = dentry;
            break;
        }
        u32 len = d.len;
        if (len == 0 || len >= NAME_MAX_READ || len + 1 > pos)
            break;                      // no room left (or a nameless dentry): truncated
        asm volatile("" : "+r"(len));   // keep the mask below: it bounds the copy for the verifier
        pos -= len;
        if (bpf_probe_read_kernel(&buf[pos & (FWD_END - 1)], len & (NAME_MAX_READ - 1), d.name))
            break;
        pos -= 1;
        buf[pos & (FWD_END - 1)] = '/';
        dentry = parent;
    }
    // A file whose dentry is its own parent but not its mount's root is a pseudo file's (a
    // memfd, an anonymous inode): "/" and its name, as the kernel's d_path gives it. (Outside
    // the loop: inside, the extra copy multiplied the verifier's paths past its limit.)
    if (lone) {
        u32 len = rd_u32(lone, OFF_DENTRY_D_NAME_LEN);
        if (len > 0 && len < NAME_MAX_READ) {
            asm volatile("" : "+r"(len));
            pos = FWD_END - len;
            if (bpf_probe_read_kernel(&buf[pos & (FWD_END - 1)], len & (NAME_MAX_READ - 1),
                                      rd_ptr(lone, OFF_DENTRY_D_NAME_NAME)) == 0) {
                pos -= 1;
                buf[pos & (FWD_END - 1)] = '/';
            } else {
                pos = FWD_END;
            }
        }
    }
    x->len = FWD_END - pos;
    x->trunc = trunc_v;
}

// A u32 / u64 of user memory (a struct the caller passed or the kernel filled in).
static __always_inline u64 user_u32(u64 uptr, u32 off) {
    u32 v = 0;
    bpf_probe_read_user(&v, sizeof(v), (void *)(uptr + off));
    return v;
}

static __always_inline u64 user_u64(u64 uptr, u32 off) {
    u64 v = 0;
    bpf_probe_read_user(&v, sizeof(v), (void *)(uptr + off));
    return v;
}

// The file behind a descriptor of the current task (0 when fd is not open).
static __always_inline void *fd_file(void *task, s32 fd) {
    void *files = rd_ptr(task, OFF_TASK_FILES);
    void *fdt = rd_ptr(files, OFF_FILES_FDT);
    u32 max_fds = rd_u32(fdt, OFF_FDT_MAX_FDS);
    if (fd < 0 || (u32)fd >= max_fds)
        return 0;
    void *fd_array = rd_ptr(fdt, OFF_FDT_FD);
    return rd_ptr(fd_array, (u32)fd * 8);
}
