"""``sentinel doctor``: can ``sentinel run`` work on this host, and if not, what to do.

Every check does the real thing where that is cheap (load BTF, compile and load a bcc program,
read a record back through a ring buffer, load a BPF LSM program) rather than reading a config
flag, because on the project's own machines the flags lie: ``/sys/kernel/security/lsm`` lists
``bpf`` yet LSM programs are refused. Each result is one line ``STATUS name: detail (fix: ...)``.

Severity: FAIL means ``run`` cannot work (not root, no BTF, no bcc, compile or load fails, no
tracefs); WARN means it runs with less (no BPF LSM: deny rules are refused or reported as
``deny-unenforced``; no container runtime socket: no container names/images).
"""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from sentinel.enrichment.container_meta import KNOWN_SOCKETS, RuntimeSocket, make_client

Status = Literal["OK", "WARN", "FAIL"]

TRACEFS = Path("/sys/kernel/tracing")
BPFFS = Path("/sys/fs/bpf")
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39
# The usual runtime API sockets (Docker API and CRI), as `sentinel run` looks for them.
RUNTIME_SOCKETS = tuple(s.path for s in KNOWN_SOCKETS)


@dataclass(frozen=True)
class Check:
    status: Status
    name: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" (fix: {self.fix})" if self.fix and self.status != "OK" else ""
        return f"{self.status:<4} {self.name}: {self.detail}{fix}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _cap_eff() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_privileges() -> Check:
    caps = _cap_eff()

    def has(c: int) -> bool:
        return bool(caps >> c & 1)

    names = [n for n, c in (("SYS_ADMIN", CAP_SYS_ADMIN), ("BPF", CAP_BPF)) if has(c)]
    names += ["PERFMON"] if has(CAP_PERFMON) else []
    detail = (
        f"euid {os.geteuid()}, capabilities {','.join(names) or 'none of SYS_ADMIN/BPF/PERFMON'}"
    )
    if has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON)):
        return Check("OK", "privileges", detail)
    return Check(
        "FAIL",
        "privileges",
        detail,
        "run as root, or grant CAP_BPF+CAP_PERFMON (and CAP_SYS_ADMIN to mount tracefs); "
        "in a container see docs/operations.md",
    )


