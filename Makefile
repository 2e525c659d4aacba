# The two commands that matter are `make run` and `make test`; both set up a fresh machine first.
PY := .venv/bin/python
SENTINEL := .venv/bin/sentinel

.PHONY: setup run test lint typecheck unit test-vm test-kernels bench

setup:
	@bash scripts/setup.sh

run: setup
	$(SENTINEL) run --rules rules/

lint: setup
	.venv/bin/ruff check sentinel tests bench
	.venv/bin/ruff format --check sentinel tests bench

typecheck: setup
	.venv/bin/mypy

unit: setup
	$(PY) -m pytest

test: lint typecheck unit

test-vm: setup
	$(PY) -m pytest tests/vm

# Every VM kernel of scripts/vm-kernels.conf, each with its suite (`make test` boots only those
# marked "yes": CI's 60 minutes; README's Kernels table). SENTINEL_VM_LOCK=/work/notes/vm.lock: one VM at a time on a shared machine.
test-kernels: setup
	SENTINEL_VM_KERNELS=all $(PY) -m pytest tests/vm/test_vm.py

bench: setup
	$(PY) -m bench
