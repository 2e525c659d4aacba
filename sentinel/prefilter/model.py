"""A Python model of ``bpf/prefilter/filter.h``: the kernel filter's verdict for one event, from
the map contents :mod:`.tables` computes.

The hypothesis property test checks *the model never drops an event the full rule matches*;
the real-kernel tests check *the BPF program gives exactly the model's verdicts*. Together
they say the kernel never drops an event a rule would match.
"""

from __future__ import annotations

import ipaddress
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass

from sentinel.events import exec as exec_records
from sentinel.events import fd as fd_records
from sentinel.events import file as file_records
from sentinel.events import net as net_records
from sentinel.events import system as system_records
from sentinel.events.common import FLAG_BASE_AFTER, FLAG_EXE_TRUNC, FLAG_KPATH
from sentinel.events.dims import PATH_DIMS, Dim
from sentinel.events.file import O_ACCMODE, O_CREAT, O_RDWR, O_WRONLY
from sentinel.events.record import Record
from sentinel.prefilter.layout import COMPOSED_MAX, LPM_PAYLOAD, PATH_READ_MAX
from sentinel.prefilter.plan import DIMS_OF, FAMILY_OF
from sentinel.prefilter.tables import KernelTables, TypeTables, key_bytes


@dataclass(frozen=True, slots=True)
class KernelView:
    """What the BPF program sees of an event (before any user-space enrichment)."""

    evt_type: str
    comm: str
    uid: int
    # file: the path argument as passed; exec: proc.exepath (None: unknown)
    path: str | None = None
    flags: int = 0
    # file, relative path: the directory it starts from as the kernel's walk gives it (the cwd,
    # or the dirfd's file; what sentinel.events.record.join_walk makes of the walk), or None
    # when the walk is unusable (truncated, bad dirfd)
    base: str | None = None
    dport: int | None = None
    daddr: str | None = None
    sock_family: str | None = None  # '4', '6', 'u'
    ret: int = 0  # the syscall's return value
    arg: int | None = None  # the key argument (ptrace's request, socket's domain...)
    connected: bool | None = None  # socket calls: the socket is connected
    # a successful open: the kernel's path of the file it installed ("" when the walk was cut
    # short); then the path dimensions judge it, not ``path`` (which serves "../" only)
    kpath: str | None = None


def canonical_path(raw: str) -> bool:
    """True when the user-space fd.name (normpath) equals the raw path: absolute, no empty,
    '.' or '..' component, no trailing '/' (hidden names such as '/.x' are ordinary);
    otherwise the kernel cannot judge the path."""
    if not raw.startswith("/"):
        return False
    return raw == "/" or _plain_components(raw[1:])


def canonical_relative(raw: str) -> bool:
    """True when the kernel composes fd.name from the base and raw: '.', '..', or a path with
    no empty, '.' or '..' component and no trailing '/' (then fd.name is base + '/' + raw)."""
    if raw in (".", ".."):
        return True
    return bool(raw) and not raw.startswith("/") and _plain_components(raw)


def _plain_components(rel: str) -> bool:
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def kernel_path(kv: KernelView) -> str | None:
    """The path the kernel judges the path dimensions on (fd.name as user space will compute
    it), or None when it cannot know it exactly (then those dimensions are skipped)."""
    raw = kv.path
    if raw is None or len(raw.encode("utf-8", "surrogateescape")) > PATH_READ_MAX:
        return None
    if raw.startswith("/"):
        return raw if canonical_path(raw) else None
    if kv.base is None or not canonical_relative(raw):
        return None
    if raw == ".":
        return kv.base
    if raw == "..":
        return posixpath.dirname(kv.base)
    full = ("" if kv.base == "/" else kv.base) + "/" + raw
    return full if len(full.encode("utf-8", "surrogateescape")) <= COMPOSED_MAX else None


def _lpm(table: Mapping[bytes, int], key: bytes, miss: int) -> int:
    """The mask of the longest stored prefix of ``key``; ``miss`` when none is stored."""
    best, best_len = miss, -1
    for k, m in table.items():
        if len(k) > best_len and key.startswith(k):
            best, best_len = m, len(k)
    return best


