# Shared by scripts/services-up.sh and scripts/services-down.sh (sourced, never run): where the
# scale-out services keep their state, which 127.0.0.1 ports they use, and the process helpers.
# Every fact here is one setting: override any of them in the environment.
#   MEDSCAN_SERVICES_DIR  state, logs, pid files, secrets      (default <repo>/.services, git-ignored)
#   MEDSCAN_ROOT          the checkout the Airflow DAGs run in (default this repository)
#   MEDSCAN_PG_PORT MEDSCAN_REDIS_PORT MEDSCAN_S3_PORT MEDSCAN_MLFLOW_PORT MEDSCAN_AIRFLOW_PORT
# shellcheck shell=bash

SERVICES_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_BIN="${MEDSCAN_VENV:-$SERVICES_ROOT/.venv}/bin"
STATE="${MEDSCAN_SERVICES_DIR:-$SERVICES_ROOT/.services}"
mkdir -p "$STATE"
STATE="$(cd "$STATE" && pwd)"
PIDS="$STATE/pids"
LOGS="$STATE/logs"
ENV_FILE="$STATE/services.env"     # every setting a client needs (KEY=value lines, secrets included)
TIMES_FILE="$STATE/startup-times.tsv"
PG_PORT="${MEDSCAN_PG_PORT:-55432}"
REDIS_PORT="${MEDSCAN_REDIS_PORT:-56379}"
S3_PORT="${MEDSCAN_S3_PORT:-8333}"
MLFLOW_PORT="${MEDSCAN_MLFLOW_PORT:-5500}"
AIRFLOW_PORT="${MEDSCAN_AIRFLOW_PORT:-18080}"
# The order services start in (services-down stops them in reverse).
ALL_SERVICES=(postgres redis s3 mlflow airflow)
# Airflow's components: one process group each.
AIRFLOW_COMPONENTS=(api-server scheduler dag-processor triggerer worker)

# The pid recorded for $1 if that process is still alive.
live_pid() {
    local file="$PIDS/$1.pid" pid
    [[ -s "$file" ]] || return 1
    pid="$(cat "$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

# Processes of process group $1.
group_pids() { pgrep -g "$1" 2>/dev/null || true; }

# Stop what `spawn` started as $1: SIGTERM (SIGINT for $2=INT) to its process group, wait up to
# MEDSCAN_STOP_WAIT seconds (default 30), then SIGKILL what is left of the group.
stop_group() {
    local name="$1" signal="${2:-TERM}" pid waited=0 wait_s="${MEDSCAN_STOP_WAIT:-30}"
    if ! pid="$(live_pid "$name")"; then
        rm -f "$PIDS/$name.pid"
        return 0
    fi
    kill "-$signal" -- "-$pid" 2>/dev/null || true
    while [[ -n "$(group_pids "$pid")" && $waited -lt $((wait_s * 5)) ]]; do
        sleep 0.2; waited=$((waited + 1))
    done
    if [[ -n "$(group_pids "$pid")" ]]; then
        echo "  $name: still running after ${wait_s}s, SIGKILL" >&2
        kill -KILL -- "-$pid" 2>/dev/null || true
        while [[ -n "$(group_pids "$pid")" ]]; do sleep 0.1; done
    fi
    rm -f "$PIDS/$name.pid"
    echo "  $name stopped"
}

# Start "$@" (after the name $1) in a session and process group of its own, output to its log,
# pid recorded: a subshell is never a group leader, so setsid execs in place and its pid is the
# group id that stop_group signals.
spawn() {
    local name="$1"; shift
    mkdir -p "$PIDS" "$LOGS"
    ( exec setsid "$@" >>"$LOGS/$name.log" 2>&1 < /dev/null ) &
    echo "$!" > "$PIDS/$name.pid"
}

# Wait until `$2...` succeeds (polled every 0.5 s) for at most $1 seconds.
wait_for() {
    local limit="$1"; shift
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if (( SECONDS >= deadline )); then return 1; fi
        sleep 0.5
    done
}

http_ok() { curl -fsS -o /dev/null --max-time 2 "$1"; }
http_any() { curl -sS -o /dev/null --max-time 2 "$1"; }   # any HTTP answer (S3 says 403 unsigned)
