#!/usr/bin/env bash
# Entrypoint of the molescope images (Airflow and Spark).
#
# 1. Renders $SPARK_CONF_DIR/spark-defaults.conf from
#    - /opt/molescope/conf/spark-defaults.conf: the S3A settings (path-style access, magic committer, jars)
#      written at build time by `molescope spark-defaults`, i.e. from molescope.core.sparkconf, the module the
#      local set-up and the Airflow operator use too;
#    - SPARK_EVENTS_DIR: where drivers write event logs and the history server reads them;
#    - MOLESCOPE_CLUSTER_SPARK_CONF (cluster.env: executor sizing, shared with `make cluster`), then
#      MOLESCOPE_SPARK_CONF (.env: anything else, e.g. GPU amounts): whitespace-separated key=value pairs
#      appended as extra lines (a later line wins), so the cluster differs from the embedded set-up by
#      environment only.
#    spark-submit (the Airflow image, client mode) reads this file; --conf values given by the operator win.
# 2. `master` / `worker` / `history` run a Spark standalone daemon in the foreground; any other command is
#    exec'd. `make cluster` starts its Spark daemons and its Celery worker through this script as well.
set -euo pipefail

# Overridable for the unit tests and `make cluster`; the images use the defaults.
BAKED_DEFAULTS=${MOLESCOPE_BAKED_SPARK_DEFAULTS:-/opt/molescope/conf/spark-defaults.conf}
GPU_DISCOVERY_SCRIPT=${MOLESCOPE_GPU_DISCOVERY_SCRIPT:-/opt/molescope/bin/get-gpus}

render_spark_defaults() {
  local conf_dir=${SPARK_CONF_DIR:?SPARK_CONF_DIR must be set} pair tmp
  mkdir -p "$conf_dir"
  set -f  # MOLESCOPE_SPARK_CONF is split on whitespace, never globbed
  for pair in ${MOLESCOPE_CLUSTER_SPARK_CONF:-} ${MOLESCOPE_SPARK_CONF:-}; do
    if [[ $pair != spark.*=* ]]; then
      echo "molescope-entrypoint: MOLESCOPE_CLUSTER_SPARK_CONF / MOLESCOPE_SPARK_CONF entry '$pair' is not spark.key=value" >&2
      exit 64
    fi
  done
  # A file of its own, then an atomic rename: processes sharing the folder (`make cluster`) never collide.
  tmp=$(mktemp "$conf_dir/.spark-defaults.conf.XXXXXX")
  {
    cat "$BAKED_DEFAULTS"
    if [[ -n ${SPARK_EVENTS_DIR:-} ]]; then
      printf 'spark.eventLog.dir file:%s\nspark.history.fs.logDirectory file:%s\n' "$SPARK_EVENTS_DIR" "$SPARK_EVENTS_DIR"
    fi
    for pair in ${MOLESCOPE_CLUSTER_SPARK_CONF:-} ${MOLESCOPE_SPARK_CONF:-}; do
      printf '%s %s\n' "${pair%%=*}" "${pair#*=}"
    done
  } > "$tmp"
  set +f
  chmod 0644 "$tmp"
  mv "$tmp" "$conf_dir/spark-defaults.conf"
}

# SPARK_WORKER_GPUS: unset/0 = no GPUs; `all` = every GPU the discovery script finds; N = that many.
worker_gpu_opts() {
  local amount=${SPARK_WORKER_GPUS:-0}
  if [[ $amount == 0 ]]; then
    return 0
  fi
  if [[ $amount == all ]]; then
    amount=$("$GPU_DISCOVERY_SCRIPT" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["addresses"]))')
  fi
  if ! [[ $amount =~ ^[1-9][0-9]*$ ]]; then
    echo "molescope-entrypoint: SPARK_WORKER_GPUS=${SPARK_WORKER_GPUS} but $amount GPUs are usable" >&2
    return 1
  fi
  printf -- '-Dspark.worker.resource.gpu.amount=%s -Dspark.worker.resource.gpu.discoveryScript=%s' \
    "$amount" "$GPU_DISCOVERY_SCRIPT"
}

render_spark_defaults

case "${1:-}" in
  master)
    shift
    exec spark-class org.apache.spark.deploy.master.Master \
      --host "${SPARK_MASTER_HOST:-$(hostname)}" --port "${SPARK_MASTER_PORT:-7077}" \
      --webui-port "${SPARK_MASTER_WEBUI_PORT:-8080}" "$@"
    ;;
  worker)
    shift
    gpu_opts=$(worker_gpu_opts)
    export SPARK_WORKER_OPTS="${SPARK_WORKER_OPTS:-} ${gpu_opts}"
    # Cores and memory come from SPARK_WORKER_CORES / SPARK_WORKER_MEMORY; the worker registers with its
    # container IP, so `docker compose up --scale spark-worker=N` needs no per-replica settings.
    exec spark-class org.apache.spark.deploy.worker.Worker --webui-port "${SPARK_WORKER_WEBUI_PORT:-8081}" "$@" \
      "${SPARK_MASTER_URL:-spark://spark-master:7077}"
    ;;
  history)
    # Serves the event logs of SPARK_EVENTS_DIR (spark.history.fs.logDirectory above) on port 18080.
    shift
    exec spark-class org.apache.spark.deploy.history.HistoryServer "$@"
    ;;
  *)
    exec "$@"
    ;;
esac
