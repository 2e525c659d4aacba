// SPDX-License-Identifier: GPL-2.0
/*
 * Sentinel's kill mode (enforcement.unavailable: kill), where BPF LSM is missing: tracepoint
 * programs that send SIGKILL (bpf_send_signal) to a process doing what a deny rule forbids.
 * Follows common.h (same maps, identities, exec walk and address match as the LSM hooks);
 * ACTION is ACTION_KILL, so every report sends the signal first.
 *
 * What a kill can and cannot undo (measured, sentinel/enforcement/kill.py):
 *  - exec: killed at sched_process_exec, after the new image is loaded and before it runs a
 *    single instruction (a fatal signal is handled on the way back to user space);
 *  - write(), pwrite64(), writev(), pwritev(), pwritev2() on a protected file: the signal is
 *    sent at syscall entry, before the write (which may still complete: see kill.py);
 *  - open for writing: killed at syscall exit, the file is open but never used (an O_TRUNC
 *    truncation, an O_CREAT creation have happened);
 *  - connect, and TCP Fast Open through sendto/sendmsg: killed at exit, judged on the
 *    socket's own peer address (kernel state, not the caller's memory); the handshake may
 *    have completed.
 */

/* The type of pwritev2's flags in its tracepoint's format (not declared without headers). */
typedef int rwf_t;

/* A kill is a report that also sends SIGKILL to the current process. */
static __always_inline void stop_current(void)
{
    bpf_send_signal(SIGKILL_);
}

/* Already dying (killed by an earlier program): report nothing twice. */
static __always_inline int dying(void)
{
    void *task = (void *)bpf_get_current_task();
    u64 pending = 0;
    bpf_probe_read_kernel(&pending, sizeof(pending), (char *)task + OFF_TASK_PENDING_SIGNAL);
    return (pending >> (SIGKILL_ - 1)) & 1;
}

#define KILL_POLICY(need)                                                                      \
    struct pol p = {};                                                                         \
    if (dying())                                                                               \
        return 0;                                                                              \
    read_policy(&p);                                                                           \
    if (!(p.flags & (need)))                                                                   \
    return 0

/* The file behind a descriptor of the current task (0 when fd is not open). */
static __always_inline void *fd_file(s64 fd)
{
    void *task = (void *)bpf_get_current_task();
    void *files = rd_ptr(task, OFF_TASK_FILES);
    void *fdt = files ? rd_ptr(files, OFF_FILES_FDT) : 0;
    if (!fdt || fd < 0 || (u64)fd >= rd_u32(fdt, OFF_FDT_MAX_FDS))
        return 0;
    void *fd_array = rd_ptr(fdt, OFF_FDT_FD);
    return fd_array ? rd_ptr(fd_array, (u32)fd * 8) : 0;
}

/* Syscall arguments, from the task's saved user registers (at syscall exit). */
static __always_inline s64 arg0(void)
{
    char *regs = (char *)bpf_task_pt_regs(bpf_get_current_task_btf());
    return *(s64 *)(regs + OFF_REGS_ARG0);
}

static __always_inline u64 arg2(void)
{
    char *regs = (char *)bpf_task_pt_regs(bpf_get_current_task_btf());
    return *(u64 *)(regs + OFF_REGS_ARG2);
}

static __always_inline u64 arg3(void)
{
    char *regs = (char *)bpf_task_pt_regs(bpf_get_current_task_btf());
    return *(u64 *)(regs + OFF_REGS_ARG3);
}

/* ---- exec: the new image never runs ----------------------------------------------------- */

RAW_TRACEPOINT_PROBE(sched_process_exec)
{
    KILL_POLICY(F_EXEC);
    void *bprm = (void *)ctx->args[2];
    check_exec(rd_ptr(bprm, OFF_BPRM_FILE), 1, H_SCHED_PROCESS_EXEC, OP_EXEC, &p);
    return 0;
}

/* ---- files ------------------------------------------------------------------------------ */

/* An open that returned `fd`: opened for writing, and the file (or, for a new file, its
 * directory) protected. */
