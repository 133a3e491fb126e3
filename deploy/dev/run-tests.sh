#!/usr/bin/env bash
# The whole test suite: lint, types, then pytest with a real Kafka broker and a real OpenSearch
# node (started here, stopped afterwards whatever happens). Called by `make test`, which CI runs.
set -uo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}
PY=$VENV/bin/python
STATE=.kafka-test
OS_STATE=.opensearch-test

echo "== ruff"; "$VENV/bin/ruff" check . || exit 1
echo "== ruff format"; "$VENV/bin/ruff" format --check . || exit 1
echo "== mypy --strict"; "$VENV/bin/mypy" || exit 1

echo "== kafka broker"
$PY deploy/kafka/broker.py fetch || exit 1
$PY deploy/kafka/broker.py down --state-dir "$STATE" --purge >/dev/null 2>&1 || true
$PY deploy/kafka/broker.py up --state-dir "$STATE" || { echo "kafka broker failed to start" >&2; exit 1; }
cleanup() {
  $PY deploy/kafka/broker.py down --state-dir "$STATE" --purge >/dev/null 2>&1 || true
  $PY deploy/opensearch/node.py down --state-dir "$OS_STATE" --purge >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM
set -a; . "$STATE/env"; set +a
export KAFKA_BROKER_STATE_DIR="$PWD/$STATE"

echo "== opensearch node"
$PY deploy/opensearch/node.py fetch || exit 1
$PY deploy/opensearch/node.py down --state-dir "$OS_STATE" --purge >/dev/null 2>&1 || true
$PY deploy/opensearch/node.py up --state-dir "$OS_STATE" || { echo "opensearch node failed to start" >&2; exit 1; }
set -a; . "$OS_STATE/env"; set +a

echo "== pytest (KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP OPENSEARCH_URL=$OPENSEARCH_URL)"
# Two workers by default (PYTEST_WORKERS=0 runs in one process): the slowest Kafka tests spend
# most of their time waiting for session timeouts and rebalances, so the rest of the suite runs beside them.
$PY -m pytest -n "${PYTEST_WORKERS:-2}" --dist worksteal "$@"
rc=$?
if [ "$rc" = 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit $rc
