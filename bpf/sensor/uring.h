// io_uring (compiled in when this kernel's BTF has what it needs: sentinel.kernel.offsets
// uring_cflags). Requests that do what a traced syscall does are reported as that syscall's
// event (evt.type openat, unlinkat, connect...), with FLAG_IO_URING, through the same handlers
// and the same prefilter: Falco's rules fire on them unchanged.
//
// Two tracepoints: io_uring_submit_req comes after the request's preparation, when the
// kernel holds its own copies of the paths (struct filename): they are copied here, per
// request. io_uring_complete gives the result; then the request's values go to the family's
// handler, as a syscall stub would pass them (struct call_args; hflags says the path pointers
// are kernel memory). An open that installed a descriptor is reported with the file the kernel
// opened (open_done), as a syscall's. Only the event types the sensor attaches are reported.

struct uring_req {
    u32 op;
    s32 dfd0;
    s32 dfd1;
    u32 flags;
    u64 oflags;
    u64 mode;
    char s0[PATH_SIZE];
    char s1[PATH_SIZE];
};

BPF_TABLE("lru_hash", u64, struct uring_req, uring_reqs, 4096);
BPF_PERCPU_ARRAY(uring_scratch, struct uring_req, 1);

static __always_inline void uring_name(char *dst, void *req, u32 off) {
    void *fname = rd_ptr(req, OFF_REQ_CMD + off);
    dst[0] = 0;
    if (fname)
        bpf_probe_read_kernel_str(dst, PATH_SIZE, rd_ptr(fname, OFF_FILENAME_NAME));
}

static __always_inline s32 rd_s32(void *p, u32 off) {
    s32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), p + off);
    return v;
}

TRACEPOINT_PROBE(io_uring, io_uring_submit_req) {
    if (is_self())
        return 0;
    u32 op = args->opcode;
    void *req = args->req;
    if (op != OP_OPENAT && op != OP_OPENAT2 && op != OP_UNLINKAT && op != OP_MKDIRAT &&
        op != OP_RENAMEAT && op != OP_LINKAT && op != OP_SYMLINKAT)
        return 0;  // (connect and accept need nothing from the submission)
    u32 zero = 0;
    struct uring_req *r = uring_scratch.lookup(&zero);
    if (!r)
        return 0;
    r->op = op;
    r->dfd1 = -1;
    r->flags = 0;
    r->oflags = 0;
    r->mode = 0;
    r->s1[0] = 0;
    if (op == OP_OPENAT || op == OP_OPENAT2) {
        r->dfd0 = rd_s32(req, OFF_REQ_CMD + OFF_OPEN_DFD);
        r->flags = (u32)rd_s32(req, OFF_REQ_CMD + OFF_OPEN_SLOT);
        bpf_probe_read_kernel(&r->oflags, 8, req + OFF_REQ_CMD + OFF_OPEN_FLAGS);
        bpf_probe_read_kernel(&r->mode, 8, req + OFF_REQ_CMD + OFF_OPEN_MODE);
        uring_name(r->s0, req, OFF_OPEN_FILENAME);
    } else if (op == OP_UNLINKAT) {
        r->dfd0 = rd_s32(req, OFF_REQ_CMD + OFF_UNLINK_DFD);
        r->flags = (u32)rd_s32(req, OFF_REQ_CMD + OFF_UNLINK_FLAGS);
        uring_name(r->s0, req, OFF_UNLINK_FILENAME);
    } else if (op == OP_MKDIRAT) {
        r->dfd0 = rd_s32(req, OFF_REQ_CMD + OFF_MKDIR_DFD);
        r->mode = (u32)rd_s32(req, OFF_REQ_CMD + OFF_MKDIR_MODE);
        uring_name(r->s0, req, OFF_MKDIR_FILENAME);
    } else if (op == OP_RENAMEAT) {
        r->dfd0 = rd_s32(req, OFF_REQ_CMD + OFF_RENAME_OLD_DFD);
        r->dfd1 = rd_s32(req, OFF_REQ_CMD + OFF_RENAME_NEW_DFD);
        r->flags = (u32)rd_s32(req, OFF_REQ_CMD + OFF_RENAME_FLAGS);
        uring_name(r->s0, req, OFF_RENAME_OLDPATH);
        uring_name(r->s1, req, OFF_RENAME_NEWPATH);
    } else {  // linkat, symlinkat (struct io_link)
        r->dfd0 = op == OP_SYMLINKAT ? -1 : rd_s32(req, OFF_REQ_CMD + OFF_LINK_OLD_DFD);
        r->dfd1 = rd_s32(req, OFF_REQ_CMD + OFF_LINK_NEW_DFD);
        r->flags = op == OP_SYMLINKAT ? 0 : (u32)rd_s32(req, OFF_REQ_CMD + OFF_LINK_FLAGS);
        uring_name(r->s0, req, OFF_LINK_OLDPATH);
        uring_name(r->s1, req, OFF_LINK_NEWPATH);
    }
    u64 key = (u64)req;
    uring_reqs.update(&key, r);
    return 0;
}

