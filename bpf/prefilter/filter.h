// Sentinel's in-kernel prefilter: drop events that no rule can match, before they cost a
// ring-buffer reservation. Pasted in front of the sensor's source by user space
// (sentinel.prefilter.maps.source()): bcc rewrites map calls such as f_wild.lookup() only in
// the main source text, not in #included files. Filled from user space by
// sentinel/prefilter/maps.py with the contents sentinel/prefilter/tables.py computes.
//
// Encoding (see sentinel/prefilter/tables.py): per event family, each term of each rule's
// kernel part owns a bit. For each dimension the event's value is looked up (exact hash, or LPM
// trie for path prefixes/suffixes and CIDRs) and the result ORed with the dimension's wildcard
// mask (terms that do not constrain it); the accumulator ANDs these. A surviving bit means some rule may
// match: the event goes to user space. A dimension the kernel cannot judge for this event
// (a non-canonical path, an unknown address family) is skipped, which only keeps more events.
//
// Relative paths (of opens and the other file events) are judged in two steps, so the base directory is walked only when the
// verdict depends on it: f_file_enter/f_file_exit judge everything else and, when a live term
// still constrains the path, return F_NEED_BASE (the state waits in the per-CPU scratch); the
// caller then walks the base (the cwd or the dirfd's file, into the buffer its own record uses,
// so a kept event is walked once) and calls f_file_base (the sensor does so in a tail-called
// program, so the verifier checks it once), which composes "/" + base components + "/" + rel
// exactly as user space builds fd.name (sentinel.events.record.join_walk, then os.path.join
// and normpath; "." is the base, ".." its parent) and judges the path dimensions on it. Any
// doubt (walk truncated, bad dirfd, rel not canonical, composed path too long) keeps the
// event. sentinel.prefilter.model.kernel_path is the Python model of this.
//
// Reloads are atomic: every key carries a slot (generation & 1); user space fills the inactive
// slot, then publishes the new generation in f_active. A syscall whose enter and exit straddle
// a reload is kept (the generation is carried from enter to exit and compared).

// Constants shared with Python come from user space, defined once there: family and
// dimension codes (F_NFAM, D_*, F_NDIM) from the event table (sentinel.events.cgen);
// F_NWORDS, F_PATH, F_LPM_PAYLOAD and F_WALK_MAX from sentinel.prefilter.layout.
// Hides a value's known range from clang, so it keeps the masks that bound it for the verifier.
#define F_OPAQUE(x) asm volatile("" : "+r"(x))
#define F_NEED_BASE 2       // f_file_exit: keep only if f_file_base agrees

struct fmask {
    u64 w[F_NWORDS];
};

struct f_fam_cfg {
    u32 filter;             // 0: this family is not filtered (every event passes)
    u32 pad;
    struct fmask all;       // the bits of every term
    struct fmask wild[F_NDIM];  // per dimension: the terms that do not constrain it
    struct fmask bval[F_NDIM][2];  // per boolean dimension (F_BOOL_DIMS): the terms value
                                   // 0 / 1 satisfies, wild ones included (no map lookup)
    struct fmask miss[F_NDIM];  // per dimension: the terms a lookup that finds nothing
                                // satisfies (negative constraints: "none of these values")
};

struct f_comm_key {
    u32 gf;                 // slot << 8 | family
    char comm[16];
};

struct f_num_key {
    u32 gf;
    u32 dim;
    u64 val;
};

struct f_path_key {
    u32 gf;
    char path[F_PATH];
};

struct f_lpm_key {
    u32 prefixlen;          // bits, including the 3 (or 4) header bytes
    u8 data[4 + F_LPM_PAYLOAD];  // slot, family, dim, [ip version,] payload
};

struct f_scratch {
    struct f_path_key pk;
    struct f_lpm_key lk;
    u64 ra[F_PATH / 8];     // the path right-aligned (for reversing 8 bytes at a time)
    u64 rev[F_PATH / 8];    // the path reversed
    struct fmask pacc;      // a relative open waiting for its base (F_NEED_BASE): its terms,
    u32 pgen;               // generation
    u32 plen;               // and the length of the relative path, left in pk.path (0: none)
    u32 pcanon;             // no "//", "/." or trailing "/" in it
    u32 pfam;               // and its event type
    struct fmask oacc;      // a successful open waiting for its kernel path: its terms,
    u32 ogen;               // generation
    u32 ofam;               // and its event type (f_file_opened_pre -> f_file_opened_path)
    u8 zeros[F_PATH];       // never written: a source of zeros
};

