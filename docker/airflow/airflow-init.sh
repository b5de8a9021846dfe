#!/usr/bin/env bash
# One-shot job `airflow-init` of the compose stack (idempotent; the other Airflow services wait for it):
# refuse placeholder secrets, migrate the metadata DB, create the admin user and the `spark` pool, and check
# that the connections the DAG uses resolve. The connections themselves (spark_default, molescope_s3) are
# AIRFLOW_CONN_* variables built from .env by docker-compose.yml, like the embedded set-up does: their
# secrets never land in the metadata DB, and changing .env + `docker compose up -d` updates them.
set -euo pipefail

placeholders=$(env | grep -E '^[A-Za-z_][A-Za-z0-9_]*=.*change-me' | cut -d= -f1 || true)
if [[ -n $placeholders ]]; then
  echo "airflow-init: these variables still hold a 'change-me' placeholder; edit .env first:" >&2
  while IFS= read -r name; do echo "  $name" >&2; done <<< "$placeholders"
  exit 1
fi

airflow db migrate
airflow users create --role Admin \
  --username "${AIRFLOW_ADMIN_USER:?}" --password "${AIRFLOW_ADMIN_PASSWORD:?}" \
  --firstname Molescope --lastname Admin --email "${AIRFLOW_ADMIN_USER}@localhost"
airflow pools set spark "${MOLESCOPE_SPARK_POOL_SLOTS:-2}" "Spark jobs submitted to the standalone cluster" >/dev/null
for conn_id in spark_default molescope_s3; do
  if ! airflow connections get "$conn_id" -o json >/dev/null; then
    echo "airflow-init: connection $conn_id does not resolve: check AIRFLOW_CONN_${conn_id^^}" >&2
    exit 1
  fi
done
echo "airflow-init: metadata DB migrated, admin user ${AIRFLOW_ADMIN_USER}, pool spark, connections ok"
