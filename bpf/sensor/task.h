// The name each process got at its last exec (Falco's proc.name), by tgid: a later
// prctl(PR_SET_NAME) or write to /proc/self/comm changes the task's comm, not this. Set at
// sched_process_exec, inherited at fork, dropped at exit (exec.h, process.h). Before the
// prefilter (bpf/prefilter/filter.h judges proc.name on it) and the families (fill_hdr).
// Processes that started before Sentinel have no entry: their current comm stands in (as
// /proc/PID/comm does when the process table is seeded).

struct task_comm_t {
    char comm[16];
};

BPF_TABLE("lru_hash", u32, struct task_comm_t, exec_comm, 65536);

static __always_inline void task_comm(char *out) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct task_comm_t *c = exec_comm.lookup(&tgid);
    if (c) {
        __builtin_memcpy(out, c->comm, 16);
        return;
    }
    bpf_get_current_comm(out, 16);
}
#define HAVE_TASK_COMM 1

// The arguments a handler is called with (struct call_args: sentinel.events.cgen).
BPF_PERCPU_ARRAY(call_scratch, struct call_args, 1);

// The header flags and the kind of string memory of the call being handled (call_args.hflags):
// FLAG_IO_URING when an io_uring request is reported (bpf/sensor/uring.h), whose path
// arguments are the kernel's own copies.
static __always_inline u32 call_hflags(void) {
    u32 zero = 0;
    struct call_args *c = call_scratch.lookup(&zero);
    return c ? c->hflags : 0;
}

// A path argument: from the caller's memory, or from the kernel's copy (io_uring).
static __always_inline int read_path_arg(char *dst, u32 size, u64 src, u32 hflags) {
    if (hflags & FLAG_IO_URING)
        return bpf_probe_read_kernel_str(dst, size, (void *)src);
    return bpf_probe_read_user_str(dst, size, (void *)src);
}
