#!/usr/bin/env bash
# Writes a data directory with a given kvstore-server binary, by a fixed
# recipe, for server/tests/log_compatibility.rs: the check that a release
# reads the log, snapshots and store of an earlier one.
#
#   scripts/make-log-fixture.sh SERVER CLI OUT_DIR
#
# The recipe (server/tests/log_compatibility.rs `expected_state` mirrors it):
#   round 1: put key-000..key-119 = "v{i}-r1"; restart (a new term, so the
#            log holds a leader's Empty entry after the first ones);
#   round 2: put key-000..key-119 = "v{i}-r2", put "binary" = 00 ff 01 0a,
#            put "empty" = "" ;
#   then delete every 7th key (key-000, key-007, ...); stop with SIGTERM.
# With --snapshot-entries 50 that leaves snapshots, entries after the last
# one, Empty entries and a hard state.
set -euo pipefail

server=$1
cli=$2
out=$3

if [ -e "$out" ]; then
    echo "$out exists; remove it first" >&2
    exit 2
fi
mkdir -p "$(dirname "$out")"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
client_port=$(free_port)
raft_port=$(free_port)
endpoint="127.0.0.1:$client_port"
log=$(mktemp)
pid=

start() {
    "$server" --id 1 --cluster-id compat \
        --client-addr "$endpoint" --raft-addr "127.0.0.1:$raft_port" \
        --metrics-addr 127.0.0.1:0 --data-dir "$out" \
        --snapshot-entries 50 --wal-preallocate-bytes 0 2>>"$log" &
    pid=$!
    for _ in $(seq 1 100); do
        if "$cli" --endpoints "$endpoint" --timeout 1s status >/dev/null 2>&1 &&
            "$cli" --endpoints "$endpoint" --timeout 1s put probe-leader x >/dev/null 2>&1; then
            "$cli" --endpoints "$endpoint" delete probe-leader >/dev/null
            return
        fi
        sleep 0.1
    done
    cat "$log" >&2
    echo "the server did not start" >&2
    exit 1
}

stop() {
    kill -TERM "$pid"
    wait "$pid" || true
}

put() {
    "$cli" --endpoints "$endpoint" put "$1" "$2" >/dev/null
}

start
for i in $(seq 0 119); do
    put "$(printf 'key-%03d' "$i")" "v$i-r1"
done
stop
start
for i in $(seq 0 119); do
    put "$(printf 'key-%03d' "$i")" "v$i-r2"
done
printf '\000\377\001\n' | "$cli" --endpoints "$endpoint" put binary - >/dev/null
printf '' | "$cli" --endpoints "$endpoint" put empty - >/dev/null
for i in $(seq 0 7 119); do
    "$cli" --endpoints "$endpoint" delete "$(printf 'key-%03d' "$i")" >/dev/null
done
stop
rm -f "$log"
echo "wrote $out"
