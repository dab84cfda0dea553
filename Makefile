# First-session risk: every target a newcomer or CI needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3.11
TOOLS := .fsp/tools
UV := $(shell command -v uv 2>/dev/null || echo $(TOOLS)/bin/uv)
VENV := .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: help install demo test test-fast fuzz lint format typecheck shape check bench clean \
	stack-base stack-images stack-bento stack-up stack-down stack-test

help: ## list every target
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(TOOLS)/bin/uv:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv

# --compile-bytecode: imports read .pyc files even where PYTHONDONTWRITEBYTECODE is set
# (as on our CI machines); without them `import mlflow` alone took 3.5 s instead of 1.3 s.
$(BIN)/fsp: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra dev --compile-bytecode --python $(PYTHON)
	@touch $@

install: $(BIN)/fsp ## create .venv from the lock file (installs uv first if needed)

demo: install ## run the whole system end to end on the embedded defaults (no Docker)
	$(BIN)/fsp demo

COVERAGE_FLOOR ?= 80

# pytest keeps the modules it rewrites for assertions only where bytecode may be written.
# Where PYTHONDONTWRITEBYTECODE is set (this machine sets it) every run rewrote some 330
# modules again, seconds of each test run; the tests may write bytecode (git-ignored).
test test-fast fuzz stack-test: export PYTHONDONTWRITEBYTECODE :=

test: install ## run the whole test suite against real services (the stack too when Docker runs), with coverage
	$(BIN)/pytest -q --cov --cov-report=term --cov-fail-under=$(COVERAGE_FLOOR) $(PYTEST_ARGS)

# The pure tests spread over the cores (at most 4 workers: each imports what it tests),
# a module's tests on one worker (the models a module fits once are not fitted twice);
# the plugins only the services tests use (schemathesis, faker) stay unloaded.
test-fast: install ## only the pure-logic tests (no services), spread over the cores
	FSP_PROPERTY_EXAMPLES=50 $(BIN)/pytest -q -m "not services" -n auto --maxprocesses 4 \
		--dist loadfile -p no:schemathesis -p no:faker

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

check: lint typecheck shape ## lint, types and the code's shape

bench: install ## run every benchmark and print its figures
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean: ## remove local state (embedded PostgreSQL, MLflow store, outbox, Bento store)
	-$(BIN)/python -c "from fsp.db import stop_embedded; stop_embedded()"
	rm -rf .fsp/pg .fsp/mlflow.db .fsp/mlartifacts .fsp/outbox .fsp/bentoml .fsp/prefect .fsp/reports

# --- The team stack (docker-compose.yml; README, "Team stack") ---------------------
# STACK_ENV: the settings (.env, else .env.example). STACK_OFFLINE=1 (the default):
# every image is built here on the local Debian base, the official PostgreSQL and mail
# images replaced by docker/postgres.Dockerfile and docker/maildev.Dockerfile.
STACK_ENV ?= $(if $(wildcard .env),.env,.env.example)
STACK_OFFLINE ?= 1
STACK_BASE ?= fsp-base:bookworm-py3.11
COMPOSE := docker-compose --env-file $(STACK_ENV)
stack_var = $(shell sed -n 's/^$(1)=//p' $(STACK_ENV) | tail -n1)
ifeq ($(STACK_OFFLINE),1)
STACK_BASE_IMAGE := $(STACK_BASE)
STACK_IMAGES := FSP_BASE_IMAGE=$(STACK_BASE) FSP_POSTGRES_IMAGE=fsp-postgres:15 FSP_MAIL_IMAGE=fsp-maildev:2.2.1
else
STACK_BASE_IMAGE := $(call stack_var,FSP_BASE_IMAGE)
STACK_IMAGES :=
endif

stack-base: ## build the local base image (Debian bookworm + Python 3.11 via debootstrap)
	@docker image inspect $(STACK_BASE) >/dev/null 2>&1 \
	  || { t0=$$(date +%s); UV=$(BIN)/uv docker/build-base.sh $(STACK_BASE); \
	       echo "stack-base: built in $$(( $$(date +%s) - t0 )) s"; }

