# instantly-audit — the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint fmt bench kafka-up kafka-down opensearch-up opensearch-down clean system-deps

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

## demo: create .venv, install, run the scripted-incident demo (no configuration needed)
demo: $(VENV)/.installed
	$(VENV)/bin/instantly-audit demo

## test: create .venv with dev extras, install system deps, start Kafka and OpenSearch, run lint + the whole suite
test: $(VENV)/.installed system-deps
	bash deploy/dev/run-tests.sh

system-deps:
	bash deploy/dev/system-deps.sh

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

fmt: $(VENV)/.installed
	$(VENV)/bin/ruff check --fix .

## bench: run every benchmark (results go in README with the machine)
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
