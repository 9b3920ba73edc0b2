# pslab: `make demo` and `make test` are all a fresh clone needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow test-all bench reproduce clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: setup
	$(BIN)/python experiments/demo.py

test: setup
	$(BIN)/python -m pytest -q

# The slow tests alone (the PS failover matrix and long sweeps); CI runs them after `make test`.
test-slow: setup
	$(BIN)/python -m pytest -q -m slow

test-all: setup
	$(BIN)/python -m pytest -q -m ''

# Every comparison at the small preset, then every figure (< 45 min on 2 cores);
# `make reproduce PRESET=large` for bigger machines.
PRESET ?= small
reproduce: setup
	$(BIN)/python experiments/reproduce.py --preset $(PRESET)

clean:
	rm -rf runs .pytest_cache
