#!/usr/bin/env bash
# Proves the conformance suite catches bugs. The server has a hidden switch
# for deliberate bugs (--inject-fault / KVSTORE_INJECT_FAULT):
#   stale-reads  linearizable reads served from local state, without ReadIndex
#   early-ack    writes acknowledged when proposed, before they are committed
#   stale-compare  txn compares decided on the answering node's local state
#   watch-resume-late  a watch created with start_revision > 0 starts one
#                  revision later (a resumed watch misses a revision)
#   lease-early-expiry  a new leader expires every lease at once instead of
#                  extending it
# Each scenario below is run against nodes started with such a fault (the
# runner passes --node-env KVSTORE_INJECT_FAULT=...) and MUST FAIL; when a
# pair names a reason (a grep -E pattern after the scenario), the run's
# output must show it too, so that the fault is caught by the check meant
# to catch it. With `full`, the same scenarios are first run against clean
# nodes and must pass.
#   scripts/conformance-faults.sh quick   stale-reads x linearizable-reads-under-partition,
#                                         stale-compare x cas-counter-leader-kill,
#                                         watch-resume-late x watch-across-leader-kill and
#                                         lease-early-expiry x lease-expiry-owner-dies (part of make conformance)
#   scripts/conformance-faults.sh full    every pair below, plus the clean runs (make conformance-faults)
# Artifacts of the faulty runs: $CONFORMANCE_OUT/faults/FAULT/SCENARIO/.
set -uo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.." || exit 2
mode=${1:-full}
bin=${CONFORMANCE_BIN:-target/release/kvstore-conformance}
out=${CONFORMANCE_OUT:-conformance/out}
image=${KVSTORE_CONFORMANCE_IMAGE:-kvstore:local}

# "FAULT SCENARIO [REASON]" that must fail (keep in sync with conformance/README.md).
# Only watch-across-leader-kill watches, so only it can catch watch-resume-late;
# the reason pins the check: a revision the resumed watch never delivered.
watch_pair="watch-resume-late watch-across-leader-kill missed revision"
# Only lease-expiry-owner-dies kills a leader while a lease's keys are read;
# the reason pins the check: a read before the TTL ran out saw them gone.
lease_pair="lease-early-expiry lease-expiry-owner-dies keys gone before the deadline"
quick_pairs=(
    "stale-reads linearizable-reads-under-partition"
    "stale-compare cas-counter-leader-kill"
    "$watch_pair"
    "$lease_pair"
)
full_pairs=(
    "stale-reads linearizable-reads-under-partition"
    "stale-reads leader-pause"
    "stale-reads concurrent-clients-linearizable"
    "early-ack minority-partition"
    "early-ack concurrent-clients-linearizable"
    "stale-compare cas-counter-leader-kill"
    "$watch_pair"
    "$lease_pair"
)
case "$mode" in
    quick) pairs=("${quick_pairs[@]}") ;;
    full) pairs=("${full_pairs[@]}") ;;
    *) echo "usage: $0 quick|full" >&2; exit 2 ;;
esac

passed=0
failed=0
if [ "$mode" = full ]; then
    scenarios=$(for pair in "${pairs[@]}"; do rest=${pair#* }; echo "${rest%% *}"; done | sort -u)
    echo "-- clean nodes: these scenarios must pass"
    # shellcheck disable=SC2086 # one word per scenario
    if "$bin" run --image "$image" --out "$out/faults/clean" $scenarios; then
        passed=$((passed + 1))
    else
        echo "FAIL the clean image does not pass the scenarios the faults are checked with"
        failed=$((failed + 1))
    fi
fi

for pair in "${pairs[@]}"; do
    fault=${pair%% *}
    rest=${pair#* }
    scenario=${rest%% *}
    reason=
    [ "$rest" = "$scenario" ] || reason=${rest#* }
    echo "-- KVSTORE_INJECT_FAULT=$fault: $scenario must fail${reason:+ ($reason)}"
    log=$(mktemp)
    "$bin" run --image "$image" --out "$out/faults/$fault" --node-env "KVSTORE_INJECT_FAULT=$fault" "$scenario" >"$log" 2>&1
    rc=$?
    outcome="$out/faults/$fault/$scenario/outcome.yaml"
    if [ "$rc" = 1 ] && [ -f "$outcome" ] && grep -q '^passed: false' "$outcome" \
        && ! grep -q 'start the cluster' "$outcome" \
        && { [ -z "$reason" ] || grep -qE "$reason" "$log"; }; then
        echo "ok   $fault caught by $scenario:"
        grep -E '^   FAIL|^    #|none of|^      watch |^      keys gone' "$log" | sed 's/^/       /'
        passed=$((passed + 1))
    else
        echo "FAIL $fault NOT caught by $scenario${reason:+ for the reason \"$reason\"} (exit $rc):"
        sed 's/^/       /' "$log"
        failed=$((failed + 1))
    fi
    rm -f "$log"
done
echo "fault injection: $passed passed, $failed failed"
[ "$failed" = 0 ]
