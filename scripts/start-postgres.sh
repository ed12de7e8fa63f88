#!/usr/bin/env bash
# Starts a local PostgreSQL server for adaptim's store and prints its URL.
#
#   bash scripts/start-postgres.sh            # start (or find running) and print the URL
#   bash scripts/start-postgres.sh --install  # apt-get install postgresql first when missing
#   bash scripts/start-postgres.sh --stop     # stop it
#
# The server listens on 127.0.0.1 only, keeps its data in $ADAPTIM_PG_DIR (default
# /tmp/adaptim-postgres) and accepts the user adaptim with a password over TCP
# (scram-sha-256), so a study can use it at once:
#   adaptim compare --store "$(bash scripts/start-postgres.sh)" ...
# PostgreSQL refuses to run as root: as root, the server runs as the system user
# `postgres` that Debian's package creates. Re-running is quick and idempotent.
set -euo pipefail

DIR=${ADAPTIM_PG_DIR:-/tmp/adaptim-postgres}
PORT=${ADAPTIM_PG_PORT:-54329}
PASSWORD=${ADAPTIM_PG_PASSWORD:-adaptim-local}
URL="postgresql+psycopg://adaptim:${PASSWORD}@127.0.0.1:${PORT}/adaptim"

bindir() {
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n "$found" ]]; then
        echo "$found"
    elif command -v pg_ctl >/dev/null; then
        dirname "$(command -v pg_ctl)"
    fi
}

if [[ "${1:-}" == "--install" && -z "$(bindir)" ]]; then
    echo "Installing Debian's postgresql (apt-get)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
BIN=$(bindir)
if [[ -z "$BIN" ]]; then
    echo "error: PostgreSQL is not installed; run 'bash scripts/start-postgres.sh --install' as root, or 'apt-get install postgresql'" >&2
    exit 1
fi

# Runs a server command as the user who owns the data directory.
as_owner() {
    if [[ $(id -u) == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

if [[ "${1:-}" == "--stop" ]]; then
    if [[ -f "$DIR/data/postmaster.pid" ]]; then
        as_owner "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >&2
    fi
    exit 0
fi

if [[ ! -f "$DIR/data/PG_VERSION" ]]; then
    mkdir -p "$DIR"
    [[ $(id -u) == 0 ]] && chown postgres: "$DIR"
    pwfile=$(mktemp)
    echo "$PASSWORD" >"$pwfile"
    [[ $(id -u) == 0 ]] && chown postgres: "$pwfile"
    # Local socket: trust (only this machine's owner reaches it); TCP: the password.
    as_owner "$BIN/initdb" -D "$DIR/data" -U adaptim --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --no-instructions >&2
    rm -f "$pwfile"
fi

if ! as_owner "$BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
    as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
        -o "-h 127.0.0.1 -p $PORT -k $DIR -c max_connections=200 -c fsync=off" start >&2
fi
# fsync=off: a test server; a crash of the machine may lose it, a crash of a study cannot.

if ! as_owner "$BIN/psql" -h "$DIR" -p "$PORT" -U adaptim -d postgres -Atc \
    "SELECT 1 FROM pg_database WHERE datname = 'adaptim'" | grep -q 1; then
    as_owner "$BIN/createdb" -h "$DIR" -p "$PORT" -U adaptim adaptim
fi
echo "$URL"
