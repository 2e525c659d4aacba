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
