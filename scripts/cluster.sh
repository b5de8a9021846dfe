#!/usr/bin/env bash
# `make cluster` / `make cluster-down`: a real multi-process cluster on this one machine, without Docker.
#   cluster.sh deps     install Debian's postgresql-15 and redis-server when missing (root + apt-get)
#   cluster.sh up       start everything below (what runs already is kept), print the UIs
#   cluster.sh down     stop exactly the processes `up` started (recorded in $MOLESCOPE_STATE/pids)
#   cluster.sh status   recorded processes and whether they run
#   cluster.sh check    probe every component; a failure names the component and its setting
#   cluster.sh worker N (re)start Spark worker N (after it died), wait until all workers are registered
#
# Components (settings: cluster.env + scripts/cluster_env.sh; state under $MOLESCOPE_CLUSTER_STATE):
#   PostgreSQL 15      Airflow's metadata DB + Celery result backend   127.0.0.1:MOLESCOPE_PG_PORT
#   Redis              Celery broker                                   127.0.0.1:MOLESCOPE_REDIS_PORT
#   SeaweedFS          S3 (scripts/services.sh, as for `make demo`)    MOLESCOPE_S3_ENDPOINT
#   Spark master       standalone master                               spark://127.0.0.1:SPARK_MASTER_PORT
#   Spark workers      MOLESCOPE_SPARK_WORKERS JVMs of SPARK_WORKER_CORES cores / SPARK_WORKER_MEMORY each
#   Spark history      event logs of finished stages                   SPARK_HISTORY_PORT
#   Airflow            api-server, scheduler, dag-processor, triggerer + one Celery worker (tasks run there)
# The Spark daemons and the Celery worker start through the images' entrypoint (docker/common/), which
# renders spark-defaults.conf from the same settings the compose stack uses.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/cluster_env.sh
. "$HERE/cluster_env.sh"
# shellcheck source=scripts/procs.sh
. "$HERE/procs.sh"

ENTRYPOINT="$MOLESCOPE_ROOT/docker/common/molescope-entrypoint.sh"
PG_DATA="$MOLESCOPE_CLUSTER_STATE/postgres"
PACKAGES=(postgresql-15 redis-server)
READY_S="${MOLESCOPE_CLUSTER_READY_S:-300}"
AIRFLOW_COMPONENTS=(api-server scheduler dag-processor triggerer)

die() { echo "cluster: $*" >&2; exit 1; }

# --- dependencies -----------------------------------------------------------------------------------------

missing_deps() {  # what is missing, one line per program, naming the package and the setting
  [ -x "$MOLESCOPE_PG_BIN/postgres" ] || echo "PostgreSQL 15: no $MOLESCOPE_PG_BIN/postgres (package postgresql-15; setting MOLESCOPE_PG_BIN)"
  command -v redis-server > /dev/null || echo "Redis: no redis-server on PATH (package redis-server)"
}

install_deps() {
  local missing
  missing=$(missing_deps)
  [ -n "$missing" ] || return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get > /dev/null; then
    die "missing: ${missing//$'\n'/; }. Install with: apt-get install ${PACKAGES[*]}"
  fi
  # Install only: no system service is started (policy-rc.d denies it while installing, as in Docker builds).
  local policy=/usr/sbin/policy-rc.d added=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 0755 "$policy" && added=1
  fi
  echo "cluster: installing ${PACKAGES[*]} (Debian) ..."
  local status=0
  apt-get -o DPkg::Lock::Timeout=600 update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${PACKAGES[@]}" > /dev/null \
    || status=$?
  [ -z "$added" ] || rm -f "$policy"
  [ "$status" = 0 ] || die "apt-get install ${PACKAGES[*]} failed (exit $status; apt's message above) while missing: ${missing//$'\n'/; }"
  missing=$(missing_deps)
  [ -z "$missing" ] || die "still missing after apt-get install ${PACKAGES[*]}: ${missing//$'\n'/; }"
}

# --- helpers ----------------------------------------------------------------------------------------------

