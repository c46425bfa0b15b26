//! Helpers shared by the observability tests: client traffic, the
//! dashboard's queries, the metrics text.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kvstore_proto::kv::v1::{Consistency, DeleteRequest, GetRequest, PutRequest, StatusRequest};

use crate::support::{client_for, Cluster};

/// The repository root.
pub fn repository_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("server/ has a parent")
        .to_path_buf()
}

/// `target/` (next to the test executable), where test artifacts go.
#[allow(unused_imports)] // like the helpers (dead_code above): not every test uses it
pub use kvstore_devkit::binary::target_directory;

/// Every metric the issue names, which dashboards and alerts rely on.
pub const REQUIRED_METRICS: [&str; 20] = [
    "kvstore_raft_term",
    "kvstore_raft_is_leader",
    "kvstore_raft_leader_id",
    "kvstore_raft_leader_changes_total",
    "kvstore_raft_elections_started_total",
    "kvstore_raft_commit_index",
    "kvstore_raft_applied_index",
    "kvstore_raft_last_log_index",
    "kvstore_raft_follower_match_index",
    "kvstore_raft_follower_lag_entries",
    "kvstore_requests_total",
    "kvstore_request_duration_seconds",
    "kvstore_forwarded_requests_total",
    "kvstore_raft_proposals_committed_total",
    "kvstore_raft_proposals_failed_total",
    "kvstore_raft_proposals_pending",
    "kvstore_wal_fsync_duration_seconds",
    "kvstore_snapshots_total",
    "kvstore_peer_send_failures_total",
    "kvstore_ready",
];

/// `# HELP` lines of a metrics text: (name, help).
pub fn help_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# HELP "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, help)| (name.to_string(), help.replace("\\\\", "\\")))
        .collect()
}

/// The value of the sample `series` (name with labels, exactly as written),
/// if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
}

/// Client traffic through every node: `rounds` of put, linearizable get,
/// serializable get, delete and status, plus one refused request
/// (INVALID_ARGUMENT) per node.
pub async fn traffic(cluster: &Cluster, rounds: usize) {
    for node in &cluster.nodes {
        if !node.is_running() {
            continue;
        }
        let mut client = client_for(node.client_addr, Duration::from_secs(5))
            .await
            .expect("connect");
        for round in 0..rounds {
            let key = format!("k-{}-{round}", node.client_addr.port());
            client
                .put(PutRequest {
                    key: key.clone().into(),
                    value: b"v".to_vec(),
                    ..PutRequest::default()
                })
                .await
                .expect("put");
            for consistency in [Consistency::Linearizable, Consistency::Serializable] {
                client
                    .get(GetRequest {
                        key: key.clone().into(),
                        consistency: consistency as i32,
                    })
                    .await
                    .expect("get");
            }
            if round % 2 == 0 {
                client
                    .delete(DeleteRequest { key: key.into() })
                    .await
                    .expect("delete");
            }
            client.status(StatusRequest {}).await.expect("status");
        }
        let refused = client
            .put(PutRequest {
                key: Vec::new(),
                value: b"v".to_vec(),
                ..PutRequest::default()
            })
            .await
            .expect_err("an empty key is refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    }
}

/// Traffic in the background until the returned sender is dropped or sent
/// to (bounded: at most `rounds_max` rounds).
pub fn background_traffic(
    endpoints: Vec<SocketAddr>,
    rounds_max: usize,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut clients = Vec::new();
        for endpoint in &endpoints {
            if let Some(client) = client_for(*endpoint, Duration::from_secs(5)).await {
                clients.push(client);
            }
        }
        for round in 0..rounds_max {
            for client in &mut clients {
                let key = format!("bg-{}", round % 50);
                let _ = client
                    .put(PutRequest {
                        key: key.clone().into(),
                        value: b"v".to_vec(),
                        ..PutRequest::default()
                    })
                    .await;
                let _ = client
                    .get(GetRequest {
                        key: key.clone().into(),
                        consistency: Consistency::Linearizable as i32,
                    })
                    .await;
                if round % 3 == 0 {
                    let _ = client.delete(DeleteRequest { key: key.into() }).await;
                }
            }
            match stopped.try_recv() {
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
                _ => return,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (stop, task)
}

/// The dashboard, parsed.
pub fn dashboard() -> serde_json::Value {
    let path = repository_root().join("observability/grafana/dashboards/kvstore.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Every panel, rows' nested panels included.
pub fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels is an array") {
        all.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            all.extend(nested);
        }
    }
    all
}

/// (panel title, refId, expr) of every query in the dashboard.
pub fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut queries = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or_default().to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push((
                title.clone(),
                target["refId"].as_str().unwrap_or_default().to_string(),
                target["expr"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    queries
}

/// Grafana's built-in interval variables replaced by what Grafana would
/// choose for a short dashboard range with a 1 s scrape interval.
pub fn with_grafana_variables(expr: &str, rate_interval: &str) -> String {
    expr.replace("$__rate_interval", rate_interval)
        .replace("${__rate_interval}", rate_interval)
        .replace("$__interval", "5s")
        .replace("$__range", "5m")
}

/// Percent-encodes a query parameter.
pub fn url_encode(text: &str) -> String {
    let mut encoded = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                encoded.push(byte as char)
            }
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}
