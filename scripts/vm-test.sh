#!/usr/bin/env bash
# The BPF LSM enforcement suite on its own, from a fresh machine:
#   bash scripts/vm-test.sh [pytest args]
# Installs what it needs (scripts/setup.sh: qemu, Debian kernel + headers, virtme-ng), boots
# the VM once, runs tests/vm/guest inside and bench/bench_lsm.py after it, and reports every
# guest test as a host test (tests/vm/test_vm.py), plus the host-side LSM tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest tests/vm -p no:cacheprovider -v -s "$@"
