# shellcheck shell=bash
# Process bookkeeping shared by scripts/services.sh (`make demo`) and scripts/cluster.sh (`make cluster`).
# Each process runs in its own session (setsid) and its pid is recorded in $MOLESCOPE_STATE/pids/<name>.pid,
# so `stop` signals exactly the process groups this checkout started and nothing else.
# Source after scripts/env.sh.

PIDS="$MOLESCOPE_STATE/pids"
LOGS="$MOLESCOPE_STATE/logs"
mkdir -p "$PIDS" "$LOGS"

alive() {  # pid: exists and is no zombie (a process that exited but was not reaped: init may be slow to)
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

started_at() {  # pid: its start time (clock ticks since boot, /proc/<pid>/stat field 22)
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  read -r -a stat <<< "${stat##*) }"
  echo "${stat[19]}"
}

# The recorded process still runs: its pid is alive AND started when recorded (a pid reused by another
# program after a reboot or a crash is never signalled). Records without a start time: the pid only.
running() {
  local pid
  [ -f "$PIDS/$1.pid" ] || return 1
  pid=$(cat "$PIDS/$1.pid")
  alive "$pid" || return 1
  [ ! -f "$PIDS/$1.start" ] || [ "$(started_at "$pid")" = "$(cat "$PIDS/$1.start")" ]
}

launch() {  # name, command...
  local name=$1; shift
  if running "$name"; then echo "$name already running (pid $(cat "$PIDS/$name.pid"))"; return; fi
  setsid "$@" > "$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$PIDS/$name.pid"
  started_at $! > "$PIDS/$name.start" || true
  echo "started $name (pid $!, log $LOGS/$name.log)"
}

wait_for() {  # description, seconds, command...
  local what=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  echo "timed out after ${seconds}s waiting for $what" >&2
  return 1
}

await_ready() {  # name (of a launched process), description, seconds, command...: fail early if it exited
  local name=$1 what=$2 seconds=$3; shift 3
  local deadline=$((SECONDS + seconds))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if ! running "$name"; then
      echo "$name exited while waiting for $what; last lines of $LOGS/$name.log:" >&2
      tail -n 15 "$LOGS/$name.log" >&2
      return 1
    fi
    sleep 1
  done
  echo "timed out after ${seconds}s waiting for $what (log $LOGS/$name.log)" >&2
  return 1
}

stop_one() {  # name [signal]: end the recorded process group (TERM, then KILL after 30 s) and forget it
  local name=$1 signal=${2:-TERM} pidfile="$PIDS/$1.pid" pid started=$SECONDS
  [ -e "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if running "$name"; then
    # The process leads its own session (setsid): signal its whole process group, children included.
    kill "-$signal" -- "-$pid" 2>/dev/null || kill "-$signal" "$pid" 2>/dev/null || true
    for _ in $(seq 30); do alive "$pid" || break; sleep 1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    echo "stopped $name (pid $pid, $((SECONDS - started))s)"
  fi
  rm -f "$pidfile" "$PIDS/$name.start"
}

stop_all() {
  local pidfile
  for pidfile in "$PIDS"/*.pid; do
    [ -e "$pidfile" ] || continue
    stop_one "$(basename "$pidfile" .pid)"
  done
}

status() {
  local pidfile name state
  for pidfile in "$PIDS"/*.pid; do
    [ -e "$pidfile" ] || continue
    name=$(basename "$pidfile" .pid)
    if running "$name"; then state=running; else state=dead; fi
    echo "$name: $state (pid $(cat "$pidfile"))"
  done
}

s3_ready() {  # molescope's S3 client (molescope.io.s3), no retries: wait_for retries
  python -c 'import os; from molescope.io import s3; s3.client(retries=0).head_bucket(Bucket=os.environ["MOLESCOPE_BUCKET"])'
}
