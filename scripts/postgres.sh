#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests, on loopback only.
#
#   scripts/postgres.sh [DATA_DIR]        start it if it is not running; print its URL (last line)
#   scripts/postgres.sh stop [DATA_DIR]   stop it (the data stays: rm -rf DATA_DIR to start afresh)
#
# A cluster the server's user could not keep in DATA_DIR (see below) lives in a directory of its
# own under /tmp, which the caller cannot see: stop removes that one, as it removes its lock file.
#
# DATA_DIR defaults to .pg in the repository (gitignored). The port is $PGPORT, else 54329, else
# the next free one. Idempotent: while the cluster runs, a second call only prints the URL.
# It sets itself up on a fresh machine: when no initdb is found (on PATH or in
# /usr/lib/postgresql/*/bin) and we are root, it installs Debian's postgresql with apt. The server
# runs as an unprivileged user (initdb refuses root): postgres if it exists, else a system user
# created for it. Authentication is trust, and the server listens on 127.0.0.1 only; its Unix
# socket is in DATA_DIR. Progress goes to stderr; stdout is only the URL.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATABASE=sequences_test
DEFAULT_PORT=54329
SERVICE_USER=sequences-pg # created only when there is no postgres user

say() { echo "postgres.sh: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

command_name=start
if [[ "${1:-}" == "stop" || "${1:-}" == "start" ]]; then
    command_name="$1"
    shift
fi
[[ $# -le 1 ]] || die "usage: $0 [start|stop] [DATA_DIR]"
DATA="${1:-$REPO/.pg}"
mkdir -p "$(dirname "$DATA")"
DATA="$(cd "$(dirname "$DATA")" && pwd)/$(basename "$DATA")"
# Paths are absolute from here on; the server's user may not be allowed in the caller's directory.
cd /

# -- the PostgreSQL programs --------------------------------------------------------------------

find_bindir() {
    local initdb
    if initdb="$(command -v initdb 2>/dev/null)"; then
        dirname "$(readlink -f "$initdb")"
        return 0
    fi
    # Debian keeps them off PATH, one directory per major version: take the newest.
    local dir
    dir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null | sort -V | tail -n 1)"
    if [[ -n "$dir" && -x "$dir/initdb" ]]; then
        echo "$dir"
        return 0
    fi
    return 1
}

install_postgresql() {
    [[ $EUID -eq 0 ]] || die "PostgreSQL is not installed (no initdb); install it (apt-get install postgresql) or run this as root"
    command -v apt-get >/dev/null || die "PostgreSQL is not installed and there is no apt-get to install it with"
    say "initdb not found: installing PostgreSQL with apt-get (once per machine)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    # Debian's package would create and start a cluster of its own on port 5432: ask it not to.
    apt-get install -y -q --no-upgrade --no-install-recommends postgresql-common >&2
    if [[ -f /etc/postgresql-common/createcluster.conf ]]; then
        sed -i 's/^#\?\s*create_main_cluster\s*=.*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf
    fi
    apt-get install -y -q --no-upgrade postgresql >&2
}

if [[ "$command_name" == start ]] && ! BINDIR="$(find_bindir)"; then
    # make suite's parallel workers may all get here on a fresh machine: one installs, the
    # others wait for it (apt-get refuses a second run at once) and then find initdb.
    exec 9>/tmp/sequences-postgres-install.lock
    flock 9
    BINDIR="$(find_bindir)" || install_postgresql
    flock -u 9
    BINDIR="$(find_bindir)" || die "PostgreSQL was installed but no initdb was found"
elif [[ "$command_name" == stop ]]; then
    BINDIR="$(find_bindir)" || die "PostgreSQL is not installed (no initdb), so no cluster runs"
fi
PSQL="$BINDIR/psql"
[[ -x "$PSQL" ]] || PSQL="$(command -v psql)" || die "psql not found"

# -- who runs the server ------------------------------------------------------------------------

if [[ $EUID -eq 0 ]]; then
    if id -u postgres >/dev/null 2>&1; then
        RUN_AS=postgres
    else
        RUN_AS="$SERVICE_USER"
        if ! id -u "$RUN_AS" >/dev/null 2>&1; then
            say "creating the system user $RUN_AS to run the server"
            useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$RUN_AS"
        fi
    fi
else
    RUN_AS="$(id -un)"
fi

# Run a command as the server's user, with no inherited descriptor beyond 0-2 (the server must
# not hold our lock, or a caller's pipe, for as long as it runs).
as_user() {
    if [[ $EUID -eq 0 ]]; then
        if command -v runuser >/dev/null; then
            runuser -u "$RUN_AS" -- "$@" 9>&-
        else
            su -s /bin/sh "$RUN_AS" -c "$(printf '%q ' "$@")" 9>&-
        fi
    else
        "$@" 9>&-
    fi
}

# The server's user must be able to reach the data directory, and the socket path must fit in
# a Unix socket address (107 bytes): otherwise keep the cluster in a directory of its own under
# /tmp, named after DATA_DIR so that every call finds the same one.
checksum="$(printf '%s' "$DATA" | cksum | cut -d' ' -f1)"
fallback=""
if ! as_user test -x "$(dirname "$DATA")" || [[ ${#DATA} -gt 90 ]]; then
    fallback="${TMPDIR:-/tmp}/sequences-pg-$checksum"
    say "$RUN_AS cannot use $DATA (unreachable or too long a path): using $fallback"
    DATA="$fallback"
fi

# Two callers at once (two pytest sessions) must not both initdb or start.
LOCK="${TMPDIR:-/tmp}/sequences-pg-$checksum-$EUID.lock"
while true; do
    exec 9>"$LOCK"
    command -v flock >/dev/null || break
    flock -w 120 9 || die "timed out waiting for $LOCK"
    # A stop removes the lock file once done: the lock held must still be the file named LOCK.
    [[ /proc/self/fd/9 -ef "$LOCK" ]] && break
done

pg_ctl_() { as_user "$BINDIR/pg_ctl" -D "$DATA" "$@"; }

running_port() {
    # Line 4 of postmaster.pid is the port of the running server.
    pg_ctl_ status >/dev/null 2>&1 && sed -n 4p "$DATA/postmaster.pid"
}

if [[ "$command_name" == stop ]]; then
    if [[ -f "$DATA/PG_VERSION" ]] && pg_ctl_ status >/dev/null 2>&1; then
        pg_ctl_ -m fast -w stop >&2
    else
        say "no cluster runs in $DATA"
    fi
    if [[ -n "$fallback" ]]; then
        rm -rf "$fallback"
    fi
    rm -f "$LOCK"
    exit 0
fi

# -- start --------------------------------------------------------------------------------------

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [[ -f "$DATA/PG_VERSION" ]]; then
    # The data directory may come from another machine (another uid) or an interrupted run.
    chown -R "$RUN_AS": "$DATA" 2>/dev/null || true
else
    if [[ -d "$DATA" && -n "$(ls -A "$DATA")" ]]; then
        die "$DATA exists, is not empty and holds no PostgreSQL cluster: remove it or pass another directory"
    fi
    say "creating a cluster in $DATA (PostgreSQL $(basename "$(dirname "$BINDIR")"), run by $RUN_AS)"
    mkdir -p "$DATA"
    chown "$RUN_AS": "$DATA"
    chmod 700 "$DATA"
    as_user "$BINDIR/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --locale=C \
        --no-sync --no-instructions >&2
fi

PORT="$(running_port || true)"
if [[ -z "$PORT" ]]; then
    PORT="${PGPORT:-$DEFAULT_PORT}"
    if [[ -z "${PGPORT:-}" ]]; then
        while port_busy "$PORT"; do
            PORT=$((PORT + 1))
            [[ $PORT -lt $((DEFAULT_PORT + 100)) ]] || die "no free port in $DEFAULT_PORT..$PORT"
        done
    elif port_busy "$PORT"; then
        die "PGPORT=$PORT is taken by another program"
    fi
    say "starting the server on 127.0.0.1:$PORT (log: $DATA/server.log)"
    # Durability is pointless for a throwaway cluster: fsync off makes the tests faster. The
    # bench (PG_DURABLE=1) keeps fsync and gives up only the wait for each commit's flush, as
    # the SQLite state does in WAL mode with synchronous=NORMAL.
    durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    [[ "${PG_DURABLE:-}" != 1 ]] || durability="-c synchronous_commit=off"
    if ! pg_ctl_ -w -t 60 -l "$DATA/server.log" \
        -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA $durability" \
        start >&2; then
        tail -n 20 "$DATA/server.log" >&2 || true
        die "the server did not start"
    fi
fi

for _ in $(seq 1 60); do
    if "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres; then
        break
    fi
    sleep 0.5
done
"$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres || die "the server on port $PORT is not ready"

psql_() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres "$@"; }
if [[ "$(psql_ -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'")" != 1 ]]; then
    psql_ -d postgres -c "CREATE DATABASE $DATABASE" >&2
fi

echo "postgresql://postgres@127.0.0.1:$PORT/$DATABASE"