static __always_inline int kill_open(s64 fd, u8 hook)
{
    if (fd < 0)
        return 0;
    KILL_POLICY(F_WRITE | F_DEVS);
    void *file = fd_file(fd);
    if (!file || !(rd_u32(file, OFF_FILE_F_MODE) & FMODE_WRITE_))
        return 0;
    if (check_file_write(file, 1, hook, OP_OPEN_WRITE, OP_DEVICE_WRITE, &p))
        return 0;
    void *dentry = rd_ptr(file, OFF_FILE_F_PATH_DENTRY);
    void *parent = dentry ? rd_ptr(dentry, OFF_DENTRY_D_PARENT) : 0;
    if (parent && parent != dentry)
        check_inode(d_inode(parent), dentry, 0, hook, OP_CREATE, &p);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_open)
{
    return kill_open(args->ret, H_SYS_EXIT_OPEN);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat)
{
    return kill_open(args->ret, H_SYS_EXIT_OPENAT);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat2)
{
    return kill_open(args->ret, H_SYS_EXIT_OPENAT2);
}

TRACEPOINT_PROBE(syscalls, sys_exit_creat)
{
    return kill_open(args->ret, H_SYS_EXIT_CREAT);
}

/* A write through `fd`, at syscall entry. */
static __always_inline int kill_write(s64 fd, u8 hook)
{
    KILL_POLICY(F_WRITE | F_DEVS);
    void *file = fd_file(fd);
    if (file)
        check_file_write(file, 1, hook, OP_WRITE, OP_DEVICE_WRITE, &p);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_write)
{
    return kill_write(args->fd, H_SYS_ENTER_WRITE);
}

TRACEPOINT_PROBE(syscalls, sys_enter_pwrite64)
{
    return kill_write(args->fd, H_SYS_ENTER_PWRITE64);
}

TRACEPOINT_PROBE(syscalls, sys_enter_writev)
{
    return kill_write(args->fd, H_SYS_ENTER_WRITEV);
}

TRACEPOINT_PROBE(syscalls, sys_enter_pwritev)
{
    return kill_write(args->fd, H_SYS_ENTER_PWRITEV);
}

TRACEPOINT_PROBE(syscalls, sys_enter_pwritev2)
{
    return kill_write(args->fd, H_SYS_ENTER_PWRITEV2);
}

/* ---- network: judged on the socket's peer as the kernel set it ------------------------- */

static __always_inline int kill_peer(s64 fd, u8 hook, u8 op)
{
    KILL_POLICY(F_CONNECT);
    void *file = fd_file(fd);
    void *sock = file ? rd_ptr(file, OFF_FILE_PRIVATE_DATA) : 0;
    void *sk = sock ? rd_ptr(sock, OFF_SOCKET_SK) : 0;
    if (!sk)
        return 0;
    u16 family = 0;
    bpf_probe_read_kernel(&family, sizeof(family), (char *)sk + OFF_SK_FAMILY);
    u8 sa[28] = {};
    __builtin_memcpy(sa, &family, 2);
    bpf_probe_read_kernel(sa + 2, 2, (char *)sk + OFF_SK_DPORT);
    if (family == AF_INET_)
        bpf_probe_read_kernel(sa + 4, 4, (char *)sk + OFF_SK_DADDR);
    else if (family == AF_INET6_)
        bpf_probe_read_kernel(sa + 8, 16, (char *)sk + OFF_SK_V6_DADDR);
    else
        return 0;
    check_address(sk, sa, sizeof(sa), hook, op, &p);
    return 0;
}

/* connect() that succeeded or is in progress (a non-blocking connect). */
static __always_inline int connect_started(s64 ret)
{
    return ret == 0 || ret == -115 /* EINPROGRESS */;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect)
{
    if (!connect_started(args->ret))
        return 0;
    return kill_peer(arg0(), H_SYS_EXIT_CONNECT, OP_CONNECT);
}

/* TCP Fast Open connects inside sendto/sendmsg(MSG_FASTOPEN); the peer is then the
 * socket's. (Other sends on connected sockets went through connect, judged above.) */
static __always_inline int fastopen_started(s64 ret, u64 flags)
{
    return (ret >= 0 || ret == -115) && (flags & MSG_FASTOPEN_);
}

TRACEPOINT_PROBE(syscalls, sys_exit_sendto)
{
    if (!fastopen_started(args->ret, arg3()))
        return 0;
    return kill_peer(arg0(), H_SYS_EXIT_SENDTO, OP_SENDMSG);
}

TRACEPOINT_PROBE(syscalls, sys_exit_sendmsg)
{
    if (!fastopen_started(args->ret, arg2()))
        return 0;
    return kill_peer(arg0(), H_SYS_EXIT_SENDMSG, OP_SENDMSG);
}

TRACEPOINT_PROBE(syscalls, sys_exit_sendmmsg)
{
    if (!fastopen_started(args->ret, arg3()))
        return 0;
    return kill_peer(arg0(), H_SYS_EXIT_SENDMMSG, OP_SENDMSG);
}
