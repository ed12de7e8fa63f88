# Set-up and the two commands of the README: `make demo` (the default
# `adaptim compare` study) and `make test`.
# Both create .venv when it is missing; re-running is quick (a stamp file
# records that the environment matches pyproject.toml and constraints.txt).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.adaptim-installed

.PHONY: install browser demo test lint typecheck unit clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, from the pin: the CPU build, never the CUDA wheels.
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[lab,test]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/adaptim compare

lint: install
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m ruff format --check src tests benchmarks examples

typecheck: install
	$(PY) -m mypy

# The report's test opens it in Debian's chromium (driven by Playwright, which downloads
# no browser). Installed when missing; as root only, else the test skips outside CI.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "chromium is missing and this is not root: the report's browser test will skip"; \
	  fi; }

unit: install browser
	$(PY) -m pytest

test: lint typecheck browser unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
