//! Revisions, ranges and transactions (issue #22) with real processes: the
//! etcd semantics of the client API over a three-node cluster, through
//! followers and the leader; a follower that restarts and one that catches
//! up by snapshot answer ranges at past revisions exactly as the leader
//! does; and clients generated from the `kv.proto` before revisions keep
//! working.

// Cluster tests hold the serial lock across awaits on purpose: each test has
// its own runtime, and the lock keeps two clusters from running at once.
#![allow(clippy::await_holding_lock)]

mod support;

use std::time::Duration;

use kvstore_proto::kv::v1 as pb;
use pb::kv_client::KvClient;
use support::Cluster;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(10);

fn put(key: &str, value: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: key.into(),
        value: value.into(),
        ..pb::PutRequest::default()
    }
}

fn range(key: &str, range_end: &[u8], revision: i64) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.into(),
        range_end: range_end.to_vec(),
        revision,
        ..pb::RangeRequest::default()
    }
}

fn serializable(mut request: pb::RangeRequest) -> pb::RangeRequest {
    request.consistency = pb::Consistency::Serializable as i32;
    request
}

fn revision_of(header: &Option<pb::ResponseHeader>) -> i64 {
    header.as_ref().expect("a header").revision
}

/// A txn that puts `value` under `key` if its mod revision is `expected`.
fn cas(key: &str, expected: i64, value: &str) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: vec![pb::Compare {
            result: pb::CompareResult::Equal as i32,
            target: pb::CompareTarget::Mod as i32,
            key: key.into(),
            target_union: Some(pb::compare::TargetUnion::ModRevision(expected)),
            range_end: Vec::new(),
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                prev_kv: true,
                ..put(key, value)
            })),
        }],
        failure: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(range(key, b"", 0))),
        }],
    }
}

