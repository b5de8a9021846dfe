#!/usr/bin/env bash
# Initialise the embedded Airflow (SQLite) or the cluster's (PostgreSQL, `make cluster`): migrate the metadata
# DB and create the `spark` pool (idempotent).
# Connections and the warehouse Variable come from environment variables (scripts/env.sh), not the DB.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
mkdir -p "$AIRFLOW_HOME"
airflow db migrate > "$MOLESCOPE_STATE/airflow-db-migrate.log" 2>&1 || {
  cat "$MOLESCOPE_STATE/airflow-db-migrate.log" >&2; exit 1; }
# One Spark job at a time: each needs several GiB and both cores.
airflow pools set spark 1 "Spark jobs (one at a time on a small machine)" > /dev/null
# The DB URL may hold a password: print its scheme only.
echo "Airflow DB ready (${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN%%://*})"
