# instantly-audit — the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# What gets installed is the lock (exact versions + hashes), never a fresh resolution.
DEV_LOCK := requirements/dev.lock
RUNTIME_LOCK := requirements/runtime.lock
# uv only writes the locks (`make lock`); installing from them needs nothing but pip.
UV_VERSION := 0.13.9
LOCK_FLAGS ?=
UV_COMPILE = $(VENV)/bin/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command 'make lock' --quiet $(LOCK_FLAGS)

.PHONY: demo test check lock lint fmt bench kafka-up kafka-down opensearch-up opensearch-down clean system-deps

# hatch_build.py compiles the redaction gate's C accelerator at install: a change to it reinstalls
$(VENV)/.installed: $(DEV_LOCK) pyproject.toml hatch_build.py pipeline/redaction/_fastgate.c
	@$(PYTHON) deploy/dev/check_python.py "$(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes -r $(DEV_LOCK)
	$(PY) -m pip install -q --no-deps -e .
	touch $@

## demo: create .venv, install, run the scripted-incident demo (no configuration needed)
demo: $(VENV)/.installed
	$(VENV)/bin/instantly-audit demo

## test: create .venv from the dev lock, install system deps, start Kafka and OpenSearch, run lint + the whole suite
test: system-deps $(VENV)/.installed
	VENV=$(VENV) bash deploy/dev/run-tests.sh

## check: the quick gate before a commit: lint, format, types, unit + contract tests on the
## embedded bus (no Kafka, no rsyslog, no system packages, no root)
check: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -n "$${PYTEST_WORKERS:-2}" tests/unit tests/contract -m "not kafka and not rsyslog and not slow"

## lock: re-resolve requirements/*.lock from pyproject.toml (LOCK_FLAGS=--upgrade to move every pin)
lock: $(VENV)/.installed
	$(PY) -m pip install -q 'uv==$(UV_VERSION)'
	$(UV_COMPILE) --group dev --extra vault -o $(DEV_LOCK)
	$(UV_COMPILE) --extra vault -o $(RUNTIME_LOCK)

system-deps:
	bash deploy/dev/system-deps.sh

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: $(VENV)/.installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## bench: run every benchmark (results go in docs/benchmarks.md with the machine)
bench: $(VENV)/.installed
	bash benchmarks/run_all.sh

kafka-up: $(VENV)/.installed
	$(PY) deploy/kafka/broker.py fetch
	$(PY) deploy/kafka/broker.py up
	@echo "source deploy/kafka/.cache/run/env  # exports KAFKA_BOOTSTRAP"

kafka-down:
	$(PYTHON) deploy/kafka/broker.py down

opensearch-up:
	$(PYTHON) deploy/opensearch/node.py fetch
	$(PYTHON) deploy/opensearch/node.py up
	@echo "source deploy/opensearch/.cache/run/env  # exports OPENSEARCH_URL"

opensearch-down:
	$(PYTHON) deploy/opensearch/node.py down

clean:
	rm -rf $(VENV) .kafka-test .opensearch-test data .bench
