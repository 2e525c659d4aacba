// The fd family (sentinel/events/fd.py): calls on an open descriptor (dup, dup2, dup3,
// fchmod). The generated stubs reach emit_fd with (fd, v0, v1). The record describes the
// descriptor as the kernel sees it at the call's exit: its inode type, and its file's path (a
// forward dentry walk from the task's root) or, for a socket, its ends (net.h's sock_view).

BPF_PERCPU_ARRAY(fd_scratch, struct fd_ev, 1);
BPF_PERCPU_ARRAY(fd_path_scratch, struct path_buf, 1);

// fd.typechar as user space derives it from the record (sentinel.events.fd.kind): a socket's
// family, else the inode's type.
static __always_inline u32 fd_typechar(u16 mode, u16 sk_family) {
    u16 fmt = mode & 0170000;
    if (fmt == 0140000)
        return sk_family == 2 ? '4' : sk_family == 10 ? '6' : sk_family == 1 ? 'u' : 'o';
    if (fmt == 0040000)
        return 'd';
    if (fmt == 0010000)
        return 'p';
    if (fmt == 0100000 || fmt == 0020000 || fmt == 0060000)
        return 'f';
    return 'o';
}

static __always_inline int emit_fd(void *ctx, long ret, u32 t, s32 fd, u64 v0, u64 v1) {
    if (is_self())
        return 0;
    u32 zero = 0;
    struct fd_ev *e = fd_scratch.lookup(&zero);
    struct path_buf *xb = fd_path_scratch.lookup(&zero);
    if (!e || !xb)
        return 0;
    void *task = (void *)bpf_get_current_task();
    e->i_mode = 0;
    void *file = fd_file(task, fd);
    void *sock = file_socket(file);
    SOCK_INFO(e, sock);
    void *inode = file ? rd_ptr(file, OFF_FILE_F_INODE) : 0;
    if (inode)
        bpf_probe_read_kernel(&e->i_mode, sizeof(e->i_mode), inode + OFF_INODE_I_MODE);
    // The prefilter judges comm, uid, the result and the descriptor's type (fd.type,
    // fd.typechar: Falco's dup rule wants sockets only); no type when fd is not open.
    u32 famc = inode ? fd_typechar(e->i_mode, e->sk_family) : 0;
    if (!counted(t, prefilter_sock(t, 0, famc, 0, 0, 0, 0, ret)))
        return 0;
    fill_hdr(&e->h, t);
    e->res = ret;
    e->fd = fd;
    e->v0 = (u32)v0;
    e->v1 = (u32)v1;
    e->path_len = 0;
    if (inode) {
        if (!sock) {
            void *fs = rd_ptr(task, OFF_TASK_FS);
            xb->len = 0;
            xb->trunc = 0;
            walk_path_fwd(xb, rd_ptr(file, OFF_FILE_F_PATH + OFF_PATH_DENTRY),
                          rd_ptr(file, OFF_FILE_F_PATH + OFF_PATH_MNT),
                          rd_ptr(fs, OFF_FS_ROOT + OFF_PATH_DENTRY),
                          rd_ptr(fs, OFF_FS_ROOT + OFF_PATH_MNT));
            u32 len = *(volatile u32 *)&xb->len;
            if (*(volatile u32 *)&xb->trunc)
                e->h.flags |= FLAG_PATH_TRUNC;
            e->path_len = len & (FWD_END - 1);
            bpf_probe_read_kernel(e->path, FWD_END, xb->b);
        }
    }
    if (events.ringbuf_output(e, sizeof(struct fd_ev), wakeup_flags(t)) != 0)
        count(t, C_LOST);
    return 0;
}
