//! Raft with real processes: three `kvstore-server`s on loopback, started in
//! any order, killed, restarted and paused.

// Cluster tests hold the serial lock across awaits on purpose: each test has
// its own runtime, and the lock keeps two clusters from running at once.
#![allow(clippy::await_holding_lock)]

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use kvstore_proto::kv::v1::{Consistency, GetRequest, PutRequest};
use kvstore_proto::raft::v1 as pb;
use support::{client_for, status_of, Cluster, TestRng, TEST_ELECTION_TIMEOUT};

const ROLE_LEADER: i32 = 4;
const ROLE_FOLLOWER: i32 = 1;

async fn put(cluster: &Cluster, node_id: u64, key: &str, value: &str) {
    let address = cluster.nodes[(node_id - 1) as usize].client_addr;
    let mut client = client_for(address, Duration::from_secs(5))
        .await
        .expect("connect");
    client
        .put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..PutRequest::default()
        })
        .await
        .unwrap_or_else(|status| {
            panic!(
                "put {key} through node {node_id}: {status:?}\n{}",
                cluster.logs()
            )
        });
}

async fn get_serializable(cluster: &Cluster, node_id: u64, key: &str) -> Option<Vec<u8>> {
    let address = cluster.nodes[(node_id - 1) as usize].client_addr;
    let mut client = client_for(address, Duration::from_secs(5))
        .await
        .expect("connect");
    let response = client
        .get(GetRequest {
            key: key.into(),
            consistency: Consistency::Serializable as i32,
        })
        .await
        .expect("get")
        .into_inner();
    response.found.then_some(response.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_started_in_any_order_elect_exactly_one_leader() {
    let _serial = support::serial();
    let seed = support::test_seed();
    println!("KVSTORE_TEST_SEED={seed}");
    let mut rng = TestRng(seed);
    let mut cluster = Cluster::prepare(3, &[]);
    let mut order: Vec<usize> = (0..3).collect();
    for position in (1..order.len()).rev() {
        order.swap(position, rng.below(position as u64 + 1) as usize);
    }
    for position in order {
        let delay_ms = rng.below(2 * TEST_ELECTION_TIMEOUT.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        cluster.nodes[position].spawn();
    }
    let (leader, term) = cluster.wait_for_leader(10 * TEST_ELECTION_TIMEOUT).await;
    // The leader stays the only one while nothing fails.
    tokio::time::sleep(5 * TEST_ELECTION_TIMEOUT).await;
    assert_eq!(
        cluster.wait_for_leader(TEST_ELECTION_TIMEOUT).await,
        (leader, term)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_rejoins_as_a_follower_with_its_log() {
    let _serial = support::serial();
    let mut cluster = Cluster::start(3, &[]);
    let (old_leader, old_term) = cluster.wait_for_leader(10 * TEST_ELECTION_TIMEOUT).await;
    for index in 0..20 {
        put(&cluster, old_leader, &format!("before-{index}"), "1").await;
    }
    cluster.node(old_leader).kill();
    let killed_at = Instant::now();
    let (new_leader, new_term) = cluster.wait_for_leader(10 * TEST_ELECTION_TIMEOUT).await;
    println!("new leader after {:?}", killed_at.elapsed());
    assert_ne!(new_leader, old_leader);
    assert!(new_term > old_term);
    for index in 0..20 {
        put(&cluster, new_leader, &format!("after-{index}"), "2").await;
    }
    cluster.node(old_leader).restart();
    let (leader, _) = cluster.wait_for_leader(10 * TEST_ELECTION_TIMEOUT).await;
    assert_eq!(
        leader, new_leader,
        "the restarted node must not disrupt the leader"
    );
    let leader_status = status_of(cluster.node(new_leader).client_addr)
        .await
        .unwrap();
    cluster
        .wait_for_applied(leader_status.commit_index, Duration::from_secs(10))
        .await;
    let rejoined = status_of(cluster.node(old_leader).client_addr)
        .await
        .unwrap();
    assert_eq!(rejoined.role, ROLE_FOLLOWER);
    assert!(rejoined.last_log_index >= leader_status.commit_index);
    for index in 0..20 {
        assert_eq!(
            get_serializable(&cluster, old_leader, &format!("before-{index}")).await,
            Some(b"1".to_vec())
        );
        assert_eq!(
            get_serializable(&cluster, old_leader, &format!("after-{index}")).await,
            Some(b"2".to_vec())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_follower_does_not_disturb_the_leader() {
    let _serial = support::serial();
    let mut cluster = Cluster::start(3, &[]);
    let (leader, term) = cluster.wait_for_leader(10 * TEST_ELECTION_TIMEOUT).await;
    let paused = (1..=3).find(|id| *id != leader).unwrap();
    let others: Vec<u64> = (1..=3).filter(|id| *id != paused).collect();
    cluster.node(paused).signal("STOP");
    let resume_at = Instant::now() + 20 * TEST_ELECTION_TIMEOUT;
    while Instant::now() < resume_at {
        for id in &others {
            let status = status_of(cluster.node(*id).client_addr)
                .await
                .expect("a running node answers");
            assert_eq!(
                (status.leader_id, status.term),
                (leader, term),
                "node {id} while {paused} is paused"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    put(&cluster, leader, "during-pause", "v").await;
    cluster.node(paused).signal("CONT");
    let watch_until = Instant::now() + 10 * TEST_ELECTION_TIMEOUT;
    while Instant::now() < watch_until {
        for status in cluster.statuses().await.into_iter().flatten() {
            assert!(
                status.term <= term + 1,
                "term rose by more than one: {status:?}"
            );
            if status.role == ROLE_LEADER {
                assert_eq!(status.id, leader, "the leader changed after the resume");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (final_leader, final_term) = cluster.wait_for_leader(10 * TEST_ELECTION_TIMEOUT).await;
    assert_eq!(final_leader, leader);
    assert!(final_term <= term + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raft_port_refuses_other_clusters_strangers_and_garbage() {
    use std::io::{Read, Write};
    let _serial = support::serial();
    let cluster = Cluster::start(3, &[]);
    let (leader, term) = cluster.wait_for_leader(10 * TEST_ELECTION_TIMEOUT).await;
    let target = cluster.nodes[0].raft_addr;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = pb::raft_client::RaftClient::new(channel);
    let vote = |cluster_id: &str, from: u64, to: u64| pb::RequestVoteRequest {
        header: Some(pb::MessageHeader {
            cluster_id: cluster_id.into(),
            from,
            to,
            term: term + 100,
            storage_version_max: 0,
        }),
        pre_vote: false,
        last_log_index: 1_000_000,
        last_log_term: term + 100,
        transfer: true,
    };
    for (request, expected) in [
        (vote("another-cluster", 2, 1), "cluster id mismatch"),
        (vote("kvstore", 9, 1), "not a member"),
        (vote("kvstore", 2, 3), "reached node 1"),
        (pb::RequestVoteRequest::default(), "missing message header"),
    ] {
        // The call that carries snapshots checks its first chunk's header
        // before it stores anything.
        let chunk = pb::InstallSnapshotChunk {
            header: request.header,
            snapshot: Some(pb::SnapshotMetadata {
                index: 1_000_000,
                term: term + 100,
            }),
            offset: 0,
            data: b"not a snapshot".to_vec(),
            done: true,
            total_bytes: 14,
        };
        let status = client
            .install_snapshot(futures::stream::iter([chunk]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains(expected), "{}", status.message());
    }
    // The same refusals on the Stream call nodes use to talk to each other:
    // the stream ends with the status and nothing reaches the node.
    for (request, expected) in [
        (vote("another-cluster", 2, 1), "cluster id mismatch"),
        (vote("kvstore", 9, 1), "not a member"),
        (vote("kvstore", 2, 3), "reached node 1"),
        (pb::RequestVoteRequest::default(), "missing message header"),
    ] {
        let batch = pb::MessageBatch {
            messages: vec![pb::RaftMessage {
                message: Some(pb::raft_message::Message::RequestVote(request)),
            }],
        };
        let response = client
            .stream(futures::stream::iter([batch]).chain(futures::stream::pending()))
            .await
            .expect("the stream is accepted before its messages are read");
        let status = tokio::time::timeout(Duration::from_secs(5), response.into_inner().message())
            .await
            .expect("a refused stream ends at once")
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains(expected), "{}", status.message());
    }
    for garbage in [&b"GET / HTTP/1.1\r\n\r\n"[..], &[0x17u8; 2048][..]] {
        let mut stream = std::net::TcpStream::connect(target).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let _ = stream.write_all(garbage);
        let _ = stream.read_to_end(&mut Vec::new());
    }
    // Nothing changed: same leader, same term (the refused votes asked for term + 100).
    assert_eq!(
        cluster.wait_for_leader(TEST_ELECTION_TIMEOUT).await,
        (leader, term)
    );
    put(&cluster, 1, "still", "working").await;
}
