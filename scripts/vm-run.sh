#!/usr/bin/env bash
# Boot one of Debian's kernels (with BPF LSM) under QEMU with virtme-ng, sharing this machine's
# root file system read-only, and run one command in it as root.
#
#   scripts/vm-run.sh [--kernel NAME] RWDIR COMMAND...
#
# NAME is a kernel of scripts/vm-kernels.conf (5.10, 6.1, 6.12...; default: $SENTINEL_VM_KERNEL,
# else 6.1), fetched and cached under build/kernels/NAME by scripts/fetch-kernels.sh (setup.sh
# runs it); SENTINEL_VM_KERNEL may also be a path to a kernel image. A kernel that is not in the
# cache is an error naming the command that fetches it: never another kernel in its place.
# The boot's LSM list is given explicitly (lsm=...,bpf): not every Debian kernel enables BPF LSM
# by default (bullseye's 5.10 does not).
#
# RWDIR is the only writable host directory the guest sees (same path inside); put results
# there. The guest's /tmp is an overlay: use a tmpfs for test files (tests/vm/guest_entry.sh).
# Uses KVM when the CPU offers it, software emulation (TCG) otherwise.
# Env: SENTINEL_VM_MEMORY (default 2G), SENTINEL_VM_CPUS (default 2), SENTINEL_VM_TIMEOUT
# (seconds, default 900; the exit status is then 124), SENTINEL_VM_LOCK (a file: wait for
# flock(1) on it before booting, so that several users of one machine never run two VMs at
# once; a VM under software emulation takes both cores of a 2-core machine).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
usage="usage: $0 [--kernel NAME] RWDIR COMMAND..."
name="${SENTINEL_VM_KERNEL:-6.1}"
if [ "${1:-}" = "--kernel" ]; then
  (($# >= 2)) || { echo "$usage" >&2; exit 2; }
  name="$2"
  shift 2
fi
if (($# < 2)); then
  echo "$usage" >&2
  exit 2
fi
rwdir="$(cd "$1" && pwd)"
shift

# Active LSMs of the guest: Debian's defaults plus bpf (names a kernel lacks are ignored).
LSM_LIST="landlock,lockdown,yama,integrity,apparmor,bpf"

if [ -f "$name" ]; then
  kernel="$name"
else
  env_file="$repo/build/kernels/$name/kernel.env"
  if ! awk -v n="$name" '!/^[[:space:]]*(#|$)/ && $1 == n { found = 1 } END { exit !found }' \
    "$repo/scripts/vm-kernels.conf"; then
    echo "vm-run: unknown kernel '$name' (scripts/vm-kernels.conf lists:" \
      "$(awk '!/^[[:space:]]*(#|$)/ { printf "%s ", $1 }' "$repo/scripts/vm-kernels.conf"))" >&2
    exit 3
  fi
  if [ ! -r "$env_file" ]; then
    echo "vm-run: kernel $name is not fetched: run scripts/fetch-kernels.sh $name" \
      "(scripts/setup.sh fetches every kernel of scripts/vm-kernels.conf)" >&2
    exit 3
  fi
  KVER=$(awk -F= '$1 == "KVER" { print $2 }' "$env_file")
  kernel="$repo/build/kernels/$name/root/boot/vmlinuz-$KVER"
fi
if [ ! -r "$kernel" ]; then
  echo "vm-run: kernel image $kernel is missing (delete build/kernels/$name and run" \
    "scripts/fetch-kernels.sh $name)" >&2
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
if [ -n "${SENTINEL_VM_LOCK:-}" ]; then
  # Held on fd 9 until the VM ends (the exec'd processes inherit it).
  exec 9>>"$SENTINEL_VM_LOCK"
  flock 9
fi
# When the VM really started (after waiting for the lock): its own time, for the run's report.
date +%s.%N >"$rwdir/vm-started"
exec timeout --kill-after=10 "${SENTINEL_VM_TIMEOUT:-900}" \
  "$vng" --run "$kernel" "${accel[@]}" \
  --memory "${SENTINEL_VM_MEMORY:-2G}" --cpus "${SENTINEL_VM_CPUS:-2}" \
  --append "lsm=$LSM_LIST ${SENTINEL_VM_APPEND:-}" \
  --rwdir "$rwdir" --exec "$*"