struct f_state {            // carried from a syscall's enter to its exit
    u32 gen;                // full generation counter; 0: not filtered
    u32 pend;               // file: length of a relative path still to be judged
    u32 fam;                // the event's code: each event type is judged on its own terms
    u32 pad;
    struct fmask acc;
    struct f_fam_cfg *cfg;  // this generation's family config (map value)
};

BPF_ARRAY(f_active, u32, 1);
BPF_ARRAY(f_fam, struct f_fam_cfg, 2 * F_NFAM);
BPF_HASH(f_comm, struct f_comm_key, struct fmask, 4096);
BPF_HASH(f_num, struct f_num_key, struct fmask, 8192);
BPF_HASH(f_path, struct f_path_key, struct fmask, 4096);
BPF_LPM_TRIE(f_lpm, struct f_lpm_key, struct fmask, 16384);
BPF_PERCPU_ARRAY(f_scratch_map, struct f_scratch, 1);
// per event type: [fam * 2] events dropped in the kernel, [fam * 2 + 1] events kept
BPF_PERCPU_ARRAY(f_stats, u64, 2 * F_NFAM);

static __always_inline void f_count(u32 fam, int kept) {
    u32 idx = fam * 2 + (kept ? 1 : 0);
    u64 *n = f_stats.lookup(&idx);
    if (n)
        (*n)++;
}

// 0x80 in each byte of w that equals c, 0 elsewhere (exact: no carries between bytes).
static __always_inline u64 f_bytes_eq(u64 w, u64 c) {
    u64 x = w ^ (c * 0x0101010101010101ULL);
    u64 y = (x & 0x7f7f7f7f7f7f7f7fULL) + 0x7f7f7f7f7f7f7f7fULL;
    return ~(y | x | 0x7f7f7f7f7f7f7f7fULL);
}

// Whether some term still alive constrains `dim` (else its lookup can be skipped).
static __always_inline int f_needs(struct f_state *st, u32 dim) {
    struct fmask *w = &st->cfg->wild[dim];
    u64 need = 0;
#pragma unroll
    for (int i = 0; i < F_NWORDS; i++)
        need |= st->acc.w[i] & ~w->w[i];
    return need != 0;
}

// Whether any term is still possible (an empty rule set for a family keeps nothing).
static __always_inline int f_alive(struct f_state *st) {
    u64 any = 0;
#pragma unroll
    for (int i = 0; i < F_NWORDS; i++)
        any |= st->acc.w[i];
    return any != 0;
}

// acc &= ((m, or the miss mask when the lookup found nothing) | wild[dim]); returns whether a
// bit survives.
static __always_inline int f_and_st(struct f_state *st, struct fmask *m, u32 dim) {
    struct fmask *w = &st->cfg->wild[dim];
    struct fmask *x = m ? m : &st->cfg->miss[dim];
    u64 any = 0;
#pragma unroll
    for (int i = 0; i < F_NWORDS; i++) {
        u64 v = x->w[i] | w->w[i];
        st->acc.w[i] &= v;
        any |= st->acc.w[i];
    }
    return any != 0;
}

// Start filtering an event of type `fam` (its event code: a "family" of the maps is one event
// type, so that a rule no kernel dimension constrains for one type leaves the others
// filtered): 0 if it is not filtered (keep the event), else 1 with st->acc set to all terms
// and st->gen to the current generation.
static __always_inline int f_begin(struct f_state *st, u32 fam) {
    u32 zero = 0;
    u32 *g = f_active.lookup(&zero);
    st->gen = 0;
    st->fam = fam;
    if (!g || *g == 0)
        return 0;
    u32 idx = (*g & 1) * F_NFAM + fam;
    struct f_fam_cfg *c = f_fam.lookup(&idx);
    if (!c || !c->filter)
        return 0;
    st->gen = *g;
    st->cfg = c;
    __builtin_memcpy(&st->acc, &c->all, sizeof(st->acc));
    return 1;
}

static __always_inline int f_comm_dim(struct f_state *st, u32 fam) {
    if (!f_needs(st, D_COMM))
        return 1;
    u32 slot = st->gen & 1;
    struct f_comm_key k = {};
    k.gf = (slot << 8) | fam;
#ifdef HAVE_TASK_COMM
    task_comm(k.comm);  // the exec-time name (bpf/sensor/task.h): what proc.name says
#else
    bpf_get_current_comm(&k.comm, sizeof(k.comm));
#endif
    return f_and_st(st, f_comm.lookup(&k), D_COMM);
}

