#!/usr/bin/env bash
# Run every benchmarks/bench_*.py in turn with modest defaults and print each result (`make bench`).
#
#   bash benchmarks/run_all.sh              # modest sizes (a few minutes on 2 cores)
#   BENCH_FULL=1 bash benchmarks/run_all.sh # each script's own defaults (the numbers in docs/benchmarks.md)
#   bash benchmarks/run_all.sh bus kafka    # only these (names without bench_ / .py)
#
# Scripts that read KAFKA_BOOTSTRAP get a broker: the one in the environment if set, else a
# local one started here with deploy/kafka/broker.py (state in .bench/kafka, removed on exit).
# A benchmark that fails is reported and the others still run; the exit code is 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
STATE=.bench/kafka
KNOWN=(bus kafka connector rules sinks webhook telemetry replay agency soak)

modest_args() {  # the modest defaults, per benchmark
  [ "${BENCH_FULL:-0}" = 1 ] && return
  case "$1" in
    bus) echo "--events 50000" ;;
    kafka) echo "--events 20000" ;;
    connector) echo "--window-records 20000 --polls 3 --norm-pages 10" ;;
    agency) echo "--sizes 50,500 --rounds 2" ;;
    rules) echo "--events 200000 --users 2000" ;;
    sinks) echo "--events 5000 --webhook-events 1000 --rounds 1 --outage-secs 10" ;;
    telemetry) echo "--events 10000 --rounds 5" ;;
    webhook) echo "--duration 2 --connections 1,16" ;;
    soak) echo "--events 10000" ;;
    *) echo "" ;;
  esac
}

names=()
if [ $# -gt 0 ]; then
  names=("$@")
else
  for n in "${KNOWN[@]}"; do names+=("$n"); done
  for f in benchmarks/bench_*.py; do
    n=$(basename "$f" .py); n=${n#bench_}
    [[ " ${KNOWN[*]} " == *" $n "* ]] || names+=("$n")
  done
fi

started_broker=0
cleanup() {
  if [ "$started_broker" = 1 ]; then
    python3 deploy/kafka/broker.py down --state-dir "$STATE" --purge >/dev/null 2>&1 || true
    rmdir .bench 2>/dev/null || true
  fi
}
trap cleanup EXIT INT TERM

need_kafka() { grep -q "KAFKA_BOOTSTRAP" "$1"; }
ensure_kafka() {
  [ -n "${KAFKA_BOOTSTRAP:-}" ] && return 0
  echo "-- starting a local Kafka broker for the Kafka benchmarks ($STATE)"
  python3 deploy/kafka/broker.py down --state-dir "$STATE" --purge >/dev/null 2>&1 || true
  if ! python3 deploy/kafka/broker.py up --state-dir "$STATE" >/dev/null; then
    echo "-- kafka broker failed to start; Kafka benchmarks will skip their Kafka legs" >&2
    return 1
  fi
  started_broker=1
  set -a; . "$STATE/env"; set +a
}

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME"), $($PY --version 2>&1)"
ran=(); failed=(); missing=()
for n in "${names[@]}"; do
  f="benchmarks/bench_$n.py"
  if [ ! -f "$f" ]; then
    missing+=("$n")
    echo; echo "== bench_$n.py: not present, skipped"
    continue
  fi
  if need_kafka "$f"; then ensure_kafka || true; fi
  read -r -a args <<<"$(modest_args "$n")"
  echo; echo "== bench_$n.py ${args[*]}"
  t0=$(date +%s)
  if "$PY" "$f" "${args[@]}"; then
    ran+=("$n")
  else
    echo "-- bench_$n.py FAILED (exit $?)"
    failed+=("$n")
  fi
  echo "-- bench_$n.py took $(( $(date +%s) - t0 )) s"
done

echo
echo "== summary: ran ${#ran[@]} (${ran[*]:-none}); failed ${#failed[@]} (${failed[*]:-none}); not present ${#missing[@]} (${missing[*]:-none})"
[ ${#failed[@]} -eq 0 ]
