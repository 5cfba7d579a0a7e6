#!/bin/bash
# Cross-check of the load benchmark with the independent C generator `mqttload`
# (its bench/run_baselines.sh starts a fresh broker per run, pyo3mq and Mosquitto in turn).
#   benches/load/crosscheck.sh OUTDIR
# env: MQTTLOAD_DIR (default /work/shared/mqttload), PYO3MQ (default .venv/bin/pyo3mq),
#      REPS (3), CONFIGS ("64:0 64:1 1024:0"), SCENARIOS ("1:1 fanin fanout mesh"),
#      RATE_RUNS ("2000"). Results: OUTDIR/results.jsonl and OUTDIR/summary.md.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:?usage: crosscheck.sh OUTDIR}
MQTTLOAD_DIR=${MQTTLOAD_DIR:-/work/shared/mqttload}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# The same limits as benches/load/pyo3mq.toml; run_baselines.sh passes --host/--port,
# which replace the listeners, so this file has none.
cat >"$OUT/pyo3mq-crosscheck.toml" <<'EOF'
[broker]
max_queued_messages = 10000000
max_inflight = 100
max_connections = 100000
EOF
export PYO3MQ=${PYO3MQ:-$ROOT/.venv/bin/pyo3mq}
export PYO3MQ_ARGS="--config $OUT/pyo3mq-crosscheck.toml --log-level warn"
export REPS=${REPS:-3}
export CONFIGS=${CONFIGS:-"64:0 64:1 1024:0"}
export RATE_RUNS=${RATE_RUNS-2000}
exec "$MQTTLOAD_DIR/bench/run_baselines.sh" "$OUT" pyo3mq mosquitto
