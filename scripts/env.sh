# shellcheck shell=bash
# Environment for the embedded set-up: project-local state, SeaweedFS on localhost, Airflow on SQLite,
# Spark in local mode. Sourced by the Makefile targets, .ci/run and the test session; safe to source twice.
# Every value can be overridden from the caller's environment.

MOLESCOPE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MOLESCOPE_ROOT
export MOLESCOPE_STATE="${MOLESCOPE_STATE:-$MOLESCOPE_ROOT/.state}"
export MOLESCOPE_VENV="${MOLESCOPE_VENV:-$MOLESCOPE_ROOT/.venv}"
export MOLESCOPE_JARS_DIR="${MOLESCOPE_JARS_DIR:-$MOLESCOPE_ROOT/.jars}"
export PATH="$MOLESCOPE_VENV/bin:$PATH"
export PYSPARK_PYTHON="$MOLESCOPE_VENV/bin/python"
export PYSPARK_DRIVER_PYTHON="$MOLESCOPE_VENV/bin/python"

# Embedded S3 (SeaweedFS `weed mini`), bound to loopback only.
export MOLESCOPE_S3_PORT="${MOLESCOPE_S3_PORT:-8333}"
export MOLESCOPE_S3_ENDPOINT="${MOLESCOPE_S3_ENDPOINT:-http://127.0.0.1:$MOLESCOPE_S3_PORT}"
export MOLESCOPE_BUCKET="${MOLESCOPE_BUCKET:-molescope}"
export MOLESCOPE_WAREHOUSE="${MOLESCOPE_WAREHOUSE:-s3a://$MOLESCOPE_BUCKET}"

# Secrets of the embedded services are generated once per checkout into .state/secrets.env (never committed).
# Credentials given in the environment win: then the embedded SeaweedFS is started with those.
_secrets="$MOLESCOPE_STATE/secrets.env"
if [ ! -f "$_secrets" ]; then
  mkdir -p "$MOLESCOPE_STATE"
  (umask 077; {
    echo "MOLESCOPE_LOCAL_ACCESS_KEY=local$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
    echo "MOLESCOPE_LOCAL_SECRET_KEY=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
    echo "MOLESCOPE_LOCAL_JWT_SECRET=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
  } > "$_secrets.$$"
  # Whole or absent: a shell sourcing this file at the same moment must not read it half written. The
  # first writer wins (mv -n), so both shells use the same secrets.
  mv -n "$_secrets.$$" "$_secrets" || true; rm -f "$_secrets.$$")
fi
# shellcheck disable=SC1090
. "$_secrets"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-$MOLESCOPE_LOCAL_ACCESS_KEY}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-$MOLESCOPE_LOCAL_SECRET_KEY}"
export AWS_REGION="${AWS_REGION:-us-east-1}"

# Airflow: SQLite metadata DB, LocalExecutor sized for 2 cores, connections from the environment.
export AIRFLOW_HOME="${AIRFLOW_HOME:-$MOLESCOPE_STATE/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$MOLESCOPE_ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$MOLESCOPE_ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-2}"
export AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG="${AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG:-2}"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-sqlite:///$AIRFLOW_HOME/airflow.db}"
export AIRFLOW__API__PORT="${AIRFLOW__API__PORT:-8080}"
export AIRFLOW__API__HOST="${AIRFLOW__API__HOST:-127.0.0.1}"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$AIRFLOW__API__PORT/execution/"
export AIRFLOW__API_AUTH__JWT_SECRET="${AIRFLOW__API_AUTH__JWT_SECRET:-$MOLESCOPE_LOCAL_JWT_SECRET}"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS:-admin:admin}"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$AIRFLOW_HOME/simple_auth_manager_passwords.json"
export AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL=30
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=30
export AIRFLOW__LOGGING__LOGGING_LEVEL="${AIRFLOW__LOGGING__LOGGING_LEVEL:-INFO}"
# The JSON default goes through a variable: inside ${VAR:-...} bash ends the default at the first '}', so a
# literal JSON default would leave '}}' appended to an already-set value (this file is sourced more than once).
_molescope_spark_conn='{"conn_type":"spark","host":"local[2]","extra":{"deploy-mode":"client"}}'
export AIRFLOW_CONN_SPARK_DEFAULT="${AIRFLOW_CONN_SPARK_DEFAULT:-$_molescope_spark_conn}"
unset _molescope_spark_conn
AIRFLOW_CONN_MOLESCOPE_S3="$(printf '{"conn_type":"aws","login":"%s","password":"%s","extra":{"endpoint_url":"%s","region_name":"%s"}}' \
  "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" "$MOLESCOPE_S3_ENDPOINT" "$AWS_REGION")"
export AIRFLOW_CONN_MOLESCOPE_S3
export AIRFLOW_VAR_MOLESCOPE_WAREHOUSE="$MOLESCOPE_WAREHOUSE"
# Embedded set-up: a scheduled day whose batch has not landed is skipped at once instead of waiting 12 h
# for it (the production default); batches are landed by hand or by `make demo` here.
export MOLESCOPE_BATCH_WAIT_HOURS="${MOLESCOPE_BATCH_WAIT_HOURS:-0}"
# TensorFlow: quiet C++ logs in task output.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
unset _secrets