stack-images: install $(if $(filter 1,$(STACK_OFFLINE)),stack-base) ## build the stack's images (local base when STACK_OFFLINE=1)
	@cp /etc/ssl/certs/ca-certificates.crt docker/certs/ 2>/dev/null || true
	@set -e; mkdir -p .fsp/stack; build() { t0=$$(date +%s); docker build -f docker/$$1.Dockerfile \
	    --build-arg BASE_IMAGE=$(STACK_BASE_IMAGE) -t $$2 . >.fsp/stack/build-$$1.log 2>&1 \
	    || { tail -n 25 .fsp/stack/build-$$1.log; return 1; }; \
	  echo "stack-images: $$2 built in $$(( $$(date +%s) - t0 )) s, $$(docker image inspect -f '{{.Size}}' $$2) bytes"; }; \
	build mlflow $(or $(call stack_var,FSP_MLFLOW_IMAGE),fsp-mlflow:3.17.2); \
	build worker $(or $(call stack_var,FSP_WORKER_IMAGE),fsp-worker:latest); \
	if [ "$(STACK_OFFLINE)" = 1 ]; then build postgres fsp-postgres:15; build maildev fsp-maildev:2.2.1; fi

# (containerize runs from /tmp: BentoML reads a dockerfile_template only below its working
# directory, and its build context is a temporary folder.)
stack-bento: install ## containerize the champion's Bento (built by the bootstrap) as FSP_BENTO_IMAGE
	@set -e; out=.fsp/stack; rm -rf $$out/bento.bento $$out/bentoml; mkdir -p $$out; \
	$(STACK_IMAGES) $(COMPOSE) run --rm --no-deps -T -u 0 -v "$$PWD/$$out:/out" \
	  --entrypoint bentoml bootstrap export first_session_risk:latest /out/bento.bento >/dev/null; \
	export BENTOML_HOME=$$PWD/$$out/bentoml BENTOML_DO_NOT_TRACK=True DOCKER_BUILDKIT=0; \
	tag=$$($(BIN)/bentoml import "$$PWD/$$out/bento.bento" 2>/dev/null | grep -o "first_session_risk:[a-z0-9]*" | head -n1); \
	t0=$$(date +%s); \
	bentoml=$$PWD/$(BIN)/bentoml; log=$$PWD/$$out/containerize.log; \
	(cd /tmp && TMPDIR=/tmp $$bentoml containerize "$$tag" -t $(call stack_var,FSP_BENTO_IMAGE) \
	  --opt build-arg=FSP_BASE_IMAGE=$(STACK_BASE_IMAGE) >$$log 2>&1) \
	  || { tail -n 30 $$log; exit 1; }; \
	echo "stack-bento: $$tag -> $(call stack_var,FSP_BENTO_IMAGE) in $$(( $$(date +%s) - t0 )) s," \
	  "$$(docker image inspect -f '{{.Size}}' $(call stack_var,FSP_BENTO_IMAGE)) bytes"

stack-up: stack-images ## bootstrap the stack, containerize the champion's Bento, start everything
	$(STACK_IMAGES) $(COMPOSE) up -d bootstrap
	@test "$$(docker wait $$($(STACK_IMAGES) $(COMPOSE) ps -q bootstrap))" = 0 \
	  || { $(STACK_IMAGES) $(COMPOSE) logs --tail=30 bootstrap; exit 1; }
	$(MAKE) --no-print-directory stack-bento
	$(STACK_IMAGES) $(COMPOSE) up -d
	$(STACK_IMAGES) $(COMPOSE) ps

stack-down: ## stop the stack (volumes kept; `docker-compose down -v` drops them)
	$(STACK_IMAGES) $(COMPOSE) down

stack-test: install ## the stack end to end in Docker (starts dockerd if needed, stops it after)
	docker/with-dockerd.sh $(BIN)/pytest -q -s -m stack tests/test_stack.py