static __always_inline int f_num_dim(struct f_state *st, u32 fam, u32 dim, u64 val) {
    if ((F_BOOL_DIMS >> dim) & 1) {     // (dim is a constant at every call: folded)
        // acc &= bval[dim][val]: the family's config already holds both answers
        struct fmask *b = &st->cfg->bval[dim][val ? 1 : 0];
        u64 any = 0;
#pragma unroll
        for (int i = 0; i < F_NWORDS; i++) {
            st->acc.w[i] &= b->w[i];
            any |= st->acc.w[i];
        }
        return any != 0;
    }
    if (!f_needs(st, dim))
        return 1;
    u32 slot = st->gen & 1;
    struct f_num_key k = {};
    k.gf = (slot << 8) | fam;
    k.dim = dim;
    k.val = val;
    return f_and_st(st, f_num.lookup(&k), dim);
}

static __always_inline int f_lpm_dim(struct f_state *st, struct f_lpm_key *lk, u32 fam, u32 dim) {
    return f_and_st(st, f_lpm.lookup(lk), dim);
}

// Exact, prefix and suffix lookups of the canonical absolute path in s->pk.path (len bytes,
// zero-padded). Returns whether a bit survives.
static __always_inline int f_path_judge(struct f_state *st, struct f_scratch *s, u32 fam, u32 len) {
    u32 slot = st->gen & 1;
    if (f_needs(st, D_PATH) && !f_and_st(st, f_path.lookup(&s->pk), D_PATH))
        return 0;
    if (!f_needs(st, D_PATH_PREFIX) && !f_needs(st, D_PATH_SUFFIX))
        return 1;
    // Prefixes and suffixes are stored at most F_LPM_PAYLOAD bytes long, so looking up the
    // first (or, reversed, the last) F_LPM_PAYLOAD bytes of a longer path finds all of them.
    u32 plen = len > F_LPM_PAYLOAD ? F_LPM_PAYLOAD : len;
    F_OPAQUE(len);
    F_OPAQUE(plen);
    struct f_lpm_key *lk = &s->lk;
    lk->data[0] = slot;
    lk->data[1] = fam;
    lk->data[2] = D_PATH_PREFIX;
    bpf_probe_read_kernel(&lk->data[3], plen & 255, s->pk.path);
    lk->prefixlen = 24 + plen * 8;
    if (!f_lpm_dim(st, lk, fam, D_PATH_PREFIX))
        return 0;
    // Reverse: right-align the path, then byte-swap the 8-byte words in reverse order.
    bpf_probe_read_kernel((char *)s->ra + ((F_PATH - len) & (F_PATH - 1)), len & (F_PATH - 1),
                          s->pk.path);
    for (int i = 0; i < F_PATH / 8; i++)
        s->rev[i & (F_PATH / 8 - 1)] = __builtin_bswap64(s->ra[(F_PATH / 8 - 1 - i) & (F_PATH / 8 - 1)]);
    lk->data[2] = D_PATH_SUFFIX;
    bpf_probe_read_kernel(&lk->data[3], plen & 255, (char *)s->rev);
    return f_lpm_dim(st, lk, fam, D_PATH_SUFFIX);
}

static __always_inline int f_path_needed(struct f_state *st) {
    return f_needs(st, D_PATH) || f_needs(st, D_PATH_PREFIX) || f_needs(st, D_PATH_SUFFIX);
}

// Scans the zero-padded path in w (F_PATH bytes) 8 bytes at a time (no per-byte loop: cheap to
// run and to verify): whether it is canonical (no empty, "." or ".." component) and whether it
// contains "../". A byte equal to c is found exactly with the carry-free zero-byte test on
// (word ^ c*0x0101..).
static __always_inline void f_scan(const u64 *w, int *canon, int *dotdot) {
    for (int i = 0; i < F_PATH / 8; i++) {
        u64 cur = w[i & (F_PATH / 8 - 1)];
        u64 nxt = i + 1 < F_PATH / 8 ? w[(i + 1) & (F_PATH / 8 - 1)] : 0;
        u64 n1 = (cur >> 8) | (nxt << 56);
        u64 n2 = (cur >> 16) | (nxt << 48);
        u64 n3 = (cur >> 24) | (nxt << 40);
        u64 slash = f_bytes_eq(cur, 0x2f), dot = f_bytes_eq(cur, 0x2e);
        u64 slash1 = f_bytes_eq(n1, 0x2f), dot1 = f_bytes_eq(n1, 0x2e);
        u64 slash2 = f_bytes_eq(n2, 0x2f), dot2 = f_bytes_eq(n2, 0x2e);
        u64 end2 = f_bytes_eq(n2, 0), end3 = f_bytes_eq(n3, 0);
        // An empty, "." or ".." component ("//", "/./", "/../", a trailing "/." or "/..");
        // hidden names ("/.x", "/..x") are ordinary components.
        if (slash & (slash1 | (dot1 & (slash2 | end2 | (dot2 & (f_bytes_eq(n3, 0x2f) | end3))))))
            *canon = 0;
        if (dot & dot1 & slash2)
            *dotdot = 1;                // "../"
    }
}

