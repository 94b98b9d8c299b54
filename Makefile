# Two commands do all the set-up on a fresh machine:
#   make run   - install, then run the proxy on an embedded SeaweedFS store with a sample origin
#   make test  - install, then lint and type-check, then run the whole test suite (what CI runs)
# While working: make check - lint, type-check, and the unit and in-process addon tests (under 90 s)
#                make docs  - the documentation site (docs/, mkdocs.yml) into site/, strictly (a broken link fails)
#                make wheel - the package as a wheel in dist/
PYTHON ?= python3
export NO_MKDOCS_2_WARNING := 1  # Material's notice about MkDocs 2 on every build
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test check lint bench docs wheel

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/backorigin demo

# tests/unit (pure modules), tests/addon (taddons, in process), tests/e2e (real SeaweedFS, mitmdump, clients),
# and every command of README.md and docs/ as written (conftest.py); a test file or a page to a worker, three at once;
# then the documentation site, strictly
test: lint
	$(BIN)/python -m pytest -n 3 --dist loadfile tests README.md docs
	$(BIN)/mkdocs build --strict --quiet --site-dir $$(mktemp -d)

# the options reference is made from the options' own declarations, then the site is built
docs: $(BIN)/.installed
	$(BIN)/python -m backorigin.tools.options_reference docs/options.md
	$(BIN)/mkdocs build --strict

wheel: $(BIN)/.installed
	$(BIN)/pip wheel --quiet --no-deps --wheel-dir dist .

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
