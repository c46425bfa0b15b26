#!/usr/bin/env bash
# The three-node cluster as native processes on 127.0.0.1 (no docker), with
# the docker cluster's ports: node N serves clients on 5005N, raft on 6005N,
# HTTP (metrics, health, status page) on 910N.
# Called by mk/cluster.mk:
#   scripts/cluster-local.sh up|down|clean
# Node N keeps its data in $CLUSTER_LOCAL_DIR/node-N, logs to node-N.log and
# its pid in node-N.pid there.
# env (make sets them):
#   CLUSTER_LOCAL_DIR   .cluster-data/local
#   CLUSTER_SERVER      kvstore-server binary (target/release/kvstore-server)
#   CLUSTER_CLI         kvstore-cli binary    (target/release/kvstore-cli)
#   CLUSTER_WAIT        seconds to wait for a leader (60)
#   CLUSTER_STOP_WAIT   seconds between SIGTERM and SIGKILL on down (15)
#   CLUSTER_LOG_FORMAT  text|json (text)
#   CLUSTER_LOG_LEVEL   info
set -euo pipefail

here=$(cd "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/cluster-lib.sh
. "$here/cluster-lib.sh"

: "${CLUSTER_LOCAL_DIR:=$here/../.cluster-data/local}"
: "${CLUSTER_SERVER:=$here/../target/release/kvstore-server}"
: "${CLUSTER_CLI:=$here/../target/release/kvstore-cli}"
: "${CLUSTER_WAIT:=60}"
: "${CLUSTER_STOP_WAIT:=15}"
: "${CLUSTER_LOG_FORMAT:=text}"
: "${CLUSTER_LOG_LEVEL:=info}"
case "$CLUSTER_LOCAL_DIR" in /*) ;; *) CLUSTER_LOCAL_DIR=$PWD/$CLUSTER_LOCAL_DIR ;; esac

pid_file() { echo "$CLUSTER_LOCAL_DIR/node-$1.pid"; }
log_file() { echo "$CLUSTER_LOCAL_DIR/node-$1.log"; }

# The pid of node N if it runs (a kvstore-server with the recorded pid), else
# nothing. Guards against a stale pid file whose pid was reused.
node_pid() {
    local file pid
    file=$(pid_file "$1")
    [ -f "$file" ] || return 0
    pid=$(cat "$file" 2>/dev/null || true)
    case "$pid" in '' | *[!0-9]*) return 0 ;; esac
    if kill -0 "$pid" 2>/dev/null && [ "$(ps -p "$pid" -o comm= 2>/dev/null)" = kvstore-server ]; then
        echo "$pid"
    fi
}

peers_of() {
    local node=$1 other peers=""
    for other in "${CLUSTER_NODES[@]}"; do
        [ "$other" = "$node" ] && continue
        peers+="${peers:+,}$other=127.0.0.1:$(cluster_raft_port "$other")"
    done
    echo "$peers"
}

# Called while waiting: every node must still run.
all_running() {
    local node
    for node in "${CLUSTER_NODES[@]}"; do
        if [ -z "$(node_pid "$node")" ]; then
            cluster_log "error: node $node exited; last lines of $(log_file "$node"):"
            tail -n 25 "$(log_file "$node")" >&2 2>/dev/null || true
            return 1
        fi
    done
}

cmd_up() {
    local node running=() stopped=()
    for bin in "$CLUSTER_SERVER" "$CLUSTER_CLI"; do
        [ -x "$bin" ] || cluster_die "$bin not found; build it: cargo build --release --workspace --bins"
    done
    for node in "${CLUSTER_NODES[@]}"; do
        if [ -n "$(node_pid "$node")" ]; then running+=("$node"); else stopped+=("$node"); fi
    done
    if [ ${#stopped[@]} -gt 0 ]; then
        local ports=()
        for node in "${stopped[@]}"; do
            read -r -a ports <<<"${ports[*]} $(cluster_ports_of "$node")"
        done
        cluster_require_free_ports "local cluster" "${ports[@]}"
    fi
    [ ${#running[@]} -gt 0 ] && cluster_log "already running: node ${running[*]}"

    mkdir -p "$CLUSTER_LOCAL_DIR"
    for node in "${stopped[@]}"; do
        mkdir -p "$CLUSTER_LOCAL_DIR/node-$node"
        printf '\n==== %s: starting node %s ====\n' "$(date '+%Y-%m-%dT%H:%M:%S%z')" "$node" >>"$(log_file "$node")"
        # nohup and no terminal: the node outlives make and the terminal.
        nohup "$CLUSTER_SERVER" \
            --id "$node" \
            --client-addr "127.0.0.1:$(cluster_client_port "$node")" \
            --raft-addr "127.0.0.1:$(cluster_raft_port "$node")" \
            --peers "$(peers_of "$node")" \
            --metrics-addr "127.0.0.1:$(cluster_metrics_port "$node")" \
            --peer-metrics-addrs "$(cluster_peer_metrics_of "$node")" \
            --data-dir "$CLUSTER_LOCAL_DIR/node-$node" \
            --log-format "$CLUSTER_LOG_FORMAT" \
            --log-level "$CLUSTER_LOG_LEVEL" \
            </dev/null >>"$(log_file "$node")" 2>&1 &
        echo $! >"$(pid_file "$node")"
        cluster_log "started node $node: pid $!, client 127.0.0.1:$(cluster_client_port "$node"), raft 127.0.0.1:$(cluster_raft_port "$node"), http 127.0.0.1:$(cluster_metrics_port "$node"), log $(log_file "$node")"
    done

    local rc=0
    cluster_wait_for_leader "$CLUSTER_CLI" "$CLUSTER_WAIT" all_running || rc=$?
    if [ $rc -ne 0 ]; then
        if [ $rc -eq 1 ]; then
            for node in "${CLUSTER_NODES[@]}"; do
                cluster_log "---- last lines of $(log_file "$node") ----"
                tail -n 15 "$(log_file "$node")" >&2 2>/dev/null || true
            done
        fi
        if [ $rc -eq 2 ]; then
            cluster_die "a node of the local cluster exited (see its log above; 'make cluster-local-down' stops the others)"
        fi
        cluster_die "the local cluster did not agree on a leader in ${CLUSTER_WAIT}s (it is left running for inspection; 'make cluster-local-down' stops it)"
    fi
    "$CLUSTER_CLI" --endpoints "$CLUSTER_ENDPOINTS" status -w table
    local dir
    dir=$(cluster_pretty_path "$CLUSTER_LOCAL_DIR")
    cluster_print_hints "$CLUSTER_CLI" \
        "tail -f $dir/node-*.log" \
        "make observability-local # Prometheus on 127.0.0.1:9090 scraping these nodes" \
        "kill \$(cat $dir/node-1.pid); make cluster-local # fail a node, bring it back" \
        "make cluster-local-down # stop; keeps the data in $dir/node-N" \
        "make cluster-local-clean # stop and delete the data and logs"
}

cmd_down() {
    local node pid pids=() nodes=()
    for node in "${CLUSTER_NODES[@]}"; do
        pid=$(node_pid "$node")
        if [ -n "$pid" ]; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            nodes+=("$node")
        fi
    done
    if [ ${#pids[@]} -eq 0 ]; then
        echo "local cluster: no node running"
    else
        echo "sent SIGTERM to node ${nodes[*]} (pid ${pids[*]}); waiting up to ${CLUSTER_STOP_WAIT}s"
        local deadline=$((SECONDS + CLUSTER_STOP_WAIT)) left
        while :; do
            left=()
            for pid in "${pids[@]}"; do
                kill -0 "$pid" 2>/dev/null && left+=("$pid")
            done
            [ ${#left[@]} -eq 0 ] && break
            if [ "$SECONDS" -ge "$deadline" ]; then
                echo "still running after ${CLUSTER_STOP_WAIT}s: pid ${left[*]}; sending SIGKILL" >&2
                kill -KILL "${left[@]}" 2>/dev/null || true
                sleep 1
                break
            fi
            sleep 0.2
        done
        if [ "${1:-}" = for-clean ]; then
            echo "local cluster stopped"
        else
            echo "local cluster stopped; data kept in $CLUSTER_LOCAL_DIR ('make cluster-local-clean' deletes it)"
        fi
    fi
    for node in "${CLUSTER_NODES[@]}"; do
        rm -f -- "$(pid_file "$node")"
    done
}

cmd_clean() {
    cmd_down for-clean
    if [ -e "$CLUSTER_LOCAL_DIR" ]; then
        rm -rf -- "$CLUSTER_LOCAL_DIR"
        echo "deleted $CLUSTER_LOCAL_DIR"
    fi
    rmdir -- "$(dirname -- "$CLUSTER_LOCAL_DIR")" 2>/dev/null || true
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    clean) cmd_clean ;;
    *) cluster_die "usage: $0 up|down|clean" ;;
esac
