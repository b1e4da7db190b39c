# The two set-up commands: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LOCAL_ENV := . devstack/local.env &&

.PHONY: venv up down up-test down-test run test lint typecheck unit integration migrate asyncapi promtool bench chaos clean

# The suite has a broker of its own (and the database dianabot_test): the topics, groups and events
# it leaves behind never reach the dev broker, so `make run` after `make test` starts clean.
TEST_KAFKA_PORT ?= 19092
TEST_KAFKA_CONTROLLER_PORT ?= 19093
TEST_KAFKA := KAFKA_PORT=$(TEST_KAFKA_PORT) KAFKA_CONTROLLER_PORT=$(TEST_KAFKA_CONTROLLER_PORT) \
	KAFKA_HOME_DIR=$(CURDIR)/.devstack/kafka-test

# The contracts are a distribution of their own (contracts/, what bot services install): installed
# first, editable, as the service's distribution pins it.
$(STAMP): pyproject.toml contracts/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ./contracts -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The bench extra (Celery, Redis client, psycopg) only for `make bench`, not for run or test.
BENCH_STAMP := $(VENV)/.bench-installed-stamp
$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install -q -e ./contracts -e '.[dev,bench]'
	touch $(BENCH_STAMP)

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