listening() { (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null; }

require_free_port() {  # name (of the process that will listen), port, setting
  if ! running "$1" && listening "$2"; then
    die "port $2 ($3) is in use by another program: stop it or set $3 to a free port"
  fi
}

json_of() { python -c "import json, sys, urllib.request; json.dump(json.load(urllib.request.urlopen(sys.argv[1], timeout=5)), sys.stdout)" "$1"; }

alive_workers() {  # number of ALIVE workers registered with the master
  json_of "http://127.0.0.1:$SPARK_MASTER_WEBUI_PORT/json/" \
    | python -c "import json, sys; print(sum(w['state'] == 'ALIVE' for w in json.load(sys.stdin)['workers']))"
}

workers_registered() { [ "$(alive_workers 2> /dev/null || echo 0)" -ge "$MOLESCOPE_SPARK_WORKERS" ]; }

await_workers() {  # until every worker registered with the master; fails at once when one exited
  local deadline=$((SECONDS + READY_S)) i
  until workers_registered; do
    for i in $(seq "$MOLESCOPE_SPARK_WORKERS"); do
      running "spark-worker-$i" || { tail -n 15 "$LOGS/spark-worker-$i.log" >&2; die "Spark worker $i exited"; }
    done
    [ "$SECONDS" -lt "$deadline" ] \
      || die "timed out after ${READY_S}s waiting for $MOLESCOPE_SPARK_WORKERS workers to register with $SPARK_MASTER_URL (logs $LOGS/spark-worker-*.log)"
    sleep 1
  done
}

# PostgreSQL refuses to run as root: then its programs run as the `postgres` user (Debian's package creates it).
AS_POSTGRES=()
if [ "$(id -u)" = 0 ]; then
  AS_POSTGRES=(setpriv --reuid=postgres --regid=postgres --init-groups --reset-env --)
fi
as_postgres() { "${AS_POSTGRES[@]}" env PATH="$MOLESCOPE_PG_BIN:/usr/bin:/bin" "$@"; }

pg_ready() { "$MOLESCOPE_PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$MOLESCOPE_PG_PORT"; }

psql_airflow() { PGPASSWORD="$MOLESCOPE_PG_PASSWORD" "$MOLESCOPE_PG_BIN/psql" -h 127.0.0.1 -p "$MOLESCOPE_PG_PORT" -U airflow -v ON_ERROR_STOP=1 -qtA "$@"; }

celery_ready() {
  celery --app airflow.providers.celery.executors.celery_executor.app inspect ping \
    -d "celery@$(hostname)" --timeout 10
}

api_ready() { json_of "http://127.0.0.1:$AIRFLOW__API__PORT/api/v2/monitor/health"; }

# --- components -------------------------------------------------------------------------------------------

start_postgres() {
  require_free_port postgres "$MOLESCOPE_PG_PORT" MOLESCOPE_PG_PORT
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then
    rm -rf "$PG_DATA"  # a half-initialised one (initdb needs an empty folder)
    mkdir -p "$PG_DATA"
    local pwfile="$MOLESCOPE_CLUSTER_STATE/.postgres-password"
    (umask 077; echo "$MOLESCOPE_PG_PASSWORD" > "$pwfile")
    if [ "$(id -u)" = 0 ]; then
      chown postgres:postgres "$PG_DATA" "$pwfile"
      as_postgres test -x "$PG_DATA" || die "user postgres cannot reach $PG_DATA (PostgreSQL cannot run as root): make its parent folders searchable (chmod o+x) or set MOLESCOPE_STATE elsewhere"
    fi
    chmod 0700 "$PG_DATA"
    as_postgres initdb -D "$PG_DATA" -U airflow --pwfile="$pwfile" --auth=scram-sha-256 -E UTF8 \
      --no-instructions > "$LOGS/postgres-initdb.log" 2>&1 || { cat "$LOGS/postgres-initdb.log" >&2; die "initdb of $PG_DATA failed"; }
    rm -f "$pwfile"
  fi
  # TCP on loopback only, no Unix socket (so nothing under /var/run is touched).
  launch postgres "${AS_POSTGRES[@]}" "$MOLESCOPE_PG_BIN/postgres" -D "$PG_DATA" -p "$MOLESCOPE_PG_PORT" -c listen_addresses=127.0.0.1 \
    -c unix_socket_directories= -c max_connections=200
  await_ready postgres "PostgreSQL on 127.0.0.1:$MOLESCOPE_PG_PORT (MOLESCOPE_PG_PORT)" "$READY_S" pg_ready
  if [ "$(psql_airflow -d postgres -c "SELECT 1 FROM pg_database WHERE datname = 'airflow'")" != 1 ]; then
    psql_airflow -d postgres -c "CREATE DATABASE airflow"
  fi
  echo "PostgreSQL ready on 127.0.0.1:$MOLESCOPE_PG_PORT (database airflow) after ${SECONDS}s"
}

start_redis() {
  require_free_port redis "$MOLESCOPE_REDIS_PORT" MOLESCOPE_REDIS_PORT
  mkdir -p "$MOLESCOPE_CLUSTER_STATE/redis"
  launch redis redis-server --port "$MOLESCOPE_REDIS_PORT" --bind 127.0.0.1 --protected-mode yes \
    --dir "$MOLESCOPE_CLUSTER_STATE/redis" --save "" --appendonly no
  await_ready redis "Redis on 127.0.0.1:$MOLESCOPE_REDIS_PORT (MOLESCOPE_REDIS_PORT)" "$READY_S" \
    redis-cli -p "$MOLESCOPE_REDIS_PORT" ping
  echo "Redis ready on 127.0.0.1:$MOLESCOPE_REDIS_PORT after ${SECONDS}s"
}

# The Spark daemons (hence the executors) get Spark's settings only, as in the Spark containers: no Airflow
# secrets and no S3 credentials (each job hands its executors its own, spark.executorEnv).
spark_env() {
  local name
  SPARK_ENV=(env -i "PATH=$PATH" "HOME=$HOME" "LANG=${LANG:-C.UTF-8}")
  for name in $(compgen -e); do
    case $name in
      SPARK_* | JAVA_HOME | TF_CPP_MIN_LOG_LEVEL | MOLESCOPE_BAKED_SPARK_DEFAULTS | MOLESCOPE_*SPARK_CONF)
        SPARK_ENV+=("$name=${!name}") ;;
    esac
  done
}

