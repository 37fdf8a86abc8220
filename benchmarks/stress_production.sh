#!/usr/bin/env bash
# The load figure with the production stack (issue 24): `delineo serve` on PostgreSQL and Redis,
# two `delineo worker` processes, USERS simulated users each uploading STUDIES real CTs
# (CT_DIR/<case>/ct.nii.gz, read at run time; written as DICOM zips) contoured by the bundled hn-ct.
#
#   benchmarks/stress_production.sh [OUT.json]
#
# Environment: USERS (50), STUDIES (1), CT_DIR (../shared/data/openkbp/validation), MODEL (hn-ct),
# MAX_SECONDS (1100), WORKER_THREADS (torch threads per worker, 1), PG (postgresql://postgres@127.0.0.1:5432),
# REDIS (redis://127.0.0.1:6379/0), PAUSE_PID (processes, space-separated, to stop with SIGSTOP for the
# measurement only and to resume with SIGCONT right after, whatever happens, e.g. training runs sharing the CPUs).
# Everything it starts (database, data folder, queue, processes) is its own and removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/stress/production.json}
USERS=${USERS:-50}
STUDIES=${STUDIES:-1}
CT_DIR=${CT_DIR:-../shared/data/openkbp/validation}
MODEL=${MODEL:-hn-ct}
MAX_SECONDS=${MAX_SECONDS:-1100}
WORKER_THREADS=${WORKER_THREADS:-1}
PG=${PG:-postgresql://postgres@127.0.0.1:5432}
REDIS=${REDIS:-redis://127.0.0.1:6379/0}
PY=${PYTHON:-.venv/bin/python}
PORT=${PORT:-$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}

RUN=stress_$(date +%s)_$$
DB=delineo_$RUN
WORK=$(mktemp -d /tmp/delineo-$RUN.XXXX)
PIDS=()
PAUSED=""

resume() {
  if [ -n "$PAUSED" ]; then kill -CONT $PAUSED 2>/dev/null || true; echo "resumed $PAUSED"; PAUSED=""; fi
}
cleanup() {
  resume
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  $PY - "$PG" "$DB" <<'EOF' || true
import sys, psycopg
with psycopg.connect(f"{sys.argv[1]}/postgres", autocommit=True) as c:
    c.execute(f'DROP DATABASE IF EXISTS "{sys.argv[2]}" WITH (FORCE)')
EOF
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

$PY - "$PG" "$DB" <<'EOF'
import sys, psycopg
with psycopg.connect(f"{sys.argv[1]}/postgres", autocommit=True) as c:
    c.execute(f'CREATE DATABASE "{sys.argv[2]}"')
EOF
export DELINEO_HOME=$WORK/home
export DELINEO_DATABASE_URL=postgresql+psycopg://${PG#postgresql://}/$DB
export DELINEO_QUEUE=$REDIS
export DELINEO_QUEUE_NAME=$RUN
export DELINEO_WORKERS=1
export DELINEO_ADMIN_PASSWORD=$($PY -c 'import secrets; print(secrets.token_urlsafe(16))')
export DELINEO_PROGRESS=lines

$PY -m delineo serve --port "$PORT" --log-level warning >"$WORK/serve.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 600); do
  curl -fs "http://127.0.0.1:$PORT/api/health" >/dev/null && break
  kill -0 "${PIDS[0]}" 2>/dev/null || { cat "$WORK/serve.log"; exit 1; }
  sleep 0.5
done
for i in 1 2; do
  OMP_NUM_THREADS=$WORKER_THREADS MKL_NUM_THREADS=$WORKER_THREADS $PY -m delineo worker >"$WORK/worker$i.log" 2>&1 &
  PIDS+=($!)
done
sleep 5

CORES=$(nproc)
MEM=$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)
CPU=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
if [ -n "${PAUSE_PID:-}" ]; then
  kill -STOP $PAUSE_PID
  PAUSED=$PAUSE_PID
  echo "paused $PAUSE_PID for the measurement"
fi
T0=$(date +%s)
set +e
$PY -m delineo stress --url "http://127.0.0.1:$PORT" --users "$USERS" --studies "$STUDIES" --model "$MODEL" \
  --ct-dir "$CT_DIR" --dicom --max-seconds "$MAX_SECONDS" --out "$OUT" --worker-pid "${PIDS[1]}" --worker-pid "${PIDS[2]}" \
  --machine "$CORES-core CPU ($CPU), $MEM RAM, no GPU; client, server, workers, PostgreSQL and Redis on this one machine; load average before the run $LOAD0${PAUSE_PID:+ (training runs sharing the CPUs were paused for the measurement; other processes were not)}" \
  --server-note "delineo serve (1 process) on PostgreSQL $($PY -c 'import psycopg,sys; c=psycopg.connect(sys.argv[1]+"/postgres"); print(c.execute("SHOW server_version").fetchone()[0].split()[0])' "$PG") and Redis ($REDIS, huey); 2 delineo worker processes, 1 job thread each, $WORKER_THREADS torch thread(s) each, CPU inference"
RC=$?
set -e
resume
echo "stress finished in $(( $(date +%s) - T0 )) s (exit $RC); load average now $(cut -d' ' -f1-3 /proc/loadavg)"
grep -h -i "error\|traceback" "$WORK"/serve.log "$WORK"/worker*.log | tail -20 || true
exit $RC
