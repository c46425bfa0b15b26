#!/usr/bin/env bash
# Removes every container and network left by conformance runs (they carry
# the label kvstore.conformance.run and names starting with kvconf-), e.g.
# after a run was killed. Safe to run any time no conformance run is active.
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."
bin=${CONFORMANCE_BIN:-target/release/kvstore-conformance}
if [ -x "$bin" ]; then
    "$bin" cleanup
else
    # Without the binary: the same with the docker CLI.
    mapfile -t containers < <(docker ps -aq --filter label=kvstore.conformance.run)
    [ "${#containers[@]}" = 0 ] || docker rm -f -v "${containers[@]}" >/dev/null
    mapfile -t networks < <(docker network ls -q --filter label=kvstore.conformance.run)
    [ "${#networks[@]}" = 0 ] || docker network rm "${networks[@]}" >/dev/null
    echo "removed ${#containers[@]} container(s) and ${#networks[@]} network(s) left by conformance runs"
fi
