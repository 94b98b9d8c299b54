# Two commands do all the set-up on a fresh machine:
#   make run   - install, then run the proxy on an embedded SeaweedFS store with a sample origin
#   make test  - install, then lint and type-check, then run the whole test suite (what CI runs)
# While working: make check - lint, type-check, and the unit and in-process addon tests (under 90 s)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test check lint bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/backorigin demo

# tests/unit (pure modules), tests/addon (taddons, in process), tests/e2e (real SeaweedFS, mitmdump, clients);
# a test file to a worker, three at once
test: lint
	$(BIN)/python -m pytest -n 3 --dist loadfile tests

check: lint
	$(BIN)/python -m pytest tests/unit tests/addon

# ruff (rules in pyproject.toml) and mypy over addon/, tests/ and bench/
lint: $(BIN)/.installed
	$(BIN)/ruff check addon tests bench
	$(BIN)/mypy

# make bench - install, then run the benchmark suite (bench/, results in BENCHMARKS.md);
# it installs nginx and wrk from Debian's packages itself when they are missing.
# Options go through ARGS, e.g. make bench ARGS="--profile" or ARGS="--only hit,miss".
bench: $(BIN)/.installed
	$(BIN)/python -m bench $(ARGS)
