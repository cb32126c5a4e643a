#!/usr/bin/env bash
# Start the scale-out services of docs/scale-out.md on 127.0.0.1, state in $MEDSCAN_SERVICES_DIR
# (default .services/, git-ignored): PostgreSQL (private cluster), Redis, SeaweedFS S3 (access key
# + secret), an MLflow tracking server (Postgres backend, artifacts in S3) and Airflow 3 (Postgres
# metadata, CeleryExecutor + Redis: api-server, scheduler, dag-processor, triggerer, one Celery
# worker on the checkout queue $MEDSCAN_QUEUE). Each runs in its own process group, pid in pids/,
# log in logs/; scripts/services-down.sh stops them.
#   scripts/services-up.sh [SERVICE...]   (default all: postgres redis s3 mlflow airflow)
# What is missing is installed first: Debian postgresql + redis-server (apt, when root) and the
# pinned extras of requirements-services.lock in the project venv. Clients read every setting from
# $MEDSCAN_SERVICES_DIR/services.env; start-up seconds are appended to startup-times.tsv.
set -euo pipefail
# shellcheck source=scripts/services-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/services-lib.sh"

CHECKOUT="$(cd "${MEDSCAN_ROOT:-$SERVICES_ROOT}" && pwd)"
QUEUE="${MEDSCAN_QUEUE:-medscan}"
S3_PREFIX="${MEDSCAN_S3_PREFIX-s3://medscan-intake/incoming/}"
BUCKETS=(medscan-dvc medscan-mlflow medscan-intake)
export PATH="$VENV_BIN:$PATH"
# No usage telemetry from any tool (the switches pipelines/__init__.py sets).
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true DVC_NO_ANALYTICS=1 GX_ANALYTICS_ENABLED=false
export GIT_PYTHON_REFRESH=quiet

note_time() {  # service, seconds: shown and kept for docs/scale-out.md
    printf '%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$1" "$2" >> "$TIMES_FILE"
    echo "  $1 up in $2 s"
}

elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# ------------------------------------------------------------------ install what is missing

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