// The path dimensions of a file event on the path as passed: path is the sensor's copy of it
// (read once from the caller's memory, into the record: what the prefilter judges is what user
// space gets). Returns 0 (no bit survives), 1 (keep) or F_NEED_BASE (a canonical relative
// path, left in the scratch with st->pend set: judged by f_file_base once the base is known).
static __always_inline int f_path_dims(struct f_state *st, u32 fam, const char *path) {
    if (!f_path_needed(st) && !f_needs(st, D_RAW_DOTDOT))
        return 1;
    u32 zero = 0;
    struct f_scratch *s = f_scratch_map.lookup(&zero);
    if (!s)
        return 1;
    u32 slot = st->gen & 1;
    __builtin_memset(s->pk.path, 0, F_PATH);
    s->pk.gf = (slot << 8) | fam;
    int n = bpf_probe_read_kernel_str(s->pk.path, F_PATH, path);
    if (n <= 1 || n >= F_PATH)
        return 1;                       // unreadable, empty or too long: cannot judge
    u32 len = (u32)(n - 1) & (F_PATH - 1);
    int abs = s->pk.path[0] == '/';
    int canon = 1;
    int dotdot = 0;
    f_scan((const u64 *)s->pk.path, &canon, &dotdot);
    if (len > 1 && s->pk.path[(len - 1) & (F_PATH - 1)] == '/')
        canon = 0;
    if (!f_num_dim(st, fam, D_RAW_DOTDOT, dotdot))
        return 0;
    if (!f_path_needed(st))
        return 1;
    if (!abs) {
        // Judged, or found not canonical, by f_file_base (kept apart from the sensor's
        // program: every test here multiplies the states the verifier explores there).
        s->pcanon = canon;
        st->pend = len;
        return F_NEED_BASE;
    }
    if (!canon)
        return 1;                       // the user-space fd.name differs from the raw path
    return f_path_judge(st, s, fam, len);
}

