#!/usr/bin/env bash
# Entrypoint of the molescope images (Airflow and Spark).
#
# 1. Renders $SPARK_CONF_DIR/spark-defaults.conf from
#    - /opt/molescope/conf/spark-defaults.conf: the S3A settings (path-style access, magic committer, jars)
#      written at build time by `molescope spark-defaults`, i.e. from molescope.sparkconf, the module the
#      local set-up and the Airflow operator use too;
#    - MOLESCOPE_SPARK_CONF: whitespace-separated key=value pairs appended as extra lines (executor memory,
#      cores, GPU amounts...), so the cluster differs from the embedded set-up by environment only.
#    spark-submit (the Airflow image, client mode) reads this file; --conf values given by the operator win.
# 2. `master` / `worker` run a Spark standalone daemon in the foreground; any other command is exec'd.
set -euo pipefail

# Overridable for the unit tests only; the images use the defaults.
BAKED_DEFAULTS=${MOLESCOPE_BAKED_SPARK_DEFAULTS:-/opt/molescope/conf/spark-defaults.conf}
GPU_DISCOVERY_SCRIPT=${MOLESCOPE_GPU_DISCOVERY_SCRIPT:-/opt/molescope/bin/get-gpus}

render_spark_defaults() {
  local conf_dir=${SPARK_CONF_DIR:?SPARK_CONF_DIR must be set} pair
  mkdir -p "$conf_dir"
  set -f  # MOLESCOPE_SPARK_CONF is split on whitespace, never globbed
  {
    cat "$BAKED_DEFAULTS"
    for pair in ${MOLESCOPE_SPARK_CONF:-}; do
      if [[ $pair != spark.*=* ]]; then
        echo "molescope-entrypoint: MOLESCOPE_SPARK_CONF entry '$pair' is not spark.key=value" >&2
        exit 64
      fi
      printf '%s %s\n' "${pair%%=*}" "${pair#*=}"
    done
  } > "$conf_dir/spark-defaults.conf.tmp"
  set +f
  mv "$conf_dir/spark-defaults.conf.tmp" "$conf_dir/spark-defaults.conf"
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
      --host "${SPARK_MASTER_HOST:-$(hostname)}" --port 7077 --webui-port 8080 "$@"
    ;;
  worker)
    shift
    gpu_opts=$(worker_gpu_opts)
    export SPARK_WORKER_OPTS="${SPARK_WORKER_OPTS:-} ${gpu_opts}"
    # Cores and memory come from SPARK_WORKER_CORES / SPARK_WORKER_MEMORY; the worker registers with its
    # container IP, so `docker compose up --scale spark-worker=N` needs no per-replica settings.
    exec spark-class org.apache.spark.deploy.worker.Worker --webui-port 8081 "$@" \
      "${SPARK_MASTER_URL:-spark://spark-master:7077}"
    ;;
  *)
    exec "$@"
    ;;
esac
