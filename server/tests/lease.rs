//! Leases (issue #23) with real processes: grant, keep-alive, time to
//! live, list and revoke through any node; keys deleted at one revision
//! when their lease is revoked or expires (and watchers see it); expiry
//! neither early nor missed across a leader kill; bad input refused with
//! clear errors and nothing changed.

// Cluster tests hold the serial lock across awaits on purpose: each test has
// its own runtime, and the lock keeps two clusters from running at once.
#![allow(clippy::await_holding_lock)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kvstore_proto::kv::v1 as pb;
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use support::{Cluster, ServerProcess};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(10);

async fn lease_client(address: SocketAddr) -> LeaseClient<Channel> {
    LeaseClient::connect(format!("http://{address}"))
        .await
        .expect("connecting")
}

fn leased_put(key: &str, value: &str, lease: i64) -> pb::PutRequest {
    pb::PutRequest {
        key: key.into(),
        value: value.into(),
        lease,
        ..pb::PutRequest::default()
    }
}

async fn grant(client: &mut LeaseClient<Channel>, ttl: i64) -> pb::LeaseGrantResponse {
    client
        .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
        .await
        .expect("a grant")
        .into_inner()
}

/// A keep-alive stream for lease `id` and its first renewal's answer.
async fn keep_alive_stream(
    leases: &mut LeaseClient<Channel>,
    id: i64,
) -> (
    mpsc::Sender<pb::LeaseKeepAliveRequest>,
    tonic::Streaming<pb::LeaseKeepAliveResponse>,
    pb::LeaseKeepAliveResponse,
) {
    let (requests, outgoing) = mpsc::channel(4);
    let mut answers = leases
        .lease_keep_alive(ReceiverStream::new(outgoing))
        .await
        .unwrap()
        .into_inner();
    requests
        .send(pb::LeaseKeepAliveRequest { id })
        .await
        .unwrap();
    let first = answers.message().await.unwrap().unwrap();
    (requests, answers, first)
}

/// The code of a refused call.
fn code<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) -> tonic::Code {
    result.expect_err("refused").code()
}

/// The keys under `prefix` now (a linearizable range).
async fn keys_under(kv: &mut KvClient<Channel>, prefix: &str) -> Vec<String> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    kv.range(pb::RangeRequest {
        key: prefix.into(),
        range_end: end,
        ..pb::RangeRequest::default()
    })
    .await
    .expect("a range")
    .into_inner()
    .kvs
    .into_iter()
    .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
    .collect()
}

