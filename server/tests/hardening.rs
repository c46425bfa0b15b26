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
