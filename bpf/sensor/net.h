// The network family (sentinel/events/net.py): socket calls (connect, accept, accept4, bind,
// listen, socket, sendto, recvfrom, sendmsg, recvmsg). The generated stubs reach emit_sock
// with (fd, sockaddr pointer, addrlen, v0, v1, v2, how). What the record says about the socket
// comes from the kernel's socket behind the descriptor at the call's exit (family, type,
// protocol, both ends, state), and so does what the prefilter judges; the address the caller
// passed is kept too, and stands in only where the socket has no peer (an unconnected sendto,
// a connect that failed before the kernel set the peer).

// how (SOCK_FD_IS_RESULT, SOCK_SERVER_LOCAL, SOCK_ADDR_IN) and TCP_ESTABLISHED_VAL are
// defined in sentinel/events/net.py (generated into the header).
#define S_IFMT_VAL 0170000
#define S_IFSOCK_VAL 0140000

BPF_PERCPU_ARRAY(sock_scratch, struct sock_ev, 1);

// The struct socket behind a file, or 0 when it is not a socket.
static __always_inline void *file_socket(void *file) {
    if (!file)
        return 0;
    void *inode = rd_ptr(file, OFF_FILE_F_INODE);
    u16 mode = 0;
    bpf_probe_read_kernel(&mode, sizeof(mode), inode + OFF_INODE_I_MODE);
    if ((mode & S_IFMT_VAL) != S_IFSOCK_VAL)
        return 0;
    return rd_ptr(file, OFF_FILE_PRIVATE_DATA);
}

static __always_inline void *fd_socket(void *task, s32 fd) {
    return file_socket(fd_file(task, fd));
}

// The kernel's view of a socket, into the members of a record that has them (the net and fd
// families' records both do: sock_type, protocol, sk_family, lport, rport, state, laddr,
// raddr).
#define SOCK_INFO(e, sock)                                                                     \
    do {                                                                                       \
        (e)->sock_type = 0;                                                                    \
        (e)->protocol = 0;                                                                     \
        (e)->sk_family = 0;                                                                    \
        (e)->lport = 0;                                                                        \
        (e)->rport = 0;                                                                        \
        (e)->state = 0;                                                                        \
        __builtin_memset((e)->laddr, 0, sizeof((e)->laddr));                                   \
        __builtin_memset((e)->raddr, 0, sizeof((e)->raddr));                                   \
        if (sock)                                                                              \
            sock_view(sock, &(e)->sock_type, &(e)->protocol, &(e)->sk_family, &(e)->lport,     \
                      &(e)->rport, &(e)->state, (e)->laddr, (e)->raddr);                       \
    } while (0)

static __always_inline void sock_view(void *sock, u16 *type, u16 *protocol, u16 *family,
                                      u16 *lport, u16 *rport, u16 *state, char *laddr,
                                      char *raddr) {
    bpf_probe_read_kernel(type, sizeof(*type), sock + OFF_SOCKET_TYPE);
    void *sk = rd_ptr(sock, OFF_SOCKET_SK);
    if (!sk)
        return;
    u16 dport_be = 0, fam = 0;
    u8 st = 0;
    bpf_probe_read_kernel(protocol, sizeof(*protocol), sk + OFF_SK_PROTOCOL);
    bpf_probe_read_kernel(lport, sizeof(*lport), sk + OFF_SK_NUM);
    bpf_probe_read_kernel(&dport_be, sizeof(dport_be), sk + OFF_SK_DPORT);
    bpf_probe_read_kernel(&fam, sizeof(fam), sk + OFF_SK_FAMILY);
    bpf_probe_read_kernel(&st, sizeof(st), sk + OFF_SK_STATE);
    *rport = ((dport_be & 0xff) << 8) | (dport_be >> 8);
    *family = fam;
    *state = st;
    if (fam == 10) {
        bpf_probe_read_kernel(laddr, 16, sk + OFF_SK_V6_RCV_SADDR);
        bpf_probe_read_kernel(raddr, 16, sk + OFF_SK_V6_DADDR);
    } else if (fam == 2) {
        bpf_probe_read_kernel(laddr, 4, sk + OFF_SK_RCV_SADDR);
        bpf_probe_read_kernel(raddr, 4, sk + OFF_SK_DADDR);
    }
}

static __always_inline int emit_sock(void *ctx, long ret, u32 t, s32 fd, u64 uaddr, u64 addrlen,
                                     u64 v0, u64 v1, u64 v2, u64 how) {
    if (is_self())
        return 0;
    u32 zero = 0;
    struct sock_ev *e = sock_scratch.lookup(&zero);
    if (!e)
        return 0;
    void *task = (void *)bpf_get_current_task();
    s32 sfd = (how & SOCK_FD_IS_RESULT) ? (s32)ret : fd;
    void *sock = ret < 0 && (how & SOCK_FD_IS_RESULT) ? 0 : fd_socket(task, sfd);
    SOCK_INFO(e, sock);
    e->addrlen = 0;
    __builtin_memset(e->addr, 0, sizeof(e->addr));
    if ((how & SOCK_ADDR_IN) && uaddr) {
        // Constant-size reads (clang defeats the verifier's bounds on a variable length); user
        // space parses only addrlen bytes. A full unix address first, then an IPv6, then IPv4
        // one, in case the larger read runs into an unmapped page.
        e->addrlen = (u32)addrlen;
        if (bpf_probe_read_user(&e->addr, SOCKADDR_SIZE, (void *)uaddr) != 0 &&
            bpf_probe_read_user(&e->addr, 28, (void *)uaddr) != 0)
            bpf_probe_read_user(&e->addr, 16, (void *)uaddr);
    }
    // The server end the prefilter judges (the process's own end for accept, bind, listen):
    // the kernel's socket; where it has no peer (port 0), the address passed, if it is of the
    // socket's family (user space makes the same choice: sentinel.events.net.ends).
    u16 ufam = e->addrlen >= 8 ? *(u16 *)e->addr : 0;
    u32 fam = e->sk_family ? e->sk_family : ufam;
    u32 famc = fam == 2 ? '4' : fam == 10 ? '6' : fam == 1 ? 'u' : 0;
    u32 ver = fam == 2 ? 4 : fam == 10 ? 6 : 0;
    u32 port = (how & SOCK_SERVER_LOCAL) ? e->lport : e->rport;
    const u8 *peer = (how & SOCK_SERVER_LOCAL) ? e->laddr : e->raddr;
    if (!(how & SOCK_SERVER_LOCAL) && port == 0) {
        if (ufam == fam && ver) {
            u16 port_be = *(u16 *)(e->addr + 2);
            port = ((port_be & 0xff) << 8) | (port_be >> 8);
            peer = ver == 4 ? e->addr + 4 : e->addr + 8;
        } else {
            ver = 0;                    // no server address known: not judged
        }
    }
    u32 connected = e->state == TCP_ESTABLISHED_VAL;
    if (!counted(t, prefilter_sock(t, v0, famc, port, peer, ver, connected, ret)))
        return 0;
    fill_hdr(&e->h, t);
    e->h.flags |= call_hflags();
    e->res = ret;
    e->fd = sfd;
    e->v0 = (u32)v0;
    e->v1 = (u32)v1;
    e->v2 = (u32)v2;
    e->how = (u32)how;
    if (events.ringbuf_output(e, sizeof(struct sock_ev), wakeup_flags(t)) != 0)
        count(t, C_LOST);
    return 0;
}