// The event type a request is reported as, if the sensor attaches it (else 0).
static __always_inline u32 uring_type(u32 op) {
#ifdef ATTACHED_EVT_OPENAT
    if (op == OP_OPENAT)
        return EVT_OPENAT;
#endif
#ifdef ATTACHED_EVT_OPENAT2
    if (op == OP_OPENAT2)
        return EVT_OPENAT2;
#endif
#ifdef ATTACHED_EVT_UNLINKAT
    if (op == OP_UNLINKAT)
        return EVT_UNLINKAT;
#endif
#ifdef ATTACHED_EVT_MKDIRAT
    if (op == OP_MKDIRAT)
        return EVT_MKDIRAT;
#endif
#ifdef ATTACHED_EVT_RENAMEAT2
    if (op == OP_RENAMEAT)
        return EVT_RENAMEAT2;
#endif
#ifdef ATTACHED_EVT_LINKAT
    if (op == OP_LINKAT)
        return EVT_LINKAT;
#endif
#ifdef ATTACHED_EVT_SYMLINKAT
    if (op == OP_SYMLINKAT)
        return EVT_SYMLINKAT;
#endif
#ifdef ATTACHED_EVT_CONNECT
    if (op == OP_CONNECT)
        return EVT_CONNECT;
#endif
#ifdef ATTACHED_EVT_ACCEPT4
    if (op == OP_ACCEPT)
        return EVT_ACCEPT4;
#endif
    return 0;
}

TRACEPOINT_PROBE(io_uring, io_uring_complete) {
    if (is_self())
        return 0;
    void *req = args->req;
    u8 op = 0;
    bpf_probe_read_kernel(&op, 1, req + OFF_REQ_OPCODE);
    u64 key = (u64)req;
    u32 t = uring_type(op);
    if (!t) {
        uring_reqs.delete(&key);  // (a request of another kind, or an event type not attached)
        return 0;
    }
    u32 zero = 0;
    struct call_args *c = call_scratch.lookup(&zero);
    struct uring_req *r = uring_scratch.lookup(&zero);
    if (!c || !r)
        return 0;
    c->ret = args->res;
    c->t = t;
    c->hflags = FLAG_IO_URING;
    if (op == OP_CONNECT || op == OP_ACCEPT) {
        // The socket's descriptor; a fixed file's is an index in the ring's own table, not
        // the task's (REQ_F_FIXED_FILE is bit 0, as IOSQE_FIXED_FILE in the UAPI): no
        // descriptor then (the record has only the address passed).
        u64 rflags = 0;
        bpf_probe_read_kernel(&rflags, sizeof(rflags), req + OFF_REQ_FLAGS);
        c->v[0] = (rflags & 1) ? (u64)(s64)-1 : (u64)(s64)rd_s32(req, OFF_REQ_FD);
        if (op == OP_CONNECT) {
            c->v[1] = (u64)rd_ptr(req, OFF_REQ_CMD + OFF_CONNECT_ADDR);  // the caller's memory
            c->v[2] = (u32)rd_s32(req, OFF_REQ_CMD + OFF_CONNECT_ADDRLEN);
            c->v[3] = 0;
            c->v[6] = SOCK_ADDR_IN;
        } else {
            c->v[1] = 0;
            c->v[2] = 0;
            c->v[3] = (u32)rd_s32(req, OFF_REQ_CMD + OFF_ACCEPT_FLAGS);
            c->v[6] = SOCK_FD_IS_RESULT | SOCK_SERVER_LOCAL;
        }
        c->v[4] = 0;
        c->v[5] = 0;
        handlers.call(args, HANDLER_EMIT_SOCK);
        return 0;
    }
    // A path operation: its values, copied at submission, into this CPU's scratch (the
    // pointers the handler gets point there), and the request's entry dropped.
    struct uring_req *st = uring_reqs.lookup(&key);
    if (!st)
        return 0;  // submitted before the sensor started
    __builtin_memcpy(r, st, sizeof(*r));
    uring_reqs.delete(&key);
    if (op == OP_OPENAT || op == OP_OPENAT2) {
        c->v[0] = (u64)(s64)r->dfd0;
        c->v[1] = (u64)r->s0;
        c->v[2] = r->oflags;
        c->v[3] = r->mode;
        handlers.call(args, HANDLER_EMIT_OPEN);
    } else if (op == OP_UNLINKAT || op == OP_MKDIRAT) {
        c->v[0] = (u64)(s64)r->dfd0;
        c->v[1] = (u64)r->s0;
        c->v[2] = r->flags;
        c->v[3] = r->mode;
        handlers.call(args, HANDLER_EMIT_PATH);
    } else {
        c->v[0] = (u64)(s64)r->dfd0;
        c->v[1] = (u64)r->s0;
        c->v[2] = (u64)(s64)r->dfd1;
        c->v[3] = (u64)r->s1;
        c->v[4] = r->flags;
        handlers.call(args, HANDLER_EMIT_PATH2);
    }
    return 0;
}
