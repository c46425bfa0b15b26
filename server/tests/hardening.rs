//! What real machines and careless peers do to a node, with real processes:
//! forged writes on the raft port, floods of connections, and a wrong
//! `--peers` address.

// Cluster tests hold the serial lock across awaits on purpose: each test has
// its own runtime, and the lock keeps two clusters from running at once.
#![allow(clippy::await_holding_lock)]

mod support;

use std::time::Duration;

use kvstore_proto::kv::v1::{Consistency, GetRequest, PutRequest};
use kvstore_proto::raft::v1 as pb;
use support::{Cluster, TEST_ELECTION_TIMEOUT};

/// A write as a follower forwards it, forged with a header the leader accepts.
fn forged_put(
    leader: u64,
    from: u64,
    term: u64,
    key: Vec<u8>,
    value: Vec<u8>,
) -> pb::ForwardRequest {
    pb::ForwardRequest {
        header: Some(pb::MessageHeader {
            cluster_id: "kvstore".into(),
            from,
            to: leader,
            term,
        }),
        request_id: "forged".into(),
        request: Some(pb::forward_request::Request::Write(pb::Command {
            operation: Some(pb::command::Operation::Put(pb::PutOperation { key, value })),
            request_id: "forged".into(),
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_writes_are_checked_against_the_client_limits() {
    let _serial = support::serial();
    let cluster = Cluster::start(3, &["--max-key-bytes", "64", "--max-value-bytes", "4096"]);
    let (leader, term) = cluster.wait_for_leader(10 * TEST_ELECTION_TIMEOUT).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let leader_node = &cluster.nodes[(leader - 1) as usize];
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", leader_node.raft_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut raft = pb::raft_client::RaftClient::new(channel)
        .max_encoding_message_size(16 * 1024 * 1024)
        .max_decoding_message_size(16 * 1024 * 1024);
    // A valid forged write goes through: the header is right.
    raft.forward(forged_put(
        leader,
        follower,
        term,
        b"ok".to_vec(),
        b"v".to_vec(),
    ))
    .await
    .expect("a valid forwarded write is served");
    let index_before = support::status_of(leader_node.client_addr)
        .await
        .expect("the leader answers")
        .commit_index;

    for (key, value, expected) in [
        (Vec::new(), b"v".to_vec(), "key must not be empty"),
        (vec![b'k'; 10_000], b"v".to_vec(), "(--max-key-bytes)"),
        (
            b"big".to_vec(),
            vec![7u8; 5 * 1024 * 1024],
            "(--max-value-bytes)",
        ),
    ] {
        let status = raft
            .forward(forged_put(leader, follower, term, key.clone(), value))
            .await
            .expect_err("an invalid forwarded write is refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(expected),
            "key of {} bytes: {}",
            key.len(),
            status.message()
        );
    }
    // The ForwardStream route followers use is checked the same way.
    let call = pb::ForwardCall {
        id: 1,
        request: Some(forged_put(
            leader,
            follower,
            term,
            vec![b'k'; 10_000],
            b"v".to_vec(),
        )),
    };
    let mut results = raft
        .forward_stream(futures::stream::iter([pb::ForwardBatch {
            calls: vec![call],
        }]))
        .await
        .expect("the stream is accepted")
        .into_inner();
    let batch = tokio::time::timeout(Duration::from_secs(5), results.message())
        .await
        .expect("the call is answered")
        .expect("the stream carries the result")
        .expect("one batch");
    match batch
        .results
        .first()
        .and_then(|result| result.outcome.as_ref())
    {
        Some(pb::forward_result::Outcome::Error(error)) => {
            assert_eq!(error.code, tonic::Code::InvalidArgument as i32, "{error:?}");
            assert!(error.message.contains("(--max-key-bytes)"), "{error:?}");
        }
        other => panic!("an oversized key was served through ForwardStream: {other:?}"),
    }

    // Nothing was committed: the leader's commit index did not move.
    tokio::time::sleep(3 * support::TEST_HEARTBEAT_INTERVAL).await;
    let index_after = support::status_of(leader_node.client_addr)
        .await
        .expect("the leader answers")
        .commit_index;
    assert_eq!(index_after, index_before, "a refused write was committed");

    // The client API gives the same answer, and still serves valid writes.
    let mut client = leader_node.client().await;
    let status = client
        .put(PutRequest {
            key: vec![b'k'; 10_000],
            value: b"v".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("(--max-key-bytes)"), "{status:?}");
    client
        .put(PutRequest {
            key: b"after".to_vec(),
            value: b"fine".to_vec(),
        })
        .await
        .expect("valid writes still go through");
    let read = client
        .get(GetRequest {
            key: b"after".to_vec(),
            consistency: Consistency::Linearizable as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.value, b"fine");
}

/// How long the peer tests watch the logs.
const LOG_WATCH: Duration = Duration::from_secs(3);
/// Most lines about one misconfigured peer in [`LOG_WATCH`] (before the
/// fix: about 20 a second).
const LINES_ABOUT_A_PEER_MAX: usize = 10;

/// The JSON log lines of `log` whose message is `message` and, when given,
/// whose `peer` field is `peer`.
fn lines_about(log: &str, message: &str, peer: Option<u64>) -> usize {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["message"] == message)
        .filter(|line| peer.is_none_or(|peer| line["fields"]["peer"] == peer))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_peers_address_costs_a_few_log_lines() {
    use support::{free_port, loopback, ServerProcess, TEST_HEARTBEAT_INTERVAL};
    let _serial = support::serial();
    let directory = tempfile::tempdir().unwrap();
    let election = TEST_ELECTION_TIMEOUT.as_millis().to_string();
    let heartbeat = TEST_HEARTBEAT_INTERVAL.as_millis().to_string();
    let timings = [
        "--election-timeout-ms",
        &election,
        "--heartbeat-interval-ms",
        &heartbeat,
    ];
    // Nodes 1 and 2 of three, each with node 3's address wrong: it names the
    // other node's raft port, which accepts the stream and refuses its
    // messages. Whichever leads sends "node 3" a heartbeat every 50 ms.
    let raft = [loopback(free_port()), loopback(free_port())];
    let peers_of_1 = format!("2={},3={}", raft[1], raft[1]);
    let peers_of_2 = format!("1={},3={}", raft[0], raft[0]);
    let mut pair: Vec<ServerProcess> = [("1", &peers_of_1, raft[0]), ("2", &peers_of_2, raft[1])]
        .into_iter()
        .map(|(id, peers, raft_addr)| {
            let mut args = vec!["--id", id, "--peers", peers];
            args.extend(timings);
            ServerProcess::prepare(
                &directory.path().join(format!("node-{id}")),
                loopback(free_port()),
                raft_addr,
                &args,
            )
        })
        .collect();
    // A lone node whose one peer's address is a closed loopback port.
    let closed = loopback(free_port());
    let lone_peers = format!("2={closed}");
    let mut lone_args = vec!["--peers", lone_peers.as_str()];
    lone_args.extend(timings);
    let mut lone = ServerProcess::prepare(
        &directory.path().join("lone"),
        loopback(free_port()),
        loopback(free_port()),
        &lone_args,
    );
    for node in pair.iter_mut().chain([&mut lone]) {
        node.spawn();
    }
    for node in pair.iter_mut().chain([&mut lone]) {
        node.wait_listening();
    }
    // The pair elects a leader, whose heartbeats to "node 3" are refused.
    let deadline = std::time::Instant::now() + 10 * TEST_ELECTION_TIMEOUT;
    loop {
        let mut leads = false;
        for node in &pair {
            leads |= support::status_of(node.client_addr)
                .await
                .is_some_and(|status| status.role == 4);
        }
        if leads {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no leader in the pair"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(LOG_WATCH).await;

    let mut unreachable_lines = 0;
    for node in &pair {
        let log = node.log();
        let unreachable = lines_about(&log, "peer unreachable; backing off", Some(3));
        let reachable = lines_about(&log, "peer reachable again", Some(3));
        let refused = lines_about(&log, "peer stream refused", None);
        assert_eq!(reachable, 0, "a refusing peer is not reachable: {log}");
        assert!(
            unreachable <= LINES_ABOUT_A_PEER_MAX && refused <= LINES_ABOUT_A_PEER_MAX,
            "{unreachable} lines about peer 3, {refused} about refused streams in {}",
            node.log_path.display()
        );
        unreachable_lines += unreachable;
    }
    assert!(unreachable_lines >= 1, "the leader tells the operator");
    let log = lone.log();
    let unreachable = lines_about(&log, "peer unreachable; backing off", Some(2));
    assert!(
        (1..=LINES_ABOUT_A_PEER_MAX).contains(&unreachable),
        "{unreachable} lines about peer 2: {log}"
    );
}