/// Waits for the cluster to reach storage version 3 (its leader raises it
/// right after the first election).
async fn wait_for_leases(address: SocketAddr) {
    support::wait_for_revisions(address).await;
    let mut client = lease_client(address).await;
    let deadline = Instant::now() + WAIT;
    while client
        .lease_leases(pb::LeaseLeasesRequest {})
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "leases never became available");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_keep_alive_list_and_revoke_through_a_follower() {
    let _serial = support::serial();
    let mut cluster = Cluster::start(3, &[]);
    let (leader, _) = cluster.wait_for_leader(WAIT).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let address = cluster.node(follower).client_addr;
    wait_for_leases(address).await;
    let mut leases = lease_client(address).await;
    let mut kv = cluster.node(follower).client().await;

    let granted = grant(&mut leases, 60).await;
    assert!(granted.id > 0, "{granted:?}");
    assert_eq!(granted.ttl, 60);
    let chosen = leases
        .lease_grant(pb::LeaseGrantRequest { ttl: 1, id: 4242 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(chosen.id, 4242);
    assert!(chosen.ttl >= 1, "raised to the minimum: {chosen:?}");
    for key in ["l/a", "l/b"] {
        kv.put(leased_put(key, "v", granted.id)).await.unwrap();
    }
    kv.put(leased_put("l/other", "v", 4242)).await.unwrap();
    kv.put(leased_put("l/plain", "v", 0)).await.unwrap();

    // Keep-alive over a stream, answered in order.
    let (requests, mut answers, renewed) = keep_alive_stream(&mut leases, granted.id).await;
    assert_eq!(
        (renewed.id, renewed.ttl, renewed.error.as_str()),
        (granted.id, 60, "")
    );

    let ttl = leases
        .lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: granted.id,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ttl.granted_ttl, 60);
    assert!((58..=60).contains(&ttl.ttl), "{ttl:?}");
    assert_eq!(ttl.keys, vec![b"l/a".to_vec(), b"l/b".to_vec()]);
    let listed: Vec<i64> = leases
        .lease_leases(pb::LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner()
        .leases
        .into_iter()
        .map(|lease| lease.id)
        .collect();
    assert!(
        listed.contains(&granted.id) && listed.contains(&4242),
        "{listed:?}"
    );

    // Revoke: both keys go at one revision; the others stay.
    let before = kv
        .range(pb::RangeRequest {
            key: b"l/".to_vec(),
            range_end: b"l0".to_vec(),
            ..pb::RangeRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let revoked = leases
        .lease_revoke(pb::LeaseRevokeRequest { id: granted.id })
        .await
        .unwrap()
        .into_inner();
    let revision = revoked.header.unwrap().revision;
    assert_eq!(
        revision,
        before.header.unwrap().revision + 1,
        "one revision"
    );
    assert_eq!(keys_under(&mut kv, "l/").await, vec!["l/other", "l/plain"]);
    // Gone: keep-alive answers TTL 0 with the reason, the stream goes on.
    requests
        .send(pb::LeaseKeepAliveRequest { id: granted.id })
        .await
        .unwrap();
    let refused = answers.message().await.unwrap().unwrap();
    assert_eq!(refused.ttl, 0);
    assert!(refused.error.contains("not found"), "{refused:?}");
    requests
        .send(pb::LeaseKeepAliveRequest { id: 4242 })
        .await
        .unwrap();
    assert!(answers.message().await.unwrap().unwrap().ttl >= 1);
    let gone = leases
        .lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: granted.id,
            keys: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gone.ttl, -1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lease_requests_are_refused_and_change_nothing() {
    let _serial = support::serial();
    let directory = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&directory.path().join("node"), &[]);
    wait_for_leases(server.client_addr).await;
    let mut leases = lease_client(server.client_addr).await;
    let mut kv = server.client().await;
    assert_eq!(
        code(
            leases
                .lease_grant(pb::LeaseGrantRequest { ttl: 0, id: 0 })
                .await
        ),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(
            leases
                .lease_grant(pb::LeaseGrantRequest {
                    ttl: 9_000_000_001,
                    id: 0
                })
                .await
        ),
        tonic::Code::OutOfRange
    );
    let granted = grant(&mut leases, 30).await;
    assert_eq!(
        code(
            leases
                .lease_grant(pb::LeaseGrantRequest {
                    ttl: 30,
                    id: granted.id
                })
                .await
        ),
        tonic::Code::FailedPrecondition,
        "an id in use"
    );
    let status = kv
        .put(leased_put("x", "v", granted.id + 1))
        .await
        .expect_err("an unknown lease");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(status.message().contains("lease not found"), "{status:?}");
    assert!(keys_under(&mut kv, "x").await.is_empty(), "nothing written");
    assert_eq!(
        code(
            leases
                .lease_revoke(pb::LeaseRevokeRequest { id: granted.id + 1 })
                .await
        ),
        tonic::Code::NotFound
    );
    // ignore_lease keeps the key's lease; naming one with it is refused.
    kv.put(leased_put("y", "1", granted.id)).await.unwrap();
    kv.put(pb::PutRequest {
        key: b"y".to_vec(),
        value: b"2".to_vec(),
        ignore_lease: true,
        ..pb::PutRequest::default()
    })
    .await
    .unwrap();
    let y = kv
        .range(pb::RangeRequest {
            key: b"y".to_vec(),
            ..pb::RangeRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(y.kvs[0].lease, granted.id);
    assert_eq!(
        kv.put(pb::PutRequest {
            key: b"y".to_vec(),
            ignore_lease: true,
            lease: granted.id,
            ..pb::PutRequest::default()
        })
        .await
        .expect_err("lease with ignore_lease")
        .code(),
        tonic::Code::InvalidArgument
    );
}

/// A lease nobody keeps alive: its keys last its TTL, then go at one
/// revision, and a watcher sees the deletes; one kept alive outlives its
/// TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_takes_its_keys_and_a_kept_one_does_not() {
    let _serial = support::serial();
    let directory = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&directory.path().join("node"), &[]);
    wait_for_leases(server.client_addr).await;
    let mut leases = lease_client(server.client_addr).await;
    let mut kv = server.client().await;
    let dying = grant(&mut leases, 2).await;
    let kept = grant(&mut leases, 2).await;
    let granted_at = Instant::now();
    for (key, lease) in [("e/1", dying.id), ("e/2", dying.id), ("e/kept", kept.id)] {
        kv.put(leased_put(key, "v", lease)).await.unwrap();
    }
    let (requests, mut answers, first) = keep_alive_stream(&mut leases, kept.id).await;
    assert_eq!(first.ttl, 2);
    let mut gone_at = None;
    while granted_at.elapsed() < Duration::from_secs(6) {
        requests
            .send(pb::LeaseKeepAliveRequest { id: kept.id })
            .await
            .unwrap();
        assert_eq!(answers.message().await.unwrap().unwrap().ttl, 2);
        let keys = keys_under(&mut kv, "e/").await;
        if keys == ["e/kept"] {
            gone_at.get_or_insert(granted_at.elapsed());
        } else {
            assert_eq!(keys, ["e/1", "e/2", "e/kept"], "both or none");
            assert!(gone_at.is_none(), "keys came back");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gone_at = gone_at.expect("the dying lease expired");
    assert!(
        gone_at >= Duration::from_secs(2),
        "expired early, after {gone_at:?}"
    );
    eprintln!("a 2 s lease's keys were gone {gone_at:?} after the grant");
}

/// The leader that tracks a lease dies while nobody keeps it alive: the
/// new leader neither expires it early (before the TTL) nor forgets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_whose_leader_dies_lasts_at_least_its_ttl_then_expires() {
    let _serial = support::serial();
    let mut cluster = Cluster::start(3, &[]);
    let (leader, _) = cluster.wait_for_leader(WAIT).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let address = cluster.node(follower).client_addr;
    wait_for_leases(address).await;
    let mut leases = lease_client(address).await;
    let mut kv = cluster.node(follower).client().await;
    let lease = grant(&mut leases, 3).await;
    kv.put(leased_put("k/owned", "v", lease.id)).await.unwrap();
    let granted_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.node(leader).kill();
    let mut gone_at = None;
    while granted_at.elapsed() < Duration::from_secs(12) {
        match kv
            .range(pb::RangeRequest {
                key: b"k/owned".to_vec(),
                ..pb::RangeRequest::default()
            })
            .await
        {
            Ok(range) if range.get_ref().count == 0 => {
                gone_at = Some(granted_at.elapsed());
                break;
            }
            Ok(_) => {}
            Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone_at = gone_at.expect("the lease expired under the new leader");
    assert!(
        gone_at >= Duration::from_secs(3),
        "expired before its TTL, after {gone_at:?}"
    );
    eprintln!("a 3 s lease whose leader died 1 s in was gone after {gone_at:?}");
}

/// `kvstore-cli lock` run by three processes at once: their commands run
/// one at a time, each with a fencing token above the previous holder's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_lock_runs_commands_one_at_a_time_with_growing_fencing_tokens() {
    let _serial = support::serial();
    let directory = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&directory.path().join("node"), &[]);
    wait_for_leases(server.client_addr).await;
    let endpoint = server.client_addr.to_string();
    let log = directory.path().join("lock.log");
    let script = format!(
        "echo start $KVSTORE_LOCK_REVISION >> {log}; sleep 0.3; echo end $KVSTORE_LOCK_REVISION >> {log}",
        log = log.display()
    );
    let holders: Vec<_> = (0..3)
        .map(|_| {
            let (endpoint, script) = (endpoint.clone(), script.clone());
            std::thread::spawn(move || {
                support::cli_str(&[
                    "--endpoints",
                    &endpoint,
                    "lock",
                    "ci-lock",
                    "--ttl",
                    "5",
                    "sh",
                    "-c",
                    &script,
                ])
            })
        })
        .collect();
    for holder in holders {
        let output = holder.join().unwrap();
        assert!(output.status.success(), "{output:?}");
    }
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    let mut last_token = 0;
    for pair in lines.chunks(2) {
        let token: i64 = pair[0].strip_prefix("start ").unwrap().parse().unwrap();
        assert_eq!(
            pair[1],
            format!("end {token}"),
            "overlapping holders: {lines:?}"
        );
        assert!(token > last_token, "tokens must grow: {lines:?}");
        last_token = token;
    }
    // Every holder released its lock (revoked its session).
    let mut kv = server.client().await;
    assert!(keys_under(&mut kv, "ci-lock/").await.is_empty());
    // The lease commands, as etcdctl's.
    let granted = support::cli_str(&["--endpoints", &endpoint, "lease", "grant", "30"]);
    let text = String::from_utf8_lossy(&granted.stdout).into_owned();
    let id = text
        .split_whitespace()
        .nth(1)
        .expect("lease ID granted ...")
        .to_string();
    assert!(text.ends_with("granted with TTL(30s)\n"), "{text}");
    let put = support::cli_str(&[
        "--endpoints",
        &endpoint,
        "put",
        "--lease",
        &id,
        "owned",
        "v",
    ]);
    assert!(put.status.success(), "{put:?}");
    let ttl = support::cli_str(&[
        "--endpoints",
        &endpoint,
        "lease",
        "timetolive",
        &id,
        "--keys",
    ]);
    assert!(
        String::from_utf8_lossy(&ttl.stdout).contains("attached keys([owned])"),
        "{ttl:?}"
    );
    let revoked = support::cli_str(&["--endpoints", &endpoint, "lease", "revoke", &id]);
    assert!(revoked.status.success(), "{revoked:?}");
    assert!(keys_under(&mut kv, "owned").await.is_empty());
}

/// A node stopping gracefully ends open keep-alive streams with
/// UNAVAILABLE (the client keeps its lease alive through another node)
/// instead of waiting for them forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_ends_open_keep_alive_streams() {
    let _serial = support::serial();
    let directory = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&directory.path().join("node"), &[]);
    wait_for_leases(server.client_addr).await;
    let mut leases = lease_client(server.client_addr).await;
    let lease = grant(&mut leases, 30).await;
    let (_requests, mut answers, renewed) = keep_alive_stream(&mut leases, lease.id).await;
    assert_eq!(renewed.ttl, 30);
    server.signal("TERM");
    let ended = tokio::time::timeout(WAIT, answers.message())
        .await
        .expect("the stream ends when the node stops");
    assert_eq!(
        ended.expect_err("an error status").code(),
        tonic::Code::Unavailable
    );
    assert_eq!(server.wait_exit(WAIT), Some(0));
}
