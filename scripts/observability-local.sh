#!/usr/bin/env bash
# Runs Debian's prometheus in the foreground on 127.0.0.1:9090 (PROMETHEUS_ADDR),
# scraping the native cluster (`make cluster-local`, metrics on
# 127.0.0.1:9101-9103) with observability/prometheus-local.yml. Its data goes
# to .cluster-data/prometheus (PROMETHEUS_DATA). Ctrl-C stops it.
set -euo pipefail

here=$(cd "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
: "${PROMETHEUS_ADDR:=127.0.0.1:9090}"
: "${PROMETHEUS_DATA:=$root/.cluster-data/prometheus}"

command -v prometheus >/dev/null 2>&1 || {
    echo "error: prometheus is not installed; 'make observability-deps' installs it (Debian package prometheus)" >&2
    exit 1
}
mkdir -p "$PROMETHEUS_DATA"
echo "prometheus on http://$PROMETHEUS_ADDR/ scraping 127.0.0.1:9101-9103 (data in $PROMETHEUS_DATA); Ctrl-C stops it" >&2
exec prometheus \
    --config.file="$root/observability/prometheus-local.yml" \
    --storage.tsdb.path="$PROMETHEUS_DATA" \
    --web.listen-address="$PROMETHEUS_ADDR"
