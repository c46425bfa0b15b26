#!/usr/bin/env bash
# `make conformance`: the whole black-box suite against the locally built
# image (make builds it first). Four parts, each timed; every part runs even
# when an earlier one failed, and the exit code is non-zero if any failed.
#   1. every scenario of scenarios/ (kvstore-conformance run), artifacts in conformance/out/
#   2. the outcomes against their insta snapshots (cargo test --test outcomes)
#   3. self-check: nodes with a planted bug (stale reads, stale compares, late watch
#      resumes, early lease expiry) must fail the scenario meant to catch it
#   4. clients from the protos: the generated Python client and grpcurl (both ports)
# Containers and networks are removed at the end, whatever happened.
set -uo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.." || exit 2
bin=${CONFORMANCE_BIN:-target/release/kvstore-conformance}
out=${CONFORMANCE_OUT:-conformance/out}
image=${KVSTORE_CONFORMANCE_IMAGE:-kvstore:local}
cargo=${CARGO:-cargo}
case "$out" in /*) ;; *) out=$PWD/$out ;; esac
export CONFORMANCE_BIN=$bin CONFORMANCE_OUT=$out KVSTORE_CONFORMANCE_IMAGE=$image

trap 'scripts/conformance-cleanup.sh >/dev/null 2>&1 || true' EXIT
scripts/conformance-cleanup.sh

passed=0
failed=()
part() { # part NAME COMMAND...
    local name=$1 start=$SECONDS rc
    shift
    echo
    echo "== conformance: $name"
    "$@"
    rc=$?
    echo "-- $name: $((SECONDS - start))s, $([ "$rc" = 0 ] && echo ok || echo "FAILED (exit $rc)")"
    if [ "$rc" = 0 ]; then passed=$((passed + 1)); else failed+=("$name"); fi
}
started=$SECONDS
part "scenarios" "$bin" run --image "$image" --out "$out"
part "snapshots" env KVSTORE_CONFORMANCE_OUT="$out" "$cargo" test -p kvstore-conformance --test outcomes -- --ignored
part "self-check (planted bugs are caught)" scripts/conformance-faults.sh quick
part "clients from the protos (Python, grpcurl)" scripts/conformance-clients.sh

echo
echo "conformance suite finished in $((SECONDS - started))s${failed[*]:+; failed: ${failed[*]}}"
echo "conformance suite: $passed passed, ${#failed[@]} failed"
[ "${#failed[@]}" = 0 ]
