# parkwatch developer entry points. Every target installs what it needs itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.parkwatch-installed
PYTEST_ARGS ?=
# make test spreads the suite over this many pytest-xdist workers (auto: one per core);
# tests/parallel.py keeps module fixtures and the trainings together and starts the longest first.
TEST_WORKERS ?= auto
BENCHES ?= bench/ingest.py bench/train.py bench/edge_throughput.py bench/rollout.py bench/dashboard.py

.PHONY: help venv demo test test-fast lint bench lock clean

help:
	@echo "make demo   - broker + cloud + one edge daemon on this box; predictions arrive in the cloud store"
	@echo "make test   - the whole test suite (real broker, real RTSP, real ONNX Runtime, real browser)"
	@echo "make lint   - ruff and mypy"
	@echo "make bench  - every benchmark under bench/, each printing its ratio"
	@echo "make venv   - .venv with all extras, pinned by constraints.txt"

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "parkwatch needs Python >= 3.11 ($(PYTHON) is older)"; exit 1; }
	@[ -x $(VENV)/bin/pip ] || $(PYTHON) -m venv $(VENV) || \
	  { echo "cannot create a venv: run 'sudo apt-get install -y python3-venv'"; exit 1; }
	$(VENV)/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[edge,cloud,dev]'
	@touch $@

venv: $(STAMP)

demo: $(STAMP)
	@provisioning/system-deps.sh broker
	$(VENV)/bin/parkwatch cloud demo

test: $(STAMP)
	@provisioning/system-deps.sh broker camera browser postgres container
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

test-fast: $(STAMP)
	@provisioning/system-deps.sh broker camera browser postgres
	$(PY) -m pytest -n $(TEST_WORKERS) -m "not slow and not integration" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check shared edge cloud tests bench tools
	$(VENV)/bin/ruff format --check shared edge cloud tests bench tools
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tools

bench: $(STAMP)
	@provisioning/system-deps.sh broker camera postgres
	@set -e; for b in $(BENCHES); do echo "== $$b"; PYTHONPATH=. $(PY) $$b; done

lock: $(STAMP)
	@{ head -n 2 constraints.txt; $(VENV)/bin/pip freeze --exclude-editable | grep -v '^-e'; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
