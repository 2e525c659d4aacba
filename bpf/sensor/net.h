// The network family (sentinel/events/net.py): connect. The generated stub calls emit_connect
// at the syscall's exit with the event code and (fd, sockaddr pointer, addrlen).

static __always_inline int emit_connect(void *ctx, long ret, u32 t, s32 fd, u64 uaddr,
                                        u32 addrlen) {
    if (is_self())
        return 0;
    if (!counted(t, prefilter_connect(t, (const void *)uaddr, addrlen, ret)))
        return 0;
    struct connect_ev *e = events.ringbuf_reserve(sizeof(struct connect_ev));
    if (!e) {
        count(t, C_LOST);
        return 0;
    }
    void *task = (void *)bpf_get_current_task();
    fill_hdr(&e->h, t);
    e->res = ret;
    e->fd = fd;
    e->addrlen = addrlen;
    // Constant-size reads (clang defeats the verifier's bounds on a variable length); user
    // space parses only addrlen bytes. A full unix address first, then an IPv6, then IPv4 one,
    // in case the larger read runs into an unmapped page.
    __builtin_memset(e->addr, 0, sizeof(e->addr));
    if (bpf_probe_read_user(&e->addr, SOCKADDR_SIZE, (void *)uaddr) != 0 &&
        bpf_probe_read_user(&e->addr, 28, (void *)uaddr) != 0)
        bpf_probe_read_user(&e->addr, 16, (void *)uaddr);
    e->sock_type = 0;
    e->protocol = 0;
    e->lport = 0;
    e->pad = 0;
    __builtin_memset(e->laddr, 0, sizeof(e->laddr));
    // The socket behind fd: type, protocol and the local address the connect bound.
    void *file = fd_file(task, fd);
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
    submit(e, t);
    return 0;
}