/// Every pair of the store at `revision`, as (key, create, mod, version,
/// value), through a serializable range on `client`.
async fn everything_at(
    client: &mut KvClient<Channel>,
    revision: i64,
) -> Result<Vec<(Vec<u8>, i64, i64, i64, Vec<u8>)>, tonic::Code> {
    client
        .range(serializable(range("\0", b"\0", revision)))
        .await
        .map(|response| {
            response
                .into_inner()
                .kvs
                .into_iter()
                .map(|kv| {
                    (
                        kv.key,
                        kv.create_revision,
                        kv.mod_revision,
                        kv.version,
                        kv.value,
                    )
                })
                .collect()
        })
        .map_err(|status| status.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_txns_and_compaction_follow_etcd_through_any_node() {
    let _serial = support::serial();
    let mut cluster = Cluster::start(3, &[]);
    let (leader, _) = cluster.wait_for_leader(WAIT).await;
    support::wait_for_revisions(cluster.node(leader).client_addr).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let mut via_follower = cluster.node(follower).client().await;
    let mut via_leader = cluster.node(leader).client().await;

    // The first write of an empty store is revision 2, as etcd's.
    let first = via_follower
        .put(put("a/1", "x"))
        .await
        .unwrap()
        .into_inner();
    let base = revision_of(&first.header);
    assert!(base >= 2, "{first:?}");
    for (key, value) in [("a/2", "y"), ("a/3", "z"), ("b", "w")] {
        via_leader.put(put(key, value)).await.unwrap();
    }
    let prefix = via_follower
        .range(range("a/", b"a0", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(prefix.count, 3);
    assert_eq!(revision_of(&prefix.header), base + 3);
    assert_eq!(prefix.kvs[0].create_revision, base);
    assert_eq!(prefix.kvs[2].version, 1);
    let limited = via_leader
        .range(pb::RangeRequest {
            limit: 2,
            sort_order: pb::SortOrder::Descend as i32,
            keys_only: true,
            ..range("a/", b"a0", 0)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (limited.count, limited.more, limited.kvs.len()),
        (3, true, 2)
    );
    assert_eq!(limited.kvs[0].key, b"a/3");
    assert!(limited.kvs[0].value.is_empty());

    // CAS through a follower: the txn is forwarded, its outcome comes back.
    let won = via_follower
        .txn(cas("a/1", base, "cas"))
        .await
        .unwrap()
        .into_inner();
    assert!(won.succeeded, "{won:?}");
    match &won.responses[0].response {
        Some(pb::response_op::Response::ResponsePut(put)) => {
            let previous = put.prev_kv.as_ref().expect("prev_kv asked for");
            assert_eq!(
                (previous.key.as_slice(), previous.value.as_slice()),
                (&b"a/1"[..], &b"x"[..])
            );
        }
        other => panic!("{other:?}"),
    }
    let lost = via_leader
        .txn(cas("a/1", base, "again"))
        .await
        .unwrap()
        .into_inner();
    assert!(!lost.succeeded);
    assert_eq!(
        revision_of(&lost.header),
        revision_of(&won.header),
        "a read-only branch writes nothing"
    );
    match &lost.responses[0].response {
        Some(pb::response_op::Response::ResponseRange(read)) => {
            assert_eq!(read.kvs[0].value, b"cas")
        }
        other => panic!("{other:?}"),
    }

    // A range delete with the deleted pairs, through a follower.
    let deleted = via_follower
        .delete_range(pb::DeleteRangeRequest {
            key: b"a/2".to_vec(),
            range_end: b"a/4".to_vec(),
            prev_kv: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((deleted.deleted, deleted.prev_kvs.len()), (2, 2));
    let after_delete = revision_of(&deleted.header);
    // The past is still there.
    let before_delete = everything_at(&mut via_leader, after_delete - 1)
        .await
        .unwrap();
    assert_eq!(before_delete.len(), 4);

    // Bad input: clear codes, nothing changed.
    let code = |result: Result<tonic::Response<pb::RangeResponse>, tonic::Status>| {
        result.unwrap_err().code()
    };
    assert_eq!(
        code(via_leader.range(range("b", b"a", 0)).await),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(via_leader.range(range("a", b"", after_delete + 100)).await),
        tonic::Code::OutOfRange
    );
    let too_many = pb::TxnRequest {
        success: (0..129)
            .map(|position| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(put(
                    &format!("k{position}"),
                    "v",
                ))),
            })
            .collect(),
        ..pb::TxnRequest::default()
    };
    assert_eq!(
        via_follower.txn(too_many).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let twice = pb::TxnRequest {
        success: vec![
            pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(put("t", "1"))),
            },
            pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(put("t", "2"))),
            },
        ],
        ..pb::TxnRequest::default()
    };
    assert_eq!(
        via_leader.txn(twice).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let unchanged = via_leader
        .range(range("\0", b"\0", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revision_of(&unchanged.header), after_delete);

    // Compaction: below it reads fail naming the revision; at it they work.
    via_follower
        .compact(pb::CompactionRequest {
            revision: after_delete - 1,
            physical: true,
        })
        .await
        .unwrap();
    let compacted = via_leader
        .range(range("a/1", b"", after_delete - 2))
        .await
        .unwrap_err();
    assert_eq!(compacted.code(), tonic::Code::OutOfRange);
    assert!(compacted.message().contains("compacted"), "{compacted:?}");
    assert_eq!(
        everything_at(&mut via_leader, after_delete - 1)
            .await
            .unwrap(),
        before_delete
    );
    let again = via_leader
        .compact(pb::CompactionRequest {
            revision: after_delete - 1,
            physical: false,
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::OutOfRange);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_and_snapshot_installed_nodes_answer_past_revisions_as_the_leader() {
    let _serial = support::serial();
    let mut cluster = Cluster::start(3, &["--snapshot-entries", "50"]);
    let (leader, _) = cluster.wait_for_leader(WAIT).await;
    support::wait_for_revisions(cluster.node(leader).client_addr).await;
    let lagging = if leader == 3 { 2 } else { 3 };
    let mut client = cluster.node(leader).client().await;
    for round in 0..40 {
        client
            .put(put(&format!("k{}", round % 7), &format!("v{round}")))
            .await
            .unwrap();
    }
    cluster.node(lagging).kill();
    for round in 40..200 {
        let key = format!("k{}", round % 7);
        if round % 10 == 0 {
            client
                .delete_range(pb::DeleteRangeRequest {
                    key: key.into(),
                    ..Default::default()
                })
                .await
                .unwrap();
        } else {
            client.put(put(&key, &format!("v{round}"))).await.unwrap();
        }
    }
    let current = revision_of(
        &client
            .range(range("k", b"", 0))
            .await
            .unwrap()
            .into_inner()
            .header,
    );
    let compact_at = current - 60;
    client
        .compact(pb::CompactionRequest {
            revision: compact_at,
            physical: true,
        })
        .await
        .unwrap();
    // Snapshots from now on hold the compacted history.
    for round in 200..260 {
        client
            .put(put(&format!("k{}", round % 7), "late"))
            .await
            .unwrap();
    }
    let restarted = 6 - leader - lagging;
    cluster.node(restarted).kill();
    cluster.node(restarted).restart();
    cluster.node(lagging).restart();
    cluster.wait_for_leader(WAIT).await;
    let leader_status = support::status_of(cluster.node(leader).client_addr)
        .await
        .unwrap();
    cluster
        .wait_for_applied(leader_status.applied_index, WAIT)
        .await;
    let installed = cluster.node(lagging).log();
    assert!(
        installed.contains("installed the leader's snapshot"),
        "{installed}"
    );
    let last = revision_of(
        &client
            .range(range("k", b"", 0))
            .await
            .unwrap()
            .into_inner()
            .header,
    );
    let mut reference = cluster.node(leader).client().await;
    for id in [restarted, lagging] {
        let mut other = cluster.node(id).client().await;
        for revision in (compact_at - 2)..=last {
            assert_eq!(
                everything_at(&mut other, revision).await,
                everything_at(&mut reference, revision).await,
                "node {id} at revision {revision}"
            );
        }
        assert_eq!(
            everything_at(&mut other, compact_at - 1).await,
            Err(tonic::Code::OutOfRange)
        );
    }
}

/// The client API as it was before revisions, compiled from the checked-in
/// `proto/fixtures/kv-before-revisions.proto`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_generated_from_the_proto_before_revisions_keeps_working() {
    use kvstore_proto::compat::before_revisions as old;
    let _serial = support::serial();
    let directory = tempfile::tempdir().unwrap();
    let server = support::ServerProcess::start(directory.path(), &[]);
    support::wait_for_revisions(server.client_addr).await;
    let channel = Channel::from_shared(format!("http://{}", server.client_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = old::kv_client::KvClient::new(channel);
    let written = client
        .put(old::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(written.header.unwrap().index > 0);
    let read = client
        .get(old::GetRequest {
            key: b"k".to_vec(),
            consistency: old::Consistency::Linearizable as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((read.found, read.value), (true, b"v".to_vec()));
    let deleted = client
        .delete(old::DeleteRequest { key: b"k".to_vec() })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted);
    let status = client
        .status(old::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.role, old::Role::Leader as i32);
}

/// Automatic compaction keeping a window of one second.
const AUTO_COMPACTION_EVERY_SECOND: &[&str] = &[
    "--auto-compaction-mode",
    "periodic",
    "--auto-compaction-retention",
    "1s",
];

/// `--auto-compaction-mode periodic --auto-compaction-retention 1s`: the
/// leader compacts on its own at the revision of one window ago.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_compaction_keeps_a_window_of_history() {
    let _serial = support::serial();
    let directory = tempfile::tempdir().unwrap();
    let server = support::ServerProcess::start(directory.path(), AUTO_COMPACTION_EVERY_SECOND);
    support::wait_for_revisions(server.client_addr).await;
    let mut client = server.client().await;
    let first = revision_of(&client.put(put("k", "1")).await.unwrap().into_inner().header);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        client.put(put("k", "again")).await.unwrap();
        match client.range(range("k", b"", first)).await {
            Err(status) if status.code() == tonic::Code::OutOfRange => break,
            Err(status) => panic!("{status:?}"),
            Ok(_) => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "revision {first} was not compacted within {WAIT:?}: {}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(server.log().contains("automatic compaction proposed"));
    // The window itself is still readable.
    let now = revision_of(
        &client
            .range(range("k", b"", 0))
            .await
            .unwrap()
            .into_inner()
            .header,
    );
    client.range(range("k", b"", now - 1)).await.unwrap();
}

/// A restarted leader compacts the history written before the restart with
/// no write since (it learns the revision from its election's entry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_compaction_resumes_after_a_restart_without_writes() {
    let _serial = support::serial();
    let directory = tempfile::tempdir().unwrap();
    let mut server = support::ServerProcess::start(directory.path(), AUTO_COMPACTION_EVERY_SECOND);
    support::wait_for_revisions(server.client_addr).await;
    let mut client = server.client().await;
    let first = revision_of(&client.put(put("k", "1")).await.unwrap().into_inner().header);
    client.put(put("k", "2")).await.unwrap();
    server.kill();
    server.restart();
    let mut client = server.client().await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match client.range(range("k", b"", first)).await {
            Err(status) if status.code() == tonic::Code::OutOfRange => break,
            Err(status) if status.code() == tonic::Code::Unavailable => {}
            Err(status) => panic!("{status:?}"),
            Ok(_) => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "revision {first} was not compacted within {WAIT:?} of the restart: {}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The CLI's revision commands with etcdctl's habits, against a real node.
#[test]
fn the_cli_speaks_ranges_txns_and_compaction_like_etcdctl() {
    let _serial = support::serial();
    let directory = tempfile::tempdir().unwrap();
    let server = support::ServerProcess::start(directory.path(), &[]);
    let endpoint = server.endpoint();
    let run = |args: &[&str]| {
        let mut all = vec!["--endpoints", endpoint.as_str()];
        all.extend_from_slice(args);
        let output = support::cli_str(&all);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(support::wait_for_revisions(server.client_addr));
    run(&["put", "app/a", "1"]);
    run(&["put", "app/b", "2"]);
    run(&["put", "apples", "3"]);
    assert_eq!(run(&["get", "app/", "--prefix"]), "app/a\n1\napp/b\n2\n");
    assert_eq!(
        run(&[
            "get",
            "app/",
            "--prefix",
            "--keys-only",
            "--limit",
            "1",
            "--sort-by",
            "modify",
            "--order",
            "DESCEND"
        ]),
        "app/b\n"
    );
    assert_eq!(run(&["get", "app/", "--prefix", "--count-only"]), "2\n");
    assert_eq!(run(&["get", "app/a", "app/c"]), "app/a\n1\napp/b\n2\n");
    let json: serde_json::Value = serde_json::from_str(&run(&[
        "-w", "json", "get", "app/a", "--rev", "0", "--limit", "5",
    ]))
    .unwrap();
    let revision = json["header"]["revision"].as_i64().unwrap();
    assert_eq!(json["kvs"][0]["version"], 1);
    assert_eq!(json["count"], 1);
    assert_eq!(run(&["put", "app/a", "9", "--prev-kv"]), "OK\napp/a\n1\n");
    assert_eq!(
        run(&["get", "app/a", "--rev", &revision.to_string()]),
        "app/a\n1\n"
    );
    let txn = |input: &str| {
        let args = ["--endpoints", endpoint.as_str(), "txn"].map(std::ffi::OsStr::new);
        let output = support::cli(&args, input.as_bytes());
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let lock = "create(\"lock\") = \"0\"\n\nput lock me\n\nget lock\n";
    assert_eq!(txn(lock), "SUCCESS\n\nOK\n");
    assert_eq!(txn(lock), "FAILURE\n\nlock\nme\n");
    let bad = support::cli(
        &["--endpoints", endpoint.as_str(), "txn"].map(std::ffi::OsStr::new),
        b"mod(\"k\") ~ \"1\"\n",
    );
    assert_eq!(bad.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("txn line 1"));
    assert_eq!(
        run(&["del", "app/", "--prefix", "--prev-kv"]),
        "2\napp/a\n9\napp/b\n2\n"
    );
    assert_eq!(run(&["get", "app/", "--prefix"]), "");
    assert_eq!(
        run(&["compact", &revision.to_string(), "--physical"]),
        format!("compacted revision {revision}\n")
    );
    let compacted = support::cli_str(&[
        "--endpoints",
        endpoint.as_str(),
        "get",
        "app/a",
        "--rev",
        &(revision - 1).to_string(),
    ]);
    assert_eq!(compacted.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&compacted.stderr).contains("compacted"));
    let table = run(&["-w", "table", "get", "apples"]);
    assert!(
        table.contains("| KEY") && table.contains("apples"),
        "{table}"
    );
}