start_worker() {  # i: worker i (1-based), its own work folder and UI port
  local i=$1
  mkdir -p "$MOLESCOPE_CLUSTER_STATE/spark-worker-$i"
  spark_env
  launch "spark-worker-$i" "${SPARK_ENV[@]}" SPARK_WORKER_DIR="$MOLESCOPE_CLUSTER_STATE/spark-worker-$i" \
    SPARK_WORKER_WEBUI_PORT=$((SPARK_WORKER_WEBUI_PORT_BASE + i - 1)) \
    bash "$ENTRYPOINT" worker
}

start_spark() {
  require_free_port spark-master "$SPARK_MASTER_PORT" SPARK_MASTER_PORT
  require_free_port spark-master "$SPARK_MASTER_WEBUI_PORT" SPARK_MASTER_WEBUI_PORT
  mkdir -p "$SPARK_EVENTS_DIR" "$SPARK_CONF_DIR"
  # The S3A part of spark-defaults.conf, as the images bake it at build time.
  molescope spark-defaults --endpoint "$MOLESCOPE_S3_ENDPOINT" --jars-dir "$MOLESCOPE_JARS_DIR" \
    > "$MOLESCOPE_BAKED_SPARK_DEFAULTS" 2> "$LOGS/spark-defaults.log"
  spark_env
  launch spark-master "${SPARK_ENV[@]}" bash "$ENTRYPOINT" master
  await_ready spark-master "the Spark master UI on port $SPARK_MASTER_WEBUI_PORT (SPARK_MASTER_WEBUI_PORT)" \
    "$READY_S" json_of "http://127.0.0.1:$SPARK_MASTER_WEBUI_PORT/json/"
  local i
  for i in $(seq "$MOLESCOPE_SPARK_WORKERS"); do start_worker "$i"; done
  await_workers
  require_free_port spark-history "$SPARK_HISTORY_PORT" SPARK_HISTORY_PORT
  launch spark-history "${SPARK_ENV[@]}" SPARK_HISTORY_OPTS="-Dspark.history.ui.port=$SPARK_HISTORY_PORT -Dspark.history.fs.update.interval=5s" \
    bash "$ENTRYPOINT" history
  await_ready spark-history "the Spark history server on port $SPARK_HISTORY_PORT (SPARK_HISTORY_PORT)" "$READY_S" \
    json_of "http://127.0.0.1:$SPARK_HISTORY_PORT/api/v1/applications"
  echo "Spark master $SPARK_MASTER_URL with $MOLESCOPE_SPARK_WORKERS workers of $SPARK_WORKER_CORES core(s) / $SPARK_WORKER_MEMORY after ${SECONDS}s"
}