def _lpm_net(table: Mapping[tuple[bytes, int], int], addr: bytes, miss: int) -> int:
    best, best_len = miss, -1
    a = int.from_bytes(addr, "big")
    bits = len(addr) * 8
    for (net, plen), m in table.items():
        n = int.from_bytes(net, "big")
        if plen > best_len and (plen == 0 or (a >> (bits - plen)) == (n >> (bits - plen))):
            best, best_len = m, plen
    return best


def passes(tables: KernelTables, kv: KernelView) -> bool:
    """The kernel filter's verdict for one event (True: sent to user space)."""
    ft = tables.types.get(kv.evt_type)
    if ft is None or ft.pass_all:
        return True
    acc = ft.all_bits
    for dim in DIMS_OF[kv.evt_type]:
        m = _dim_mask(ft, dim, kv)
        if m is None:
            continue  # the kernel cannot judge this dimension for this event
        acc &= m | ft.wild[dim]
        if not acc:
            return False
    return acc != 0


def _exe_mask(ft: TypeTables, dim: Dim, exe: str | None) -> int | None:
    """proc.exepath: the kernel has exactly the string user space reports (any length the walk
    fits, canonical by construction), or nothing (a failed exec, a walk cut short)."""
    miss = ft.miss.get(dim, 0)  # a lookup that finds nothing (see tables: negative terms)
    if not exe:
        return None
    if dim is Dim.PATH:
        return ft.exact[dim].get(exe, miss)  # exact values are <= 255 bytes: a longer path is none
    return _lpm(ft.lpm[dim], key_bytes(dim, exe)[:LPM_PAYLOAD], miss)


def _dim_mask(ft: TypeTables, dim: Dim, kv: KernelView) -> int | None:
    miss = ft.miss.get(dim, 0)  # a lookup that finds nothing (see tables: negative terms)
    if dim is Dim.COMM:
        return ft.exact[dim].get(kv.comm[:15], miss)
    if dim is Dim.UID:
        return ft.exact[dim].get(kv.uid, miss)
    if FAMILY_OF[kv.evt_type] == "exec" and dim in PATH_DIMS:
        return _exe_mask(ft, dim, kv.path)
    if kv.kpath is not None and dim in PATH_DIMS:
        return _exe_mask(ft, dim, kv.kpath)  # a string the kernel built, as an exec's
    if dim in PATH_DIMS:
        path = kernel_path(kv)
        if path is None:
            return None
        if dim is Dim.PATH:
            return ft.exact[dim].get(path, miss)
        key = key_bytes(dim, path)[:LPM_PAYLOAD]  # the kernel looks up at most this many bytes
        return _lpm(ft.lpm[dim], key, miss)
    if dim is Dim.OPEN_WRITE:
        return ft.exact[dim].get((kv.flags & O_ACCMODE) in (O_WRONLY, O_RDWR), miss)
    if dim is Dim.OPEN_READ:
        return ft.exact[dim].get((kv.flags & O_ACCMODE) in (0, O_RDWR), miss)
    if dim is Dim.OPEN_CREAT:
        return ft.exact[dim].get(bool(kv.flags & O_CREAT), miss)
    if dim is Dim.FAILED:
        return ft.exact[dim].get(kv.ret < 0, miss)
    if dim is Dim.RAW_DOTDOT:
        if not kv.path or len(kv.path.encode("utf-8", "surrogateescape")) > PATH_READ_MAX:
            return None  # empty or not read whole: the kernel judges no path dimension
        return ft.exact[dim].get("../" in kv.path, miss)
    if dim is Dim.ARG:
        return None if kv.arg is None else ft.exact[dim].get(kv.arg, miss)
    if dim is Dim.CONNECTED:
        return None if kv.connected is None else ft.exact[dim].get(kv.connected, miss)
    if dim is Dim.DPORT:
        return None if kv.dport is None else ft.exact[dim].get(kv.dport, miss)
    if dim is Dim.FAMILY:
        return None if kv.sock_family is None else ft.exact[dim].get(kv.sock_family, miss)
    if dim is Dim.DADDR:
        if kv.daddr is None:
            return None
        ip = ipaddress.ip_address(kv.daddr)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # user space shows a v4-mapped peer as IPv4
        return _lpm_net(ft.nets.get(ip.version, {}), ip.packed, miss)
    return None


