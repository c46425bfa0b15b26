//! What real machines do to a node, with real processes: a data directory
//! wiped under a running cluster, a data directory of another cluster, and
//! storage that cannot take writes.

// Cluster tests hold the serial lock across awaits on purpose: each test has
// its own runtime, and the lock keeps two clusters from running at once.
#![allow(clippy::await_holding_lock)]

mod support;

use std::time::{Duration, Instant};

use kvstore_proto::kv::v1::{Consistency, GetRequest, PutRequest};
use support::{client_for, http_get, serial, status_of, Cluster, ServerProcess};

const CLIENT_DEADLINE: Duration = Duration::from_secs(3);
/// How long a wiped follower may take to catch up (generous: a loaded CI
/// machine; the test ends as soon as it has).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(20);

async fn put(address: std::net::SocketAddr, key: &str, value: &str) {
    let mut client = client_for(address, CLIENT_DEADLINE)
        .await
        .expect("connecting");
    client
        .put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..PutRequest::default()
        })
        .await
        .unwrap_or_else(|status| panic!("put {key}: {status}"));
}

async fn linearizable_get(address: std::net::SocketAddr, key: &str) -> Option<Vec<u8>> {
    let mut client = client_for(address, CLIENT_DEADLINE)
        .await
        .expect("connecting");
    let response = client
        .get(GetRequest {
            key: key.into(),
            consistency: Consistency::Linearizable as i32,
        })
        .await
        .unwrap_or_else(|status| panic!("get {key}: {status}"))
        .into_inner();
    response.found.then_some(response.value)
}

