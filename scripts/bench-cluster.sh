#!/usr/bin/env bash
# Benchmarks a local 3-node cluster of native processes, all on 127.0.0.1:
# starts three kvstore-server (ids 1..3) or, with BENCH_STORE=etcd, three etcd
# members, on ports the kernel picks free (fixed ports collided with
# connections left in TIME_WAIT), data in a temporary directory; waits
# for a leader, runs the standard workloads with `kvstore-cli bench` (with
# --protocol etcd against etcd: the same clients, keys and histograms) and
# prints one summary table. Every node is stopped at the end, also on a
# failure or Ctrl-C.
#
# usage: scripts/bench-cluster.sh [BIN_DIR [COMMAND...]]   (BIN_DIR: target/release)
#   With a COMMAND, runs it against the cluster instead of the standard
#   workloads, with KVSTORE_ENDPOINTS (read by kvstore-cli) set to the leader
#   and BENCH_ALL_ENDPOINTS to every node, the leader first:
#     scripts/bench-cluster.sh target/release target/release/kvstore-cli bench put --total 2000
#
# Environment (defaults in brackets):
#   BENCH_DURATION   each workload's --duration [10s]
#   BENCH_TOTAL      each workload's --total; whichever comes first [200000]
#   BENCH_KEYSPACE   distinct keys [10000]
#   BENCH_VALUE_SIZE value bytes [256]
#   BENCH_CLIENTS    clients of the concurrent workloads [64]
#   BENCH_VIA        all: concurrent workloads spread over the 3 nodes;
#                    leader: everything through the leader [all]
#   BENCH_STORE      kvstore or etcd (etcd 3.4's `etcd` on PATH, or ETCD) [kvstore]
#   BENCH_NODES      nodes in the cluster, 1 or 3 (1: what replication adds
#                    shows against it; scripts/bench-floor.sh uses it) [3]
#   BENCH_RESULTS    a directory to copy the JSON results into, for
#                    scripts/bench-table.py (side-by-side tables) [none]
#   BENCH_KEEP       1 keeps the data directory, logs and JSON results
#   BENCH_LOG_LEVEL  the kvstore nodes' --log-level [warn]
#   BENCH_ONLY       run only the workloads whose name matches this
#                    extended regex, e.g. '^put' [all of them]
set -euo pipefail

