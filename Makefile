# ml_assets: `make run` (the workflow on the embedded default) and `make test` set everything up.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export ML_ASSETS_HOME ?= $(CURDIR)/.ml_assets
export DAGSTER_HOME ?= $(ML_ASSETS_HOME)/dagster
# The UI listens on localhost only; `make dev DEV_HOST=0.0.0.0` exposes it (no authentication).
DEV_HOST ?= 127.0.0.1

.PHONY: run test lint dev status worker serve bench clean
.DEFAULT_GOAL := run

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/ml-assets run

status: $(BIN)/.installed
	$(BIN)/ml-assets status

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Steps on Celery workers: with ML_ASSETS_CELERY_BROKER set, on every machine that executes
# steps (e.g. `make worker WORKER_ARGS="--queue training --concurrency 2"`).
WORKER_ARGS ?=
worker: $(BIN)/.installed
	$(BIN)/ml-assets worker $(WORKER_ARGS)

# The current model selection over HTTP (KServe V1), swapped as new ones land; on localhost:8080
# unless told otherwise (e.g. `make serve SERVE_ARGS="--host 0.0.0.0 --port 9000"`).
SERVE_ARGS ?=
serve: $(BIN)/.installed
	$(BIN)/ml-assets serve $(SERVE_ARGS)

dev: $(BIN)/.installed
	$(BIN)/ml-assets dev --host $(DEV_HOST) --port 3000

bench: $(BIN)/.installed
	$(BIN)/python -m bench.run

clean:
	rm -rf $(ML_ASSETS_HOME)
