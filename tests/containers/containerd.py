"""A private, real containerd with its CRI plugin: a Kubernetes node without the kubelet.

The tests start Debian's containerd with their own root, state directory, socket and config, so
nothing of the machine's is used or changed; they create pod sandboxes and containers through
the CRI API itself (as the kubelet does), with host networking (no CNI plugin is needed) and a
pause image and a busybox image built locally (no registry is reachable here). ``stop`` removes
every pod through the API, stops containerd, and then makes sure nothing is left: no shim, no
container process, no mount, no cgroup of ours.

Exec with a terminal is what ``kubectl exec -it`` does: the CRI ``Exec`` call returns a URL on
containerd's streaming server, spoken to over a WebSocket with Kubernetes' channel protocol
(``v4.channel.k8s.io``: one byte of channel, then data; 0 stdin, 1 stdout, 3 the exit status).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from sentinel.enrichment.container_cri import CriClient, CriError
from sentinel.enrichment.cri_api import api_pb2 as pb

PAUSE_IMAGE = "localhost/sentinel-pause:1.0"
BUSYBOX_IMAGE = "localhost/sentinel-busybox:1.0"
BUSYBOX_REPO = "localhost/sentinel-busybox"
CGROUP_ROOT = Path("/sys/fs/cgroup")
SHIM_DIR = Path("/run/containerd")  # containerd 1.6 keeps shim sockets in /run/containerd/s

CONFIG = """version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{d}/containerd.ttrpc.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # runc lowers the sandbox's oom_score_adj, which needs CAP_SYS_RESOURCE (missing here)
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
"""


def build_images(rootfs: Path, workdir: Path) -> dict[str, Path]:
    """The pause and busybox images as docker-archive tarballs, made by podman from the
    busybox rootfs in a private podman store (the machine's images are not touched)."""
    tar = workdir / "rootfs.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(rootfs, arcname=".")
    store = ["--root", str(workdir / "store"), "--runroot", str(workdir / "run")]
    podman = ["podman", *store, "--storage-driver", "vfs"]
    out = {}
    for image, entry in (
        (PAUSE_IMAGE, 'ENTRYPOINT ["/bin/sleep", "2147483647"]'),  # the pause process
        (BUSYBOX_IMAGE, 'CMD ["/bin/sh"]'),
    ):
        subprocess.run([*podman, "import", "--change", entry, str(tar), image], **_quiet())
        archive = workdir / (image.rsplit("/", 1)[1].replace(":", "-") + ".tar")
        subprocess.run(
            [*podman, "save", "--format", "docker-archive", "-o", str(archive), image], **_quiet()
        )
        out[image] = archive
    subprocess.run([*podman, "system", "reset", "--force"], **_quiet(check=False))
    return out


def _quiet(check: bool = True) -> dict[str, object]:
    return {"check": check, "capture_output": True, "timeout": 120}


@dataclass
class PodRef:
    sandbox_id: str
    name: str
    namespace: str
    uid: str
    config: pb.PodSandboxConfig


class Containerd:
    """One private containerd. ``start`` and ``stop`` may be called repeatedly (a restart
    keeps the containers, as containerd recovers them from their shims)."""

    def __init__(self, workdir: Path, images: dict[str, Path], sock: Path | None = None) -> None:
        self.dir = workdir
        self.sock = sock if sock is not None else workdir / "containerd.sock"
        self.images = images
        self.proc: subprocess.Popen[bytes] | None = None
        self.cri = CriClient(str(self.sock))
        self.pods: list[PodRef] = []
        self._had_shim_dir = SHIM_DIR.exists()
        self._imported = False

    # -- the daemon ------------------------------------------------------------------------
    def start(self, *, cri: bool = True) -> None:
        """Start containerd and wait until the CRI answers (``cri=False``: the CRI plugin
        disabled, as in Docker's own containerd)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "cni" / "conf").mkdir(parents=True, exist_ok=True)
        config = CONFIG.format(d=self.dir, sock=self.sock, pause=PAUSE_IMAGE)
        if not cri:
            config = config.replace(
                'disabled_plugins = ["', 'disabled_plugins = ["io.containerd.grpc.v1.cri", "'
            )
        (self.dir / "config.toml").write_text(config)
        log = open(self.dir / "containerd.log", "ab")  # noqa: SIM115 (lives with the process)
        self.proc = subprocess.Popen(
            ["containerd", "--config", str(self.dir / "config.toml")],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                if cri:
                    self.cri.version(1.0)
                elif self.sock.exists():
                    break
                else:
                    raise OSError("no socket yet")
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("containerd did not start:\n" + self.log_tail()) from None
                time.sleep(0.1)
        if cri and not self._imported:
            for image, archive in self.images.items():
                self._ctr(
                    "images", "import", "--snapshotter", "native", "--digests",
                    "--base-name", image.split(":", 1)[0], str(archive),
                )  # fmt: skip
            self._imported = True

    def log_tail(self, n: int = 30) -> str:
        path = self.dir / "containerd.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])

    def _ctr(self, *args: str) -> str:
        proc = subprocess.run(
            ["ctr", "-a", str(self.sock), "-n", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def image_digest(self, image: str) -> str:
        """The manifest digest ``ctr`` reports for an image reference."""
        for line in self._ctr("images", "ls").splitlines()[1:]:
            cols = line.split()
            if cols and cols[0] == image:
                return next(c for c in cols if c.startswith("sha256:"))
        raise AssertionError(f"{image} not imported")

    def freeze(self) -> None:
        """SIGSTOP: the process keeps its socket, the kernel keeps accepting connections, and
        nothing answers: the real fault of a hung runtime."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop_daemon(self) -> None:
        """Stop containerd only; its shims and containers keep running (as on a real node)."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    # -- pods and containers through the CRI ----------------------------------------------
    def run_pod(
        self, name: str, namespace: str, labels: dict[str, str], *, privileged: bool = False
    ) -> PodRef:
        uid = str(uuid.uuid4())
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, namespace=namespace, uid=uid),
            log_directory=str(self.dir / "pods" / uid),
            labels=labels,
            linux=pb.LinuxPodSandboxConfig(
                # the kubelet's cgroupfs layout: /kubepods/<qos>/pod<uid>/<container id>
                cgroup_parent=f"/kubepods/besteffort/pod{uid}",
                security_context=pb.LinuxSandboxSecurityContext(
                    namespace_options=pb.NamespaceOption(network=pb.NODE),  # hostNetwork
                    privileged=privileged,  # what a privileged container's pod must be
                ),
            ),
        )
        sandbox_id = self.cri.call(
            "RunPodSandbox", pb.RunPodSandboxRequest(config=config), pb.RunPodSandboxResponse, 60
        ).pod_sandbox_id
        pod = PodRef(sandbox_id, name, namespace, uid, config)
        self.pods.append(pod)
        return pod

    def create_container(
        self,
        pod: PodRef,
        name: str,
        command: list[str],
        *,
        image: str = BUSYBOX_IMAGE,
        tty: bool = False,
        privileged: bool = False,
        mounts: tuple[tuple[str, str, bool], ...] = (),
        start: bool = True,
    ) -> str:
        """A container in ``pod`` (labelled as the kubelet labels them); its full id."""
        labels = {
            "io.kubernetes.container.name": name,
            "io.kubernetes.pod.name": pod.name,
            "io.kubernetes.pod.namespace": pod.namespace,
            "io.kubernetes.pod.uid": pod.uid,
        }
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name),
            image=pb.ImageSpec(image=image),
            command=command,
            labels=labels,
            log_path=f"{name}.log",
            tty=tty,
            stdin=tty,
            mounts=[pb.Mount(host_path=h, container_path=c, readonly=ro) for h, c, ro in mounts],
            linux=pb.LinuxContainerConfig(
                security_context=pb.LinuxContainerSecurityContext(privileged=privileged)
            ),
        )
        cid = self.cri.call(
            "CreateContainer",
            pb.CreateContainerRequest(
                pod_sandbox_id=pod.sandbox_id, config=config, sandbox_config=pod.config
            ),
            pb.CreateContainerResponse,
            60,
        ).container_id
        if start:
            self.start_container(cid)
        return cid

    def start_container(self, cid: str) -> None:
        self.cri.call(
            "StartContainer",
            pb.StartContainerRequest(container_id=cid),
            pb.StartContainerResponse,
            60,
        )

    def stop_container(self, cid: str) -> None:
        self.cri.call(
            "StopContainer",
            pb.StopContainerRequest(container_id=cid, timeout=0),
            pb.StopContainerResponse,
            60,
        )

    def exec_sync(self, cid: str, argv: list[str]) -> tuple[int, bytes]:
        """``kubectl exec POD -- CMD`` without a terminal: (exit code, stdout)."""
        resp = self.cri.call(
            "ExecSync",
            pb.ExecSyncRequest(container_id=cid, cmd=argv, timeout=30),
            pb.ExecSyncResponse,
            40,
        )
        return resp.exit_code, resp.stdout

    def exec_tty(self, cid: str, argv: list[str], typed: bytes, timeout: float = 20) -> bytes:
        """``kubectl exec -it POD -- CMD``: a terminal, ``typed`` sent at the first prompt;
        returns what the terminal showed. The exit status must come back as Success."""
        url = self.cri.call(
            "Exec",
            pb.ExecRequest(container_id=cid, cmd=argv, tty=True, stdin=True, stdout=True),
            pb.ExecResponse,
            10,
        ).url
        out = b""
        status = b""
        sent = False
        deadline = time.monotonic() + timeout
        with connect(
            url.replace("http://", "ws://", 1), subprotocols=["v4.channel.k8s.io"], open_timeout=10
        ) as ws:
            while time.monotonic() < deadline:
                try:
                    msg = ws.recv(timeout=0.2)
                except TimeoutError:
                    msg = None
                except ConnectionClosed:
                    break
                if msg:
                    data = msg.encode() if isinstance(msg, str) else msg
                    if data[0] == 1:
                        out += data[1:]
                    elif data[0] == 3:
                        status += data[1:]
                if not sent and b"# " in out:
                    time.sleep(0.2)
                    ws.send(b"\x00" + typed)
                    sent = True
        assert b'"Success"' in status, (out, status)
        return out

    def remove_pod(self, pod: PodRef) -> None:
        with contextlib.suppress(CriError):
            self.cri.call(
                "StopPodSandbox",
                pb.StopPodSandboxRequest(pod_sandbox_id=pod.sandbox_id),
                pb.StopPodSandboxResponse,
                60,
            )
            self.cri.call(
                "RemovePodSandbox",
                pb.RemovePodSandboxRequest(pod_sandbox_id=pod.sandbox_id),
                pb.RemovePodSandboxResponse,
                60,
            )
        if pod in self.pods:
            self.pods.remove(pod)
        _remove_cgroup(f"kubepods/besteffort/pod{pod.uid}")

    # -- cleanup ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Remove every pod, stop containerd, and leave nothing behind (checked), not even
        its directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.thaw()
            for pod in list(self.pods):
                self.remove_pod(pod)
        self.stop_daemon()
        self.cri.close()
        leftovers = self._kill_leftovers()
        for pod in list(self.pods):
            _remove_cgroup(f"kubepods/besteffort/pod{pod.uid}")
        self.pods.clear()
        for parent in ("kubepods/besteffort", "kubepods"):
            _remove_cgroup(parent)  # only if empty: a real kubelet's would not be
        self._unmount()
        if not self._had_shim_dir:
            for d in ("s", "runc/k8s.io", "runc", "fifo", ""):
                with contextlib.suppress(OSError):
                    (SHIM_DIR / d).rmdir()
        shutil.rmtree(self.dir, ignore_errors=True)
        assert leftovers == [], f"processes left behind by containerd: {leftovers}"

    def _kill_leftovers(self) -> list[str]:
        """Shims of this containerd still alive after it stopped, and their containers."""
        found = []
        needle = f"-address\0{self.sock}\0".encode()
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            try:
                cmdline = (pid_dir / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmdline and needle in cmdline:
                found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
                with contextlib.suppress(OSError):
                    os.killpg(int(pid_dir.name), signal.SIGKILL)
                with contextlib.suppress(OSError):
                    os.kill(int(pid_dir.name), signal.SIGKILL)
        return found

    def _unmount(self) -> None:
        prefix = str(self.dir) + "/"
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        for line in reversed(mounts):
            target = line.split()[4]
            if target.startswith(prefix):
                subprocess.run(["umount", "-l", target], check=False, capture_output=True)


def _remove_cgroup(rel: str) -> None:
    """rmdir a cgroup in every hierarchy (v1 controllers and v2), deepest first; a cgroup that
    still has processes or children stays (rmdir refuses), so nobody else's is touched."""
    for hierarchy in CGROUP_ROOT.iterdir():
        base = hierarchy / rel
        if not base.is_dir() or base.is_symlink():
            continue
        for sub in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                sub.rmdir()
        with contextlib.suppress(OSError):
            base.rmdir()