# ---- what the BPF handlers judge of a record ----------------------------------------------


def view_of(rec: Record) -> KernelView | None:
    """The values a handler of ``bpf/sensor/*.h`` gave the prefilter for the event ``rec``
    records (None: the family is never filtered), computed from the record as the handler
    computed them from the kernel's objects. With :func:`passes` this lets the property tests
    run on real records of every event type."""
    fam = FAMILY_OF.get(rec.evt.name)
    if fam is None:
        return None
    name, comm, uid = rec.evt.name, rec.comm, rec.uid
    if fam == "exec":
        ok = exec_records.res(rec) == 0 and not rec.flags & FLAG_EXE_TRUNC
        return KernelView(name, comm, uid, path=exec_records.exepath(rec) if ok else None)
    ret = int(rec.fixed[rec.layout.index["res"]])
    if fam == "file":
        after = bool(rec.flags & FLAG_BASE_AFTER)  # chdir, fchdir: no path argument judged
        if rec.flags & FLAG_KPATH:  # a successful open, judged on the file it installed
            m = rec.layout.index
            return KernelView(
                name,
                comm,
                uid,
                path=file_records.raw_path(rec),
                flags=int(rec.fixed[rec.layout.index["flags"]]),
                ret=ret,
                # the kernel judged a path it walked to some length (not the root: length 0)
                kpath=(file_records.kernel_path(rec) or "") if rec.fixed[m["base_len"]] else "",
            )
        return KernelView(
            name,
            comm,
            uid,
            path=None if after else file_records.raw_path(rec),
            flags=int(rec.fixed[rec.layout.index["flags"]]),
            ret=ret,
            base=file_records.base_dir(rec),
        )
    if fam == "net":
        return _sock_view(rec, ret)
    if fam == "fd":
        mode = int(rec.fixed[rec.layout.index["i_mode"]])
        fc = fd_records.kind(rec)[1] if mode else None
        return KernelView(name, comm, uid, sock_family=fc, ret=ret)
    if fam == "system":
        return KernelView(name, comm, uid, ret=ret, arg=system_records.value(rec, 0))
    return KernelView(name, comm, uid, ret=ret)  # comm, uid and the result only


def _sock_view(rec: Record, ret: int) -> KernelView:
    """emit_sock's choices (bpf/sensor/net.h), step by step: the socket's family, else the
    passed address's; the server end (the local one for accept/bind/listen), the passed
    address when the socket has no peer; whether it is connected; the key argument."""
    m, fixed = rec.layout.index, rec.fixed
    how = int(fixed[m["how"]])
    addrlen = int(fixed[m["addrlen"]])
    addr = rec.buf("addr", 28)
    ufam = int.from_bytes(addr[:2], "little") if addrlen >= 8 else 0
    fam = int(fixed[m["sk_family"]]) or ufam
    famc = {2: "4", 10: "6", 1: "u"}.get(fam)
    ver = {2: 4, 10: 6}.get(fam, 0)
    local = bool(how & net_records.SERVER_LOCAL)
    port = int(fixed[m["lport" if local else "rport"]])
    peer: bytes = fixed[m["laddr" if local else "raddr"]]
    if not local and port == 0:
        if ufam == fam and ver:
            port = int.from_bytes(addr[2:4], "big")
            peer = addr[4:8] if ver == 4 else addr[8:24]
        else:
            ver = 0
    daddr = None
    if ver:
        daddr = str(ipaddress.ip_address(peer[:4] if ver == 4 else peer[:16]))
    return KernelView(
        rec.evt.name,
        rec.comm,
        rec.uid,
        dport=port if ver else None,
        daddr=daddr,
        sock_family=famc,
        ret=ret,
        arg=int(fixed[m["v0"]]),
        connected=int(fixed[m["state"]]) == net_records.TCP_ESTABLISHED,
    )
