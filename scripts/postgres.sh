#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for docpipe's tests, from Debian's
# packages (/usr/lib/postgresql/15/bin), listening on 127.0.0.1 only.
#
#   scripts/postgres.sh start       initdb once, start it (or reuse), create db docpipe
#   scripts/postgres.sh stop        stop the cluster this tree started
#   scripts/postgres.sh status      exit 0 when it accepts connections
#   scripts/postgres.sh crash       stop it in immediate mode (no checkpoint:
#                                   crash recovery at the next start; the soak)
#   scripts/postgres.sh psql [ARGS] psql into db docpipe as user postgres
#
# Where the cluster lives: initdb and the server refuse to run as root, so as
# root they run as the `postgres` user, who must be able to reach the data
# folder. That is .run/pg when postgres can write there; when it cannot (the
# repo under /root, say) the cluster goes to /tmp/docpipe-pg-<hash of repo
# path> and .run/pg is a symlink to it. Trust authentication: fine
# for a loopback-only test server, never for anything else.
# Environment: DOCPIPE_PG_PORT (55432), DOCPIPE_RUN_DIR (lib.sh).
set -euo pipefail
DP_NAME=postgres.sh
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT="${DOCPIPE_PG_PORT:-55432}"
PGBIN="${DOCPIPE_PG_BIN:-/usr/lib/postgresql/15/bin}"
DB=docpipe
TMP_BASE="/tmp/docpipe-pg-$(dp_short_hash "$REPO${DOCPIPE_RUN_DIR:+:$RUN_DIR}")"

# Run a command as the cluster's owner: postgres when we are root (from /,
# since postgres may not be allowed into the current folder).
as_owner() {
    if ((EUID == 0)); then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# Choose (and create) the folder holding data/, the socket folder and logs.
choose_base() {
    local base="$RUN_DIR/pg"
    mkdir -p "$base"
    if ((EUID == 0)); then
        chown postgres:postgres "$base"
        if ! runuser -u postgres -- test -w "$base" 2>/dev/null; then
            base="$TMP_BASE"
            mkdir -p "$base"
            chown postgres:postgres "$base"
            chmod 700 "$base"
            # Leave a signpost where people look for it.
            [[ -L "$RUN_DIR/pg" ]] || rmdir "$RUN_DIR/pg"
            ln -sfn "$base" "$RUN_DIR/pg"
        fi
    fi
    BASE="$base"
    DATA="$BASE/data"
    LOG="$BASE/postgres.log"
    SOCK="$BASE/sock"
    # A Unix socket path must fit in 107 bytes.
    if ((${#SOCK} > 90)); then SOCK="$TMP_BASE-sock"; fi
    mkdir -p "$SOCK"
    if ((EUID == 0)); then chown postgres:postgres "$SOCK"; fi
}

ready() { "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -d postgres -U postgres; }

psql_cmd() { "$PGBIN/psql" -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres "$@"; }

ensure_db() {
    if [[ "$(psql_cmd -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]]; then
        psql_cmd -d postgres -qc "CREATE DATABASE $DB"
        say "created database $DB"
    fi
}

# The pid file postgres keeps names a live postmaster of this data folder.
ours_running() {
    [[ -n "${DATA:-}" ]] && as_owner "$PGBIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

start() {
    [[ -x "$PGBIN/initdb" ]] || die "PostgreSQL 15 not found in $PGBIN (run scripts/deps.sh)"
    choose_base
    if ready; then
        if ours_running; then
            say "reusing the cluster already running in $DATA on port $PORT"
        else
            say "reusing a PostgreSQL already answering on 127.0.0.1:$PORT (not started from this tree)"
        fi
        ensure_db
        return 0
    fi
    if ours_running; then
        dp_wait 10 "PostgreSQL on 127.0.0.1:$PORT" ready ||
            die "the cluster in $DATA runs, but not on port $PORT; stop it first"
        say "reusing the cluster running in $DATA on port $PORT"
        ensure_db
        return 0
    fi
    if [[ ! -f "$DATA/PG_VERSION" ]]; then
        say "initdb into $DATA"
        as_owner "$PGBIN/initdb" -D "$DATA" -A trust -U postgres -E UTF8 \
            --locale=C.UTF-8 >"$BASE/initdb.log" 2>&1 ||
            { cat "$BASE/initdb.log" >&2; die "initdb failed"; }
    fi
    say "starting PostgreSQL on 127.0.0.1:$PORT (data $DATA)"
    # Settings passed on the command line, so a changed port needs no edit.
    # The pipeline writes about 250 MB per 1,000 documents (vectors, twice):
    # with the default 1 GB of WAL between checkpoints, checkpoints came every
    # few seconds, each followed by full-page images of every page touched.
    if ! as_owner "$PGBIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start -o \
            "-p $PORT -c listen_addresses=127.0.0.1 -k $SOCK -c max_connections=200 -c shared_buffers=256MB -c max_wal_size=8GB -c checkpoint_timeout=15min" \
            >/dev/null; then
        tail -n 30 "$LOG" >&2 || true
        die "PostgreSQL did not start (log: $LOG)"
    fi
    dp_wait 30 "PostgreSQL on 127.0.0.1:$PORT" ready || die "PostgreSQL does not answer"
    ensure_db
    say "PostgreSQL is up: postgresql://postgres@127.0.0.1:$PORT/$DB"
}

stop() {
    choose_base
    if ours_running; then
        say "stopping PostgreSQL ($DATA)"
        as_owner "$PGBIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null
        say "PostgreSQL stopped"
    elif ready; then
        say "a PostgreSQL answers on 127.0.0.1:$PORT but was not started from this tree; leaving it"
    else
        say "PostgreSQL is not running"
    fi
}

# Immediate mode: the postmaster SIGQUITs its backends and exits without a
# checkpoint, as if the machine had failed; start replays the WAL.
crash() {
    choose_base
    ours_running || die "no cluster of this tree runs in $DATA"
    say "stopping PostgreSQL in immediate mode ($DATA)"
    as_owner "$PGBIN/pg_ctl" -D "$DATA" -m immediate -w -t 60 stop >/dev/null
    say "PostgreSQL stopped (immediate)"
}

status() {
    if ready; then
        say "PostgreSQL answers on 127.0.0.1:$PORT"
        return 0
    fi
    say "PostgreSQL does not answer on 127.0.0.1:$PORT"
    return 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    crash) crash ;;
    psql) shift; exec "$PGBIN/psql" -X -h 127.0.0.1 -p "$PORT" -U postgres -d "$DB" "$@" ;;
    *) echo "usage: $0 start|stop|status|crash|psql [ARGS]" >&2; exit 2 ;;
esac
