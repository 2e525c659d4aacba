"""Deny policies for BPF LSM enforcement, and their encoding into BPF map entries.

A :class:`DenyPolicy` is what deny rules compile to: plain data, no kernel objects.
:func:`build_plan` resolves it against the file system and produces a :class:`MapPlan` (the
exact keys and values ``bpf/enforcement/common.h`` looks up). Kept free of bcc.

Why identities, and all of them. The kernel hooks see inodes, not strings, and a path string
is a weak name for a file (bind mounts, chroots, mount namespaces, stacking file systems and
file handles all reach the same inode without it). So every protected path is resolved *once,
at load time*, to ``(superblock device, inode number)`` identities: the protected file or
directory **and every entry below it**, crossing the mounts inside it. While the policy holds
nothing can be created in, linked into, renamed into or mounted onto a protected tree, so that
set is complete, and whether an object is protected is one lookup of the inode a hook was
given, however the caller reached it:

* through another name (a hard link made before the policy, a bind mount);
* through overlayfs using a protected directory as its upper or work directory (overlayfs
  writes the real inodes through the VFS, whose hooks judge them);
* through a dentry that is not connected to its parents (``open_by_handle_at`` after the
  dentry cache was dropped), where walking up the dentry chain learns nothing.

A file created in a protected directory between the scan and the moment the policy takes
effect would escape; :mod:`.lsm_maps` scans again once the policy is published (creations
hold their directory's lock, which the scan's readdir waits for) and adds what it finds.

Also recorded: every ancestor of a protected path (it may not be moved, removed or mounted
over, which would let a fresh path appear under the old name); the mounts on the way to a
protected path or inside a tree (they may not be unmounted or moved); the block devices that
hold protected data (:mod:`.devices`).

Exec denials: ``/usr/bin/nc`` denies that inode under every name; a directory denies
everything below it (a walk up the dentry chain, since new files may appear there).

Refused with a clear error: a path that does not exist; a path on a file system whose stat()
identity is not the kernel's (overlayfs, btrfs subvolumes); a tree larger than the maps; a
protected file behind a loop device mounted read-write.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from sentinel.enforcement import devices, mounts
from sentinel.enforcement.abi import MAX_DEVS, MAX_IDENTS, MAX_MOUNTS

MAX_PORT = 65535

_log = structlog.get_logger("sentinel.lsm")


class PolicyError(ValueError):
    """A deny policy that cannot be enforced as written (message names the rule and item)."""


@dataclass(frozen=True, slots=True)
class ConnectDeny:
    """Deny traffic to ``cidr`` (any address if None) on ``ports`` (any port if empty)."""

    rule: str
    cidr: str | None = None
    ports: tuple[int, ...] = ()


@dataclass(slots=True)
class DenyPolicy:
    """What to deny, each item naming the rule (id) that asked for it.

    ``protect``: path (file or directory) -> rule; any modification at or below it is denied.
    ``exec_exact``: binary path -> rule. ``exec_prefix``: directory -> rule (component-wise:
    ``/opt/bad`` covers ``/opt/bad/x``, not ``/opt/badger``). ``exec_memfd`` / ``exec_upper``:
    the rule denying execs of memfds / of files in an overlayfs upper layer. ``connect``: see
    ConnectDeny (connect, and sends that reach an address without connect).
    """

    protect: dict[str, str] = field(default_factory=dict)
    exec_exact: dict[str, str] = field(default_factory=dict)
    exec_prefix: dict[str, str] = field(default_factory=dict)
    connect: list[ConnectDeny] = field(default_factory=list)
    exec_memfd: str | None = None
    exec_upper: str | None = None

    def rules(self) -> list[str]:
        """Every rule id the policy mentions, in first-seen order."""
        seen: dict[str, None] = {}
        for mapping in (self.protect, self.exec_exact, self.exec_prefix):
            for rule in mapping.values():
                seen.setdefault(rule, None)
        for r in (self.exec_memfd, self.exec_upper):
            if r:
                seen.setdefault(r, None)
        for c in self.connect:
            seen.setdefault(c.rule, None)
        return list(seen)


@dataclass(frozen=True, slots=True)
class Ident:
    """A file's identity as the kernel sees it: superblock ``s_dev`` (kernel encoding) + ino."""

    dev: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> Ident:
        # User space gets the "new" dev_t encoding; struct super_block holds MAJOR<<20|MINOR.
        return cls((os.major(st.st_dev) << 20) | os.minor(st.st_dev), st.st_ino)


