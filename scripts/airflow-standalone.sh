#!/usr/bin/env bash
# Start a local Airflow for Medscan: api-server (UI), scheduler, dag-processor and triggerer in one
# process tree, SQLite metadata DB + LocalExecutor, state in <project>/airflow_home (git-ignored),
# DAGs from <project>/dags. The UI listens on 127.0.0.1 only.
#   scripts/airflow-standalone.sh [start]    (AIRFLOW_PORT=8080 by default; Ctrl-C stops it)
#   scripts/airflow-standalone.sh stop       (make airflow-stop: from any shell)
# `airflow standalone` runs in its own session (setsid); its id is recorded in
# $AIRFLOW_HOME/standalone.pgid. Stopping sends SIGINT to that process group (standalone shuts its
# components down on SIGINT; a SIGTERM to it alone orphans them), waits MEDSCAN_STOP_WAIT seconds
# (default 30), then SIGKILLs whatever of the session is left: task processes run in process
# groups of their own (Airflow's supervisor calls setpgid) but stay in the session.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_BIN="${MEDSCAN_VENV:-$ROOT/.venv}/bin"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$ROOT/airflow_home}"
PGID_FILE="$AIRFLOW_HOME/standalone.pgid"
STOP_WAIT="${MEDSCAN_STOP_WAIT:-30}"

# Members of session $1 (setsid made the session id equal to the recorded process group id).
session_pids() { pgrep -s "$1" || true; }

running_pgid() {  # the recorded id, if that session still has a process in it
    [[ -s "$PGID_FILE" ]] || return 1
    local pgid; pgid="$(cat "$PGID_FILE")"
    [[ "$pgid" =~ ^[0-9]+$ && -n "$(session_pids "$pgid")" ]] || return 1
    echo "$pgid"
}

stop() {
    local pgid
    if ! pgid="$(running_pgid)"; then
        echo "Medscan Airflow is not running (no live session in $PGID_FILE)"
        rm -f "$PGID_FILE"
        return 0
    fi
    echo "stopping Medscan Airflow (process group $pgid): SIGINT, up to ${STOP_WAIT}s to exit"
    kill -INT -- "-$pgid" 2>/dev/null || true
    local waited=0
    while [[ -n "$(session_pids "$pgid")" && $waited -lt $((STOP_WAIT * 5)) ]]; do
        sleep 0.2; waited=$((waited + 1))
    done
    local left; left="$(session_pids "$pgid" | tr '\n' ' ')"
    if [[ -n "$left" ]]; then
        echo "still running after ${STOP_WAIT}s, SIGKILL: $left"
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null || true
        while [[ -n "$(session_pids "$pgid")" ]]; do sleep 0.1; done
    fi
    rm -f "$PGID_FILE"
    echo "Medscan Airflow stopped"
}

case "${1:-start}" in
    stop) stop; exit 0 ;;
    start) ;;
    *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac

if pgid="$(running_pgid)"; then
    echo "Medscan Airflow is already running (process group $pgid): make airflow-stop first" >&2
    exit 1
fi
if [[ ! -x "$VENV_BIN/airflow" ]]; then
    echo "no airflow in $VENV_BIN: run 'make install' first" >&2
    exit 1
fi

# Tasks run `dvc` and `python -m pipelines...`: the project venv comes first on their PATH.
export PATH="$VENV_BIN:$PATH"
export MEDSCAN_ROOT="$ROOT"
# No usage telemetry from any tool (the switches pipelines/__init__.py sets).
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true DVC_NO_ANALYTICS=1 GX_ANALYTICS_ENABLED=false
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-4}"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT="${AIRFLOW_PORT:-8080}"
# Task processes report to the execution API: point them at the port above (the default assumes
# localhost:8080), and UI/log links too. 8793/8794 are taken by the scheduler's and triggerer's
# log servers, which always bind all interfaces (they only serve logs to JWT-signed requests).
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$AIRFLOW__API__PORT/execution/"
export AIRFLOW__API__BASE_URL="http://127.0.0.1:$AIRFLOW__API__PORT"
# TensorFlow's log level and start-up notices: pipelines/__init__.py (every task imports it).
export GIT_PYTHON_REFRESH=quiet
mkdir -p "$AIRFLOW_HOME"

PASSWORDS="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
cat <<MSG
Medscan Airflow: http://127.0.0.1:$AIRFLOW__API__PORT  (ready after about a minute)
  login: user 'admin', password in $PASSWORDS
         (written on first start; also printed below as 'Password for user admin')
  DAGs:  medscan_retrain_<dataset>, medscan_drop_watch_<dataset>: new DAGs start paused, so
         unpause them in the UI or:  AIRFLOW_HOME=$AIRFLOW_HOME $VENV_BIN/airflow dags unpause medscan_retrain_<dataset>
         (unpausing starts nothing: the first scheduled run is the next weekly slot; Trigger runs now)
  drop:  new cases (images + labels.csv) go to $ROOT/incoming (params orchestration.drop_folder)
  stop:  Ctrl-C here, or from any shell: make airflow-stop
MSG
cd "$ROOT"
# A subshell is never a process group leader, so setsid execs in place: its pid is the new
# session's and process group's id.
( exec setsid airflow standalone ) &
echo "$!" > "$PGID_FILE"
trap 'stop; exit 130' INT TERM
status=0
wait "$!" || status=$?
# standalone exited by itself (or was stopped from another shell): reap what it left behind.
[[ -s "$PGID_FILE" ]] && stop >/dev/null
exit "$status"
