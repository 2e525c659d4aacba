#!/usr/bin/env bash
# Boot Debian's own kernel (which has BPF LSM) under QEMU with virtme-ng, sharing this
# machine's root file system read-only, and run one command in it as root.
#
#   scripts/vm-run.sh RWDIR COMMAND...
#
# RWDIR is the only writable host directory the guest sees (same path inside); put results
# there. The guest's /tmp is an overlay: use a tmpfs for test files (tests/vm/guest_entry.sh).
# Uses KVM when the CPU offers it, software emulation (TCG) otherwise. The guest kernel is the
# newest /boot/vmlinuz-*-amd64 whose headers are installed (bcc compiles against them inside).
# Env: SENTINEL_VM_KERNEL (kernel image), SENTINEL_VM_MEMORY (default 2G),
# SENTINEL_VM_CPUS (default 2), SENTINEL_VM_TIMEOUT (seconds, default 900).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
if (($# < 2)); then
  echo "usage: $0 RWDIR COMMAND..." >&2
  exit 2
fi
rwdir="$(cd "$1" && pwd)"
shift

kernel="${SENTINEL_VM_KERNEL:-}"
if [ -z "$kernel" ]; then
  for k in $(ls /boot/vmlinuz-*-amd64 2>/dev/null | sort -rV); do
    ver="${k#/boot/vmlinuz-}"
    if [ -e "/usr/src/linux-headers-$ver" ]; then
      kernel="$k"
      break
    fi
  done
fi
if [ -z "$kernel" ] || [ ! -r "$kernel" ]; then
  echo "vm-run: no Debian kernel with matching headers in /boot (run scripts/setup.sh:" \
    "it installs linux-image-amd64 and linux-headers-amd64)" >&2
  exit 3
fi
vng="$repo/.venv/bin/vng"
if [ ! -x "$vng" ]; then
  echo "vm-run: $vng missing (run scripts/setup.sh: virtme-ng is a dev extra)" >&2
  exit 3
fi

accel=(--disable-kvm)
if [ -w /dev/kvm ] && grep -qE '\b(vmx|svm)\b' /proc/cpuinfo; then
  accel=()
fi

# virtme-ng runs its helper scripts (virtme-run) from PATH.
export PATH="$repo/.venv/bin:$PATH"
exec timeout --kill-after=10 "${SENTINEL_VM_TIMEOUT:-900}" \
  "$vng" --run "$kernel" "${accel[@]}" \
  --memory "${SENTINEL_VM_MEMORY:-2G}" --cpus "${SENTINEL_VM_CPUS:-2}" \
  --rwdir "$rwdir" --exec "$*"