bin_dir=${1:-target/release}
shift $(($# > 0 ? 1 : 0))
server=$bin_dir/kvstore-server
cli=$bin_dir/kvstore-cli
duration=${BENCH_DURATION:-10s}
total=${BENCH_TOTAL:-200000}
keyspace=${BENCH_KEYSPACE:-10000}
value_size=${BENCH_VALUE_SIZE:-256}
clients=${BENCH_CLIENTS:-64}
via=${BENCH_VIA:-all}
store=${BENCH_STORE:-kvstore}
etcd=${ETCD:-etcd}
etcdctl=${ETCDCTL:-etcdctl}
node_count=${BENCH_NODES:-3}
leader_wait_seconds=30
[[ $store == kvstore || $store == etcd ]] || { echo "bench: BENCH_STORE must be kvstore or etcd, not $store" >&2; exit 1; }

for binary in "$server" "$cli"; do
  [[ -x $binary ]] || { echo "bench: $binary is missing; build it first (make release)" >&2; exit 1; }
done
if [[ $store == etcd ]]; then
  for binary in "$etcd" "$etcdctl"; do
    command -v "$binary" >/dev/null ||
      { echo "bench: $binary is not installed (Debian: apt-get install etcd-server etcd-client; make bench-etcd does it)" >&2; exit 1; }
  done
fi
[[ $node_count == 1 || $node_count == 3 ]] || { echo "bench: BENCH_NODES must be 1 or 3, not $node_count" >&2; exit 1; }
[[ $via == all || $via == leader ]] || { echo "bench: BENCH_VIA must be all or leader, not $via" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/kvstore-bench.XXXXXX")
pids=()
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ $status -ne 0 ]]; then
    for id in $(seq "$node_count"); do
      [[ -s $work/node-$id.log ]] && { echo "--- node $id log (last lines)" >&2; tail -n 15 "$work/node-$id.log" >&2; }
    done
  fi
  if [[ ${BENCH_KEEP:-0} == 1 ]]; then echo "bench: kept $work" >&2; else rm -rf "$work"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Ports the kernel picks free on 127.0.0.1 (bound together, then released):
# client ports first, then raft/peer ports, one of each per node.
mapfile -t free_ports < <(python3 -c '
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in sockets))
' $((2 * node_count)))
((${#free_ports[@]} == 2 * node_count)) || { echo "bench: could not pick free ports on 127.0.0.1" >&2; exit 1; }
client_port() { echo "${free_ports[$(($1 - 1))]}"; }
raft_port() { echo "${free_ports[$((node_count + $1 - 1))]}"; }
endpoint() { echo "127.0.0.1:$(client_port "$1")"; }
all_endpoints=$(for id in $(seq "$node_count"); do endpoint "$id"; done | paste -sd, -)
start_kvstore_node() {
  local id=$1 peers
  peers=$(for peer in $(seq "$node_count"); do
    [[ $peer == "$id" ]] || echo "$peer=127.0.0.1:$(raft_port "$peer")"
  done | paste -sd, -)
  "$server" --id "$id" --client-addr "$(endpoint "$id")" --raft-addr "127.0.0.1:$(raft_port "$id")" \
    ${peers:+--peers "$peers"} --data-dir "$work/node-$id" --metrics-addr 127.0.0.1:0 --log-level "${BENCH_LOG_LEVEL:-warn}" 2>"$work/node-$id.log" &
}
# etcd with its defaults (fsync on every WAL write, 100 ms heartbeat, 1 s
# election timeout, snapshot every 100,000 entries): what a user runs.
start_etcd_member() {
  local id=$1 initial_cluster
  initial_cluster=$(for peer in $(seq "$node_count"); do
    echo "node-$peer=http://127.0.0.1:$(raft_port "$peer")"
  done | paste -sd, -)
  "$etcd" --name "node-$id" --data-dir "$work/node-$id" \
    --listen-client-urls "http://$(endpoint "$id")" --advertise-client-urls "http://$(endpoint "$id")" \
    --listen-peer-urls "http://127.0.0.1:$(raft_port "$id")" \
    --initial-advertise-peer-urls "http://127.0.0.1:$(raft_port "$id")" \
    --initial-cluster "$initial_cluster" --initial-cluster-state new --initial-cluster-token kvstore-bench \
    --logger zap --log-level warn 2>"$work/node-$id.log" &
}
for id in $(seq "$node_count"); do
  if [[ $store == etcd ]]; then start_etcd_member "$id"; else start_kvstore_node "$id"; fi
  pids+=($!)
done

# A leader is known when every node answers and names the same leader.
kvstore_leader_endpoint() {
  python3 -c '
import json, sys
nodes = json.load(sys.stdin)
leaders = {node.get("leader_id", 0) for node in nodes}
if len(leaders) == 1 and 0 not in leaders and all("error" not in node for node in nodes):
    print(next(node["endpoint"] for node in nodes if node["id"] in leaders and node["role"] == "leader"))
'
}
etcd_leader_endpoint() {
  python3 -c '
import json, sys
statuses = json.load(sys.stdin)
leaders = {status["Status"]["leader"] for status in statuses}
if len(statuses) == int(sys.argv[1]) and len(leaders) == 1 and 0 not in leaders:
    print(next(status["Endpoint"] for status in statuses if status["Status"]["header"]["member_id"] in leaders))
' "$node_count"
}
leader_endpoint() {
  if [[ $store == etcd ]]; then
    "$etcdctl" --endpoints "$all_endpoints" --command-timeout 1s -w json endpoint status | etcd_leader_endpoint
  else
    "$cli" --endpoints "$all_endpoints" --timeout 1s -w json status | kvstore_leader_endpoint
  fi
}
deadline=$((SECONDS + leader_wait_seconds))
leader=""
while [[ -z $leader ]]; do
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "bench: a node exited during startup" >&2; exit 1; }
  done
  if ((SECONDS >= deadline)); then echo "bench: no leader within $leader_wait_seconds s" >&2; exit 1; fi
  sleep 0.2
  leader=$(leader_endpoint 2>/dev/null || true)
done
# The leader first: a single connection goes to it.
other_endpoints=$(tr , '\n' <<<"$all_endpoints" | { grep -vx "$leader" || true; } | paste -sd, -)
spread_endpoints="$leader${other_endpoints:+,$other_endpoints}"
concurrent_endpoints=$([[ $via == all ]] && echo "$spread_endpoints" || echo "$leader")
concurrent_via=$([[ $via == all ]] && echo "$node_count nodes" || echo "leader")

echo "bench: $store, $node_count nodes up, leader $leader; $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1))" >&2
if (($# > 0)); then
  echo "bench: running $*" >&2
  KVSTORE_ENDPOINTS=$leader BENCH_ALL_ENDPOINTS=$spread_endpoints BENCH_PROTOCOL=$store "$@"
  exit
fi
echo "bench: each workload --duration $duration --total $total, keyspace $keyspace, values $value_size bytes, data on $(df --output=fstype "$work" 2>/dev/null | tail -n 1 || stat -f -c %T "$work")" >&2

# name | via | endpoints | bench arguments
workloads=(
  "put, 1 client|leader|$leader|put --clients 1 --conns 1"
  "put, $clients clients|$concurrent_via|$concurrent_endpoints|put --clients $clients --conns $node_count"
  "get linearizable, $clients clients|$concurrent_via|$concurrent_endpoints|get --consistency linearizable --clients $clients --conns $node_count"
  "get serializable, $clients clients|$concurrent_via|$concurrent_endpoints|get --consistency serializable --clients $clients --conns $node_count"
  "mixed 50% reads, $clients clients|$concurrent_via|$concurrent_endpoints|mixed --ratio 0.5 --clients $clients --conns $node_count"
  "txn (compare-and-swap), $clients clients|$concurrent_via|$concurrent_endpoints|txn --clients $clients --conns $node_count"
  "range of 100 keys, $clients clients|$concurrent_via|$concurrent_endpoints|range --range-keys 100 --clients $clients --conns $node_count"
  "range of 1,000 keys, $clients clients|$concurrent_via|$concurrent_endpoints|range --range-keys 1000 --clients $clients --conns $node_count"
  "lease keep-alive, $clients clients|$concurrent_via|$concurrent_endpoints|keepalive --clients $clients --conns $node_count"
)
failed=0
index=0
for workload in "${workloads[@]}"; do
  IFS='|' read -r name workload_via endpoints arguments <<<"$workload"
  [[ $name =~ ${BENCH_ONLY:-.} ]] || continue
  index=$((index + 1))
  echo "bench: [$index] $name via $workload_via" >&2
  printf '%s\n%s\n' "$name" "$workload_via" >"$work/result-$index.name"
  # shellcheck disable=SC2086 # the arguments are words on purpose
  if ! "$cli" --endpoints "$endpoints" -w json bench $arguments --protocol "$store" \
    --duration "$duration" --total "$total" --keyspace "$keyspace" --value-size "$value_size" \
    >"$work/result-$index.json"; then
    failed=1
  fi
done

((index > 0)) || { echo "bench: no workload matches BENCH_ONLY='${BENCH_ONLY:-}'" >&2; exit 1; }
if [[ -n ${BENCH_RESULTS:-} ]]; then
  mkdir -p "$BENCH_RESULTS"
  cp "$work"/result-* "$BENCH_RESULTS"/
fi
python3 "$(dirname "$0")/bench-table.py" "$store=$work"
exit "$failed"
