"""The typed field registry: every field a condition or output may name.

A field's type decides how a right-hand value is read at compile time (``fd.num >= 0`` is an
integer comparison, ``fd.snet in (10.0.0.0/8)`` a CIDR test, ``evt.arg.flags contains O_TRUNC``
a flag test), so type errors surface when rules load, not per event. Whether Sentinel's sensor
fills a field is not declared here: it follows from the code that fills it
(``sentinel.enrichment.event.sensor_fields``, derived from the event table's getters). A rule
may still use a field the sensor does not fill (the check is then false, as Falco does for a
missing value), and ``sentinel validate`` warns about it.

Names and meanings follow Falco's syscall fields (``falco --list``) so rules port unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class FieldType(StrEnum):
    STRING = "string"
    INT = "int64"
    UINT = "uint64"
    BOOL = "bool"
    IPADDR = "ipaddr"
    IPNET = "ipnet"
    PORT = "port"
    FLAGS = "flags"
    ABSTIME = "abstime"
    RELTIME = "reltime"
    BYTES = "bytebuf"
    CHAR = "char"


class Kind(StrEnum):
    """How a field holds values."""

    SCALAR = "scalar"
    LIST = "list"  # several values; `in` is subset, `intersects` overlap, others: any value
    ANCESTORS = "ancestors"  # proc.aname & co: without index any ancestor matches; [N] selects
    # fd.ip, fd.net, fd.port: both ends of a connection; a check holds when it holds for
    # either end, except ``!=``, which holds when it holds for both (libsinsp's compare_ip)
    EITHER = "either"


class Arg(StrEnum):
    NONE = "none"
    INDEX = "index"  # [N], a non-negative integer
    OPTIONAL = "optional"  # free-form argument allowed but not required
    REQUIRED = "required"


NUMERIC = frozenset({FieldType.INT, FieldType.UINT, FieldType.PORT, FieldType.ABSTIME})
NUMERIC |= {FieldType.RELTIME}

FILE_EVENTS = frozenset({"open", "openat", "openat2", "creat"})
NET_EVENTS = frozenset({"connect", "accept", "accept4", "bind", "listen", "sendto", "recvfrom"})
FD_EVENTS = FILE_EVENTS | NET_EVENTS


@dataclass(frozen=True, slots=True)
class FieldInfo:
    name: str
    type: FieldType
    desc: str
    kind: Kind = Kind.SCALAR
    arg: Arg = Arg.NONE
    event_types: frozenset[str] | None = None  # None: every event type

    @property
    def numeric(self) -> bool:
        return self.type in NUMERIC


S, INT, U, B = FieldType.STRING, FieldType.INT, FieldType.UINT, FieldType.BOOL
_F: list[FieldInfo] = []


def _add(
    name: str,
    typ: FieldType,
    desc: str,
    *,
    kind: Kind = Kind.SCALAR,
    arg: Arg = Arg.NONE,
    ev: frozenset[str] | None = None,
) -> None:
    _F.append(FieldInfo(name, typ, desc, kind, arg, ev))


# ---- evt ---------------------------------------------------------------------------------------
_add("evt.num", U, "event number (a per-run sequence)")
_add("evt.time", FieldType.ABSTIME, "event timestamp, ns since the epoch")
_add("evt.rawtime", FieldType.ABSTIME, "event timestamp, ns since the epoch")
_add("evt.datetime", S, "event timestamp as a date-time string")
_add("evt.type", S, "event (syscall) name: execve, openat, connect, ...")
_add("evt.dir", S, "direction: '<' exit (Sentinel's events are exit events), '>' enter")
_add("evt.category", S, "event category: process, file, net")
_add("evt.cpu", INT, "CPU the event was seen on")
_add("evt.res", S, "result: SUCCESS or an errno name (ENOENT, EACCES...)")
_add("evt.rawres", INT, "result as a number (fd, 0, or -errno)")
_add("evt.failed", B, "true if the syscall failed")
_add("evt.is_open_read", B, "open with read intent", ev=FILE_EVENTS)
_add("evt.is_open_write", B, "open with write intent", ev=FILE_EVENTS)
_add("evt.is_open_exec", B, "open of a file to execute it", ev=FILE_EVENTS)
_add("evt.is_open_create", B, "open that created the file", ev=FILE_EVENTS)
_add("evt.args", S, "all event arguments as text")
_add("evt.arg", S, "an event argument by name or index: evt.arg[0]", arg=Arg.REQUIRED)
_add("evt.rawarg", S, "an event argument's raw value by name", arg=Arg.REQUIRED)
# Every parameter name of the event table (a test keeps the two in step); flags render as
# flag names and are tested one flag at a time.
for _n in sorted(
    """
    res fd dirfd name path filename pathname flags mode oldpath newpath olddirfd newdirfd
    olddir newdir linkpath linkdirfd target uid gid ruid euid suid cmd request domain type
    proto addr tuple data size exe args pid tid ptid cwd comm tty loginuid pgid status ret sig
    core nstype entries sq_entries cq_entries sq_thread_cpu features length uargs dev dir
    backlog oldfd newfd res_or_fd queuepct queuelen queuemax
    """.split()  # noqa: SIM905
):
    _t = FieldType.FLAGS if _n == "flags" else S
    # evt.arg.* are the rendered argument values (text), as in Falco; evt.rawarg.* are raw.
    _add(f"evt.arg.{_n}", _t, f"the event's '{_n}' argument")
_add("evt.buffer", FieldType.BYTES, "read/write data buffer")
_add("evt.buflen", U, "read/write buffer length")
_add("evt.hostname", S, "host name the event was seen on")
_add("evt.is_io_uring", B, "the operation was an io_uring request, not a syscall (Sentinel's own)")
_add("evt.source", S, "event source (syscall)")
_add("evt.latency", FieldType.RELTIME, "syscall latency in ns")
_add("evt.plugininfo", S, "plugin event info")
_add("evt.is_async", B, "asynchronous event")
_add("evt.count", U, "always 1, for aggregations")

# ---- proc / thread -----------------------------------------------------------------------------
_add("proc.pid", INT, "process id (thread group id)")
_add("proc.vpid", INT, "process id as seen in its pid namespace")
_add("proc.ppid", INT, "parent process id")
_add("proc.vpgid", INT, "process group id in its pid namespace")
_add("proc.pgid", INT, "process group id")
_add("proc.sid", INT, "session id")
_add("proc.name", S, "process name (comm; the executable's basename, 15 chars max)")
_add("proc.exe", S, "argv[0] of the process")
_add("proc.exepath", S, "full path of the executable")
_add("proc.cmdline", S, "name and arguments: 'bash -c id'")
_add("proc.cmdnargs", U, "number of command-line arguments")
_add("proc.cmdlenargs", U, "total length of command-line arguments")
_add("proc.args", S, "arguments, space-separated (without the name)")
_add(
    "proc.env",
    S,
    "environment (KEY=VALUE, space-separated); proc.env[NAME]: one value",
    arg=Arg.OPTIONAL,
)
_add("proc.cwd", S, "current working directory")
_add("proc.tty", INT, "controlling terminal (0 when none)")
_add("proc.loginshellid", INT, "pid of the oldest shell ancestor")
_add("proc.duration", FieldType.RELTIME, "ns since the process started")
_add("proc.start_ts", FieldType.ABSTIME, "process start time, ns since the epoch")
_add("proc.pname", S, "parent process name")
_add("proc.pexe", S, "parent's argv[0]")
_add("proc.pexepath", S, "parent's executable path")
_add("proc.pcmdline", S, "parent's command line")
_add("proc.aname", S, "ancestor names; [N]: N-th ancestor (0 self, 1 parent)", kind=Kind.ANCESTORS)
_add("proc.aexe", S, "ancestor argv[0]s; [N]: N-th ancestor", kind=Kind.ANCESTORS)
_add("proc.aexepath", S, "ancestor executable paths; [N]: N-th ancestor", kind=Kind.ANCESTORS)
_add("proc.acmdline", S, "ancestor command lines; [N]: N-th ancestor", kind=Kind.ANCESTORS)
_add("proc.apid", INT, "ancestor pids; [N]: N-th ancestor", kind=Kind.ANCESTORS)
_add("proc.sname", S, "name of the session leader")
_add("proc.sid.exe", S, "session leader's argv[0]")
_add("proc.sid.exepath", S, "session leader's executable path")
_add("proc.vpgid.name", S, "process group leader's name")
_add("proc.vpgid.exe", S, "process group leader's argv[0]")
_add("proc.vpgid.exepath", S, "process group leader's executable path")
_add("proc.exitcode", INT, "a procexit's exit status, as wait(2) reports it (Sentinel's)")
_add("proc.is_vpgid_leader", B, "true if the process leads its process group")
_add("proc.is_sid_leader", B, "true if the process leads its session")
_add("proc.is_exe_writable", B, "the executable is writable by the process's user")
_add("proc.is_exe_upper_layer", B, "executable in an overlayfs upper layer")
_add("proc.is_exe_from_memfd", B, "executable is a memfd")
_add("proc.is_exe_lower_layer", B, "executable in an overlayfs lower layer")
_add("proc.is_container_healthcheck", B, "container health check process")
_add("proc.is_container_liveness_probe", B, "liveness probe")
_add("proc.is_container_readiness_probe", B, "readiness probe")
_add("proc.exe_ino", U, "executable inode")
_add("proc.exe_ino.ctime", FieldType.ABSTIME, "executable inode ctime")
_add("proc.exe_ino.mtime", FieldType.ABSTIME, "executable inode mtime")
_add("proc.exe_ino.ctime_duration_proc_start", FieldType.RELTIME, "ctime to start")
_add("proc.exe_ino.ctime_duration_pidns_start", FieldType.RELTIME, "ctime to ns")
_add("proc.pidns_init_start_ts", FieldType.ABSTIME, "pid namespace init start")
_add("proc.nthreads", U, "number of threads")
_add("proc.fdopencount", U, "open file descriptors")
_add("thread.tid", INT, "thread id")
_add(
    "thread.comm",
    S,
    "the thread's current name (prctl PR_SET_NAME changes it; proc.name is the name at exec)",
)
_add("thread.vtid", INT, "thread id in its pid namespace")
_add("thread.ismain", B, "true for the main thread")
_add("thread.cap_permitted", S, "permitted capabilities")
_add("thread.cap_effective", S, "effective capabilities")
_add("thread.cap_inheritable", S, "inheritable capabilities")

# ---- user / group ------------------------------------------------------------------------------
_add("user.uid", U, "user id")
_add("user.name", S, "user name (from the host's passwd)")
_add("user.homedir", S, "home directory")
_add("user.shell", S, "login shell")
_add("user.loginuid", INT, "audit login uid (-1 when unset)")
_add("user.loginname", S, "audit login user name")
_add("group.gid", U, "group id")
_add("group.name", S, "group name")

# ---- fd ----------------------------------------------------------------------------------------
_FD = FD_EVENTS
_add("fd.num", INT, "file descriptor number (-1 when the call failed)", ev=_FD)
_add("fd.type", S, "file, directory, ipv4, ipv6, unix, ...", ev=_FD)
_add("fd.typechar", FieldType.CHAR, "f file, 4 ipv4, 6 ipv6, u unix, d directory", ev=_FD)
_add("fd.name", S, "absolute path, or the connection tuple for sockets", ev=_FD)
_add("fd.nameraw", S, "the path as passed to the syscall", ev=_FD)
_add("fd.directory", S, "directory part of fd.name", ev=FILE_EVENTS)
_add("fd.filename", S, "file part of fd.name", ev=FILE_EVENTS)
_add("fd.name_changed", B, "fd.name differs from the name at open", ev=_FD)
_add("fd.ino", U, "inode number", ev=_FD)
_add("fd.dev", U, "device number", ev=_FD)
_add("fd.cip", FieldType.IPADDR, "client IP", ev=NET_EVENTS)
_add("fd.sip", FieldType.IPADDR, "server IP", ev=NET_EVENTS)
_add("fd.lip", FieldType.IPADDR, "local IP", ev=NET_EVENTS)
_add("fd.rip", FieldType.IPADDR, "remote IP", ev=NET_EVENTS)
_add("fd.ip", FieldType.IPADDR, "client or server IP", kind=Kind.EITHER, ev=NET_EVENTS)
_add("fd.cport", FieldType.PORT, "client port", ev=NET_EVENTS)
_add("fd.sport", FieldType.PORT, "server port", ev=NET_EVENTS)
_add("fd.lport", FieldType.PORT, "local port", ev=NET_EVENTS)
_add("fd.rport", FieldType.PORT, "remote port", ev=NET_EVENTS)
_add("fd.port", FieldType.PORT, "client or server port", kind=Kind.EITHER, ev=NET_EVENTS)
_add("fd.dport", FieldType.PORT, "destination port of a connect", ev=NET_EVENTS)
_add("fd.dip", FieldType.IPADDR, "destination IP of a connect", ev=NET_EVENTS)
_add("fd.cnet", FieldType.IPNET, "client IP, matched against CIDRs", ev=NET_EVENTS)
_add("fd.snet", FieldType.IPNET, "server IP, matched against CIDRs", ev=NET_EVENTS)
_add("fd.lnet", FieldType.IPNET, "local IP, matched against CIDRs", ev=NET_EVENTS)
_add("fd.rnet", FieldType.IPNET, "remote IP, matched against CIDRs", ev=NET_EVENTS)
_add(
    "fd.net", FieldType.IPNET, "client or server IP, against CIDRs", kind=Kind.EITHER, ev=NET_EVENTS
)
_add(
    "fd.cip.name",
    S,
    "client IP: the rules' domain names it resolves to",
    kind=Kind.EITHER,
    ev=NET_EVENTS,
)
_add(
    "fd.sip.name",
    S,
    "server IP: the rules' domain names it resolves to",
    kind=Kind.EITHER,
    ev=NET_EVENTS,
)
_add(
    "fd.lip.name",
    S,
    "local IP: the rules' domain names it resolves to",
    kind=Kind.EITHER,
    ev=NET_EVENTS,
)
_add(
    "fd.rip.name",
    S,
    "remote IP: the rules' domain names it resolves to",
    kind=Kind.EITHER,
    ev=NET_EVENTS,
)
_add("fd.l4proto", S, "tcp, udp, icmp, raw", ev=NET_EVENTS)
_add("fd.sockfamily", S, "ip or unix", ev=NET_EVENTS)
_add("fd.is_server", B, "the process is the server end", ev=NET_EVENTS)
_add("fd.connected", B, "the socket is connected", ev=NET_EVENTS)
_add("fd.uid", S, "unique fd id (pid + fd)", ev=_FD)
_add("fd.containername", S, "container name + fd name", ev=_FD)
_add("fd.containerdirectory", S, "container name + directory", ev=_FD)
_add("fs.path.name", S, "path of a filesystem event")
_add("fs.path.nameraw", S, "raw path of a filesystem event")
_add("fs.path.source", S, "source path of a rename/link")
_add("fs.path.target", S, "target path of a rename/link")
_add("fs.path.sourceraw", S, "source path of a rename/link, as passed")
_add("fs.path.targetraw", S, "target path of a rename/link, as passed")

# ---- container / k8s ---------------------------------------------------------------------------
_add("container.id", S, "12-hex short container id, 'host' outside containers")
_add("container.full_id", S, "full 64-hex container id")
_add("container.name", S, "container name")
_add("container.image", S, "image name with tag")
_add("container.image.id", S, "image id")
_add("container.image.repository", S, "image repository")
_add("container.image.tag", S, "image tag")
_add("container.image.digest", S, "image registry digest (sha256:...)")
_add("container.type", S, "docker, podman, containerd, cri-o")
_add("container.privileged", B, "true for a privileged container")
_add("container.mounts", S, "mounts as source:dest:mode:rdrw:propagation, comma-separated")
_add("container.mount", S, "a mount by index or source glob ('none' if none)", arg=Arg.REQUIRED)
_add("container.mount.source", S, "mount source by index or dest glob", arg=Arg.REQUIRED)
_add("container.mount.dest", S, "mount dest by index or source glob", arg=Arg.REQUIRED)
_add("container.mount.mode", S, "mount mode by index or source glob", arg=Arg.REQUIRED)
_add("container.mount.rdwr", S, "mount rdwr by index or source glob", arg=Arg.REQUIRED)
_add("container.mount.propagation", S, "mount propagation by index or source", arg=Arg.REQUIRED)
_add("container.start_ts", FieldType.ABSTIME, "container creation, ns since the epoch")
_add("container.duration", FieldType.RELTIME, "ns since the container was created")
_add("container.healthcheck", S, "health check command")
_add("container.liveness_probe", S, "liveness probe command")
_add("container.readiness_probe", S, "readiness probe command")
_add("container.ip", S, "container (pod) IP")
_add("container.cni.json", S, "CNI result")
_add("container.host_pid", B, "shares the host pid namespace (pod's hostPID)")
_add("container.host_network", B, "shares the host network namespace (pod's hostNetwork)")
_add("container.host_ipc", B, "shares the host ipc namespace (pod's hostIPC)")
_add("container.label", S, "a container label by name", arg=Arg.REQUIRED)
_add("container.labels", S, "all labels as key:value, comma-separated")
_add("k8s.ns.name", S, "Kubernetes namespace")
_add("k8s.pod.name", S, "Kubernetes pod name")
_add("k8s.pod.uid", S, "Kubernetes pod uid")
_add("k8s.pod.label", S, "a pod label by name", arg=Arg.REQUIRED)
_add("k8s.pod.labels", S, "pod labels as key:value, comma-separated")
_add("k8s.pod.ip", S, "pod IP")
_add("k8s.pod.cni.json", S, "pod CNI result")
_add("k8s.pod.sandbox_id", S, "12-hex short pod sandbox id")
_add("k8s.pod.full_sandbox_id", S, "full 64-hex pod sandbox id")
_add("k8s.container.name", S, "the container's name in its pod spec (Sentinel's; not Falco's)")

# ---- Sentinel's own ----------------------------------------------------------------------------
_add("sentinel.rule_action", S, "action of the rule that matched (alert or deny)")

FIELDS: dict[str, FieldInfo] = {f.name: f for f in _F}

# Falco event (syscall) names the engine knows about: used to index rules and to answer
# "which event types can this rule set match" when a rule does not restrict evt.type.
EVENT_TYPES: frozenset[str] = frozenset(
    """
    execve execveat clone clone3 fork vfork procexit open openat openat2 creat connect accept
    accept4 bind listen socket sendto recvfrom sendmsg recvmsg read write pread pwrite readv
    writev close dup dup2 dup3 chmod fchmod fchmodat chown fchown fchownat lchown unlink
    unlinkat rename renameat renameat2 link linkat symlink symlinkat mkdir mkdirat rmdir
    truncate ftruncate mount umount umount2 ptrace setuid setgid setresuid setresgid setreuid
    setregid capset init_module finit_module delete_module bpf memfd_create mmap mprotect
    userfaultfd prctl kill tgkill tkill chdir fchdir chroot pivot_root unshare setns
    io_uring_setup io_uring_enter io_uring_register sethostname setdomainname container
    signaldeliver sendfile splice process_vm_writev process_vm_readv fcntl ioctl
    """.split()  # noqa: SIM905
)


def lookup(name: str) -> FieldInfo | None:
    return FIELDS.get(name)
