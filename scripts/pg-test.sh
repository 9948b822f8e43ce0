#!/usr/bin/env bash
# A throwaway PostgreSQL server for the account-store tests (transport/tests/store.rs).
#
#   scripts/pg-test.sh start DIR PORT   new cluster in DIR, listening on 127.0.0.1:PORT only,
#                                       with database `natter`; prints its URL as the last line
#                                       of stdout: postgres://postgres@127.0.0.1:PORT/natter
#   scripts/pg-test.sh stop DIR         stop it and remove DIR
#
# Uses Debian's PostgreSQL binaries (the newest /usr/lib/postgresql/*/bin). Authentication is
# `trust` for 127.0.0.1 and nothing else: a test server only, never for real data. Durability
# is off (fsync=off) for speed. As root, the cluster is owned and run by the `postgres` system
# user (PostgreSQL refuses to run as root). `start` first stops and removes a stale cluster in
# DIR; DIR is only ever removed when it holds this script's marker file.
set -euo pipefail

MARKER=.natter-pg-test

usage() {
    echo "usage: $0 start DIR PORT | stop DIR" >&2
    exit 2
}

log() { echo "pg-test: $*" >&2; }

die() {
    log "$*"
    exit 1
}

pg_bindir() {
    local dir newest=""
    for dir in /usr/lib/postgresql/*/bin; do
        [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]] || continue
        newest=$(printf '%s\n%s\n' "$newest" "$dir" | sed '/^$/d' | sort -V | tail -n1)
    done
    [[ -n "$newest" ]] || die "no PostgreSQL found under /usr/lib/postgresql/*/bin (apt-get install postgresql)"
    echo "$newest"
}

is_root() { [[ "$(id -u)" == 0 ]]; }

# Run a server-side command as the cluster's owner.
as_owner() {
    if is_root; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Stop the cluster in $1 if one runs there, then remove $1 (only if it is ours).
teardown() {
    local dir=$1 bin
    [[ -e "$dir" ]] || return 0
    if [[ ! -f "$dir/$MARKER" ]]; then
        # Not made by this script: an empty directory is fine to reuse, anything else is not
        # ours to delete.
        if [[ -d "$dir" && -z "$(ls -A "$dir")" ]]; then
            rmdir "$dir"
            return 0
        fi
        die "$dir exists and was not made by $0; refusing to remove it"
    fi
    if [[ -f "$dir/data/postmaster.pid" ]]; then
        bin=$(pg_bindir)
        log "stopping the cluster in $dir"
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >&2 ||
            as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >&2 ||
            log "pg_ctl stop failed (not running?)"
    fi
    rm -rf -- "$dir"
}

start() {
    local dir=$1 port=$2 bin url
    [[ "$port" =~ ^[0-9]+$ ]] && ((port > 0 && port < 65536)) || die "bad port: $port"
    dir=$(realpath -m -- "$dir")
    bin=$(pg_bindir)
    teardown "$dir"

    mkdir -p -- "$dir"
    touch "$dir/$MARKER"
    chmod 700 "$dir"
    if is_root; then
        chown -R postgres: "$dir"
        runuser -u postgres -- test -w "$dir" ||
            die "the postgres user cannot reach $dir (is a parent directory private?)"
    fi

    log "initdb ($bin) in $dir/data"
    as_owner "$bin/initdb" -D "$dir/data" -U postgres -E UTF8 --locale=C \
        --auth=trust --no-sync >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; die "initdb failed"; }

    cat >>"$dir/data/postgresql.conf" <<EOF

# scripts/pg-test.sh: a throwaway test server
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
EOF
    # Trust on 127.0.0.1 only: no Unix-socket, IPv6 or other host lines at all.
    cat >"$dir/data/pg_hba.conf" <<EOF
# TYPE  DATABASE  USER  ADDRESS       METHOD
host    all       all   127.0.0.1/32  trust
EOF
    if is_root; then
        chown postgres: "$dir/data/postgresql.conf" "$dir/data/pg_hba.conf"
    fi

    log "starting on 127.0.0.1:$port"
    if ! as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >&2; then
        tail -n 30 "$dir/server.log" >&2 || true
        die "the server did not start (port $port in use?)"
    fi
    "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres natter ||
        die "createdb failed"

    url="postgres://postgres@127.0.0.1:$port/natter"
    log "ready"
    echo "$url"
}

stop() {
    local dir
    dir=$(realpath -m -- "$1")
    teardown "$dir"
    log "stopped; $dir removed"
}

case "${1:-}" in
start)
    [[ $# == 3 ]] || usage
    start "$2" "$3"
    ;;
stop)
    [[ $# == 2 ]] || usage
    stop "$2"
    ;;
*) usage ;;
esac
