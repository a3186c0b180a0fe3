#!/usr/bin/env bash
# A real Airflow deployment on loopback, end to end (make e2e / make e2e-celery).
#
#   scripts/e2e.sh [local|celery] [driver options...]
#
# Starts a PostgreSQL cluster of its own (scripts/postgres.sh, in .e2e/<executor>/pg), then
# runs the driver (python -m tests.e2e), which starts the simulators, Redis (celery), and
# Airflow's api-server, scheduler, dag-processor, triggerer (and two Celery workers), runs the
# checks and prints the figures. Whatever happens (a failed check, Ctrl-C, SIGTERM), the trap
# stops the driver (which stops what it started), kills any process group it left in
# .e2e/<executor>/pids, and stops the cluster. With celery, Debian's redis-server is installed
# with apt-get when it is missing.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
EXECUTOR="${1:-local}"
[[ $# -gt 0 ]] && shift
case "$EXECUTOR" in
local | celery) ;;
*)
    echo "usage: $0 [local|celery] [driver options...]" >&2
    exit 2
    ;;
esac
PY="${E2E_PYTHON:-$REPO/.venv/bin/python}"
WORK="$REPO/.e2e/$EXECUTOR"
PGDIR="$WORK/pg"
mkdir -p "$WORK"
driver=""
postgres_started=""

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n "$driver" ]] && kill -0 "$driver" 2>/dev/null; then
        kill -TERM "$driver" 2>/dev/null || true
        wait "$driver" 2>/dev/null || true
    fi
    # Process groups the driver could not stop (it was killed itself): one line "pgid name" each.
    if [[ -s "$WORK/pids" ]]; then
        while read -r pgid name; do
            if kill -0 -- "-$pgid" 2>/dev/null; then
                echo "e2e.sh: stopping the leftover $name (process group $pgid)" >&2
                kill -KILL -- "-$pgid" 2>/dev/null || true
            fi
        done <"$WORK/pids"
        : >"$WORK/pids"
    fi
    if [[ -n "$postgres_started" ]]; then
        bash scripts/postgres.sh stop "$PGDIR" || true
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ "$EXECUTOR" == celery ]] && ! command -v redis-server >/dev/null; then
    [[ $EUID -eq 0 ]] || {
        echo "e2e.sh: redis-server is missing: apt-get install redis-server (as root)" >&2
        exit 1
    }
    echo "e2e.sh: installing Debian's redis-server (once per machine)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    # The package would start a system-wide server on port 6379: ours runs on a free port instead.
    apt-get install -y -q --no-install-recommends redis-server >&2
    if command -v systemctl >/dev/null && systemctl is-active --quiet redis-server 2>/dev/null; then
        systemctl stop redis-server || true
    fi
fi

postgres_started=1
PG_URL="$(bash scripts/postgres.sh start "$PGDIR")"
"$PY" -m tests.e2e --executor "$EXECUTOR" --postgres "$PG_URL" --workdir "$WORK" "$@" &
driver=$!
wait "$driver"
