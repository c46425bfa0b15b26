#!/usr/bin/env bash
# Shared helpers of scripts/cluster-docker.sh and scripts/cluster-local.sh.
# Source it; it defines functions only.

# The three nodes' ports on localhost (node N: client 5005N, raft 6005N,
# metrics/status page 910N).
# shellcheck disable=SC2034  # used by the scripts that source this file
CLUSTER_NODES=(1 2 3)
cluster_client_port() { echo $((50050 + $1)); }
cluster_raft_port() { echo $((60050 + $1)); }
cluster_metrics_port() { echo $((9100 + $1)); }
cluster_ports_of() { echo "$(cluster_client_port "$1") $(cluster_raft_port "$1") $(cluster_metrics_port "$1")"; }
# `ID=127.0.0.1:910M,...` of every node but N: where a browser on this host
# reaches the other nodes' status pages (--peer-metrics-addrs).
cluster_peer_metrics_of() {
    local node=$1 other addresses=""
    for other in "${CLUSTER_NODES[@]}"; do
        [ "$other" = "$node" ] && continue
        addresses+="${addresses:+,}$other=${KVSTORE_BROWSER_HOST:-127.0.0.1}:$(cluster_metrics_port "$other")"
    done
    echo "$addresses"
}
CLUSTER_ENDPOINTS=127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053

