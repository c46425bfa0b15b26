#!/usr/bin/env bash
# The single-client put latency against its floor, all measured minutes
# apart on this machine (the issue's target: within 1.5x of two sequential
# fsyncs plus two loopback round trips):
#   - the floor's parts, fdatasync of one WAL record and a loopback TCP round
#     trip (scripts/bench-floor.py);
#   - what this stack adds before any replication: a loopback gRPC round trip
#     (a serializable get, one client, one node) and a single-node put;
#   - the three-node put with one client, through the leader, and the same
#     against etcd 3.4 when `etcd` and `etcdctl` are installed.
# A three-node put does all a single-node put does, with replication on top,
# so the single-node put bounds it from below.
#
# usage: scripts/bench-floor.sh [BIN_DIR]   (BIN_DIR: target/release)
# Environment: BENCH_FLOOR_TOTAL puts or gets per measurement [3000],
#   BENCH_FLOOR_ETCD=0 skips etcd.
set -euo pipefail

bin_dir=${1:-target/release}
here=$(dirname "$0")
total=${BENCH_FLOOR_TOTAL:-3000}
work=$(mktemp -d "${TMPDIR:-/tmp}/kvstore-floor.XXXXXX")
trap 'rm -rf "$work"' EXIT

# One client, one connection, through the leader: p50 in µs on stdout.
p50_of() {
  local store=$1 nodes=$2
  shift 2
  BENCH_STORE=$store BENCH_NODES=$nodes "$here/bench-cluster.sh" "$bin_dir" \
    "$bin_dir/kvstore-cli" -w json bench "$@" --clients 1 --conns 1 --total "$total" --duration 20s \
    --protocol "$store" 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["latency_us_p50"])'
}

echo "bench-floor: fdatasync and loopback TCP (scripts/bench-floor.py)" >&2
"$here/bench-floor.py" "${TMPDIR:-/tmp}" >"$work/parts.json"
echo "bench-floor: one kvstore node: serializable get, put" >&2
grpc_get=$(p50_of kvstore 1 get --consistency serializable)
single_put=$(p50_of kvstore 1 put)
echo "bench-floor: three kvstore nodes: put" >&2
cluster_put=$(p50_of kvstore 3 put)
etcd_put=""
if [[ ${BENCH_FLOOR_ETCD:-1} != 0 ]] && command -v "${ETCD:-etcd}" >/dev/null &&
  command -v "${ETCDCTL:-etcdctl}" >/dev/null; then
  echo "bench-floor: three etcd members: put" >&2
  etcd_put=$(p50_of etcd 3 put)
fi

python3 - "$work/parts.json" "$grpc_get" "$single_put" "$cluster_put" "$etcd_put" <<'EOF'
import json, sys
parts = json.load(open(sys.argv[1]))
grpc_get, single_put, cluster_put = (float(value) for value in sys.argv[2:5])
etcd_put = float(sys.argv[5]) if sys.argv[5] else None
fsync, round_trip = parts["fdatasync_us"], parts["tcp_round_trip_us"]
floor = 2 * fsync + 2 * round_trip
rows = [
    ("fdatasync of a %d-byte WAL record (median of %d)" % (parts["record_bytes"], parts["fsync_writes"]), fsync),
    ("loopback TCP round trip, 64 bytes (median of %d)" % parts["round_trips"], round_trip),
    ("floor: 2 fdatasync + 2 TCP round trips", floor),
    ("1.5x the floor (the target)", 1.5 * floor),
    ("gRPC round trip: serializable get, 1 node, p50", grpc_get),
    ("put, 1 node, p50 (bounds a 3-node put from below)", single_put),
    ("put, 3 nodes, p50", cluster_put),
]
if etcd_put is not None:
    rows.append(("etcd 3.4 put, 3 members, p50", etcd_put))
width = max(len(name) for name, _ in rows)
print("| %-*s | µs | x floor |" % (width, "measure"))
print("|%s|---:|---:|" % ("-" * (width + 2)))
for name, value in rows:
    print("| %-*s | %.0f | %.2f |" % (width, name, value, value / floor))
EOF
