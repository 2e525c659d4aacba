"""Deny policies for BPF LSM enforcement, and their encoding into BPF map entries.

A :class:`DenyPolicy` is what a deny rule compiles to: plain data, no kernel objects.
:func:`build_plan` resolves it against the file system and produces a :class:`MapPlan` (the
exact keys and values ``lsm.c`` looks up). Kept free of bcc so it is testable anywhere.

Why identities and not path strings. The kernel hooks see dentries, not strings. Matching a
prefix on a path string would need ``bpf_d_path``, which LSM programs may only call from
sleepable hooks, and would still be fooled by bind mounts, chroots and mount namespaces (the
same file has many strings). Instead each protected path is resolved *once, at load time* to
its ``(device, inode)`` identity; in the kernel, each hook walks from the object's dentry up
through ``d_parent`` (crossing mount points via ``struct mount``) and looks every ancestor up
in a hash of identities. A file is "under /srv/protected" exactly when one of its ancestors
*is* that directory, however it was reached. Cost: one hash lookup per path level.

Consequences, stated plainly:

* A path must exist when the policy is loaded (:class:`PolicyError` otherwise): there is no
  identity to protect yet. A protected *directory* keeps protecting files created later.
* Every ancestor of a protected path is recorded too, so that renaming or removing an
  ancestor (``mv /srv /x``, which would let a new ``/srv/protected`` appear) is denied.
* Files inside a protected directory that already have other hard links (``st_nlink > 1``)
  are protected by their own identity as well, so a link made *before* the policy loaded is no
  way around it. New links are denied by the ``path_link`` hook.
* Exec denials are by identity too: ``/usr/bin/nc`` denies that inode under every name. A
  binary replaced by a new inode after the policy loaded is not covered by an *exact* deny
  (re-load the policy); a *prefix* deny covers everything below the directory.
* Stacking file systems (overlayfs) may report a ``stat`` identity that is not the in-kernel
  inode the hooks see; protect paths on the underlying file system.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

MAX_PORT = 65535
# Cap on the entries scanned below a protected directory for pre-existing hard links.
HARDLINK_SCAN_LIMIT = 200_000
# bpf/enforcement/lsm.c walks at most MAX_DEPTH (32) dentries; keep slack for mount crossings.
MAX_PROTECTED_DEPTH = 28

_log = structlog.get_logger("sentinel.lsm")


class PolicyError(ValueError):
    """A deny policy that cannot be enforced as written (message names the rule and item)."""


@dataclass(frozen=True, slots=True)
class ConnectDeny:
    """Deny connect() to ``cidr`` (any address if None) on ``ports`` (any port if empty)."""

    rule: str
    cidr: str | None = None
    ports: tuple[int, ...] = ()


@dataclass(slots=True)
class DenyPolicy:
    """What to deny, each item naming the rule (id) that asked for it.

    ``protect``: path (file or directory) -> rule; any modification at or below it is denied
    (open for write or with O_TRUNC, write, truncate, unlink, rename from/to, link, symlink,
    mknod/creat, mkdir, rmdir, chmod, chown, setattr, xattrs, shared writable mmap).
    ``exec_exact``: binary path -> rule. ``exec_prefix``: directory -> rule (component-wise:
    ``/opt/bad`` covers ``/opt/bad/x``, not ``/opt/badger``). ``connect``: see ConnectDeny.
    """

    protect: dict[str, str] = field(default_factory=dict)
    exec_exact: dict[str, str] = field(default_factory=dict)
    exec_prefix: dict[str, str] = field(default_factory=dict)
    connect: list[ConnectDeny] = field(default_factory=list)

    def rules(self) -> list[str]:
        """Every rule id the policy mentions, in first-seen order."""
        seen: dict[str, None] = {}
        for mapping in (self.protect, self.exec_exact, self.exec_prefix):
            for rule in mapping.values():
                seen.setdefault(rule, None)
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
    """Rule indices (1-based; 0 = none) stored for one identity; mirrors ``struct ident_val``."""

    write_rule: int = 0
    exec_prefix_rule: int = 0
    exec_exact_rule: int = 0
    ancestor_rule: int = 0


@dataclass(slots=True)
class MapPlan:
    """Everything ``LsmEnforcer`` writes into the BPF maps, plus what it needs to explain events.

    ``rules[i - 1]`` is the rule id of index ``i``. ``nets``: (prefixlen over the 16-byte
    IPv6/IPv4-mapped address, address bytes, entry id). ``ports``: (entry id or 0 for "any
    address", port or 0 for "any port") -> rule index. ``ident_paths``: identity -> the policy
    path it stands for, so events can be reported as paths.
    """

    rules: list[str] = field(default_factory=list)
    deep_exec_rule: int = 0  # denies execs too deep to check; the first exec-prefix rule
    idents: dict[Ident, IdentVal] = field(default_factory=dict)
    ident_paths: dict[Ident, str] = field(default_factory=dict)
    nets: list[tuple[int, bytes, int]] = field(default_factory=list)
    ports: dict[tuple[int, int], int] = field(default_factory=dict)

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


def _scan_tree(plan: MapPlan, root: str, rule: str, idx: int) -> None:
    """Protect files below ``root`` that have other names already (see module docstring),
    and refuse trees deeper than the kernel's walk can follow."""
    scanned = 0
    base_depth = root.rstrip("/").count("/")
    for dirpath, _dirs, files in os.walk(root):
        depth = dirpath.rstrip("/").count("/") - base_depth + 1  # of entries in dirpath
        if depth > MAX_PROTECTED_DEPTH:
            raise PolicyError(
                f"rule {rule!r}: protected tree {root!r} is too deep for the kernel's bounded "
                f"walk ({dirpath!r} is {depth} levels down; at most {MAX_PROTECTED_DEPTH})"
            )
        for name in files:
            scanned += 1
            if scanned > HARDLINK_SCAN_LIMIT:
                _log.warning(
                    "protected tree too large to scan for pre-existing hard links",
                    rule=rule,
                    path=root,
                    scanned=HARDLINK_SCAN_LIMIT,
                )
                return
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                val = plan.idents.setdefault(Ident.of(st), IdentVal())
                val.write_rule = val.write_rule or idx
                plan.ident_paths.setdefault(Ident.of(st), full)


def _add_protect(plan: MapPlan, path: str, rule: str) -> None:
    idx = plan.rule_index(rule)
    st = _stat(path, rule, "protected")
    real = os.path.realpath(path)
    ident = Ident.of(st)
    val = plan.idents.setdefault(ident, IdentVal())
    val.write_rule = val.write_rule or idx
    plan.ident_paths[ident] = real
    _add_ancestors(plan, real, idx)
    if real != os.path.normpath(path):
        # The given name is (or passes through) a symlink: keep that name from being swapped.
        lst = os.lstat(path)
        lval = plan.idents.setdefault(Ident.of(lst), IdentVal())
        lval.write_rule = lval.write_rule or idx
        plan.ident_paths.setdefault(Ident.of(lst), os.path.normpath(path))
        _add_ancestors(plan, os.path.normpath(path), idx)
    if stat.S_ISDIR(st.st_mode):
        _scan_tree(plan, real, rule, idx)
    # (A protected *file* is protected by its own identity, hence under every name it has.)


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
    plan = MapPlan()
    for path, rule in policy.protect.items():
        _add_protect(plan, path, rule)
    for path, rule in policy.exec_exact.items():
        _add_exec(plan, path, rule, exact=True)
    for path, rule in policy.exec_prefix.items():
        _add_exec(plan, path, rule, exact=False)
    _add_connect(plan, policy.connect)
    return plan