// "/" + the walk's components root-first + "/" + the relative path (in s->pk.path, rlen
// bytes) into s->pk.path, zero-padded: what user space makes of it (join_walk, os.path.join;
// normpath changes nothing: components are dentry names and rel is canonical; "." is the base
// itself and ".." the base without its leaf, "/" when nothing is left). walk holds
// NUL-terminated components leaf first; walk step i wrote at[i] .. at[i + 1] - 1 (nothing
// when it crossed a mount), nc steps in all.
// Returns the length, or 0 when it cannot be composed exactly (too long, odd walk).
static __always_inline u32 f_compose(struct f_scratch *s, const char *walk, const u16 *at,
                                     u32 nc, u32 rlen) {
    if (rlen == 0 || rlen >= F_PATH || nc > F_WALK_MAX)
        return 0;
    // A relative path must have no empty, "." or ".." component past the first, no trailing
    // "/" (s->pcanon), and not start with "./" or "../"; "." and ".." themselves are the base
    // and its parent (".x" is an ordinary name).
    int dot = s->pk.path[0] == '.' && (rlen == 1 || (rlen == 2 && s->pk.path[1] == '.'));
    int lead = s->pk.path[0] == '.' &&
               (s->pk.path[1] == '/' || (s->pk.path[1] == '.' && s->pk.path[2] == '/'));
    if (!s->pcanon || lead)
        return 0;
    F_OPAQUE(rlen);
    bpf_probe_read_kernel(s->ra, rlen & (F_PATH - 1), s->pk.path);
    __builtin_memset(s->pk.path, 0, F_PATH);
    u32 q = 0, qlast = 0;               // qlast: where the last (leaf) component starts
    for (int k = 0; k < F_WALK_MAX; k++) {
        int i = (int)nc - 1 - k;
        if (i < 0)
            break;
        u32 b = at[i & (F_WALK_MAX - 1)];
        u32 e = at[(i + 1) & (2 * F_WALK_MAX - 1)];
        if (e == b)
            continue;                   // a step that crossed a mount point
        if (e <= b + 1 || q + e - b >= F_PATH)
            return 0;                   // empty name (user space would drop it), or too long
        u32 clen = e - b - 1;
        F_OPAQUE(clen);
        F_OPAQUE(q);
        s->pk.path[q & (F_PATH - 1)] = '/';
        bpf_probe_read_kernel(&s->pk.path[(q + 1) & (F_PATH - 1)], clen & (F_PATH - 1),
                              walk + (b & 1023));
        qlast = q;
        q += clen + 1;
    }
    if (dot) {
        if (rlen == 2 && q) {           // "..": the base without its leaf component
            F_OPAQUE(q);
            F_OPAQUE(qlast);
            bpf_probe_read_kernel(&s->pk.path[qlast & (F_PATH - 1)], (q - qlast) & (F_PATH - 1),
                                  s->zeros);
            q = qlast;
        }
        if (q == 0)
            s->pk.path[0] = '/';        // the root
        return q ? q : 1;
    }
    if (q + 1 + rlen >= F_PATH)
        return 0;
    F_OPAQUE(q);
    F_OPAQUE(rlen);
    s->pk.path[q & (F_PATH - 1)] = '/';
    bpf_probe_read_kernel(&s->pk.path[(q + 1) & (F_PATH - 1)], rlen & (F_PATH - 1), s->ra);
    return q + 1 + rlen;
}

// A path the kernel gave (the executable's of an exec: D_PATH, D_PATH_PREFIX, D_PATH_SUFFIX
// mean proc.exepath for execs; the opened file's of a successful open: fd.name) in the
// family's path dimensions. exe: the path the sensor's walk built, len bytes, exactly the
// string user space reports; len 0: unknown, not judged. Every exact value
// is at most F_PATH - 1 bytes long (longer ones are prefixes), so a longer path matches none.
static __always_inline int f_kpath_dims(struct f_state *st, const char *exe, u32 len) {
    if (!len || (!f_needs(st, D_PATH) && !f_needs(st, D_PATH_PREFIX) && !f_needs(st, D_PATH_SUFFIX)))
        return 1;
    u32 zero = 0;
    struct f_scratch *s = f_scratch_map.lookup(&zero);
    if (!s)
        return 1;
    u32 slot = st->gen & 1;
    // The masks below bound every copy for the verifier; the empty asm stops clang from
    // dropping them as redundant (it knows the ranges, the verifier cannot always follow).
    asm volatile("" : "+r"(len));
    if (f_needs(st, D_PATH)) {
        struct fmask *m = 0;
        if (len < F_PATH) {
            __builtin_memset(s->pk.path, 0, F_PATH);
            s->pk.gf = (slot << 8) | st->fam;
            bpf_probe_read_kernel(s->pk.path, len & (F_PATH - 1), exe);
            m = f_path.lookup(&s->pk);
        }
        if (!f_and_st(st, m, D_PATH))
            return 0;
    }
    u32 plen = len > F_LPM_PAYLOAD ? F_LPM_PAYLOAD : len;
    asm volatile("" : "+r"(plen));
    struct f_lpm_key *lk = &s->lk;
    lk->data[0] = slot;
    lk->data[1] = st->fam;
    if (f_needs(st, D_PATH_PREFIX)) {
        lk->data[2] = D_PATH_PREFIX;
        bpf_probe_read_kernel(&lk->data[3], plen & 255, exe);
        lk->prefixlen = 24 + plen * 8;
        if (!f_lpm_dim(st, lk, st->fam, D_PATH_PREFIX))
            return 0;
    }
    if (!f_needs(st, D_PATH_SUFFIX))
        return 1;
    // The last plen bytes, reversed: right-align them, then byte-swap the 8-byte words in
    // reverse order (as f_path_dims does).
    bpf_probe_read_kernel((char *)s->ra + ((F_PATH - plen) & (F_PATH - 1)), plen & 255,
                          exe + ((len - plen) & 511));
    for (int i = 0; i < F_PATH / 8; i++)
        s->rev[i & (F_PATH / 8 - 1)] = __builtin_bswap64(s->ra[(F_PATH / 8 - 1 - i) & (F_PATH / 8 - 1)]);
    lk->data[2] = D_PATH_SUFFIX;
    bpf_probe_read_kernel(&lk->data[3], plen & 255, (char *)s->rev);
    lk->prefixlen = 24 + plen * 8;
    return f_lpm_dim(st, lk, st->fam, D_PATH_SUFFIX);
}