def check_btf() -> Check:
    from sentinel.kernel.btf import VMLINUX, BtfError, vmlinux_btf

    try:
        btf = vmlinux_btf()
        size = btf.sizeof("task_struct")
    except (BtfError, OSError, KeyError) as exc:
        return Check(
            "FAIL",
            "btf",
            f"cannot use {VMLINUX}: {exc}",
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (all major distributions since "
            "2020); in a container mount /sys/kernel/btf read-only",
        )
    return Check("OK", "btf", f"{VMLINUX} readable (struct task_struct is {size} bytes)")


def _mounted(path: Path, fstype: str) -> bool:
    try:
        text = Path("/proc/self/mounts").read_text()
    except OSError:
        return False
    return any(
        p[1] == str(path) and p[2] == fstype for p in (ln.split() for ln in text.splitlines())
    )


def _mount_check(name: str, fstype: str, path: Path, required: bool, why: str) -> Check:
    if _mounted(path, fstype):
        return Check("OK", name, f"mounted at {path}")
    if os.geteuid() == 0:
        # Same as `sentinel run` does at start-up: argv list, no shell.
        res = subprocess.run(
            ["mount", "-t", fstype, fstype, str(path)], capture_output=True, text=True, check=False
        )
        if res.returncode == 0 and _mounted(path, fstype):
            return Check("OK", name, f"was not mounted; mounted it at {path} (as run does)")
        err = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[0]
    else:
        err = "not mounted and not root"
    return Check(
        "FAIL" if required else "WARN",
        name,
        f"{path} is not a {fstype} mount ({err}); {why}",
        f"mount -t {fstype} {fstype} {path}",
    )


def _absent_syscalls() -> list[str]:
    """Syscall event types whose sys_exit tracepoint this kernel lacks (when tracefs can be
    read; the tracefs check reports it otherwise)."""
    from sentinel.kernel.sensor import ALL_SYSCALLS, absent_syscalls

    return absent_syscalls(ALL_SYSCALLS) if _mounted(TRACEFS, "tracefs") else []


def _configured_out(names: list[str]) -> set[str]:
    from sentinel.kernel.sensor import configured_out

    return configured_out(names)


def check_kernel_features() -> Check:
    """Which BPF helpers the sensor uses on this kernel and which fallbacks it compiles
    (sentinel.kernel.features, from BTF). FAIL when a required one is missing; WARN when a
    fallback gives a coarser result; OK otherwise (a slower fallback gives the same values)."""
    from sentinel.kernel.btf import BtfError, vmlinux_btf
    from sentinel.kernel.features import UnsupportedKernel, detect

    try:
        feats = detect(vmlinux_btf())
    except (BtfError, OSError) as exc:
        return Check("FAIL", "kernel-features", f"cannot read the kernel's BTF: {exc}")
    except UnsupportedKernel as exc:
        return Check("FAIL", "kernel-features", str(exc), "run a kernel >= 5.8 with BTF")
    missing = feats.missing()
    head = f"{feats.release}: {feats.helpers} BPF helpers"
    absent = _absent_syscalls()
    # A syscall this kernel does not implement has no tracepoint and no events: said, not warned.
    out = _configured_out(absent)
    if out:
        head += f"; not traced, not in this kernel (ENOSYS): {', '.join(sorted(out))}"
    absent = [a for a in absent if a not in out]
    if absent:
        return Check(
            "WARN",
            "kernel-features",
            f"{head}; no tracepoint for {', '.join(absent)}: these event types are not traced",
            "a kernel with these syscalls' tracepoints (CONFIG_FTRACE_SYSCALLS)",
        )
    if not missing:
        names = ", ".join(f.name for f in feats.features)
        return Check("OK", "kernel-features", f"{head}; the sensor uses all of: {names}")
    detail = f"{head}; fallbacks: " + "; ".join(
        f"no {f.name} ({f.what}): {f.fallback} [{f.cost}]" for f in missing
    )
    coarser = any(f.cost == "coarser" for f in missing)
    return Check(
        "WARN" if coarser else "OK",
        "kernel-features",
        detail,
        "a newer kernel gives exact results where a fallback is marked [coarser]",
    )


def check_tracefs() -> Check:
    return _mount_check(
        "tracefs", "tracefs", TRACEFS, True, "tracepoint formats and attachment need it"
    )


def check_bpffs() -> Check:
    return _mount_check("bpffs", "bpf", BPFFS, False, "needed only to pin maps across restarts")


def check_headers() -> Check:
    build = Path(f"/lib/modules/{platform.release()}/build")
    if (build / "include").is_dir() or (build / "Makefile").exists():
        return Check("OK", "kernel-headers", f"{build} -> {build.resolve()}")
    return Check(
        "FAIL",
        "kernel-headers",
        f"{build} is missing; bcc compiles against it",
        "install linux-headers-amd64 and link /lib/modules/$(uname -r)/build to "
        "/usr/src/linux-headers-*-amd64 (and source to *-common); scripts/setup.sh does this",
    )


_PROBE_C = r"""
struct rec { u32 tgid; u32 magic; };
BPF_RINGBUF_OUTPUT(events, 1);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (tgid != TARGET_TGID) return 0;
    struct rec *r = events.ringbuf_reserve(sizeof(struct rec));
    if (!r) return 0;
    r->tgid = tgid;
    r->magic = 0x5e4e71;
    events.ringbuf_submit(r, 0);
    return 0;
}
"""


def check_bcc() -> list[Check]:
    """bcc import, compile+load+attach of a tracepoint program, and a record read back through
    a BPF ring buffer (three lines, since each has its own fix)."""
    try:
        from bcc import BPF
    except ImportError as exc:
        fail = Check(
            "FAIL",
            "bcc",
            f"cannot import bcc ({exc})",
            "apt-get install python3-bpfcc and use a Python that sees /usr/lib/python3/"
            "dist-packages (venv with --system-site-packages)",
        )
        return [fail, Check("FAIL", "bcc-compile", "skipped: bcc not importable", fail.fix)]
    got: list[int] = []

    class Rec(ctypes.Structure):
        _fields_ = [("tgid", ctypes.c_uint32), ("magic", ctypes.c_uint32)]

    t0 = time.monotonic()
    try:
        b = BPF(text=_PROBE_C, cflags=[f"-DTARGET_TGID={os.getpid()}", "-w"])
    except Exception as exc:
        return [
            Check("OK", "bcc", "importable"),
            Check(
                "FAIL",
                "bcc-compile",
                f"compiling/loading a tracepoint program failed: {str(exc).strip()[:300]}",
                "check kernel-headers above and that tracefs is mounted",
            ),
        ]
    secs = time.monotonic() - t0
    try:

        def on_rec(_ctx: object, data: int, _size: int) -> int:
            rec = ctypes.cast(data, ctypes.POINTER(Rec)).contents
            if rec.magic == 0x5E4E71:
                got.append(rec.tgid)
            return 0

        b["events"].open_ring_buffer(on_rec)
        deadline = time.monotonic() + 2.0
        while not got and time.monotonic() < deadline:
            os.getppid()
            b.ring_buffer_poll(50)
    finally:
        b.cleanup()
    out = [
        Check("OK", "bcc", "importable"),
        Check(
            "OK",
            "bcc-compile",
            f"compiled, loaded and attached syscalls:sys_enter_getppid in {secs:.2f}s",
        ),
    ]
    if got:
        out.append(Check("OK", "ringbuf", "a record went kernel -> BPF ring buffer -> sentinel"))
    else:
        out.append(
            Check(
                "FAIL",
                "ringbuf",
                "the program loaded but no record arrived through the ring buffer in 2 s",
                "BPF ring buffers need Linux >= 5.8",
            )
        )
    return out


def check_lsm() -> Check:
    try:
        from sentinel.enforcement.probe import lsm_available
    except ImportError as exc:  # pragma: no cover - the module ships with sentinel
        return Check("WARN", "bpf-lsm", f"cannot probe ({exc})")
    ok, why = lsm_available()
    if ok:
        return Check("OK", "bpf-lsm", why)
    detail, _, how = why.partition(". BPF LSM needs")
    return Check(
        "WARN",
        "bpf-lsm",
        f"{detail}; deny rules cannot be denied (enforcement.unavailable: refuse = run "
        "refuses deny rules, alert = they alert as deny-unenforced, kill = the offending "
        "process is killed after the call); detection is unaffected",
        ("BPF LSM needs" + how) if how else "boot with lsm=...,bpf",
    )


def _as_runtime_socket(path: str) -> list[RuntimeSocket]:
    """The API(s) to try on a socket: a known path's own, else the CRI and the Docker API."""
    known = [s for s in KNOWN_SOCKETS if s.path == path]
    return known or [RuntimeSocket(path, "cri", "cri"), RuntimeSocket(path, "docker", "docker")]


def probe_runtime(path: str, timeout: float = 2.0) -> str:
    """'containerd 1.6.20 (CRI v1) at PATH' for a socket that answers; OSError otherwise.
    Every try is bounded by ``timeout``: a hung runtime makes doctor slower, never stuck."""
    errors = []
    for sock in _as_runtime_socket(path):
        client = make_client(sock)
        try:
            return f"{client.probe(timeout)} at {path}"
        except OSError as exc:
            errors.append(str(exc))
        finally:
            client.close()
    raise OSError("; ".join(errors))


def check_runtime_socket(candidates: tuple[str, ...] = RUNTIME_SOCKETS) -> Check:
    """Which container runtimes answer, over which API: they give container and pod metadata."""
    present = [
        p for p in dict.fromkeys(os.path.realpath(p) for p in candidates if os.path.exists(p))
    ]
    answered, silent = [], []
    for path in present:
        try:
            answered.append(probe_runtime(path))
        except OSError as exc:
            silent.append(f"{path} ({exc})")
    if answered:
        detail = "answered: " + ", ".join(answered)
        if silent:
            detail += "; not answering: " + ", ".join(silent)
        return Check("OK", "container-runtime", detail)
    detail = (
        f"{', '.join(silent)} present but not answering"
        if silent
        else f"no runtime socket ({', '.join(candidates)})"
    )
    return Check(
        "WARN",
        "container-runtime",
        f"{detail}; container.id still works (from cgroups), container.name/image and the "
        "k8s.* fields do not",
        "start the runtime (or its API socket: systemctl start podman.socket) and, in a "
        "container, mount its socket read-only (deploy/daemonset.yaml does for containerd "
        "and CRI-O)",
    )


def check_config(path: Path) -> Check:
    from sentinel.config import ConfigError, load_config

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        return Check("FAIL", "config", str(exc).replace("\n", "; "), f"edit {path}")
    return Check("OK", "config", f"{path} valid ({len(cfg.rules)} rules path(s))")


def run_checks(
    config: Path | None = None, runtime_sockets: tuple[str, ...] = RUNTIME_SOCKETS
) -> list[Check]:
    steps: list[Callable[[], Check | list[Check]]] = [
        check_privileges,
        check_btf,
        check_tracefs,
        check_kernel_features,
        check_bpffs,
        check_headers,
        check_bcc,
        check_lsm,
        lambda: check_runtime_socket(runtime_sockets),
    ]
    if config is not None:
        steps.append(lambda: check_config(config))
    out: list[Check] = []
    for step in steps:
        try:
            res = step()
        except Exception as exc:  # a broken check must be reported, not crash the doctor
            name = getattr(step, "__name__", "check").removeprefix("check_").strip("<>")
            res = Check("FAIL", name, f"the check itself failed: {exc!r}")
        out.extend(res if isinstance(res, list) else [res])
    return out


def kernel_features() -> dict[str, object]:
    """Cheap facts for ``run``'s start-up log line (no compile): what the kernel offers."""
    from sentinel.kernel.btf import VMLINUX

    feats: dict[str, object] = {"kernel": platform.release(), "btf": VMLINUX.exists()}
    feats["tracefs"] = _mounted(TRACEFS, "tracefs")
    try:
        from sentinel.enforcement.probe import lsm_available

        feats["bpf_lsm"] = lsm_available()[0]
    except Exception:  # the summary must never stop start-up
        feats["bpf_lsm"] = None
    major, minor = (int(x) for x in platform.release().split(".")[:2])
    feats["ringbuf"] = (major, minor) >= (5, 8)
    try:
        from sentinel.kernel.btf import vmlinux_btf
        from sentinel.kernel.features import detect

        # Every fallback the sensor compiled on this kernel, by feature (empty: none).
        feats["sensor_fallbacks"] = detect(vmlinux_btf()).summary()
        # Syscall event types without a tracepoint here, but for syscalls the kernel lacks.
        absent = _absent_syscalls()
        out = _configured_out(absent)
        feats["untraceable"] = [a for a in absent if a not in out]
        feats["not_in_kernel"] = sorted(out)
    except Exception as exc:  # the summary must never stop start-up
        feats["sensor_fallbacks"] = f"unknown: {exc}"
    return feats


def exit_code(checks: list[Check]) -> int:
    """0 when ``run`` can work (warnings allowed), 1 otherwise."""
    return 1 if any(c.status == "FAIL" for c in checks) else 0


__all__ = ["RUNTIME_SOCKETS", "Check", "exit_code", "kernel_features", "run_checks"]
