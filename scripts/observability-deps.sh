#!/usr/bin/env bash
# Installs what the observability tests need and is missing, from Debian's
# packages: `promtool` and `prometheus` (package prometheus) and a headless
# browser (package chromium). Nothing is downloaded outside the package
# manager. Idempotent: does nothing when everything is there.
#   scripts/observability-deps.sh          # install what is missing
#   scripts/observability-deps.sh --check  # only report; exit 1 if something is missing
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v prometheus >/dev/null 2>&1 || { [[ " ${missing[*]} " == *" prometheus "* ]] || missing+=(prometheus); }
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    missing+=(chromium)
fi

if [ ${#missing[@]} -eq 0 ]; then
    echo "observability deps: promtool, prometheus and chromium are installed"
    exit 0
fi
if [ "${1:-}" = --check ]; then
    echo "observability deps missing: ${missing[*]} (scripts/observability-deps.sh installs them)" >&2
    exit 1
fi
command -v apt-get >/dev/null 2>&1 || {
    echo "error: missing ${missing[*]} and no apt-get here; install them with your package manager" >&2
    exit 1
}
sudo=()
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "error: installing ${missing[*]} needs root (or sudo)" >&2; exit 1; }
    sudo=(sudo)
fi
echo "observability deps: installing ${missing[*]} (apt-get)"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
# --no-install-recommends: the prometheus package recommends node-exporter
# and friends, which we do not need. The package's postinst may try to start
# the service; where there is no init system that fails harmlessly.
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" fonts-dejavu-core >/dev/null
# Debian's prometheus package starts a system service when systemd runs;
# we start our own instances on other ports, so leave it alone.
for tool in promtool prometheus; do
    command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool still missing after installing" >&2; exit 1; }
done
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || {
    echo "error: chromium still missing after installing" >&2
    exit 1
}
echo "observability deps: installed ${missing[*]}"
