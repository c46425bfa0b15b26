#!/usr/bin/env bash
# The server's layering (docs/architecture.md), checked on every `make lint`:
# each rule names imports that must not appear in some files. Comments are
# not checked.
set -euo pipefail
cd "$(dirname "$0")/.."

failed=0
# forbid DESCRIPTION REGEX FILE_OR_DIR...
forbid() {
    local description=$1 pattern=$2
    shift 2
    local hits
    hits=$(grep -rnE --include='*.rs' "$pattern" "$@" | grep -vE '^[^:]+:[0-9]+:[[:space:]]*//' || true)
    if [ -n "$hits" ]; then
        echo "layering broken: $description"
        echo "$hits" | sed 's/^/    /'
        failed=1
    fi
}

outside_wire=$(find server/src -name '*.rs' ! -path 'server/src/transport/*' \
    ! -path 'server/src/state_machine/log_encoding.rs' | sort)
# shellcheck disable=SC2086
forbid "only transport/ and state_machine/log_encoding.rs name the peer protocol's types" \
    'kvstore_proto::raft' $outside_wire
forbid "node/ (and its driver) reaches transport only through its interfaces (leader_link, inbound)" \
    'transport::(peers|convert|service|forwarder|outbound|reconnect)' server/src/node
forbid "transport/ does not import the node" 'crate::node' server/src/transport
forbid "metrics imports neither the node nor transport" 'crate::(node|transport)' server/src/metrics.rs
forbid "status types depend on nothing of the crate" 'crate::' server/src/status.rs
forbid "the state machine and storage do not import the layers above them" \
    'crate::(node|transport|service|http|metrics|server)' server/src/state_machine server/src/storage

if [ "$failed" = 0 ]; then
    echo "layering: ok"
fi
exit "$failed"
