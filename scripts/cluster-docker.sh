#!/usr/bin/env bash
# The three-node docker compose cluster. Called by mk/cluster.mk:
#   scripts/cluster-docker.sh up|down|clean|status|logs
# env (make sets them):
#   COMPOSE               compose command: "docker compose" or "docker-compose"
#   COMPOSE_FILE_PATH     docker/docker-compose.yml
#   CLUSTER_PROJECT       compose project name (kvstore)
#   KVSTORE_IMAGE         image to run (kvstore:local)
#   KVSTORE_CLUSTER_DATA  absolute host dir holding node-1..node-3
#   CLUSTER_CLI           kvstore-cli binary on this host
#   CLUSTER_WAIT          seconds to wait for a leader (60)
#   PROMETHEUS_IMAGE      prom/prometheus:v2.53.1 } the dashboard services, started
#   GRAFANA_IMAGE         grafana/grafana:11.1.0  } only when both are local images
set -euo pipefail

here=$(cd "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/cluster-lib.sh
. "$here/cluster-lib.sh"

: "${COMPOSE_FILE_PATH:=$here/../docker/docker-compose.yml}"
: "${CLUSTER_PROJECT:=kvstore}"
: "${KVSTORE_IMAGE:=kvstore:local}"
: "${KVSTORE_CLUSTER_DATA:=$here/../.cluster-data}"
: "${CLUSTER_CLI:=$here/../target/release/kvstore-cli}"
: "${CLUSTER_WAIT:=60}"
: "${PROMETHEUS_IMAGE:=prom/prometheus:v2.53.1}"
: "${GRAFANA_IMAGE:=grafana/grafana:11.1.0}"
export PROMETHEUS_IMAGE GRAFANA_IMAGE
# Compose resolves relative paths against docker/, not the caller's directory.
case "$KVSTORE_CLUSTER_DATA" in /*) ;; *) KVSTORE_CLUSTER_DATA=$PWD/$KVSTORE_CLUSTER_DATA ;; esac
# The nodes run as the caller, so the data files are the caller's to delete.
# Rootless docker maps the container's root to the caller instead.
if [ -z "${KVSTORE_UID:-}" ]; then
    if docker info -f '{{json .SecurityOptions}}' 2>/dev/null | grep -q 'name=rootless'; then
        KVSTORE_UID=0 KVSTORE_GID=0
    else
        KVSTORE_UID=$(id -u) KVSTORE_GID=$(id -g)
    fi
fi
KVSTORE_GID=${KVSTORE_GID:-$KVSTORE_UID}
export KVSTORE_IMAGE KVSTORE_CLUSTER_DATA KVSTORE_UID KVSTORE_GID

# The compose command line, for every action but status (which needs no docker).
compose=()
require_compose() {
    [ -n "${COMPOSE:-}" ] || cluster_die "set COMPOSE to 'docker compose' or 'docker-compose' (make does)"
    # Word-split COMPOSE on purpose: "docker compose" is two words.
    # shellcheck disable=SC2206
    compose=($COMPOSE -p "$CLUSTER_PROJECT" -f "$COMPOSE_FILE_PATH")
}

container_of() { echo "kvstore-node$1"; }

# The dashboard services (compose profile `dashboards`) run only when both
# images are already here: nothing is ever pulled implicitly.
dashboard_images_present() {
    docker image inspect "$PROMETHEUS_IMAGE" >/dev/null 2>&1 &&
        docker image inspect "$GRAFANA_IMAGE" >/dev/null 2>&1
}

dashboard_running() {
    [ "$(docker inspect -f '{{.State.Running}}' "kvstore-$1" 2>/dev/null)" = true ]
}

# Waits (up to 30 s) until URL answers 200; says how it went.
wait_for_http_ok() {
    local name=$1 url=$2 deadline=$((SECONDS + 30))
    command -v curl >/dev/null 2>&1 || return 0
    while ! curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            cluster_log "  $name does not answer $url yet (still starting? '$COMPOSE logs' tells)"
            return 0
        fi
        sleep 1
    done
}

container_running() {
    [ "$(docker inspect -f '{{.State.Running}}' "$(container_of "$1")" 2>/dev/null)" = true ]
}

show_logs() {
    cluster_log ""
    cluster_log "---- last log lines (${compose[*]} logs --tail=25) ----"
    "${compose[@]}" logs --no-color --tail=25 >&2 || true
    cluster_log "---- containers ----"
    "${compose[@]}" ps >&2 || true
}

# Called while waiting: every node's container must still run.
all_running() {
    local node
    for node in "${CLUSTER_NODES[@]}"; do
        if ! container_running "$node"; then
            cluster_log "error: container $(container_of "$node") is not running (exit code $(docker inspect -f '{{.State.ExitCode}}' "$(container_of "$node")" 2>/dev/null || echo '?'))"
            return 1
        fi
    done
}

cmd_up() {
    command -v docker >/dev/null || cluster_die "docker not found; 'make cluster-local' runs the same cluster without docker"
    docker info >/dev/null 2>&1 || cluster_die "the docker daemon does not answer (is it running, may you use it?)"
    docker image inspect "$KVSTORE_IMAGE" >/dev/null 2>&1 || cluster_die "image $KVSTORE_IMAGE not found; 'make image' builds it"
    [ -x "$CLUSTER_CLI" ] || cluster_die "$CLUSTER_CLI not found; build it: cargo build --release --workspace --bins"

    local dashboards=0
    if dashboard_images_present; then
        dashboards=1
    else
        cluster_log "dashboard services skipped: images $PROMETHEUS_IMAGE / $GRAFANA_IMAGE not available (no registry); the nodes run without them"
        cluster_log "  (where a registry is reachable, 'make observability-pull' fetches them; the status page on http://127.0.0.1:9101/ needs nothing)"
    fi

    # Ports of nodes that already run are ours; check the others'.
    local node ports=()
    for node in "${CLUSTER_NODES[@]}"; do
        container_running "$node" || read -r -a ports <<<"${ports[*]} $(cluster_ports_of "$node")"
    done
    if [ $dashboards -eq 1 ]; then
        dashboard_running prometheus || ports+=(9090)
        dashboard_running grafana || ports+=(3000)
    fi
    [ ${#ports[@]} -eq 0 ] || cluster_require_free_ports "docker cluster" "${ports[@]}"

    # Create the bind-mounted data dirs ourselves, owned by the caller (docker
    # would create missing ones owned by root).
    for node in "${CLUSTER_NODES[@]}"; do
        mkdir -p "$KVSTORE_CLUSTER_DATA/node-$node"
    done

    # --no-build: never build or pull anything here; every image is local.
    if [ $dashboards -eq 1 ]; then
        "${compose[@]}" --profile dashboards up -d --no-build
    else
        "${compose[@]}" up -d --no-build
    fi
    local rc=0
    cluster_wait_for_leader "$CLUSTER_CLI" "$CLUSTER_WAIT" all_running || rc=$?
    if [ $rc -ne 0 ]; then
        show_logs
        if [ $rc -eq 2 ]; then
            cluster_die "a node of the docker cluster exited (see its log above; 'make cluster-down' removes the containers)"
        fi
        cluster_die "the docker cluster did not agree on a leader in ${CLUSTER_WAIT}s (it is left running for inspection; 'make cluster-down' stops it)"
    fi
    "$CLUSTER_CLI" --endpoints "$CLUSTER_ENDPOINTS" status -w table
    local dashboard_hints=()
    if [ $dashboards -eq 1 ]; then
        wait_for_http_ok Prometheus http://127.0.0.1:9090/-/ready
        wait_for_http_ok Grafana http://127.0.0.1:3000/api/health
        dashboard_hints=("http://127.0.0.1:3000/ # Grafana: the kvstore dashboard, no login" \
            "http://127.0.0.1:9090/ # Prometheus")
    else
        dashboard_hints=("make observability-pull # get the Prometheus and Grafana images (skipped: not here)")
    fi
    cluster_print_hints "$CLUSTER_CLI" \
        "${dashboard_hints[@]}" \
        "make cluster-logs # follow the nodes' logs" \
        "docker kill kvstore-node1; docker start kvstore-node1 # fail a node, bring it back" \
        "make cluster-down # stop; keeps the data in $(cluster_pretty_path "$KVSTORE_CLUSTER_DATA")/node-N" \
        "make cluster-clean # stop and delete the data"
}

# down and clean name the dashboards profile so that its containers go too
# (naming it pulls nothing).
cmd_down() {
    "${compose[@]}" --profile dashboards down --remove-orphans
    echo "cluster stopped; data kept in $KVSTORE_CLUSTER_DATA/node-{1,2,3} ('make cluster-clean' deletes it)"
}

cmd_clean() {
    # down also removes the network; -v removes the anonymous /data volumes
    # that a run without bind mounts might have left.
    "${compose[@]}" --profile dashboards down --volumes --remove-orphans
    local node dir
    for node in "${CLUSTER_NODES[@]}"; do
        dir=$KVSTORE_CLUSTER_DATA/node-$node
        [ -e "$dir" ] || continue
        if ! rm -rf -- "$dir" 2>/dev/null; then
            # Files written by an earlier run as another user (e.g. root,
            # with KVSTORE_UID=0). The image has no shell and no rm to
            # delete them from a container, so say what to do.
            cluster_die "cannot delete $dir (files owned by another user?); delete it with: sudo rm -rf '$dir'"
        fi
        echo "deleted $dir"
    done
    rmdir -- "$KVSTORE_CLUSTER_DATA" 2>/dev/null || true
}

cmd_status() {
    [ -x "$CLUSTER_CLI" ] || cluster_die "$CLUSTER_CLI not found; build it: cargo build --release --workspace --bins"
    # Exit code 3 = some endpoint did not answer: the table says which, and
    # that is an answer, not a failure of this target.
    local rc=0
    "$CLUSTER_CLI" --endpoints "$CLUSTER_ENDPOINTS" status -w table || rc=$?
    [ $rc -eq 0 ] || [ $rc -eq 3 ] || return $rc
}

cmd_logs() {
    exec "${compose[@]}" logs --follow --tail="${CLUSTER_LOG_TAIL:-100}"
}

case "${1:-}" in
    up) require_compose && cmd_up ;;
    down) require_compose && cmd_down ;;
    clean) require_compose && cmd_clean ;;
    status) cmd_status ;;
    logs) require_compose && cmd_logs ;;
    *) cluster_die "usage: $0 up|down|clean|status|logs" ;;
esac