/// Wipes a follower's data directory under a running cluster and restarts
/// it with `restart_args` added: it must catch up under the same leader and
/// then serve every acknowledged key on linearizable reads. Returns the
/// cluster and the wiped node's id.
async fn wiped_follower_catches_up(restart_args: &[&str]) -> (Cluster, u64) {
    let mut cluster = Cluster::start(3, &[]);
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let leader_addr = cluster.node(leader).client_addr;
    for key in 0..20 {
        put(leader_addr, &format!("before-{key}"), "v").await;
    }
    let follower = if leader == 3 { 2 } else { 3 };
    let node = cluster.node(follower);
    node.signal("TERM");
    assert_eq!(node.wait_exit(Duration::from_secs(10)), Some(0));
    std::fs::remove_dir_all(&node.data_dir).expect("wiping the data directory");
    node.extra_args
        .extend(restart_args.iter().map(|argument| argument.to_string()));
    node.restart();
    let follower_addr = node.client_addr;
    for key in 0..20 {
        put(leader_addr, &format!("after-{key}"), "v").await;
    }
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let leader_status = status_of(leader_addr).await.expect("leader status");
        let follower_status = status_of(follower_addr).await;
        let caught_up = follower_status.as_ref().is_some_and(|status| {
            status.commit_index >= leader_status.commit_index && status.not_ready_reason.is_empty()
        });
        if caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the wiped follower did not catch up: leader {leader_status:?}, follower {follower_status:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leader_status = status_of(leader_addr).await.expect("leader status");
    assert_eq!(
        (leader_status.id, leader_status.term),
        (leader, term),
        "caught up under the same leader"
    );
    for key in (0..20).flat_map(|key| [format!("before-{key}"), format!("after-{key}")]) {
        assert_eq!(
            linearizable_get(follower_addr, &key).await,
            Some(b"v".to_vec()),
            "{key} through the wiped follower"
        );
    }
    (cluster, follower)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_follower_catches_up_under_the_same_leader() {
    let _serial = serial();
    let (mut cluster, wiped) = wiped_follower_catches_up(&[]).await;
    let log = cluster.node(wiped).log();
    assert!(
        log.contains("lost log entries it had acknowledged"),
        "the follower says what happened: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_rejoining_with_an_empty_data_directory_catches_up_before_voting() {
    let _serial = serial();
    let (mut cluster, wiped) =
        wiped_follower_catches_up(&["--initial-cluster-state", "existing"]).await;
    let log = cluster.node(wiped).log();
    assert!(
        log.contains("--initial-cluster-state existing on an empty data directory"),
        "{log}"
    );
    // It serves, but votes again only after an election held without it:
    // the leader it caught up under may have committed entries on its
    // acknowledgements from before the loss.
    assert!(!log.contains("votes again"), "{log}");
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(10)).await;
    cluster.node(leader).kill();
    cluster.node(leader).restart();
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    while !cluster
        .node(wiped)
        .log()
        .contains("caught up with the leader: votes again")
    {
        assert!(Instant::now() < deadline, "{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, new_term) = cluster.wait_for_leader(Duration::from_secs(10)).await;
    assert!(new_term > term);
}

#[test]
fn a_data_directory_of_another_cluster_or_node_is_refused() {
    let _serial = serial();
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("node");
    let mut server = ServerProcess::start(&data_dir, &["--cluster-id", "blue"]);
    server.kill();
    for (flags, expected) in [
        (
            vec!["--cluster-id", "green"],
            "started as node 1 of cluster \"green\"",
        ),
        (
            vec!["--cluster-id", "blue", "--id", "2"],
            "started as node 2 of cluster \"blue\"",
        ),
    ] {
        let mut other =
            ServerProcess::prepare(&data_dir, server.client_addr, server.raft_addr, &flags);
        other.spawn();
        let code = other.wait_exit(Duration::from_secs(10));
        let log = other.log();
        assert_ne!(code, Some(0), "{log}");
        assert!(
            log.contains("belongs to node 1 of cluster \"blue\"") && log.contains(expected),
            "{flags:?}: {log}"
        );
    }
    // Its own flags still start it, with its data.
    server.restart();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_storage_cannot_write_neither_leads_nor_reports_ready() {
    let _serial = serial();
    let directory = tempfile::tempdir().unwrap();
    let metrics_addr = support::loopback(support::free_port());
    let metrics_flag = format!("--metrics-addr={metrics_addr}");
    // No filesystem has 2^62 bytes free: the same check a full disk fails.
    let server = ServerProcess::start(
        &directory.path().join("node"),
        &["--min-free-bytes", "4611686018427387904", &metrics_flag],
    );
    // A single-node cluster that may lead campaigns as its driver starts
    // and leads within milliseconds; half a second shows the refusal.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = status_of(server.client_addr).await.expect("status");
    assert_eq!(
        status.leader_id, 0,
        "it did not take leadership: {status:?}"
    );
    assert!(
        status
            .not_ready_reason
            .contains("storage cannot take writes: only"),
        "{status:?}"
    );
    assert!(
        status.not_ready_reason.contains("--min-free-bytes"),
        "{status:?}"
    );
    let readyz = http_get(metrics_addr, "/readyz").expect("readyz answers");
    assert_eq!(readyz.status, 503);
    assert!(
        readyz.body.contains("storage cannot take writes"),
        "{}",
        readyz.body
    );
    assert!(
        server.log().contains("storage cannot take writes"),
        "{}",
        server.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_while_catching_up_goes_on_catching_up() {
    let _serial = serial();
    let mut cluster = Cluster::start(3, &[]);
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(10)).await;
    put(cluster.node(leader).client_addr, "key", "v").await;
    // Node 3 loses its data directory and rejoins while its peers are down:
    // it cannot learn the term, so it stays catching up.
    for id in 1..=3 {
        cluster.node(id).kill();
    }
    let node = cluster.node(3);
    std::fs::remove_dir_all(&node.data_dir).expect("wiping the data directory");
    node.extra_args.extend([
        "--initial-cluster-state".to_string(),
        "existing".to_string(),
    ]);
    node.restart();
    let marker = node.data_dir.join("CATCHING_UP");
    assert!(marker.exists(), "recorded before the node does anything");
    // Restarted without the flag, it still remembers.
    node.kill();
    node.extra_args.truncate(node.extra_args.len() - 2);
    node.restart();
    let address = node.client_addr;
    let status = status_of(address).await.expect("status");
    assert!(
        status.not_ready_reason.contains("catching up"),
        "{status:?}"
    );
    // Its local state lacks committed writes: no serializable read from it.
    let mut client = client_for(address, CLIENT_DEADLINE)
        .await
        .expect("connecting");
    let refused = client
        .get(GetRequest {
            key: "key".into(),
            consistency: Consistency::Serializable as i32,
        })
        .await
        .expect_err("a serializable read is refused");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("catching up"), "{refused:?}");
    assert!(
        node.log()
            .contains("was catching up after it lost its state when it stopped"),
        "{}",
        node.log()
    );
    // Its peers come back: it learns the term, catches up, and the marker goes.
    cluster.node(1).restart();
    cluster.node(2).restart();
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    while !status_of(address)
        .await
        .is_some_and(|status| status.not_ready_reason.is_empty())
    {
        assert!(Instant::now() < deadline, "{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(linearizable_get(address, "key").await, Some(b"v".to_vec()));
    // It votes again, and clears the marker, after an election held without
    // it (its peers' first one may have come before or after it learned
    // their term): restart the leader for one more.
    if !cluster.node(3).log().contains("votes again") {
        let (leader, _) = cluster.wait_for_leader(Duration::from_secs(10)).await;
        cluster.node(leader).kill();
        cluster.node(leader).restart();
    }
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    while !cluster
        .node(3)
        .log()
        .contains("caught up with the leader: votes again")
    {
        assert!(Instant::now() < deadline, "{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!marker.exists(), "cleared once it votes again");
}
