#!/usr/bin/env bash
# Profiles the leader of a local 3-node cluster while a `kvstore-cli bench`
# workload runs: perf samples the leader process (cpu-clock, DWARF call
# graphs, so it works on VMs without hardware counters and on binaries
# without frame pointers), then inferno folds the stacks and draws a
# flamegraph. Run through scripts/bench-cluster.sh, which starts and stops
# the cluster.
#
# usage: scripts/profile-leader.sh OUT_DIR BENCH_ARGS...
#   scripts/bench-cluster.sh target/release scripts/profile-leader.sh target/profile \
#       put --clients 64 --conns 3 --duration 10s
#   (or `make profile PROFILE_ARGS='get --clients 64 --conns 3 --duration 10s'`)
# Writes OUT_DIR/leader.perf.data, leader.folded, leader.svg and bench.json,
# and prints the share of samples in the main parts of the server.
#
# Environment: KVSTORE_ENDPOINTS (the leader) and BENCH_ALL_ENDPOINTS are set
# by bench-cluster.sh; KVSTORE_CLI (target/release/kvstore-cli), PERF (perf),
# INFERNO_DIR (directory with inferno-collapse-perf and inferno-flamegraph;
# default: PATH).
set -euo pipefail

out=${1:?usage: profile-leader.sh OUT_DIR BENCH_ARGS...}
shift
cli=${KVSTORE_CLI:-target/release/kvstore-cli}
perf=${PERF:-perf}
inferno=${INFERNO_DIR:+$INFERNO_DIR/}
leader=${KVSTORE_ENDPOINTS:?run through scripts/bench-cluster.sh}
endpoints=${BENCH_ALL_ENDPOINTS:-$leader}
# Sampling rate (Hz) and how long perf records: the bench's --duration.
frequency=${PROFILE_FREQUENCY:-999}

command -v "$perf" >/dev/null || { echo "profile: perf is not installed (Debian: linux-perf)" >&2; exit 1; }
for tool in inferno-collapse-perf inferno-flamegraph; do
  command -v "$inferno$tool" >/dev/null ||
    { echo "profile: $tool is missing (cargo install inferno; make profile does it)" >&2; exit 1; }
done
mkdir -p "$out"
pid=$(pgrep -f -- "--client-addr $leader( |\$)" | head -1)
[[ -n $pid ]] || { echo "profile: no server process listens on $leader" >&2; exit 1; }

echo "profile: leader $leader is pid $pid; perf record while: bench $*" >&2
"$perf" record -q -p "$pid" -e cpu-clock -F "$frequency" --call-graph dwarf,16384 \
  -o "$out/leader.perf.data" 2>"$out/perf.log" &
perf_pid=$!
sleep 0.5
"$cli" --endpoints "$endpoints" -w json bench "$@" --no-progress >"$out/bench.json"
kill -INT "$perf_pid"
wait "$perf_pid" || true
"$perf" script -i "$out/leader.perf.data" 2>/dev/null | "${inferno}inferno-collapse-perf" >"$out/leader.folded"
"${inferno}inferno-flamegraph" --title "kvstore leader: bench $*" <"$out/leader.folded" >"$out/leader.svg"

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
bench = json.load(open(f"{out}/bench.json"))
print(f"bench {bench['workload']}: {bench['throughput_ops_per_s']:.0f} ops/s, "
      f"p50 {bench['latency_us_p50'] / 1000:.3f} ms, p99 {bench['latency_us_p99'] / 1000:.3f} ms (perf running)")
parts = {
    "HTTP/2 server (client requests, inbound streams)": "h2::server",
    "HTTP/2 client (outbound peer streams)": "h2::client",
    "client API handlers": "KvService",
    "forwarded requests (leader side)": "serve_forward",
    "inbound Raft messages": "receive_stream",
    "Raft driver loop": "Driver::run",
    "store thread (LevelDB apply, reads)": "kvstore-store",
    "WAL append": "kvstore_wal::",
    "fdatasync": "fdatasync",
    "protobuf (prost)": "prost",
    "system calls": "entry_SYSCALL",
}
total, hits = 0, dict.fromkeys(parts, 0)
for line in open(f"{out}/leader.folded"):
    stack, _, count = line.rpartition(" ")
    total += int(count)
    for label, needle in parts.items():
        if needle in stack:
            hits[label] += int(count)
# perf's cpu-clock weights are nanoseconds of CPU time.
print(f"leader CPU sampled: {total / 1e9:.2f} s; share per part (inclusive, parts overlap):")
for label, count in hits.items():
    print(f"  {label:50} {100 * count / max(total, 1):5.1f}%")
print(f"flamegraph: {out}/leader.svg")
PY
