#!/usr/bin/env bash
# Start a local Airflow for Medscan: api-server (UI), scheduler, dag-processor and triggerer in one
# process tree, SQLite metadata DB + LocalExecutor, state in <project>/airflow_home (git-ignored),
# DAGs from <project>/dags. The UI listens on 127.0.0.1 only. Stop it with Ctrl-C (SIGINT: a
# SIGTERM leaves workers behind).
#   scripts/airflow-standalone.sh            (AIRFLOW_PORT=8080 by default)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_BIN="${MEDSCAN_VENV:-$ROOT/.venv}/bin"
if [[ ! -x "$VENV_BIN/airflow" ]]; then
    echo "no airflow in $VENV_BIN: run 'make install' first" >&2
    exit 1
fi

# Tasks run `dvc` and `python -m pipelines...`: the project venv comes first on their PATH.
export PATH="$VENV_BIN:$PATH"
export MEDSCAN_ROOT="$ROOT"
# No usage telemetry from any tool (the switches pipelines/__init__.py sets).
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true DVC_NO_ANALYTICS=1 GX_ANALYTICS_ENABLED=false
export AIRFLOW_HOME="${AIRFLOW_HOME:-$ROOT/airflow_home}"
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
export TF_CPP_MIN_LOG_LEVEL=2 GIT_PYTHON_REFRESH=quiet
mkdir -p "$AIRFLOW_HOME"

PASSWORDS="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
cat <<MSG
Medscan Airflow: http://127.0.0.1:$AIRFLOW__API__PORT  (ready after about a minute)
  login: user 'admin', password in $PASSWORDS
         (written on first start; also printed below as 'Password for user admin')
  DAGs:  medscan_retrain_<dataset>, medscan_drop_watch_<dataset>: new DAGs start paused, so
         unpause them in the UI or:  AIRFLOW_HOME=$AIRFLOW_HOME $VENV_BIN/airflow dags unpause medscan_retrain_<dataset>
         (unpausing the retrain DAG starts its latest missed weekly slot at once: the first training)
  drop:  new cases (images + labels.csv) go to $ROOT/incoming (params orchestration.drop_folder)
  stop:  Ctrl-C
MSG
cd "$ROOT"
exec airflow standalone
