#!/usr/bin/env bash
# Start/stop the embedded services: SeaweedFS (S3) and the Airflow components.
#   services.sh start s3|airflow     start (no-op when already running)
#   services.sh stop                 stop exactly the processes recorded in .state/pids
#   services.sh status
# Each process runs in its own session; its pid is recorded so `stop` never touches anything else
# (scripts/procs.sh).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
. "$(dirname "${BASH_SOURCE[0]}")/procs.sh"

start_s3() {
  mkdir -p "$MOLESCOPE_STATE/seaweedfs"
  local inner  # every server of weed mini besides S3 on a free port of its own (scripts/seaweedfs_ports.py)
  inner=$(python "$(dirname "${BASH_SOURCE[0]}")/seaweedfs_ports.py")
  # weed mini creates the bucket and an admin identity from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
  # shellcheck disable=SC2086 # $inner is a list of flags
  launch seaweedfs weed mini -dir="$MOLESCOPE_STATE/seaweedfs" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3.port="$MOLESCOPE_S3_PORT" -bucket="$MOLESCOPE_BUCKET" -admin.ui=false $inner
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