start_airflow() {
  require_free_port airflow-api-server "$AIRFLOW__API__PORT" AIRFLOW__API__PORT
  "$HERE/airflow_init.sh"
  local component
  for component in "${AIRFLOW_COMPONENTS[@]}"; do
    launch "airflow-$component" airflow "$component"
  done
  # Task processes report to the API server's execution API: the worker takes tasks only once it is up.
  await_ready airflow-api-server "the Airflow API server on port $AIRFLOW__API__PORT (AIRFLOW__API__PORT)" \
    "$READY_S" api_ready
  # Tasks run here, so spark-submit reads the spark-defaults.conf the entrypoint renders (as in the image).
  launch airflow-celery-worker bash "$ENTRYPOINT" airflow celery worker
  await_ready airflow-celery-worker "the Airflow Celery worker (AIRFLOW__CELERY__BROKER_URL)" \
    "$READY_S" celery_ready
}

up() {
  install_deps
  mkdir -p "$MOLESCOPE_CLUSTER_STATE"
  start_postgres
  start_redis
  bash "$HERE/services.sh" start s3
  start_spark
  start_airflow
  cat << EOF

Cluster up after ${SECONDS}s (stop it with: make cluster-down)
  Airflow UI:          http://localhost:$AIRFLOW__API__PORT  (login: admin / $(python "$HERE/airflow_password.py"))
  Spark master UI:     http://localhost:$SPARK_MASTER_WEBUI_PORT  ($SPARK_MASTER_URL)
  Spark history:       http://localhost:$SPARK_HISTORY_PORT
  S3 (SeaweedFS):      $MOLESCOPE_S3_ENDPOINT  (bucket $MOLESCOPE_BUCKET)
  Airflow CLI:         . scripts/cluster_env.sh && airflow dags list
EOF
}

down() {
  local name i
  for name in airflow-celery-worker "${AIRFLOW_COMPONENTS[@]/#/airflow-}" spark-history; do stop_one "$name"; done
  for i in $(seq "$MOLESCOPE_SPARK_WORKERS"); do stop_one "spark-worker-$i"; done
  for name in spark-master redis seaweedfs; do stop_one "$name"; done
  stop_one postgres INT  # fast shutdown: ends the sessions left instead of waiting for them
  # Anything else this checkout recorded (e.g. a worker from a larger MOLESCOPE_SPARK_WORKERS).
  stop_all
}

check_one() {  # component, setting, command...
  local component=$1 setting=$2; shift 2
  if "$@" > /dev/null 2>&1; then
    echo "ok      $component"
  else
    echo "FAILED  $component: not reachable ($setting)"
    failed=1
  fi
}

check() {
  failed=0
  check_one PostgreSQL "MOLESCOPE_PG_PORT=$MOLESCOPE_PG_PORT" pg_ready
  check_one Redis "MOLESCOPE_REDIS_PORT=$MOLESCOPE_REDIS_PORT" redis-cli -p "$MOLESCOPE_REDIS_PORT" ping
  check_one "Spark master" "SPARK_MASTER_WEBUI_PORT=$SPARK_MASTER_WEBUI_PORT, $SPARK_MASTER_URL" \
    json_of "http://127.0.0.1:$SPARK_MASTER_WEBUI_PORT/json/"
  check_one "Spark workers" "MOLESCOPE_SPARK_WORKERS=$MOLESCOPE_SPARK_WORKERS alive" workers_registered
  check_one "Spark history server" "SPARK_HISTORY_PORT=$SPARK_HISTORY_PORT" \
    json_of "http://127.0.0.1:$SPARK_HISTORY_PORT/api/v1/applications"
  check_one "S3 (SeaweedFS)" "MOLESCOPE_S3_ENDPOINT=$MOLESCOPE_S3_ENDPOINT" s3_ready
  check_one "Airflow API server" "AIRFLOW__API__PORT=$AIRFLOW__API__PORT" api_ready
  check_one "Airflow Celery worker" "AIRFLOW__CELERY__BROKER_URL=$AIRFLOW__CELERY__BROKER_URL" celery_ready
  return "$failed"
}

case "${1:-}" in
  deps) install_deps ;;
  up) up ;;
  down) down ;;
  status) status ;;
  check) check ;;
  worker)
    start_worker "${2:?usage: $0 worker N}"
    await_workers ;;
  *) echo "usage: $0 deps | up | down | status | check" >&2; exit 2 ;;
esac
