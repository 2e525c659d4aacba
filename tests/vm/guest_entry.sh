#!/usr/bin/env bash
# Runs INSIDE the BPF LSM VM (started by tests/vm/test_vm.py through scripts/vm-run.sh).
#   guest_entry.sh OUTDIR [TEST PATHS / pytest args...]   (default: tests/vm/guest)
#   env: SENTINEL_VM_TESTS=0 / SENTINEL_VM_BENCH=0 / SENTINEL_VM_DOCTOR=0 to skip a part
# Mounts what the sensor needs, writes `sentinel doctor`'s report, runs the guest suite (JUnit
# XML into OUTDIR), then the LSM benchmark (JSON into OUTDIR). The repository is visible
# read-only at the same path.
set -uo pipefail
out="$1"
shift
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
t0=$(date +%s.%N)

mountpoint -q /sys/kernel/security || mount -t securityfs securityfs /sys/kernel/security
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
# Test files on a real tmpfs: the guest's /tmp is an overlay whose stat() identities are not
# the in-kernel inodes the LSM hooks see (see sentinel/kernel/lsm_policy.py).
mkdir -p /run/sentinel-vm
mountpoint -q /run/sentinel-vm || mount -t tmpfs -o size=512M tmpfs /run/sentinel-vm
export TMPDIR=/run/sentinel-vm
# The BPF program cache on the tmpfs too: the guest sees the host's /var/cache read-only.
export SENTINEL_BPF_CACHE=/run/sentinel-vm/bpf-cache
# podman's storage on the tmpfs too: the guest's /var/lib/containers is on an overlayfs, over
# which containers/storage refuses its overlay driver ("'overlay' is not supported over
# overlayfs": every podman run failed in the 5.10 VM).
mkdir -p /run/sentinel-vm/containers
cat >/run/sentinel-vm/containers/storage.conf <<'CONF'
[storage]
driver = "overlay"
graphroot = "/run/sentinel-vm/containers/storage"
runroot = "/run/sentinel-vm/containers/run"
CONF
export CONTAINERS_STORAGE_CONF=/run/sentinel-vm/containers/storage.conf
export PYTHONDONTWRITEBYTECODE=1
export SENTINEL_IN_VM=1
export SENTINEL_VM_OUT="$out"

{
  echo "kernel=$(uname -r)"
  echo "lsm=$(cat /sys/kernel/security/lsm)"
  echo "boot_uptime_s=$(cut -d' ' -f1 /proc/uptime)"
  echo "guest_start_epoch=$(date +%s)"
} >"$out/guest-info.txt"

if [ "${SENTINEL_VM_DOCTOR:-1}" = 1 ]; then
  # What this kernel offers and what Sentinel does about it (README's kernel table).
  .venv/bin/python -m sentinel doctor >"$out/doctor.txt" 2>&1
  echo "doctor_rc=$?" >>"$out/guest-info.txt"
fi
td=$(date +%s.%N)

if [ "${SENTINEL_VM_TESTS:-1}" = 1 ]; then
  (($#)) || set -- tests/vm/guest
  # -u and -v: each test's id reaches the shared log before it runs, so a VM that times out
  # still names the test it was in (tests/vm/test_vm.py). --timeout: a test that hangs fails
  # with its stack after SENTINEL_GUEST_TEST_TIMEOUT s and the suite goes on (pytest-timeout;
  # fixtures count: arming sentinel under emulation takes minutes, and the deny examples
  # allow 1200 s for it).
  .venv/bin/python -u -m pytest -p no:cacheprovider -v --junitxml="$out/junit.xml" \
    --timeout="${SENTINEL_GUEST_TEST_TIMEOUT:-1500}" "$@" 2>&1 |
    tee "$out/guest-pytest.log"
  echo "pytest_rc=${PIPESTATUS[0]}" >>"$out/guest-info.txt"
fi
t1=$(date +%s.%N)

if [ "${SENTINEL_VM_BENCH:-1}" = 1 ]; then
  .venv/bin/python bench/bench_lsm.py --inside-vm --json "$out/bench.json" 2>&1 |
    tee "$out/bench.log"
  echo "bench_rc=${PIPESTATUS[0]}" >>"$out/guest-info.txt"
fi
t2=$(date +%s.%N)
awk -v a="$t0" -v d="$td" -v b="$t1" -v c="$t2" \
  'BEGIN { printf "doctor_s=%.1f\nsuite_s=%.1f\nbench_s=%.1f\n", d - a, b - d, c - b }' \
  >>"$out/guest-info.txt"
echo "guest_end_epoch=$(date +%s)" >>"$out/guest-info.txt"
echo "guest_done=1" >>"$out/guest-info.txt"
