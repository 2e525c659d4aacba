# The two commands that matter are `make run` and `make test`; both set up a fresh machine first.
PY := .venv/bin/python
SENTINEL := .venv/bin/sentinel

.PHONY: setup run test lint typecheck unit test-vm bench

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

bench: setup
	$(PY) -m bench
