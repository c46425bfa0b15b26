#!/usr/bin/env bash
# Starts a real kvstore-server on a free loopback port and drives it with a real
# grpcurl through server reflection only (no .proto files at hand): list,
# describe, Put, Get, Status, Txn, Range, Watch and the health check. Exits non-zero on any miss.
set -euo pipefail

server_binary=${1:?usage: grpcurl-smoke.sh SERVER_BINARY GRPCURL}
grpcurl=${2:?usage: grpcurl-smoke.sh SERVER_BINARY GRPCURL}
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
address="127.0.0.1:$(free_port)"
raft_address="127.0.0.1:$(free_port)"

"$server_binary" --data-dir "$work/data" --client-addr "$address" --raft-addr "$raft_address" \
  --metrics-addr 127.0.0.1:0 2>"$work/server.log" &
server_pid=$!
cleanup() { kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

for _ in $(seq 100); do
  if "$grpcurl" -plaintext "$address" list >/dev/null 2>&1; then break; fi
  sleep 0.1
done

passed=0
check() { # check NAME EXPECTED COMMAND...
  local name=$1 expected=$2; shift 2
  local output
  output=$("$@" 2>&1) || true # grpcurl exits non-zero on an error status, which some checks expect
  if ! grep -q -- "$expected" <<<"$output"; then
    echo "FAIL $name: expected '$expected' in:"; echo "$output"; cat "$work/server.log"; exit 1
  fi
  echo "ok   $name"; passed=$((passed + 1))
}

check "list services" "kvstore.v1.Watch" "$grpcurl" -plaintext "$address" list
check "describe KV" "rpc Put" "$grpcurl" -plaintext "$address" describe kvstore.v1.KV
check "put" '"nodeId": "1"' "$grpcurl" -plaintext -d '{"key": "Zm9v", "value": "YmFy"}' "$address" kvstore.v1.KV/Put
check "get" '"value": "YmFy"' "$grpcurl" -plaintext -d '{"key": "Zm9v"}' "$address" kvstore.v1.KV/Get
check "status" '"role": "ROLE_' "$grpcurl" -plaintext "$address" kvstore.v1.KV/Status
# foo=bar -> baz if it still holds bar; then the prefix "fo" as a range.
check "txn (compare-and-swap)" '"succeeded": true' "$grpcurl" -plaintext -d '{"compare": [{"key": "Zm9v", "result": "COMPARE_RESULT_EQUAL", "target": "COMPARE_TARGET_VALUE", "value": "YmFy"}], "success": [{"requestPut": {"key": "Zm9v", "value": "YmF6"}}]}' "$address" kvstore.v1.KV/Txn
check "range over a prefix" '"value": "YmF6"' "$grpcurl" -plaintext -d '{"key": "Zm8=", "rangeEnd": "ZnA="}' "$address" kvstore.v1.KV/Range
# A watch of foo from revision 1: its history (the put and the txn's write),
# streamed until grpcurl's -max-time ends the call.
check "watch with history" '"value": "YmF6"' "$grpcurl" -plaintext -max-time 2 -d '{"createRequest": {"key": "Zm9v", "startRevision": "1"}}' "$address" kvstore.v1.Watch/Watch
check "health" '"status": "SERVING"' "$grpcurl" -plaintext "$address" grpc.health.v1.Health/Check
check "empty key refused" "Code: InvalidArgument" "$grpcurl" -plaintext -d '{"key": ""}' "$address" kvstore.v1.KV/Get
# The raft port: reflection and health too, and a stranger is refused.
check "raft port: list services" "kvstore.raft.v1.Raft" "$grpcurl" -plaintext "$raft_address" list
check "raft port: describe" "rpc Stream" "$grpcurl" -plaintext "$raft_address" describe kvstore.raft.v1.Raft
check "raft port: health" '"status": "SERVING"' "$grpcurl" -plaintext "$raft_address" grpc.health.v1.Health/Check
check "raft port: stranger refused" "Code: FailedPrecondition" "$grpcurl" -plaintext \
  -d '{"header": {"clusterId": "another-cluster", "from": 7, "to": 1, "term": 99}, "snapshot": {"index": 1, "term": 1}}' "$raft_address" kvstore.raft.v1.Raft/InstallSnapshot
echo "grpcurl: $passed passed, 0 failed"