// A socket call's server end (or its only end): family ('4', '6', 'u'; 0 unknown), port and
// address (ver 4: addr[0..4], ver 6: addr[0..16]; 0: none), as the handler found them (the
// kernel's socket, else the address the caller passed).
static __always_inline int f_peer_dims(struct f_state *st, u32 famc, u32 port, const u8 *addr,
                                       u32 ver) {
    if (!famc)
        return 1;
    if (!f_num_dim(st, st->fam, D_FAMILY, famc))
        return 0;
    if (!ver)
        return 1;
    if (!f_num_dim(st, st->fam, D_DPORT, port))
        return 0;
    u32 zero = 0;
    struct f_scratch *s = f_scratch_map.lookup(&zero);
    if (!s)
        return 1;
    struct f_lpm_key *lk = &s->lk;
    lk->data[0] = st->gen & 1;
    lk->data[1] = st->fam;
    lk->data[2] = D_DADDR;
    u8 a[16] = {};
    bpf_probe_read_kernel(&a, ver == 4 ? 4 : 16, addr);
    // a v4-mapped v6 peer (::ffff:a.b.c.d) is shown as IPv4 in user space: look it up so
    int mapped = ver == 6;
#pragma unroll
    for (int i = 0; i < 10; i++)
        if (a[i] != 0)
            mapped = 0;
    if (a[10] != 0xff || a[11] != 0xff)
        mapped = 0;
    if (ver == 4 || mapped) {
        lk->data[3] = 4;
        __builtin_memcpy(&lk->data[4], ver == 4 ? &a[0] : &a[12], 4);
        lk->prefixlen = 32 + 32;
    } else {
        lk->data[3] = 6;
        __builtin_memcpy(&lk->data[4], a, 16);
        lk->prefixlen = 32 + 128;
    }
    return f_lpm_dim(st, lk, st->fam, D_DADDR);
}

// At a syscall's exit: the result dimension, with the state carried from its enter.
static __always_inline int f_finish(struct f_state *st, u32 fam, long ret) {
    if (!st->gen)
        return 1;
    u32 zero = 0;
    u32 *g = f_active.lookup(&zero);
    if (!g || *g != st->gen)
        return 1;                       // a reload happened in between: keep the event
    return f_num_dim(st, fam, D_FAILED, ret < 0 ? 1 : 0);
}

// ---- entry points per family (the sensor and the tests call these) ---------------------------

static __always_inline int f_keep(struct f_state *st, u32 fam, int keep) {
    f_count(fam, keep);
    return keep;
}

// exec (sched_process_exec), in two steps so that the executable's path is walked only when
// some rule still alive needs it. f_exec_pre() tests comm and uid: 0 drop, 1 keep, 2 keep if
// f_exec_path() with the executable's path (see f_kpath_dims) says so; st carries the state.
static __always_inline int f_exec_pre(struct f_state *st, u32 t) {
    if (!f_begin(st, t))
        return 1;
    int keep = f_alive(st) && f_comm_dim(st, st->fam) &&
               f_num_dim(st, st->fam, D_UID, (u32)bpf_get_current_uid_gid());
    if (keep && (f_needs(st, D_PATH) || f_needs(st, D_PATH_PREFIX) || f_needs(st, D_PATH_SUFFIX)))
        return 2;
    return f_keep(st, st->fam, keep);
}

static __always_inline int f_exec_path(struct f_state *st, const char *exe, u32 len) {
    return f_keep(st, st->fam, f_kpath_dims(st, exe, len));
}

// a file event (one path: open, unlink...), at sys_enter: everything but the result. 0: drop now (do not even stash the call).
// F_NEED_BASE: a relative path is still to be judged (see f_file_exit).
static __always_inline int f_file_enter(struct f_state *st, u32 t, u32 oflags,
                                        const char *upath) {
    if (!f_begin(st, t))
        return 1;
    u32 acc = oflags & 3;
    int keep = f_alive(st) && f_num_dim(st, st->fam, D_OPEN_WRITE, acc == 1 || acc == 2) &&
               f_num_dim(st, st->fam, D_OPEN_READ, acc == 0 || acc == 2) &&
               f_num_dim(st, st->fam, D_OPEN_CREAT, (oflags & O_CREAT_VAL) != 0) &&
               f_comm_dim(st, st->fam) &&
               f_num_dim(st, st->fam, D_UID, (u32)bpf_get_current_uid_gid());
    if (keep)
        keep = f_path_dims(st, st->fam, upath);
    if (!keep)
        f_count(st->fam, 0);
    return keep;
}

