#!/usr/bin/env bash
# grpcurl against a running cluster, through server reflection only (no
# .proto at hand), on the client port AND the raft port of every node:
# list, describe, health, Put through one node, Get and Status at others, and
# a stray call on the raft port that must be refused. Exits non-zero on any miss.
#   scripts/grpcurl-cluster.sh GRPCURL
# env: KVSTORE_ENDPOINTS (client ports), KVSTORE_RAFT_ENDPOINTS (raft ports),
# comma-separated, as set by `kvstore-conformance exec`.
set -euo pipefail
grpcurl=${1:?usage: grpcurl-cluster.sh GRPCURL}
IFS=, read -r -a clients <<<"${KVSTORE_ENDPOINTS:?set KVSTORE_ENDPOINTS}"
IFS=, read -r -a rafts <<<"${KVSTORE_RAFT_ENDPOINTS:?set KVSTORE_RAFT_ENDPOINTS}"

passed=0
failed=0
check() { # check NAME EXPECTED COMMAND...
    local name=$1 expected=$2 output
    shift 2
    output=$("$@" 2>&1) || true # grpcurl exits non-zero on an error status, which some checks expect
    if grep -q -- "$expected" <<<"$output"; then
        echo "ok   $name"; passed=$((passed + 1))
    else
        echo "FAIL $name: expected '$expected' in:"; echo "$output"; failed=$((failed + 1))
    fi
}

for address in "${clients[@]}"; do
    check "client port $address: list" "kvstore.v1.KV" "$grpcurl" -plaintext "$address" list
    check "client port $address: health" '"status": "SERVING"' "$grpcurl" -plaintext "$address" grpc.health.v1.Health/Check
done
for address in "${rafts[@]}"; do
    check "raft port $address: list" "kvstore.raft.v1.Raft" "$grpcurl" -plaintext "$address" list
    check "raft port $address: health" '"status": "SERVING"' "$grpcurl" -plaintext "$address" grpc.health.v1.Health/Check
done
check "describe KV" "rpc Put" "$grpcurl" -plaintext "${clients[0]}" describe kvstore.v1.KV
check "describe Raft" "rpc Stream" "$grpcurl" -plaintext "${rafts[0]}" describe kvstore.raft.v1.Raft
check "describe a raft message" "cluster_id" "$grpcurl" -plaintext "${rafts[0]}" describe kvstore.raft.v1.MessageHeader
# Keys and values are bytes: base64 in JSON (Z3JwY3VybA== is "grpcurl", Y2x1c3Rlcg== is "cluster").
check "put at node 1" '"index"' "$grpcurl" -plaintext -d '{"key": "Z3JwY3VybA==", "value": "Y2x1c3Rlcg=="}' "${clients[0]}" kvstore.v1.KV/Put
last=$((${#clients[@]} - 1))
check "get at the last node" '"value": "Y2x1c3Rlcg=="' "$grpcurl" -plaintext -d '{"key": "Z3JwY3VybA=="}' "${clients[$last]}" kvstore.v1.KV/Get
check "status" '"role": "ROLE_' "$grpcurl" -plaintext "${clients[$last]}" kvstore.v1.KV/Status
check "raft port refuses a stray client" "Code: FailedPrecondition" "$grpcurl" -plaintext \
    -d '{"header": {"clusterId": "not-this-cluster", "from": "99", "to": "1", "term": "1"}, "snapshot": {"index": "1", "term": "1"}}' "${rafts[0]}" kvstore.raft.v1.Raft/InstallSnapshot
echo "grpcurl (cluster): $passed passed, $failed failed"
[ "$failed" = 0 ]