cluster_log() { printf '%s\n' "$*" >&2; }
cluster_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Succeeds when something listens on TCP PORT of the loopback address (or of
# every address).
cluster_port_busy() {
    local port=$1
    if command -v ss >/dev/null 2>&1; then
        [ -n "$(ss -Hltn "sport = :$port" 2>/dev/null | awk '$4 ~ /^(127\.0\.0\.1|0\.0\.0\.0|\*|\[::\]|\[::1\]|\[::ffff:127\.0\.0\.1\]):/')" ]
        return
    fi
    # No ss (macOS, minimal images): try to connect.
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

# Who listens on PORT, as far as we can tell without privileges we may lack.
cluster_port_owner() {
    local port=$1 owner=""
    if command -v ss >/dev/null 2>&1; then
        owner=$(ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'users:(([^)]*))' | head -n 1)
    fi
    if [ -z "$owner" ] && command -v lsof >/dev/null 2>&1; then
        owner=$(lsof -nP -iTCP:"$port" -sTCP:LISTEN 2>/dev/null | awk 'NR == 2 { print $1 " pid " $2 }')
    fi
    echo "${owner:-unknown process}"
}

# Fails, naming each busy port and its owner, if any of PORTS is taken.
cluster_require_free_ports() {
    local what=$1 port busy=()
    shift
    for port in "$@"; do
        cluster_port_busy "$port" && busy+=("$port")
    done
    [ ${#busy[@]} -eq 0 ] && return 0
    {
        echo "error: cannot start the $what: these localhost ports are already in use:"
        for port in "${busy[@]}"; do
            echo "  127.0.0.1:$port  ($(cluster_port_owner "$port"))"
        done
        echo "Is a kvstore cluster already running? Stop it with 'make cluster-down' (docker)"
        echo "or 'make cluster-local-down' (native processes); otherwise stop whatever holds the ports."
    } >&2
    exit 1
}

# Reads `kvstore-cli status -w json` on stdin (an array of objects with id,
# role, term, leader_id or error). Prints a one-line summary. Succeeds when
# EXPECTED endpoints answered, exactly one is the leader, and every node
# names that leader, in the same term.
# A small JSON scanner in awk: no jq or python needed; it reads only the
# top-level fields of each object, and strings may contain anything.
cluster_check_status() {
    local expected=$1
    awk -v expected="$expected" '
        function flush() {
            if (depth == 2 && have_key && !expect_key && scalar != "") field[n, key] = scalar
            scalar = ""
        }
        { text = text $0 "\n" }
        END {
            depth = 0; n = 0; in_string = 0; escaped = 0; expect_key = 0; have_key = 0
            for (i = 1; i <= length(text); i++) {
                c = substr(text, i, 1)
                if (in_string) {
                    if (escaped) { escaped = 0; buf = buf c }
                    else if (c == "\\") { escaped = 1; buf = buf c }
                    else if (c == "\"") {
                        in_string = 0
                        if (depth == 2) {
                            if (expect_key) { key = buf; have_key = 1 }
                            else if (have_key) { field[n, key] = buf; have_key = 0 }
                        }
                    } else buf = buf c
                    continue
                }
                if (c == "\"") { in_string = 1; buf = ""; continue }
                if (c == "{" || c == "[") {
                    depth++
                    if (depth == 2 && c == "{") { n++; expect_key = 1; have_key = 0; scalar = "" }
                    continue
                }
                if (c == "}" || c == "]") {
                    flush()
                    if (depth == 3) have_key = 0   # a nested value ended
                    depth--
                    continue
                }
                if (depth != 2) continue
                if (c == ":") { expect_key = 0; scalar = ""; continue }
                if (c == ",") { flush(); expect_key = 1; have_key = 0; continue }
                if (c !~ /[ \t\r\n]/ && !expect_key) scalar = scalar c
            }
            leaders = 0; errors = 0; summary = ""
            for (j = 1; j <= n; j++) {
                if ((j, "error") in field) {
                    errors++
                    part = field[j, "endpoint"] ": no answer"
                } else {
                    part = "node " field[j, "id"] " " field[j, "role"] " (term " field[j, "term"] ", leader " field[j, "leader_id"] ")"
                    if (field[j, "role"] == "leader") { leaders++; leader = field[j, "id"]; term = field[j, "term"] }
                }
                summary = summary (j > 1 ? "; " : "") part
            }
            if (n == 0) summary = "no status"
            print summary
            if (n != expected || errors > 0 || leaders != 1) exit 1
            for (j = 1; j <= n; j++)
                if (field[j, "leader_id"] != leader || field[j, "term"] != term) exit 1
            exit 0
        }
    '
}

# Polls `CLI status` until the cluster has a leader every node agrees on, or
# TIMEOUT seconds passed. ALIVE_FN (optional) is called every round and must
# fail, after explaining why, when waiting is pointless (a node died).
# Returns 0 when ready, 1 on timeout, 2 when ALIVE_FN failed.
cluster_wait_for_leader() {
    local cli=$1 timeout=$2 alive_fn=${3:-} deadline summary last="" status
    deadline=$((SECONDS + timeout))
    cluster_log "waiting up to ${timeout}s for the three nodes to agree on a leader..."
    while :; do
        if [ -n "$alive_fn" ] && ! "$alive_fn"; then
            return 2
        fi
        status=$("$cli" --endpoints "$CLUSTER_ENDPOINTS" --timeout 1s status -w json 2>/dev/null)
        if summary=$(printf '%s\n' "$status" | cluster_check_status 3); then
            cluster_log "  ready after $((SECONDS - deadline + timeout))s: $summary"
            return 0
        fi
        if [ "$summary" != "$last" ]; then
            cluster_log "  $summary"
            last=$summary
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            cluster_log "  not ready after ${timeout}s"
            return 1
        fi
        sleep 1
    done
}

# PATH relative to the current directory when it is below it.
cluster_pretty_path() {
    case "$1" in
        "$PWD"/*) echo "${1#"$PWD"/}" ;;
        *) echo "$1" ;;
    esac
}

# Prints how to use the running cluster: CLI, then one line per extra hint.
cluster_print_hints() {
    local cli hint
    cli=$(cluster_pretty_path "$1")
    shift
    echo
    echo "Cluster ready: clients on $CLUSTER_ENDPOINTS, raft on 127.0.0.1:60051-60053."
    echo "Status page: http://127.0.0.1:9101/ (any node: 9101-9103; /metrics, /healthz, /readyz, /status)."
    echo "  $cli --endpoints $CLUSTER_ENDPOINTS put greeting hello"
    echo "  $cli --endpoints 127.0.0.1:50053 get greeting"
    for hint in "make cluster-status # the table above, again" "$@"; do
        case "$hint" in
            *" # "*) printf '  %-24s # %s\n' "${hint%% # *}" "${hint#* # }" ;;
            *) printf '  %s\n' "$hint" ;;
        esac
    done
}