// A successful open (its file installed), at its exit, in two steps so that the opened file's
// path is walked only when some rule still alive needs it. The path dimensions judge the
// kernel's path of the opened file (kpath, klen bytes, walked forward from the task's root:
// exactly what user space reports as fd.name; klen 0: unknown, not judged), never the string
// the caller passed, which a symlink, a magic link or a racing thread can make name another
// file. raw (the record's copy of the path as passed) serves D_RAW_DOTDOT (fd.nameraw) only.
// f_file_opened_pre judges every other dimension (access mode, comm, uid, the raw path's "..",
// the result): 0 drop, 1 keep (both counted), 2 the kernel's path decides: the terms still
// alive wait in the per-CPU scratch for f_file_opened_path, called after the walk on the same
// CPU (the state itself holds a map pointer, and kept live across the walk it would multiply
// the states the verifier explores there).
static __always_inline int f_file_opened_pre(struct f_state *st, u32 t, u32 oflags,
                                             const char *raw, long ret) {
    if (!f_begin(st, t))
        return 1;
    u32 acc = oflags & 3;
    int keep = f_alive(st) && f_num_dim(st, st->fam, D_OPEN_WRITE, acc == 1 || acc == 2) &&
               f_num_dim(st, st->fam, D_OPEN_READ, acc == 0 || acc == 2) &&
               f_num_dim(st, st->fam, D_OPEN_CREAT, (oflags & O_CREAT_VAL) != 0);
    BENCH_STAGE(STAGE_OPEN_ACCESS);
    keep = keep && f_comm_dim(st, st->fam);
    BENCH_STAGE(STAGE_OPEN_COMM);
    keep = keep && f_num_dim(st, st->fam, D_UID, (u32)bpf_get_current_uid_gid());
    BENCH_STAGE(STAGE_OPEN_UID);
    if (keep && f_needs(st, D_RAW_DOTDOT)) {
        u32 zero = 0;
        struct f_scratch *s = f_scratch_map.lookup(&zero);
        if (s) {
            __builtin_memset(s->pk.path, 0, F_PATH);
            int n = bpf_probe_read_kernel_str(s->pk.path, F_PATH, raw);
            if (n > 1 && n < F_PATH) {      // else the raw path is not judged (as f_path_dims)
                int canon = 1, dotdot = 0;
                f_scan((const u64 *)s->pk.path, &canon, &dotdot);
                keep = f_num_dim(st, st->fam, D_RAW_DOTDOT, dotdot);
            }
        }
    }
    if (keep)
        keep = f_finish(st, st->fam, ret);
    if (keep && (f_needs(st, D_PATH) || f_needs(st, D_PATH_PREFIX) || f_needs(st, D_PATH_SUFFIX))) {
        u32 zero = 0;
        struct f_scratch *s = f_scratch_map.lookup(&zero);
        if (s) {
            __builtin_memcpy(&s->oacc, &st->acc, sizeof(s->oacc));
            s->ogen = st->gen;
            s->ofam = st->fam;
            return 2;                   // counted by f_file_opened_path
        }
    }
    return f_keep(st, st->fam, keep);
}

static __always_inline int f_file_opened_path(struct f_state *st, const char *kpath, u32 klen) {
    u32 zero = 0;
    struct f_scratch *s = f_scratch_map.lookup(&zero);
    if (!s)
        return 1;
    if (!f_begin(st, s->ofam) || st->gen != s->ogen)
        return 1;                       // a reload happened in between: keep the event
    __builtin_memcpy(&st->acc, &s->oacc, sizeof(st->acc));
    return f_keep(st, st->fam, f_kpath_dims(st, kpath, klen));
}

