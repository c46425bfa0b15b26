//! The HTTP observability port of real `kvstore-server` processes: /metrics,
//! /healthz, /readyz, /status, the status page; JSON logs; the metric
//! documentation and the Grafana dashboard and provisioning files. Needs no
//! Prometheus, Grafana or browser (those are in observability_e2e.rs).

// Each test holds the cross-test `support::serial()` guard for its whole
// run, across awaits, on purpose: clusters must not run concurrently.
#![allow(clippy::await_holding_lock)]

mod observability_common;
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use observability_common::{
    dashboard, dashboard_queries, help_lines, panels, repository_root, sample, traffic,
    REQUIRED_METRICS,
};
use support::{http_get, status_of, Cluster, HttpAnswer, ServerProcess, TEST_ELECTION_TIMEOUT};

const ROLE_NAMES: [&str; 5] = [
    "unspecified",
    "follower",
    "pre-candidate",
    "candidate",
    "leader",
];

fn get(node: &support::ServerProcess, path: &str) -> HttpAnswer {
    let address = node.metrics_addr.expect("an observed node");
    http_get(address, path).unwrap_or_else(|| panic!("GET {path} on {address}: no answer"))
}

/// Polls `path` until `done` holds for its answer.
fn wait_for_http(
    node: &support::ServerProcess,
    path: &str,
    timeout: Duration,
    done: impl Fn(&HttpAnswer) -> bool,
) -> HttpAnswer {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = get(node, path);
        if done(&answer) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path}: not as expected within {timeout:?}: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_readiness_status_and_page_on_a_live_cluster() {
    let _serial = support::serial();
    let mut cluster = Cluster::start_observed(3, &[]);
    let (leader, term) = cluster.wait_for_leader(20 * TEST_ELECTION_TIMEOUT).await;
    traffic(&cluster, 6).await;
    let commit = status_of(cluster.node(leader).client_addr)
        .await
        .unwrap()
        .commit_index;
    cluster
        .wait_for_applied(commit, Duration::from_secs(10))
        .await;
    let follower = if leader == 1 { 2 } else { 1 };

    for node in &cluster.nodes {
        let health = get(node, "/healthz");
        assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
        let ready = wait_for_http(node, "/readyz", Duration::from_secs(10), |answer| {
            answer.status == 200
        });
        assert_eq!(ready.body, "ready\n");
    }

    // /metrics: every required metric, in the Prometheus text format.
    for (position, node) in cluster.nodes.iter().enumerate() {
        let id = position as u64 + 1;
        let metrics = get(node, "/metrics");
        assert_eq!(metrics.status, 200);
        assert_eq!(
            metrics.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let text = metrics.body;
        let names: BTreeSet<String> = help_lines(&text)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        for required in REQUIRED_METRICS {
            // Follower progress is exported by the leader only.
            if required.starts_with("kvstore_raft_follower_") && id != leader {
                assert!(
                    !text.contains(&format!("{required}{{")),
                    "{required} on a follower"
                );
                continue;
            }
            assert!(
                names.contains(required),
                "node {id}: {required} missing:\n{text}"
            );
        }
        assert_eq!(sample(&text, "kvstore_raft_leader_id"), Some(leader as f64));
        assert_eq!(sample(&text, "kvstore_raft_term"), Some(term as f64));
        assert_eq!(
            sample(&text, "kvstore_raft_is_leader"),
            Some(if id == leader { 1.0 } else { 0.0 })
        );
        assert_eq!(sample(&text, "kvstore_ready"), Some(1.0));
        assert!(sample(&text, "kvstore_raft_leader_changes_total").unwrap() >= 1.0);
        assert!(sample(&text, "kvstore_raft_commit_index").unwrap() >= commit as f64);
        assert!(sample(&text, "kvstore_raft_applied_index").unwrap() >= commit as f64);
        assert!(sample(&text, "kvstore_wal_fsync_duration_seconds_count").unwrap() >= 1.0);
        // Counted on the node that received them: 6 puts each.
        assert_eq!(
            sample(&text, r#"kvstore_requests_total{code="OK",op="put"}"#),
            Some(6.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, r#"kvstore_requests_total{code="OK",op="get"}"#),
            Some(12.0)
        );
        assert_eq!(
            sample(&text, r#"kvstore_requests_total{code="OK",op="delete"}"#),
            Some(3.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"kvstore_requests_total{code="INVALID_ARGUMENT",op="put"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, r#"kvstore_request_duration_seconds_count{op="put"}"#),
            Some(7.0)
        );
        for peer in (1..=3u64).filter(|peer| *peer != id) {
            assert!(
                sample(
                    &text,
                    &format!("kvstore_peer_send_failures_total{{peer=\"{peer}\"}}")
                )
                .is_some(),
                "peer {peer} of node {id}"
            );
        }
        let forwarded_puts =
            sample(&text, r#"kvstore_forwarded_requests_total{op="put"}"#).unwrap();
        if id == leader {
            assert_eq!(forwarded_puts, 0.0);
            assert_eq!(
                sample(&text, "kvstore_raft_proposals_committed_total"),
                Some(27.0),
                "18 puts and 9 deletes, all proposed by the leader:\n{text}"
            );
            assert_eq!(sample(&text, "kvstore_raft_proposals_pending"), Some(0.0));
            for peer in (1..=3u64).filter(|peer| *peer != id) {
                let lag = sample(
                    &text,
                    &format!("kvstore_raft_follower_lag_entries{{peer=\"{peer}\"}}"),
                );
                assert_eq!(lag, Some(0.0), "follower {peer} caught up:\n{text}");
                assert!(
                    sample(
                        &text,
                        &format!("kvstore_raft_follower_match_index{{peer=\"{peer}\"}}")
                    )
                    .unwrap()
                        >= commit as f64
                );
            }
            assert!(sample(&text, "kvstore_raft_elections_started_total").unwrap() >= 1.0);
        } else {
            assert_eq!(forwarded_puts, 6.0, "node {id}:\n{text}");
            assert_eq!(
                sample(&text, r#"kvstore_forwarded_requests_total{op="get"}"#),
                Some(6.0),
                "linearizable reads are forwarded, serializable ones are not"
            );
        }
    }

    // /status: the Status RPC's facts, as JSON, readable from other origins.
    for (position, node) in cluster.nodes.iter().enumerate() {
        let id = position as u64 + 1;
        let answer = get(node, "/status");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("content-type"), Some("application/json"));
        assert_eq!(answer.header("access-control-allow-origin"), Some("*"));
        let document: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        let rpc = status_of(node.client_addr).await.unwrap();
        assert_eq!(document["id"], id);
        assert_eq!(document["role"], ROLE_NAMES[rpc.role as usize]);
        assert_eq!(document["term"], rpc.term);
        assert_eq!(document["leader_id"], rpc.leader_id);
        assert_eq!(document["commit_index"], rpc.commit_index);
        assert_eq!(document["applied_index"], rpc.applied_index);
        assert_eq!(document["last_log_index"], rpc.last_log_index);
        assert_eq!(document["snapshot_index"], rpc.snapshot_index);
        assert_eq!(document["cluster_id"], rpc.cluster_id.as_str());
        assert_eq!(document["version"], rpc.version.as_str());
        assert_eq!(document["ready"], true);
        assert!(document["not_ready_reason"].is_null());
        assert_eq!(document["requests_total"]["put"], 7);
        assert_eq!(document["requests_failed_total"], 1);
        assert_eq!(
            document["followers"].as_array().unwrap().len(),
            if id == leader { 2 } else { 0 }
        );
        let members = document["members"].as_array().unwrap();
        assert_eq!(members.len(), 3);
        for member in members {
            let member_id = member["id"].as_u64().unwrap();
            assert_eq!(member["self"], member_id == id);
            if member_id != id {
                let other = &cluster.nodes[(member_id - 1) as usize];
                assert_eq!(
                    member["http_addr"],
                    other.metrics_addr.unwrap().to_string(),
                    "the page finds node {member_id} here"
                );
            }
        }
    }

    // The status page: one self-contained HTML file.
    let page = get(&cluster.nodes[follower as usize - 1], "/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.body.contains("<title>kvstore cluster</title>"));
    for external in ["<link", " src=", "@import", "url(", "//cdn", "https://"] {
        assert!(
            !page.body.contains(external),
            "the page loads nothing from elsewhere: {external}"
        );
    }
    let missing = get(&cluster.nodes[0], "/no-such-page");
    assert_eq!(missing.status, 404);

    // JSON logs: one object per line, with the node id and term on each.
    for (position, node) in cluster.nodes.iter().enumerate() {
        let id = position as u64 + 1;
        let log = node.log();
        let mut with_request_id = 0;
        for line in log.lines().filter(|line| !line.is_empty()) {
            let object: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("node {id}: not JSON ({error}): {line}"));
            for key in ["timestamp", "level", "target", "message"] {
                assert!(object[key].is_string(), "node {id}: no {key}: {line}");
            }
            assert_eq!(object["node_id"], id, "{line}");
            assert!(object["term"].is_u64(), "{line}");
            if object.get("request_id").is_some() {
                with_request_id += 1;
            }
        }
        assert!(
            with_request_id > 0,
            "node {id} logged request ids at debug:\n{log}"
        );
        let role_change = log
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .find(|object| object["message"] == "raft role or leader changed")
            .expect("a role change was logged");
        assert!(role_change["fields"]["role"].is_string(), "{role_change}");
        assert_eq!(
            role_change["term"], role_change["fields"]["term"],
            "{role_change}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_a_leader_is_known() {
    let _serial = support::serial();
    let mut cluster = Cluster::prepare_observed(3, &[]);
    cluster.node(1).spawn();
    cluster.node(1).wait_listening();
    // Alone, node 1 can never learn of a leader.
    tokio::time::sleep(3 * TEST_ELECTION_TIMEOUT).await;
    let health = get(cluster.node(1), "/healthz");
    assert_eq!(health.status, 200, "the process is up");
    let ready = get(cluster.node(1), "/readyz");
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(
        ready.body.starts_with("not ready: no leader known"),
        "{ready:?}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&get(cluster.node(1), "/status").body).unwrap();
    assert_eq!(status["leader_id"], 0);
    assert_eq!(status["ready"], false);
    assert!(status["not_ready_reason"]
        .as_str()
        .unwrap()
        .contains("no leader"));
    let metrics = get(cluster.node(1), "/metrics").body;
    assert_eq!(sample(&metrics, "kvstore_ready"), Some(0.0));
    assert_eq!(sample(&metrics, "kvstore_raft_leader_id"), Some(0.0));

    cluster.node(2).spawn();
    cluster.node(2).wait_listening();
    let ready = wait_for_http(
        cluster.node(1),
        "/readyz",
        Duration::from_secs(15),
        |answer| answer.status == 200,
    );
    assert_eq!(ready.body, "ready\n");
}

#[test]
fn a_taken_metrics_port_is_a_clear_startup_error() {
    let _serial = support::serial();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let directory = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::prepare(
        &directory.path().join("node"),
        support::loopback(support::free_port()),
        support::loopback(support::free_port()),
        &["--metrics-addr", &address],
    );
    server.spawn();
    let code = server.wait_exit(Duration::from_secs(20));
    assert_ne!(code, Some(0));
    let log = server.log();
    assert!(
        log.contains(&format!("cannot listen on {address}")),
        "the error names the port: {log}"
    );
}

/// Every metric a node exports is documented, with its help text, in
/// observability/README.md, and every metric documented there exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_is_documented_with_its_help_text() {
    let _serial = support::serial();
    // The leader of three exports every metric (follower progress included).
    let mut cluster = Cluster::start_observed(3, &[]);
    let (leader, _) = cluster.wait_for_leader(20 * TEST_ELECTION_TIMEOUT).await;
    let text = wait_for_http(
        cluster.node(leader),
        "/metrics",
        Duration::from_secs(10),
        |answer| answer.body.contains("kvstore_raft_follower_lag_entries{"),
    )
    .body;
    let readme =
        std::fs::read_to_string(repository_root().join("observability/README.md")).unwrap();
    let exported = help_lines(&text);
    assert!(exported.len() >= REQUIRED_METRICS.len(), "{text}");
    for (name, help) in &exported {
        let row = readme
            .lines()
            .find(|line| {
                line.starts_with(&format!("| `{name}` "))
                    || line.starts_with(&format!("| `{name}{{"))
            })
            .unwrap_or_else(|| {
                panic!("{name} is not in the metrics table of observability/README.md")
            });
        assert!(
            row.contains(help.as_str()),
            "the README's help text of {name} differs from the server's: {help:?}\n{row}"
        );
    }
    let exported: BTreeSet<&str> = exported.iter().map(|(name, _)| name.as_str()).collect();
    for line in readme
        .lines()
        .filter(|line| line.starts_with("| `kvstore_"))
    {
        let name = line[3..].split(['`', '{']).next().unwrap();
        assert!(
            exported.contains(name),
            "the README documents {name}, which no node exports"
        );
    }
}

/// The dashboard is what Grafana's file provisioning loads: the essentials
/// of its schema, checked without a Grafana.
#[test]
fn the_dashboard_and_provisioning_files_are_valid() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "kvstore-cluster");
    assert!(dashboard["title"]
        .as_str()
        .is_some_and(|title| !title.is_empty()));
    let schema_version = dashboard["schemaVersion"].as_u64().expect("schemaVersion");
    assert!(
        (36..=41).contains(&schema_version),
        "schemaVersion {schema_version}"
    );
    assert!(
        dashboard.get("__inputs").is_none(),
        "provisioning cannot fill __inputs"
    );
    assert!(
        dashboard["id"].is_null(),
        "a provisioned dashboard has no fixed id"
    );
    assert!(dashboard["time"]["from"].is_string() && dashboard["time"]["to"].is_string());
    assert!(dashboard["templating"]["list"].is_array());

    let known_types = [
        "row",
        "stat",
        "timeseries",
        "gauge",
        "table",
        "state-timeline",
        "bargauge",
        "text",
    ];
    let mut ids = BTreeSet::new();
    let mut occupied: Vec<(u64, u64, u64, u64)> = Vec::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().expect("every panel has a title");
        let kind = panel["type"].as_str().expect("every panel has a type");
        assert!(known_types.contains(&kind), "{title}: unknown type {kind}");
        assert!(
            ids.insert(panel["id"].as_u64().expect("numeric id")),
            "{title}: duplicate id"
        );
        let grid = &panel["gridPos"];
        let (x, y, w, h) = (
            grid["x"].as_u64().unwrap(),
            grid["y"].as_u64().unwrap(),
            grid["w"].as_u64().unwrap(),
            grid["h"].as_u64().unwrap(),
        );
        assert!(w >= 1 && h >= 1 && x + w <= 24, "{title}: gridPos {grid}");
        for (other_x, other_y, other_w, other_h) in &occupied {
            let overlap = x < other_x + other_w
                && *other_x < x + w
                && y < other_y + other_h
                && *other_y < y + h;
            assert!(!overlap, "{title} overlaps another panel");
        }
        occupied.push((x, y, w, h));
        if kind == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["type"], "prometheus", "{title}");
        assert_eq!(
            panel["datasource"]["uid"], "prometheus",
            "{title}: the provisioned datasource's uid"
        );
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            assert!(
                ref_ids.insert(target["refId"].as_str().expect("refId")),
                "{title}: duplicate refId"
            );
            let expr = target["expr"].as_str().expect("expr");
            assert!(
                expr.contains("kvstore_") || expr.contains("up{"),
                "{title}: {expr}"
            );
            assert_eq!(target["datasource"]["uid"], "prometheus", "{title}");
            assert_eq!(
                expr.matches('(').count(),
                expr.matches(')').count(),
                "{title}: {expr}"
            );
        }
    }
    // The panels the issue asks for.
    let exprs: Vec<String> = dashboard_queries(&dashboard)
        .into_iter()
        .map(|(_, _, expr)| expr)
        .collect();
    for needed in [
        "kvstore_raft_is_leader",
        "kvstore_raft_leader_id",
        "kvstore_raft_leader_changes_total",
        "kvstore_raft_term",
        "kvstore_requests_total",
        "kvstore_request_duration_seconds_bucket",
        "kvstore_raft_commit_index",
        "kvstore_raft_applied_index",
        "kvstore_raft_follower_lag_entries",
        "kvstore_wal_fsync_duration_seconds_bucket",
        "kvstore_peer_send_failures_total",
    ] {
        assert!(
            exprs.iter().any(|expr| expr.contains(needed)),
            "no panel shows {needed}"
        );
    }
    assert!(exprs
        .iter()
        .any(|expr| expr.contains("histogram_quantile(0.5,")));
    assert!(exprs
        .iter()
        .any(|expr| expr.contains("histogram_quantile(0.99,")));

    let root = repository_root().join("observability/grafana/provisioning");
    let datasource = std::fs::read_to_string(root.join("datasources/prometheus.yml")).unwrap();
    for line in [
        "apiVersion: 1",
        "datasources:",
        "type: prometheus",
        "uid: prometheus",
        "url: http://prometheus:9090",
    ] {
        assert!(
            datasource
                .lines()
                .any(|text| text.trim().trim_start_matches("- ") == line),
            "datasource: {line}"
        );
    }
    let provider = std::fs::read_to_string(root.join("dashboards/kvstore.yml")).unwrap();
    for line in [
        "apiVersion: 1",
        "providers:",
        "type: file",
        "path: /var/lib/grafana/dashboards",
    ] {
        assert!(
            provider
                .lines()
                .any(|text| text.trim().trim_start_matches("- ") == line),
            "provider: {line}"
        );
    }
    let compose =
        std::fs::read_to_string(repository_root().join("docker/docker-compose.yml")).unwrap();
    for mount in [
        "../observability/grafana/dashboards:/var/lib/grafana/dashboards:ro",
        "../observability/grafana/provisioning:/etc/grafana/provisioning:ro",
        "../observability/prometheus.yml:/etc/prometheus/prometheus.yml:ro",
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH: /var/lib/grafana/dashboards/kvstore.json",
    ] {
        assert!(compose.contains(mount), "docker-compose.yml: {mount}");
    }
}