@dataclass(slots=True)
class IdentVal:
    """Rule indices (1-based; 0 = none) stored for one identity (abi.IdentVal in the map)."""

    write_rule: int = 0
    exec_prefix_rule: int = 0
    exec_exact_rule: int = 0
    ancestor_rule: int = 0


@dataclass(slots=True)
class MapPlan:
    """Everything the enforcer writes into the BPF maps, plus what it needs to explain events.

    ``rules[i - 1]`` is the rule id of index ``i``. ``nets``: (prefixlen over the 16-byte
    IPv6/IPv4-mapped address, address bytes, entry id). ``ports``: (entry id or 0 for "any
    address", port or 0 for "any port") -> rule index. ``devs``: (kind, kernel dev) -> rule
    index. ``mounts``: mount id -> rule index. ``ident_paths``/``dev_paths``: what an
    identity or device stands for, so that events can name paths. ``policy``: what it was
    built from (the enforcer scans again with it once the plan is in force).
    """

    rules: list[str] = field(default_factory=list)
    deep_exec_rule: int = 0  # denies execs the walk cannot place; the first exec-prefix rule
    memfd_exec_rule: int = 0
    upper_exec_rule: int = 0
    any_write_rule: int = 0  # names fail-closed mount denials: the first protecting rule
    any_connect_rule: int = 0  # names fail-closed address denials: the first connect rule
    idents: dict[Ident, IdentVal] = field(default_factory=dict)
    ident_paths: dict[Ident, str] = field(default_factory=dict)
    nets: list[tuple[int, bytes, int]] = field(default_factory=list)
    ports: dict[tuple[int, int], int] = field(default_factory=dict)
    devs: dict[tuple[int, int], int] = field(default_factory=dict)
    dev_paths: dict[tuple[int, int], str] = field(default_factory=dict)
    mounts: dict[int, int] = field(default_factory=dict)
    mount_points: dict[int, str] = field(default_factory=dict)
    policy: DenyPolicy | None = None

    def rule_index(self, rule: str) -> int:
        if rule not in self.rules:
            self.rules.append(rule)
        return self.rules.index(rule) + 1


def _stat(path: str, rule: str, what: str, follow: bool = True) -> os.stat_result:
    if not os.path.isabs(path):
        raise PolicyError(f"rule {rule!r}: {what} path {path!r} must be absolute")
    try:
        return os.stat(path) if follow else os.lstat(path)
    except OSError as exc:
        raise PolicyError(
            f"rule {rule!r}: {what} path {path!r} cannot be resolved ({exc.strerror}); "
            "BPF LSM enforcement protects existing files and directories by identity"
        ) from exc


def _check_identity(path: str, st: os.stat_result, rule: str, table: list[mounts.Mount]) -> None:
    """Refuse a path whose stat() identity is not the one the kernel's hooks see."""
    try:
        mid = mounts.mount_id_of(path)
    except OSError:
        return
    m = next((m for m in table if m.id == mid), None)
    if m is None:
        return
    if m.fstype == "overlay":
        raise PolicyError(
            f"rule {rule!r}: {path!r} is on overlayfs (mounted at {m.point}), whose stat() "
            "identities are not the inodes the kernel's hooks see; protect the directory it "
            "is built from instead"
        )
    if (m.major, m.minor) != (os.major(st.st_dev), os.minor(st.st_dev)):
        raise PolicyError(
            f"rule {rule!r}: {path!r} reports device {os.major(st.st_dev)}:"
            f"{os.minor(st.st_dev)} but its file system is {m.major}:{m.minor} ({m.fstype}, "
            f"e.g. a btrfs subvolume); its identity would not match the kernel's"
        )


def _ancestors(path: str) -> list[str]:
    out = []
    cur = os.path.dirname(path)
    while True:
        out.append(cur)
        parent = os.path.dirname(cur)
        if parent == cur:
            return out
        cur = parent


