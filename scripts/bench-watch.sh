#!/usr/bin/env bash
# One `kvstore-cli bench watch` run against the node at KVSTORE_ENDPOINTS,
# then the serving process's resident memory (peak and now). Runs inside
# scripts/bench-cluster.sh (which sets KVSTORE_ENDPOINTS and BENCH_PROTOCOL),
# against kvstore or etcd alike:
#
#   BENCH_NODES=1 scripts/bench-cluster.sh target/release \
#     scripts/bench-watch.sh target/release/kvstore-cli --clients 64 --conns 3 \
#     --watchers 10000 --prefix-watchers 1000 --total 20000
#
# A benchmark, not a test: nothing here fails on a slow number.
set -euo pipefail

cli=${1:?usage: bench-watch.sh KVSTORE_CLI BENCH_WATCH_ARGS...}
shift
endpoint=${KVSTORE_ENDPOINTS%%,*}
port=${endpoint##*:}
pid=$(ss -ltnpH "sport = :$port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
[[ -n $pid ]] || { echo "bench-watch: no process listens on port $port" >&2; exit 1; }

"$cli" bench watch --protocol "${BENCH_PROTOCOL:-kvstore}" --no-progress "$@"
echo "server ($(tr '\0' ' ' </proc/"$pid"/cmdline | cut -c1-40)...): $(grep -E '^VmHWM' /proc/"$pid"/status | tr -s ' \t' ' '), $(grep -E '^VmRSS' /proc/"$pid"/status | tr -s ' \t' ' ')"
