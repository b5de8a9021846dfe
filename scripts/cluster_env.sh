# shellcheck shell=bash
# Environment of the one-machine cluster (`make cluster`): scripts/env.sh, then cluster.env (the Spark settings
# the compose stack reads too), then this machine's ports, folders and the Airflow settings of a
# production-shaped deployment (PostgreSQL metadata DB, CeleryExecutor with a Redis broker, tasks submitting
# to spark://). Source it in a shell to run `airflow ...` against the cluster. Safe to source twice; every
# value can be overridden from the caller's environment (the cluster test picks free ports that way).

_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MOLESCOPE_CLUSTER_STATE="${MOLESCOPE_CLUSTER_STATE:-${MOLESCOPE_STATE:-$_root/.state}/cluster}"
# The cluster's Airflow has its own home (and DB) next to the embedded set-up's.
export AIRFLOW_HOME="${AIRFLOW_HOME:-$MOLESCOPE_CLUSTER_STATE/airflow}"
# Local paths of what cluster.env sets for the images (read below only for variables not set yet).
export SPARK_EVENTS_DIR="${SPARK_EVENTS_DIR:-$MOLESCOPE_CLUSTER_STATE/spark-events}"
# shellcheck source=scripts/env.sh
. "$_root/scripts/env.sh"

# cluster.env: KEY=value lines (optionally "quoted"); a variable already in the environment wins.
while IFS= read -r _line || [ -n "$_line" ]; do
  case $_line in '' | '#'*) continue ;; esac
  _key=${_line%%=*}
  _value=${_line#*=}
  _value=${_value#\"}
  _value=${_value%\"}
  [ -n "${!_key+set}" ] || export "$_key=$_value"
done < "$_root/cluster.env"

# --- Spark standalone: master, workers and history server on loopback; drivers bind there too.
export SPARK_MASTER_HOST=127.0.0.1
export SPARK_LOCAL_IP=127.0.0.1
export SPARK_MASTER_URL="spark://$SPARK_MASTER_HOST:$SPARK_MASTER_PORT"
export SPARK_MASTER_WEBUI_PORT="${SPARK_MASTER_WEBUI_PORT:-8081}"
# Worker i (1-based) serves its UI on SPARK_WORKER_WEBUI_PORT_BASE + i - 1.
export SPARK_WORKER_WEBUI_PORT_BASE="${SPARK_WORKER_WEBUI_PORT_BASE:-8082}"
export SPARK_HISTORY_PORT="${SPARK_HISTORY_PORT:-18080}"
# spark-defaults.conf of every spark-submit the cluster's Airflow runs, rendered by the images' entrypoint
# (docker/common/molescope-entrypoint.sh) from `molescope spark-defaults` + cluster.env.
export SPARK_CONF_DIR="$MOLESCOPE_CLUSTER_STATE/spark-conf"
export MOLESCOPE_BAKED_SPARK_DEFAULTS="$MOLESCOPE_CLUSTER_STATE/spark-defaults.base.conf"

# --- PostgreSQL (Airflow's metadata DB) and Redis (Celery broker): project-local, on their own ports.
export MOLESCOPE_PG_PORT="${MOLESCOPE_PG_PORT:-5433}"
export MOLESCOPE_REDIS_PORT="${MOLESCOPE_REDIS_PORT:-6380}"
export MOLESCOPE_PG_BIN="${MOLESCOPE_PG_BIN:-/usr/lib/postgresql/15/bin}"
# Its password joins the checkout's other generated secrets (.state/secrets.env, written by scripts/env.sh).
if [ -z "${MOLESCOPE_LOCAL_PG_PASSWORD:-}" ]; then
  MOLESCOPE_LOCAL_PG_PASSWORD=$(od -An -N18 -tx1 /dev/urandom | tr -d ' \n')
  (umask 077; echo "MOLESCOPE_LOCAL_PG_PASSWORD=$MOLESCOPE_LOCAL_PG_PASSWORD" >> "$MOLESCOPE_STATE/secrets.env")
fi
export MOLESCOPE_PG_PASSWORD="${MOLESCOPE_PG_PASSWORD:-$MOLESCOPE_LOCAL_PG_PASSWORD}"

# --- Airflow: the compose stack's executor and DB; tasks (hence Spark drivers) run in the Celery worker.
export AIRFLOW__CORE__EXECUTOR=CeleryExecutor
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg2://airflow:$MOLESCOPE_PG_PASSWORD@127.0.0.1:$MOLESCOPE_PG_PORT/airflow"
export AIRFLOW__CELERY__BROKER_URL="redis://127.0.0.1:$MOLESCOPE_REDIS_PORT/0"
export AIRFLOW__CELERY__RESULT_BACKEND="db+postgresql+psycopg2://airflow:$MOLESCOPE_PG_PASSWORD@127.0.0.1:$MOLESCOPE_PG_PORT/airflow"
# Two task slots: one Spark stage (the `spark` pool has one slot) plus a light Python task.
export AIRFLOW__CELERY__WORKER_CONCURRENCY="${AIRFLOW__CELERY__WORKER_CONCURRENCY:-2}"
export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT="${AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT:-8793}"
export AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT="${AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT:-8794}"
export AIRFLOW_CONN_SPARK_DEFAULT="{\"conn_type\":\"spark\",\"host\":\"$SPARK_MASTER_URL\",\"extra\":{\"deploy-mode\":\"client\"}}"
unset _root _line _key _value
