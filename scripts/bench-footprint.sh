#!/usr/bin/env bash
# Memory and disk of a 3-node cluster as its history grows and is compacted
# (issue #22): writes FOOTPRINT_KEYS keys of 256 bytes once, overwrites
# every key FOOTPRINT_ROUNDS times, compacts at the current revision, then
# runs FOOTPRINT_STEADY_ROUNDS more overwrite rounds, each followed by a
# compaction (the steady state a retention window gives). After each phase
# it prints each node's RSS and the size of its data directory (LevelDB
# `kv/`, WAL, snapshots). Every write goes through `kvstore-cli bench put
# --prefill`, which writes each key of the keyspace exactly once.
#
# usage (the cluster comes from bench-cluster.sh):
#   scripts/bench-cluster.sh target/release scripts/bench-footprint.sh
# Environment: FOOTPRINT_KEYS [1000000], FOOTPRINT_ROUNDS [10],
#   FOOTPRINT_STEADY_ROUNDS [2], FOOTPRINT_CLIENTS [128],
#   FOOTPRINT_SETTLE_SECONDS [20] (the wait after a compaction: the nodes
#   then free its disk in the background), KVSTORE_CLI.
set -euo pipefail

keys=${FOOTPRINT_KEYS:-1000000}
rounds=${FOOTPRINT_ROUNDS:-10}
steady_rounds=${FOOTPRINT_STEADY_ROUNDS:-2}
clients=${FOOTPRINT_CLIENTS:-128}
settle=${FOOTPRINT_SETTLE_SECONDS:-20}
cli=${KVSTORE_CLI:-target/release/kvstore-cli}
endpoints=${BENCH_ALL_ENDPOINTS:?run through scripts/bench-cluster.sh}
[[ ${BENCH_PROTOCOL:-kvstore} == kvstore ]] || { echo "footprint: kvstore only" >&2; exit 1; }

IFS=, read -r -a nodes <<<"$endpoints"
pids=()
dirs=()
for endpoint in "${nodes[@]}"; do
  pid=$(pgrep -f -- "--client-addr $endpoint( |\$)" | head -1)
  [[ -n $pid ]] || { echo "footprint: no server listens on $endpoint" >&2; exit 1; }
  pids+=("$pid")
  dirs+=("$(tr '\0' '\n' <"/proc/$pid/cmdline" | grep -A1 -x -- --data-dir | tail -1)")
done

mib() { awk '{ printf "%.0f", $1 / 1024 }'; }
rss_mib() { awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
du_mib() { if [[ -e $1 ]]; then du -sk "$1" | mib; else echo 0; fi; }

revision() {
  # A long timeout: under this load a node can stall for seconds.
  "$cli" --endpoints "$endpoints" --timeout 60s -w json get footprint-probe --count-only |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["header"]["revision"])'
}

echo "| phase | revision | node | RSS MiB | data dir MiB | kv/ MiB | wal/ MiB | snapshots/ MiB |"
echo "|---|--:|--:|--:|--:|--:|--:|--:|"
report() {
  local phase=$1 rev
  rev=$(revision)
  for i in "${!pids[@]}"; do
    local dir=${dirs[$i]}
    echo "| $phase | $rev | $((i + 1)) | $(rss_mib "${pids[$i]}") | $(du_mib "$dir") | $(du_mib "$dir/kv") | $(du_mib "$dir/wal") | $(du_mib "$dir/snapshots") |"
  done
}

write_every_key() {
  "$cli" --endpoints "$endpoints" bench put --conns 3 --keyspace "$keys" --prefill --total 1 \
    --clients "$clients" --seed "$1" --no-progress >/dev/null
}

compact_now() {
  local rev
  rev=$(revision)
  "$cli" --endpoints "$endpoints" --timeout 10m compact "$rev" --physical >/dev/null
  # Every node compacts on its own after applying the Compact entry, then
  # frees the disk; give the followers and LevelDB time to catch up.
  sleep "$settle"
}

write_every_key 1
report "$keys keys written"
for round in $(seq "$rounds"); do
  write_every_key $((round + 1))
  report "overwrite $round"
done
compact_now
report "compacted"
for round in $(seq "$steady_rounds"); do
  write_every_key $((rounds + round + 1))
  compact_now
  report "overwrite $((rounds + round)) + compaction"
done