def _add_ancestors(plan: MapPlan, path: str, idx: int) -> None:
    for anc in _ancestors(path):
        try:
            st = os.lstat(anc)
        except OSError:
            continue
        val = plan.idents.setdefault(Ident.of(st), IdentVal())
        if not val.ancestor_rule:
            val.ancestor_rule = idx
        plan.ident_paths.setdefault(Ident.of(st), anc)


def _mark(plan: MapPlan, path: str, st: os.stat_result, idx: int, rule: str) -> None:
    ident = Ident.of(st)
    val = plan.idents.get(ident)
    if val is None:
        if len(plan.idents) >= MAX_IDENTS:
            raise PolicyError(
                f"rule {rule!r}: the protected trees hold more than {MAX_IDENTS} files and "
                f"directories (at {path!r}); protect smaller trees"
            )
        val = plan.idents[ident] = IdentVal()
    val.write_rule = val.write_rule or idx
    plan.ident_paths.setdefault(ident, path)


def _scan_tree(plan: MapPlan, root: str, idx: int, rule: str, st_devs: dict[int, int]) -> None:
    """Every entry below ``root`` (mounts inside it included), by identity."""
    for dirpath, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            _mark(plan, full, st, idx, rule)
            if stat.S_ISDIR(st.st_mode):
                st_devs.setdefault(st.st_dev, idx)


def _add_protect(
    plan: MapPlan, path: str, rule: str, table: list[mounts.Mount], st_devs: dict[int, int]
) -> None:
    idx = plan.rule_index(rule)
    plan.any_write_rule = plan.any_write_rule or idx
    st = _stat(path, rule, "protected")
    real = os.path.realpath(path)
    _check_identity(real, st, rule, table)
    _mark(plan, real, st, idx, rule)
    st_devs.setdefault(st.st_dev, idx)
    _add_ancestors(plan, real, idx)
    names = {real}
    if real != os.path.normpath(path):
        # The given name is (or passes through) a symlink: keep that name from being swapped.
        lst = os.lstat(path)
        _mark(plan, os.path.normpath(path), lst, idx, rule)
        _add_ancestors(plan, os.path.normpath(path), idx)
        names.add(os.path.normpath(path))
    if stat.S_ISDIR(st.st_mode):
        _scan_tree(plan, real, idx, rule, st_devs)
    # Mounts on the way to the path, and inside the tree, stay where they are.
    for m in table:
        pinned = any(mounts.on_the_way(m.point, n) or m.point.startswith(n + "/") for n in names)
        if pinned and m.id not in plan.mounts:
            if len(plan.mounts) >= MAX_MOUNTS:
                raise PolicyError(f"rule {rule!r}: more than {MAX_MOUNTS} mounts to pin")
            plan.mounts[m.id] = idx
            plan.mount_points[m.id] = m.point


def _add_devices(plan: MapPlan, st_devs: dict[int, int], table: list[mounts.Mount]) -> None:
    """Devices holding protected data, each under the rule of the data it holds (the first
    rule's tree on that file system; a loop device: its backing file's rule)."""
    if not plan.any_write_rule:
        return

    def rule_of(dev: int, ino: int) -> int:
        v = plan.idents.get(Ident(dev, ino))
        return v.write_rule if v else 0

    loops = devices.loops_over(rule_of)
    for (_kind, kdev), (name, _idx) in loops.items():
        for m in table:
            if m.kernel_dev == kdev and "rw" in m.super_options.split(","):
                raise PolicyError(
                    f"a protected file is the backing file of {name}, mounted read-write at "
                    f"{m.point}: the file system writes it through the loop driver, where no "
                    "hook can deny it; unmount it, or protect the files inside it instead"
                )
    found: dict[tuple[int, int], tuple[str, int]] = {}
    for st_dev, idx in st_devs.items():
        for key, name in devices.fs_devices([st_dev]).items():
            found.setdefault(key, (name, idx))
    for key, held in loops.items():
        found.setdefault(key, held)
    if len(found) > MAX_DEVS:
        raise PolicyError(f"the protected data is on more than {MAX_DEVS} devices")
    for key, (name, idx) in found.items():
        plan.devs.setdefault(key, idx)
        plan.dev_paths.setdefault(key, name)


