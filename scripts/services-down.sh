#!/usr/bin/env bash
# Stop what scripts/services-up.sh started (all of it, or the services named), newest first:
# each process group gets SIGTERM (PostgreSQL SIGINT: its fast shutdown; a plain SIGTERM waits for
# every client to disconnect), MEDSCAN_STOP_WAIT seconds (default 30), then SIGKILL.
# State (databases, buckets, secrets) stays in $MEDSCAN_SERVICES_DIR; --purge deletes it too.
#   scripts/services-down.sh [--purge] [SERVICE...]   (postgres redis s3 mlflow airflow)
set -euo pipefail
# shellcheck source=scripts/services-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/services-lib.sh"

purge=0
services=()
for arg in "$@"; do
    case "$arg" in
        --purge) purge=1 ;;
        postgres|redis|s3|mlflow|airflow) services+=("$arg") ;;
        *) echo "usage: $0 [--purge] [${ALL_SERVICES[*]}]" >&2; exit 2 ;;
    esac
done
(( ${#services[@]} )) || services=("${ALL_SERVICES[@]}")

echo "stopping Medscan services in $STATE:"
for (( i=${#ALL_SERVICES[@]}-1; i>=0; i-- )); do
    name="${ALL_SERVICES[$i]}"
    [[ " ${services[*]} " == *" $name "* ]] || continue
    case "$name" in
        airflow)
            # The worker first (it finishes or hands back its task), then what schedules.
            for (( j=${#AIRFLOW_COMPONENTS[@]}-1; j>=0; j-- )); do
                stop_group "airflow-${AIRFLOW_COMPONENTS[$j]}"
            done ;;
        postgres) stop_group postgres INT ;;
        *) stop_group "$name" ;;
    esac
done
if (( purge )); then
    if [[ -n "$(ls "$PIDS" 2>/dev/null)" ]]; then
        echo "not purging $STATE: services still recorded in $PIDS" >&2; exit 1
    fi
    rm -rf "$STATE"
    echo "purged $STATE"
fi
