#!/usr/bin/env bash
# Start/stop the embedded services: SeaweedFS (S3) and the Airflow components.
#   services.sh start s3|airflow     start (no-op when already running)
#   services.sh stop                 stop exactly the processes recorded in .state/pids
#   services.sh status
# Each process runs in its own session; its pid is recorded so `stop` never touches anything else.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"

PIDS="$MOLESCOPE_STATE/pids"
LOGS="$MOLESCOPE_STATE/logs"
mkdir -p "$PIDS" "$LOGS"

running() { [ -f "$PIDS/$1.pid" ] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }

launch() {  # name, command...
  local name=$1; shift
  if running "$name"; then echo "$name already running (pid $(cat "$PIDS/$name.pid"))"; return; fi
  setsid "$@" > "$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$PIDS/$name.pid"
  echo "started $name (pid $!, log $LOGS/$name.log)"
}

wait_for() {  # description, seconds, command...
  local what=$1 seconds=$2; shift 2
  for _ in $(seq "$seconds"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  echo "timed out after ${seconds}s waiting for $what" >&2
  return 1
}

s3_ready() {  # molescope's S3 client (molescope.s3), no retries: wait_for retries
  python -c 'import os; from molescope import s3; s3.client(retries=0).head_bucket(Bucket=os.environ["MOLESCOPE_BUCKET"])'
}

start_s3() {
  mkdir -p "$MOLESCOPE_STATE/seaweedfs"
  # weed mini creates the bucket and an admin identity from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
  launch seaweedfs weed mini -dir="$MOLESCOPE_STATE/seaweedfs" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3.port="$MOLESCOPE_S3_PORT" -bucket="$MOLESCOPE_BUCKET" -admin.ui=false
  wait_for "SeaweedFS S3 on $MOLESCOPE_S3_ENDPOINT" 90 s3_ready
  echo "S3 ready at $MOLESCOPE_S3_ENDPOINT (bucket $MOLESCOPE_BUCKET)"
}

api_ready() { python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$AIRFLOW__API__PORT/api/v2/monitor/health', timeout=3)"; }

start_airflow() {
  "$(dirname "${BASH_SOURCE[0]}")/airflow_init.sh"
  launch airflow-api-server airflow api-server --port "$AIRFLOW__API__PORT"
  launch airflow-scheduler airflow scheduler
  launch airflow-dag-processor airflow dag-processor
  launch airflow-triggerer airflow triggerer
  wait_for "Airflow API server on port $AIRFLOW__API__PORT" 180 api_ready
  echo "Airflow UI at http://localhost:$AIRFLOW__API__PORT"
}

stop_all() {
  local pidfile name pid
  for pidfile in "$PIDS"/*.pid; do
    [ -e "$pidfile" ] || continue
    name=$(basename "$pidfile" .pid)
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      # The process leads its own session (setsid): signal its whole process group, children included.
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -KILL -- "-$pid" 2>/dev/null || true
      echo "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
  done
}

status() {
  local pidfile
  for pidfile in "$PIDS"/*.pid; do
    [ -e "$pidfile" ] || continue
    if kill -0 "$(cat "$pidfile")" 2>/dev/null; then state=running; else state=dead; fi
    echo "$(basename "$pidfile" .pid): $state (pid $(cat "$pidfile"))"
  done
}

case "${1:-}" in
  start)
    case "${2:-}" in
      s3) start_s3 ;;
      airflow) start_airflow ;;
      *) echo "usage: $0 start s3|airflow" >&2; exit 2 ;;
    esac ;;
  stop) stop_all ;;
  status) status ;;
  *) echo "usage: $0 start s3|airflow | stop | status" >&2; exit 2 ;;
esac
