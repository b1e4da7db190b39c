# The two set-up commands: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LOCAL_ENV := . devstack/local.env &&

.PHONY: venv lock up down up-test down-test run test lint typecheck unit integration migrate asyncapi schemas promtool bench chaos clean

# The suite has a broker of its own (and the database dianabot_test): the topics, groups and events
# it leaves behind never reach the dev broker, so `make run` after `make test` starts clean.
TEST_KAFKA_PORT ?= 19092
TEST_KAFKA_CONTROLLER_PORT ?= 19093
TEST_KAFKA := KAFKA_PORT=$(TEST_KAFKA_PORT) KAFKA_CONTROLLER_PORT=$(TEST_KAFKA_CONTROLLER_PORT) \
	KAFKA_HOME_DIR=$(CURDIR)/.devstack/kafka-test

# The lock files (make lock): exact pins with hashes. requirements/lock.txt is the runtime (the
# image installs it), dev-lock.txt adds the dev extra (make venv, so make test and CI), bench-lock.txt
# the bench extra too (make bench). Each is resolved under the one before it as constraints, so a
# package has the same pin in all three.
LOCK := requirements/lock.txt
DEV_LOCK := requirements/dev-lock.txt
BENCH_LOCK := requirements/bench-lock.txt

# The venv gets exactly the dev lock's pins (pip checks the hashes), then the project without
# dependencies: anything pyproject.toml asks for that the lock lacks fails the unit tests
# (tests/unit/test_lock.py), not the install. The contracts are a distribution of their own
# (contracts/, what bot services install; the service pins it), installed from the checkout,
# editable, beside the service: no lock holds them.
$(STAMP): pyproject.toml contracts/pyproject.toml $(DEV_LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r $(DEV_LOCK)
	$(BIN)/pip install -q --no-deps -e ./contracts -e .
	touch $(STAMP)

venv: $(STAMP)

# The bench extra (Celery, Redis client, psycopg) only for `make bench`, not for run or test.
BENCH_STAMP := $(VENV)/.bench-installed-stamp
$(BENCH_STAMP): pyproject.toml $(BENCH_LOCK) $(STAMP)
	$(BIN)/pip install -q -r $(BENCH_LOCK)
	touch $(BENCH_STAMP)

# uv, not pip-compile, resolves the locks: `uv pip compile` takes the target (CPython 3.11 on x86_64
# Linux) as options, whatever machine runs it, where pip-compile resolves for the interpreter and
# platform it runs on; it writes hashes and no index URL, and takes seconds. It lives in a venv of its
# own under .venv, pinned here, so it is in none of the locks.
UV_VERSION := 0.13.8
UV_VENV := $(VENV)/tools/uv-$(UV_VERSION)
UV := $(UV_VENV)/bin/uv
# dianabot-contracts comes from contracts/ (pyproject.toml's [tool.uv.sources]): its dependencies are
# locked, itself is not (it is installed from the checkout).
UV_COMPILE := $(UV) pip compile pyproject.toml --quiet --no-python-downloads --python-version 3.11 \
	--python-platform x86_64-unknown-linux-gnu --generate-hashes --custom-compile-command 'make lock' \
	--no-emit-package dianabot-contracts

$(UV):
	$(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/pip install -q uv==$(UV_VERSION)

# Keeps every pin the files have that pyproject.toml still allows; LOCK_ARGS=--upgrade takes the
# newest allowed versions of everything, LOCK_ARGS='--upgrade-package NAME' of one package.
lock: $(UV)
	mkdir -p requirements
	$(UV_COMPILE) $(LOCK_ARGS) -o $(LOCK)
	$(UV_COMPILE) $(LOCK_ARGS) --extra dev -c $(LOCK) -o $(DEV_LOCK)
	$(UV_COMPILE) $(LOCK_ARGS) --extra dev --extra bench -c $(DEV_LOCK) -o $(BENCH_LOCK)

up:
	devstack/kafka/kafka.sh up
	devstack/postgres/pg.sh up

down:
	devstack/kafka/kafka.sh down
	devstack/postgres/pg.sh down

up-test:
	$(TEST_KAFKA) devstack/kafka/kafka.sh up
	devstack/postgres/pg.sh up

down-test:
	$(TEST_KAFKA) devstack/kafka/kafka.sh down

migrate: venv
	$(LOCAL_ENV) $(BIN)/alembic upgrade head

run: venv up migrate
	devstack/run.sh

# docs/asyncapi.yaml from the code (consumers/asyncapi.py); tests/unit/test_contracts.py fails when
# the committed file is stale. Connects to nothing.
asyncapi: venv
	$(BIN)/python -m consumers.asyncapi --out docs/asyncapi.yaml

# docs/schemas from the contracts (contracts/dianabot_contracts/baselines.py): each event's JSON
# Schema, the envelope's, index.json, and each payload's baseline per schema_version (docs/README.md:
# evolving a contract).
# Refuses, exit 1, a change that breaks producers of a published version; tests/unit/test_contracts.py
# fails on that and when the committed files are stale. Connects to nothing.
schemas: venv
	$(BIN)/python -m dianabot_contracts.baselines --out docs/schemas

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy .

# promtool checks and unit-tests the Prometheus alert rules (tests/unit/test_alert_rules.py): Debian's
# prometheus package, installed by apt-get when promtool is missing.
promtool:
	devstack/promtool.sh

unit: venv promtool
	$(BIN)/pytest tests/unit

integration: venv up-test
	$(TEST_KAFKA) $(LOCAL_ENV) $(BIN)/pytest tests/integration tests/e2e

# pytest exits 5 when it collected nothing: that is a failure, not a pass.
test: venv up-test promtool lint typecheck
	$(TEST_KAFKA) $(LOCAL_ENV) $(BIN)/pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; exit $$rc

# One JSON object: one consumer vs raw aiokafka, the Celery peer, the real consumers process (idle,
# drain rates, latency), scale-out over 1-3 processes and a 1,000,000-event soak (bench/__main__.py;
# about an hour). BENCH_ARGS=--quick for smaller counts. Then the scheduler's and Telegram's benches.
bench: venv $(BENCH_STAMP) up migrate
	devstack/redis/redis.sh up
	$(LOCAL_ENV) $(BIN)/python -m bench $(BENCH_ARGS)
	$(LOCAL_ENV) $(BIN)/python -m bench.scheduler --seconds 60
	$(LOCAL_ENV) $(BIN)/python -m bench.telegram

# The real processes under kills, a PostgreSQL crash, a broker restart and hostile records; one JSON
# line, exit 1 when a target is missed (bench/chaos/__init__.py). Options: CHAOS_ARGS="--seed 2 ...".
chaos: venv up
	@$(LOCAL_ENV) $(BIN)/python -m bench.chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