def _add_exec(plan: MapPlan, path: str, rule: str, exact: bool) -> None:
    idx = plan.rule_index(rule)
    st = _stat(path, rule, "exec")
    ident = Ident.of(st)
    val = plan.idents.setdefault(ident, IdentVal())
    if exact:
        if not stat.S_ISREG(st.st_mode):
            raise PolicyError(f"rule {rule!r}: exec path {path!r} is not a regular file")
        val.exec_exact_rule = val.exec_exact_rule or idx
    else:
        val.exec_prefix_rule = val.exec_prefix_rule or idx
        plan.deep_exec_rule = plan.deep_exec_rule or idx
    plan.ident_paths.setdefault(ident, os.path.realpath(path))


def _net(cidr: str, rule: str) -> tuple[int, bytes]:
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        raise PolicyError(f"rule {rule!r}: bad CIDR {cidr!r}: {exc}") from exc
    if isinstance(net, ipaddress.IPv4Network):
        mapped = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + net.network_address.packed)
        return 96 + net.prefixlen, mapped.packed
    return net.prefixlen, net.network_address.packed


def _covers(outer: tuple[int, bytes], inner: tuple[int, bytes]) -> bool:
    plen, addr = outer
    if plen > inner[0]:
        return False
    a = int.from_bytes(addr, "big") >> (128 - plen) if plen else 0
    b = int.from_bytes(inner[1], "big") >> (128 - plen) if plen else 0
    return a == b


def _add_connect(plan: MapPlan, denies: Sequence[ConnectDeny]) -> None:
    # (net) -> {port: rule idx}, port 0 = any.
    by_net: dict[tuple[int, bytes], dict[int, int]] = {}
    any_addr: dict[int, int] = {}
    for c in denies:
        idx = plan.rule_index(c.rule)
        plan.any_connect_rule = plan.any_connect_rule or idx
        for p in c.ports:
            if not isinstance(p, int) or not 1 <= p <= MAX_PORT:
                raise PolicyError(f"rule {c.rule!r}: port {p!r} is not in 1..{MAX_PORT}")
        if c.cidr is None and not c.ports:
            raise PolicyError(
                f"rule {c.rule!r}: a connect deny needs a CIDR, ports, or both "
                "(denying every connect is not supported)"
            )
        target = any_addr if c.cidr is None else by_net.setdefault(_net(c.cidr, c.rule), {})
        for p in c.ports or (0,):
            target.setdefault(p, idx)
    # An LPM trie returns only the longest match, so each entry inherits the ports of every
    # shorter prefix that covers it (its own entries win).
    nets = sorted(by_net, key=lambda n: n[0])
    for entry_id, net in enumerate(nets, start=1):
        merged: dict[int, int] = {}
        for outer in nets:
            if outer[0] < net[0] and _covers(outer, net):
                merged.update(by_net[outer])
        merged.update(by_net[net])
        plan.nets.append((net[0], net[1], entry_id))
        for port, idx in merged.items():
            plan.ports[(entry_id, port)] = idx
    for port, idx in any_addr.items():
        plan.ports[(0, port)] = idx


def build_plan(policy: DenyPolicy) -> MapPlan:
    """Resolve ``policy`` into map entries; PolicyError names the rule and the bad item."""
    plan = MapPlan(policy=policy)
    table = mounts.mounts() if policy.protect else []
    st_devs: dict[int, int] = {}  # st_dev -> the first rule with a tree on it
    for path, rule in policy.protect.items():
        _add_protect(plan, path, rule, table, st_devs)
    _add_devices(plan, st_devs, table)
    for path, rule in policy.exec_exact.items():
        _add_exec(plan, path, rule, exact=True)
    for path, rule in policy.exec_prefix.items():
        _add_exec(plan, path, rule, exact=False)
    if policy.exec_memfd:
        plan.memfd_exec_rule = plan.rule_index(policy.exec_memfd)
    if policy.exec_upper:
        plan.upper_exec_rule = plan.rule_index(policy.exec_upper)
    _add_connect(plan, policy.connect)
    return plan
