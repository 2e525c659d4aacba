#!/usr/bin/env bash
# Sets up everything Sentinel and its tests need on a fresh Debian 12 machine (root):
# apt packages, kernel headers for bcc's compile step, the VM kernels (scripts/fetch-kernels.sh),
# the virtualenv, and the mounts.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3-bpfcc python3-venv python3-dev      # bcc's Python bindings live in Debian's python
  linux-headers-amd64 bpftool bpftrace        # bcc compiles against generic headers; bench uses bpftrace
  podman runc busybox-static debootstrap      # real containers; debootstrap makes the image base
  containerd                                  # a real CRI runtime (Kubernetes node) for the tests
  rsyslog rsyslog-gnutls openssl              # real syslog receiver (TCP and TLS) for output tests
  qemu-system-x86 zstd xz-utils               # the VMs (kernels: scripts/fetch-kernels.sh)
  make iproute2 procps gcc liburing-dev       # gcc: C test programs (layouts, path racer, io_uring, ptrace victim), bench load generators
  strace kmod                                 # default-rules tests: a debugger near miss, insmod/modprobe
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# bcc needs /lib/modules/$(uname -r)/build; no headers exist for the running kernel, so we point
# it at Debian's generic ones. Only used to compile; struct offsets come from BTF (see bpf/).
kdir="/lib/modules/$(uname -r)"
if [ ! -e "$kdir/build" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
  mkdir -p "$kdir"
  ln -sfn "$hdr" "$kdir/build"
  ln -sfn "$common" "$kdir/source"
fi

# The kernels the VM suites boot (scripts/vm-kernels.conf: Debian's 5.10, 6.1, 6.12), fetched
# once into build/kernels through a private apt configuration (the host's sources are not
# touched). A kernel that cannot be fetched fails setup, and so `make test`, naming it.
bash scripts/fetch-kernels.sh

# podman: runc runtime, cgroupfs manager, no default ulimits (see ../shared/KERNEL.md).
if [ -d /etc/containers ] || mkdir -p /etc/containers; then
  if ! grep -q 'default_ulimits' /etc/containers/containers.conf 2>/dev/null; then
    printf '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n' \
      > /etc/containers/containers.conf
  fi
fi

# Filesystems the sensor needs; `sentinel run` mounts them too, this is for the tests.
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing || true
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug || true
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || true

# The virtualenv: Debian's interpreter, so that bcc (python3-bpfcc) is importable.
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.sentinel-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi
echo "setup: ok"