// a file event, at sys_exit, for a call f_file_enter kept. Returns 1 to emit the event, 0 to drop it,
// F_NEED_BASE when a relative path decides: the caller walks the base and calls f_file_base.
static __always_inline int f_file_exit(struct f_state *st, long ret) {
    if (!st->gen)
        return 1;
    int keep = f_finish(st, st->fam, ret);
    if (keep) {
        // Every kept open writes plen, so f_file_base never sees another event's pending state.
        u32 zero = 0;
        struct f_scratch *s = f_scratch_map.lookup(&zero);
        if (s && st->pend && f_path_needed(st)) {
            __builtin_memcpy(&s->pacc, &st->acc, sizeof(s->pacc));
            s->pgen = st->gen;
            s->pfam = st->fam;
            s->plen = st->pend;
            return F_NEED_BASE;         // counted by f_file_base
        }
        if (s)
            s->plen = 0;
    }
    return f_keep(st, st->fam, keep);
}

// The path dimensions of a relative open left pending by f_file_exit, now that the base is
// known: walk/at/nc as filled by the sensor's walk_path; bad: the walk is unusable (truncated,
// bad dirfd). Returns 1 to emit the event.
// Without such a call pending (plen 0) it returns 1 at once, so a caller may call it for every
// event it keeps, which spares the verifier a state per answer of f_file_exit.
static __always_inline int f_file_base(const char *walk, const u16 *at, u32 nc, u32 bad) {
    struct f_state st = {};
    u32 zero = 0;
    struct f_scratch *s = f_scratch_map.lookup(&zero);
    if (!s || !s->plen)
        return 1;
    u32 rlen = s->plen;
    s->plen = 0;
    st.fam = s->pfam;
    if (bad)
        return f_keep(&st, st.fam, 1);
    st.gen = s->pgen;
    u32 *g = f_active.lookup(&zero);
    if (!g || *g != st.gen)
        return f_keep(&st, st.fam, 1);    // a reload happened in between
    u32 idx = (st.gen & 1) * F_NFAM + st.fam;
    struct f_fam_cfg *c = f_fam.lookup(&idx);
    if (!c)
        return f_keep(&st, st.fam, 1);
    st.cfg = c;
    __builtin_memcpy(&st.acc, &s->pacc, sizeof(st.acc));
    s->plen = f_compose(s, walk, at, nc, rlen);
    // Read back through memory: every way out of the composing loop leaves a different length
    // range, and the verifier would check everything below once per range; a value loaded from
    // a map has none, so they all meet here as one state.
    u32 len = *(volatile u32 *)&s->plen;
    s->plen = 0;
    if (len == 0 || len >= F_PATH)
        return f_keep(&st, st.fam, 1);
    return f_keep(&st, st.fam, f_path_judge(&st, s, st.fam, len));
}

// a call of the system family (credentials, namespaces, ptrace...), at its exit: comm, uid,
// its key argument (D_ARG: ptrace's request, kill's signal...) and the result.
static __always_inline int f_sys(struct f_state *st, u32 t, u64 key, long ret) {
    if (!f_begin(st, t))
        return 1;
    int keep = f_alive(st) && f_comm_dim(st, st->fam) &&
               f_num_dim(st, st->fam, D_UID, (u32)bpf_get_current_uid_gid()) &&
               f_num_dim(st, st->fam, D_ARG, key) && f_finish(st, st->fam, ret);
    return f_keep(st, st->fam, keep);
}

// a call judged on comm, uid and its result alone (the link family), at its exit.
static __always_inline int f_plain(struct f_state *st, u32 t, long ret) {
    if (!f_begin(st, t))
        return 1;
    int keep = f_alive(st) && f_comm_dim(st, st->fam) &&
               f_num_dim(st, st->fam, D_UID, (u32)bpf_get_current_uid_gid()) &&
               f_finish(st, st->fam, ret);
    return f_keep(st, st->fam, keep);
}

// a socket call, at its exit: comm, uid, its key argument (socket's domain), the server end (family, port, address), whether the
// socket is connected, and the result.
static __always_inline int f_sock(struct f_state *st, u32 t, u64 key, u32 famc, u32 port,
                                  const u8 *addr, u32 ver, u32 connected, long ret) {
    if (!f_begin(st, t))
        return 1;
    int keep = f_alive(st) && f_comm_dim(st, st->fam) &&
               f_num_dim(st, st->fam, D_UID, (u32)bpf_get_current_uid_gid()) &&
               f_num_dim(st, st->fam, D_ARG, key) &&
               f_num_dim(st, st->fam, D_CONNECTED, connected) &&
               f_peer_dims(st, famc, port, addr, ver) && f_finish(st, st->fam, ret);
    return f_keep(st, st->fam, keep);
}
