# The two commands: `make demo` and `make test`. Everything else is set up by them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SERVICES := $(PY) scripts/with_services.py

.PHONY: demo test lint typecheck unit integration bench bench-keys services-up services-down clean promtool \
	container-engine

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

## demo: the crash-and-resume story on a local broker it starts and stops
demo: $(VENV)/.installed
	$(SERVICES) --kafka -- $(PY) scripts/demo.py

## test: lint, type check, then the whole suite against a real Kafka, PostgreSQL, MariaDB and
## schema registry
## (TEST_WORKERS processes, each given whole test files: a file's module fixtures start once;
## TEST_WORKERS=0 runs the suite in this one process)
TEST_WORKERS ?= 2
test: container-engine lint typecheck promtool
	$(SERVICES) --kafka --postgres --mariadb --registry -- \
		$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# The alert-rule tests need promtool, the container test a Prometheus server: found on PATH or
# unpacked from Debian's prometheus package.
promtool:
	scripts/ensure_promtool.sh
	scripts/ensure_promtool.sh prometheus

# The container test needs podman and runc (apt-get installs them when missing and root) or a
# Docker engine, and on podman the stand-in base image (about 2 minutes the first time, then
# cached in .local/container): made in the background while lint, type check and the first
# tests run; the container test waits for it. Without an engine the test says so and skips
# (CI: fails).
container-engine: $(VENV)/.installed
	-$(PY) scripts/container_engine.py base --background

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit

# bench: every contender side by side on a local broker, then the commit-interval and
# transaction-size curves (20-25 min; BENCH_ARGS=--quick: ~4 min)
BENCH_ARGS ?=
$(VENV)/.bench-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench-installed
	CONSUMER_PG_DURABLE=1 $(SERVICES) --kafka --postgres --mariadb -- $(PY) -m benchmarks $(BENCH_ARGS)

# The processed-keys table at scale: empty against 10 million keys, durable databases.
bench-keys: $(VENV)/.installed
	CONSUMER_PG_DURABLE=1 $(SERVICES) --kafka --postgres --mariadb -- $(PY) -m benchmarks.key_table $(BENCH_KEYS_ARGS)

services-up: $(VENV)/.installed
	$(PY) scripts/kafka_local.py start
	$(PY) scripts/postgres_local.py start
	$(PY) scripts/mariadb_local.py start
	$(PY) scripts/registry_local.py start

services-down: $(VENV)/.installed
	-$(PY) scripts/kafka_local.py stop
	-$(PY) scripts/postgres_local.py stop
	-$(PY) scripts/mariadb_local.py stop
	-$(PY) scripts/registry_local.py stop

clean: services-down
	rm -rf $(VENV) .local .pytest_cache .mypy_cache .ruff_cache
