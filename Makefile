# Set-up and the commands of the README: `make demo` (the default `adaptim
# compare` study), `make test` (everything CI runs) and `make fast`.
# Each creates the venv when it is missing ($(VENV), default .venv); re-running
# is quick (stamp files record that it matches pyproject.toml and constraints.txt).
# `make demo` installs the lab only ('.[lab]'); `make test` adds the test tools
# and the reference libraries ('.[lab,test]': keras, jax, playwright, ...).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# -c constraints.txt on every install: torch stays at the pinned CPU build.
PIP := $(PY) -m pip install --quiet --progress-bar off -c constraints.txt
LAB_STAMP := $(VENV)/.adaptim-lab
TEST_STAMP := $(VENV)/.adaptim-test

.PHONY: install install-lab install-test browser postgres demo test fast lint typecheck unit clean

# torch first, from the pin in constraints.txt: the CPU build, never the CUDA
# wheels that a bare "torch" would pull while resolving the package.
define venv_with_torch
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --progress-bar off --upgrade pip
	$(PIP) torch
endef

install: install-test
install-lab: $(LAB_STAMP)
install-test: $(TEST_STAMP)

$(LAB_STAMP): pyproject.toml constraints.txt
	@echo "Installing torch and the lab into $(VENV) (into a fresh one: about 1-2 minutes, 1.4 GB)"
	$(venv_with_torch)
	$(PIP) -e '.[lab]'
	touch $@

$(TEST_STAMP): pyproject.toml constraints.txt
	@echo "Installing torch, the lab and the test tools into $(VENV) (into a fresh one: about 2 minutes, 2.7 GB)"
	$(venv_with_torch)
	$(PIP) -e '.[lab,test]'
	touch $@ $(LAB_STAMP)

# One torch thread per process: the built-in problems are small, and OpenMP threads
# spinning against each other made the default study about twice as slow on 2 cores.
demo: install-lab
	OMP_NUM_THREADS=1 $(VENV)/bin/adaptim compare

lint: install-test
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m ruff format --check src tests benchmarks examples

typecheck: install-test
	$(PY) -m mypy

# Debian's chromium for the report's browser test, when it is missing (see the script).
browser:
	@bash scripts/install-browser.sh

# A local PostgreSQL server on 127.0.0.1 (Debian's package, installed when missing):
# the store tests run against it as well as SQLite (see scripts/start-postgres.sh).
postgres:
	@bash scripts/start-postgres.sh --install >/dev/null

unit: install-test browser postgres
	ADAPTIM_TEST_POSTGRES_URL="$$(bash scripts/start-postgres.sh)" $(PY) -m pytest

test: lint typecheck browser unit

# The quick loop while developing: no slow tests (the browser is installed once, when missing).
fast: lint typecheck browser postgres
	ADAPTIM_TEST_POSTGRES_URL="$$(bash scripts/start-postgres.sh)" $(PY) -m pytest -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