install_missing() {
    local started; started="$(date +%s.%N)"
    local apt=()
    [[ -n "$(pg_bin)" && -x "$(pg_bin)/initdb" ]] || apt+=(postgresql)
    command -v redis-server >/dev/null || apt+=(redis-server)
    if (( ${#apt[@]} )); then
        if [[ "$(id -u)" != 0 ]]; then
            echo "missing Debian packages ${apt[*]}: run 'sudo apt-get install -y ${apt[*]}'" >&2
            exit 1
        fi
        echo "installing ${apt[*]} (apt)"
        { apt-get install -y -qq "${apt[@]}" || { apt-get update -qq && apt-get install -y -qq "${apt[@]}"; }; } \
            > "$LOGS/install-apt.log" 2>&1 || { cat "$LOGS/install-apt.log" >&2; exit 1; }
    fi
    [[ -x "$VENV_BIN/python" ]] || { echo "no venv in $VENV_BIN: run 'make install' first" >&2; exit 1; }
    [[ -x "$VENV_BIN/uv" ]] || "$VENV_BIN/python" -m pip install -q --disable-pip-version-check uv==0.13.9
    # Idempotent and quick when everything is there already (uv checks the pins, installs the rest).
    "$VENV_BIN/uv" pip install -q --python "$VENV_BIN/python" --compile-bytecode \
        -r "$SERVICES_ROOT/requirements-services.lock"
    note_time install "$(elapsed "$started")"
}

# ------------------------------------------------------------------ settings

secret() { python3 -c "import secrets; print(secrets.token_hex(16))"; }

# Secrets are made once (secrets.env) and kept with the data they protect; services.env, what
# clients read, is written again on every start from them and the settings above.
write_env() {
    local secrets="$STATE/secrets.env"
    if [[ ! -s "$secrets" ]]; then
        local fernet; fernet="$("$VENV_BIN/python" -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
        ( umask 077; cat > "$secrets" <<ENV
MEDSCAN_PG_PASSWORD_AIRFLOW=$(secret)
MEDSCAN_PG_PASSWORD_MLFLOW=$(secret)
MEDSCAN_REDIS_PASSWORD=$(secret)
AWS_ACCESS_KEY_ID=medscan$(secret | cut -c1-12)
AWS_SECRET_ACCESS_KEY=$(secret)$(secret)
AIRFLOW__API_AUTH__JWT_SECRET=$(secret)
AIRFLOW__API__SECRET_KEY=$(secret)
AIRFLOW__CORE__FERNET_KEY=$fernet
MEDSCAN_AIRFLOW_PASSWORD=$(secret)
ENV
        )
    fi
    # shellcheck disable=SC1090
    local MEDSCAN_PG_PASSWORD_AIRFLOW MEDSCAN_PG_PASSWORD_MLFLOW MEDSCAN_REDIS_PASSWORD; source "$secrets"
    local pg="127.0.0.1:$PG_PORT" pg_pw="$MEDSCAN_PG_PASSWORD_AIRFLOW"
    ( umask 077; { cat <<ENV
# Written by scripts/services-up.sh on every start: the settings every client of these services
# uses. Secrets (from secrets.env): keep this file private (git-ignored folder, mode 600).
ENV
    cat "$secrets"
    cat <<ENV
MEDSCAN_MLFLOW_BACKEND=postgresql+psycopg2://mlflow:$MEDSCAN_PG_PASSWORD_MLFLOW@$pg/mlflow
MEDSCAN_MLFLOW_ARTIFACTS=s3://medscan-mlflow/artifacts
AWS_DEFAULT_REGION=us-east-1
MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
MEDSCAN_S3_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
MEDSCAN_S3_PREFIX=$S3_PREFIX
MEDSCAN_DVC_REMOTE=s3://medscan-dvc/cache
MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
MEDSCAN_ROOT=$CHECKOUT
MEDSCAN_QUEUE=$QUEUE
AIRFLOW_HOME=$STATE/airflow
AIRFLOW__CORE__EXECUTOR=CeleryExecutor
AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgresql+psycopg2://airflow:$pg_pw@$pg/airflow
AIRFLOW__CELERY__BROKER_URL=redis://:$MEDSCAN_REDIS_PASSWORD@127.0.0.1:$REDIS_PORT/0
AIRFLOW__CELERY__RESULT_BACKEND=db+postgresql://airflow:$pg_pw@$pg/airflow
AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$AIRFLOW_PORT/execution/
AIRFLOW__API__BASE_URL=http://127.0.0.1:$AIRFLOW_PORT
AIRFLOW__API__HOST=127.0.0.1
AIRFLOW__API__PORT=$AIRFLOW_PORT
AIRFLOW__API__WORKERS=1
AIRFLOW__CORE__DAGS_FOLDER=$CHECKOUT/dags
AIRFLOW__CORE__LOAD_EXAMPLES=False
AIRFLOW__CORE__PARALLELISM=4
AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=medscan:admin
AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=$STATE/airflow/passwords.json
MEDSCAN_AIRFLOW_USER=medscan
ENV
    } > "$ENV_FILE.tmp" && mv "$ENV_FILE.tmp" "$ENV_FILE" )
}

load_env() { set -a; # shellcheck disable=SC1090
    source "$ENV_FILE"; set +a; }

# ------------------------------------------------------------------ one function per service

start_postgres() {
    local bin data="$STATE/postgres/data" run="$STATE/postgres/run" as=()
    bin="$(pg_bin)"
    mkdir -p "$STATE/postgres" "$run" "$LOGS"
    # PostgreSQL refuses to run as root: the cluster then belongs to the `postgres` user (setpriv
    # execs in place, so the recorded pid is the postmaster itself).
    if [[ "$(id -u)" == 0 ]]; then
        as=(setpriv --reuid=postgres --regid=postgres --init-groups --)
        chown postgres: "$STATE/postgres" "$run"
        "${as[@]}" test -w "$STATE/postgres" || { echo "PostgreSQL runs as user postgres, which cannot reach" \
            "$STATE/postgres (a parent folder is closed to it): set MEDSCAN_SERVICES_DIR to a folder it" \
            "can reach, e.g. /var/tmp/medscan-services" >&2; exit 1; }
    fi
    if [[ ! -s "$data/PG_VERSION" ]]; then
        "${as[@]}" "$bin/initdb" -D "$data" -U medscan --auth-local=trust --auth-host=scram-sha-256 \
            -E UTF8 --locale=C.UTF-8 > "$LOGS/postgres-initdb.log" 2>&1 \
            || { cat "$LOGS/postgres-initdb.log" >&2; exit 1; }
    fi
    spawn postgres "${as[@]}" "$bin/postgres" -D "$data" -c listen_addresses=127.0.0.1 -p "$PG_PORT" \
        -k "$run" -c shared_buffers=64MB -c max_connections=100 -c fsync=on
    wait_for 60 "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" \
        || { tail -20 "$LOGS/postgres.log" >&2; echo "postgres did not start" >&2; exit 1; }
    local sql=("$bin/psql" -q -h "$run" -p "$PG_PORT" -U medscan -d postgres -v ON_ERROR_STOP=1)
    local user pw
    for user in airflow mlflow; do
        pw="$MEDSCAN_PG_PASSWORD_AIRFLOW"; [[ "$user" == mlflow ]] && pw="$MEDSCAN_PG_PASSWORD_MLFLOW"
        if [[ -z "$("${sql[@]}" -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$user'")" ]]; then
            "${sql[@]}" -c "CREATE ROLE $user LOGIN PASSWORD '$pw'"
            "${sql[@]}" -c "CREATE DATABASE $user OWNER $user"
        fi
    done
}

start_redis() {
    mkdir -p "$STATE/redis"
    # No persistence: the broker's queue is rebuilt by the scheduler (Airflow's metadata is in Postgres).
    spawn redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$STATE/redis" --save "" \
        --appendonly no --requirepass "$MEDSCAN_REDIS_PASSWORD" --protected-mode yes
    wait_for 30 redis_ping || { tail -20 "$LOGS/redis.log" >&2; echo "redis did not start" >&2; exit 1; }
}

redis_ping() { REDISCLI_AUTH="$MEDSCAN_REDIS_PASSWORD" redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping | grep -q PONG; }

start_s3() {
    mkdir -p "$STATE/s3/data"
    local config="$STATE/s3/s3.json"
    ( umask 077; cat > "$config" <<JSON
{"identities": [{"name": "medscan",
  "credentials": [{"accessKey": "$AWS_ACCESS_KEY_ID", "secretKey": "$AWS_SECRET_ACCESS_KEY"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
    )
    spawn s3 weed mini -dir="$STATE/s3/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port="$S3_PORT" \
        -s3.config="$config" -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0
    wait_for 60 http_any "http://127.0.0.1:$S3_PORT/" || { tail -20 "$LOGS/s3.log" >&2; echo "S3 did not start" >&2; exit 1; }
    # The gateway answers before the filer behind it is ready, and after a restart the volume
    # server registers its volumes a little later still (GetObject: "volume 1 not found"): retry
    # until every bucket exists and an object stored in each one can be read back.
    wait_for 60 s3_ready "${BUCKETS[@]}" || { tail -20 "$LOGS/s3.log" >&2; echo "S3 buckets not ready" >&2; exit 1; }
}

# The probe is passed with -c, not on stdin: wait_for runs it again, and a here-document is
# consumed by the first try (every later try would read an empty script and "succeed").
S3_READY_PY='
import os, sys
import boto3
s3 = boto3.client("s3", endpoint_url=os.environ["MEDSCAN_S3_ENDPOINT_URL"])
have = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
for bucket in sys.argv[1:]:
    if bucket not in have:
        s3.create_bucket(Bucket=bucket)
    stored = [o for o in s3.list_objects_v2(Bucket=bucket, MaxKeys=50).get("Contents", []) if o["Size"] > 0]
    if stored:   # one byte of one stored object: its volume is being served again
        s3.get_object(Bucket=bucket, Key=stored[0]["Key"], Range="bytes=0-0")["Body"].read()
'
s3_ready() { "$VENV_BIN/python" -c "$S3_READY_PY" "$@"; }

start_mlflow() {
    # Artifacts are proxied (mlflow-artifacts:/): only this server holds the S3 credentials it uses.
    # MLflow 3 also starts job runners (GenAI scorers: seven processes): not used here. MLflow's
    # engine has no pool_pre_ping, so a restarted PostgreSQL leaves its pooled connections dead
    # (500s until each is tried): NullPool opens one per request instead (local: a few ms).
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_SQLALCHEMYSTORE_POOLCLASS=NullPool \
        spawn mlflow mlflow server --backend-store-uri "$MEDSCAN_MLFLOW_BACKEND" \
        --artifacts-destination "$MEDSCAN_MLFLOW_ARTIFACTS" --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1
    wait_for 180 http_ok "http://127.0.0.1:$MLFLOW_PORT/health" \
        || { tail -30 "$LOGS/mlflow.log" >&2; echo "mlflow server did not start" >&2; exit 1; }
}

airflow_component() {  # name, then the airflow arguments; a component still running is kept
    local name="$1"; shift
    live_pid "airflow-$name" >/dev/null && return 0
    spawn "airflow-$name" airflow "$@"
}

start_airflow() {
    mkdir -p "$AIRFLOW_HOME"
    [[ -s "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" ]] || ( umask 077;
        printf '{"%s": "%s"}\n' "$MEDSCAN_AIRFLOW_USER" "$MEDSCAN_AIRFLOW_PASSWORD" \
            > "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" )
    local started component running=0; started="$(date +%s.%N)"
    for component in "${AIRFLOW_COMPONENTS[@]}"; do
        live_pid "airflow-$component" >/dev/null && running=1
    done
    if (( ! running )); then   # a restart of components that exited needs no migration
        airflow db migrate > "$LOGS/airflow-db-migrate.log" 2>&1 || { tail -30 "$LOGS/airflow-db-migrate.log" >&2; exit 1; }
        note_time airflow-db-migrate "$(elapsed "$started")"
    fi
    # Tasks run `dvc` and `python -m pipelines...`: the venv first on their PATH. The log servers of
    # the scheduler, triggerer and worker bind every interface: skipped (logs are local files here).
    airflow_component api-server api-server --host 127.0.0.1 --port "$AIRFLOW_PORT" --workers 1
    airflow_component scheduler scheduler --skip-serve-logs
    airflow_component dag-processor dag-processor
    airflow_component triggerer triggerer --skip-serve-logs
    (cd "$CHECKOUT" && airflow_component worker celery worker --queues "$QUEUE" --concurrency 2 \
        --skip-serve-logs --without-gossip --without-mingle)
    wait_for 240 http_ok "http://127.0.0.1:$AIRFLOW_PORT/api/v2/monitor/health" \
        || { tail -30 "$LOGS/airflow-api-server.log" >&2; echo "airflow api-server did not start" >&2; exit 1; }
    note_time airflow-api-server "$(elapsed "$started")"
    wait_for 240 grep -q "ready\." "$LOGS/airflow-worker.log" \
        || { tail -30 "$LOGS/airflow-worker.log" >&2; echo "celery worker did not start" >&2; exit 1; }
    note_time airflow-worker "$(elapsed "$started")"
    wait_for 240 airflow_healthy \
        || { tail -30 "$LOGS/airflow-scheduler.log" >&2; echo "airflow scheduler/triggerer/dag-processor not healthy" >&2; exit 1; }
}

airflow_healthy() {  # scheduler, triggerer and dag-processor have all sent a heartbeat
    curl -fsS --max-time 2 "http://127.0.0.1:$AIRFLOW_PORT/api/v2/monitor/health" | python3 -c '
import json, sys
h = json.load(sys.stdin)
sys.exit(0 if all((h.get(k) or {}).get("status") == "healthy" for k in ("metadatabase", "scheduler", "triggerer", "dag_processor")) else 1)'
}

start() {
    local name="$1" started
    case "$name" in
        postgres|redis|s3|mlflow) ;;
        airflow) ;;
        *) echo "unknown service $name (one of: ${ALL_SERVICES[*]})" >&2; exit 2 ;;
    esac
    if [[ "$name" == airflow ]]; then
        # Components that exited (the scheduler does when PostgreSQL goes away) are started again.
        local component missing=0
        for component in "${AIRFLOW_COMPONENTS[@]}"; do
            live_pid "airflow-$component" >/dev/null || missing=1
        done
        if (( ! missing )); then echo "  airflow already running"; return 0; fi
    elif live_pid "$name" >/dev/null; then
        echo "  $name already running (pid $(live_pid "$name"))"; return 0
    fi
    started="$(date +%s.%N)"
    "start_$name"
    note_time "$name" "$(elapsed "$started")"
}

mkdir -p "$LOGS" "$PIDS"
services=("$@")
(( ${#services[@]} )) || services=("${ALL_SERVICES[@]}")
install_missing
write_env
load_env
echo "Medscan services (state in $STATE, checkout $CHECKOUT):"
for service in "${services[@]}"; do
    start "$service"
done
cat <<MSG
Up on 127.0.0.1: postgres :$PG_PORT, redis :$REDIS_PORT, S3 :$S3_PORT, MLflow http://127.0.0.1:$MLFLOW_PORT,
Airflow http://127.0.0.1:$AIRFLOW_PORT (user $MEDSCAN_AIRFLOW_USER, password in $ENV_FILE).
Clients: set -a; source $ENV_FILE; set +a
Stop:    make services-down
MSG
