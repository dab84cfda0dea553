# First-session risk: every target a newcomer or CI needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3.11
TOOLS := .fsp/tools
UV := $(shell command -v uv 2>/dev/null || echo $(TOOLS)/bin/uv)
VENV := .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: help install demo test test-fast fuzz lint format typecheck shape check bench clean

help: ## list every target
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(TOOLS)/bin/uv:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv

$(BIN)/fsp: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra dev --python $(PYTHON)
	@touch $@

install: $(BIN)/fsp ## create .venv from the lock file (installs uv first if needed)

demo: install ## run the whole system end to end on the embedded defaults (no Docker)
	$(BIN)/fsp demo

test: install ## run the whole test suite against real services
	$(BIN)/pytest -q

test-fast: install ## only the pure-logic tests (no services)
	$(BIN)/pytest -q -m "not services"

fuzz: install ## schemathesis against both OpenAPI documents of a served Bento (also in `make test`)
	$(BIN)/pytest -q -s tests/test_fuzz.py

lint: install ## ruff lint + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## apply ruff formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: install ## mypy
	$(BIN)/mypy fsp training monitoring alerting service flows

shape: install ## the code's shape: modules per package, function lengths, import cycles, private APIs
	$(BIN)/python scripts/code_shape.py

check: lint typecheck ## lint and types

bench: install ## run every benchmark and print its figures
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean: ## remove local state (embedded PostgreSQL, MLflow store, outbox, Bento store)
	-$(BIN)/python -c "from fsp.db import stop_embedded; stop_embedded()"
	rm -rf .fsp/pg .fsp/mlflow.db .fsp/mlartifacts .fsp/outbox .fsp/bentoml .fsp/prefect .fsp/reports
