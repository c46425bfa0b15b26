//! The replicated key-value store with real processes: writes through any
//! node, linearizable reads, crashes under load, a deposed leader, and a
//! follower that catches up through a snapshot.

// Cluster tests hold the serial lock across awaits on purpose: each test has
// its own runtime, and the lock keeps two clusters from running at once.
#![allow(clippy::await_holding_lock)]

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvstore_proto::kv::v1::{Consistency, GetRequest, PutRequest};
use kvstore_proto::raft::v1 as pb;
use support::{client_for, status_of, Cluster, TEST_ELECTION_TIMEOUT};

const CLIENT_DEADLINE: Duration = Duration::from_secs(3);

async fn try_put(
    cluster_addr: std::net::SocketAddr,
    key: &str,
    value: &str,
) -> Result<(), tonic::Status> {
    let mut client = client_for(cluster_addr, CLIENT_DEADLINE)
        .await
        .ok_or_else(|| tonic::Status::unavailable("connect failed"))?;
    client
        .put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..PutRequest::default()
        })
        .await
        .map(|_| ())
}

async fn get(
    address: std::net::SocketAddr,
    key: &str,
    consistency: Consistency,
) -> Result<Option<Vec<u8>>, tonic::Status> {
    let mut client = client_for(address, CLIENT_DEADLINE)
        .await
        .ok_or_else(|| tonic::Status::unavailable("connect failed"))?;
    let response = client
        .get(GetRequest {
            key: key.into(),
            consistency: consistency as i32,
        })
        .await?
        .into_inner();
    Ok(response.found.then_some(response.value))
}

/// Writers that put unique values to a few keys through every node until
/// stopped; records which writes were acknowledged.
struct WriteLoad {
    acknowledged: Arc<Mutex<BTreeMap<String, Vec<String>>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Most writes a load issues per writer (a bound besides time).
const LOAD_WRITES_PER_WRITER_MAX: usize = 5_000;

impl WriteLoad {
    fn start(cluster: &Cluster, writers: usize) -> Self {
        let acknowledged = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let addresses: Vec<_> = cluster.nodes.iter().map(|node| node.client_addr).collect();
        let tasks = (0..writers)
            .map(|writer| {
                let acknowledged = acknowledged.clone();
                let stop = stop.clone();
                let addresses = addresses.clone();
                tokio::spawn(async move {
                    for sequence in 0..LOAD_WRITES_PER_WRITER_MAX {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        // Each writer owns its keys, so the last acknowledged value per key is known.
                        let key = format!("writer-{writer}-key-{}", sequence % 5);
                        let value = format!("{writer}-{sequence}");
                        let address = addresses[(writer + sequence) % addresses.len()];
                        if try_put(address, &key, &value).await.is_ok() {
                            acknowledged
                                .lock()
                                .unwrap()
                                .entry(key)
                                .or_insert_with(Vec::new)
                                .push(value);
                        } else {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
            })
            .collect();
        Self {
            acknowledged,
            stop,
            tasks,
        }
    }

    async fn stop(self) -> BTreeMap<String, String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let acknowledged = self.acknowledged.lock().unwrap();
        acknowledged
            .iter()
            .map(|(key, values)| (key.clone(), values.last().unwrap().clone()))
            .collect()
    }
}

/// Every acknowledged last value is what a linearizable read returns through
/// every node, and what each node has applied locally.
async fn assert_all_acknowledged_present(cluster: &Cluster, expected: &BTreeMap<String, String>) {
    assert!(
        !expected.is_empty(),
        "the load acknowledged no write at all"
    );
    let (leader, _) = cluster.wait_for_leader(20 * TEST_ELECTION_TIMEOUT).await;
    let commit = status_of(cluster.nodes[(leader - 1) as usize].client_addr)
        .await
        .unwrap()
        .commit_index;
    cluster
        .wait_for_applied(commit, Duration::from_secs(20))
        .await;
    for node in &cluster.nodes {
        for (key, value) in expected {
            for consistency in [Consistency::Linearizable, Consistency::Serializable] {
                // A write acknowledged later could only be newer: each writer's
                // values for one key are written in sequence, so the last
                // acknowledged value is the one that must be there (an
                // unacknowledged later write may also have landed).
                let found = get(node.client_addr, key, consistency).await.expect("read");
                let found = String::from_utf8(found.expect("the key exists")).unwrap();
                let (writer, sequence) = found.split_once('-').unwrap();
                let (expected_writer, expected_sequence) = value.split_once('-').unwrap();
                assert_eq!(writer, expected_writer);
                assert!(
                    sequence.parse::<u64>().unwrap() >= expected_sequence.parse::<u64>().unwrap(),
                    "{key} on {}: {found} is older than the acknowledged {value}",
                    node.endpoint()
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_follower_is_read_through_the_other() {
    let _serial = support::serial();
    let cluster = Cluster::start(3, &[]);
    let (leader, _) = cluster.wait_for_leader(10 * TEST_ELECTION_TIMEOUT).await;
    let followers: Vec<_> = cluster
        .nodes
        .iter()
        .filter(|node| node.endpoint() != cluster.nodes[(leader - 1) as usize].endpoint())
        .collect();
    let mut writer = client_for(followers[0].client_addr, CLIENT_DEADLINE)
        .await
        .unwrap();
    let response = writer
        .put(PutRequest {
            key: b"greeting".to_vec(),
            value: b"hello".to_vec(),
            ..PutRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let header = response.header.unwrap();
    assert_eq!(
        header.node_id, leader,
        "the leader served the forwarded write"
    );
    assert!(header.forwarded_by != 0 && header.forwarded_by != leader);
    assert!(header.index > 0 && header.term > 0);
    let written_at = header.index;
    // A linearizable read on the other follower: the leader confirms a read
    // index, the follower serves the value itself once it applied it.
    let reader_id = 1 + cluster
        .nodes
        .iter()
        .position(|node| node.client_addr == followers[1].client_addr)
        .unwrap() as u64;
    let mut reader = client_for(followers[1].client_addr, CLIENT_DEADLINE)
        .await
        .unwrap();
    let read = reader
        .get(GetRequest {
            key: b"greeting".to_vec(),
            consistency: Consistency::Linearizable as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.value, b"hello");
    let header = read.header.unwrap();
    assert_eq!(
        (header.node_id, header.leader_id, header.forwarded_by),
        (reader_id, leader, 0),
        "served by the follower, with the index the leader confirmed"
    );
    assert!(header.index >= written_at, "{header:?}");
    // A serializable read is local: it sees the write once applied there.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if get(
            followers[1].client_addr,
            "greeting",
            Consistency::Serializable,
        )
        .await
        .unwrap()
            == Some(b"hello".to_vec())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower never applied the write"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Deletes go through followers too.
    let mut client = client_for(followers[1].client_addr, CLIENT_DEADLINE)
        .await
        .unwrap();
    let deleted = client
        .delete(kvstore_proto::kv::v1::DeleteRequest {
            key: b"greeting".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted);
    assert_eq!(
        get(
            followers[0].client_addr,
            "greeting",
            Consistency::Linearizable
        )
        .await
        .unwrap(),
        None
    );
}

/// Concurrent linearizable reads at a follower share ReadIndex requests to
/// the leader; none may return a value older than the last write
/// acknowledged before it started. One writer counts up a key through the
/// leader while readers at a follower check it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_follower_reads_see_every_write_acknowledged_before_them() {
    const WRITES: u64 = 150;
    const READERS: usize = 16;
    let _serial = support::serial();
    let mut cluster = Cluster::start(3, &[]);
    let (leader, _) = cluster.wait_for_leader(10 * TEST_ELECTION_TIMEOUT).await;
    let follower = cluster.node(if leader == 1 { 2 } else { 1 }).client_addr;
    let leader_addr = cluster.node(leader).client_addr;
    let acknowledged = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let acknowledged = acknowledged.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut client = client_for(follower, CLIENT_DEADLINE).await.unwrap();
                let mut reads = 0u64;
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    let floor = acknowledged.load(std::sync::atomic::Ordering::Acquire);
                    let response = client
                        .get(GetRequest {
                            key: b"counter".to_vec(),
                            consistency: Consistency::Linearizable as i32,
                        })
                        .await
                        .expect("a linearizable read at the follower")
                        .into_inner();
                    let seen: u64 = if response.found {
                        String::from_utf8(response.value).unwrap().parse().unwrap()
                    } else {
                        0
                    };
                    assert!(seen >= floor, "read {seen} after {floor} was acknowledged");
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let mut writer = client_for(leader_addr, CLIENT_DEADLINE).await.unwrap();
    for value in 1..=WRITES {
        writer
            .put(PutRequest {
                key: b"counter".to_vec(),
                value: value.to_string().into_bytes(),
                ..PutRequest::default()
            })
            .await
            .unwrap();
        acknowledged.store(value, std::sync::atomic::Ordering::Release);
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.unwrap();
    }
    assert!(reads >= READERS as u64, "every reader read at least once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_killing_the_leader_under_load() {
    let _serial = support::serial();
    let mut cluster = Cluster::start(3, &[]);
    let (leader, _) = cluster.wait_for_leader(10 * TEST_ELECTION_TIMEOUT).await;
    let load = WriteLoad::start(&cluster, 8);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    cluster.node(leader).kill();
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let expected = load.stop().await;
    cluster.node(leader).restart();
    assert_all_acknowledged_present(&cluster, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_killing_every_node_under_load() {
    let _serial = support::serial();
    let mut cluster = Cluster::start(3, &[]);
    cluster.wait_for_leader(10 * TEST_ELECTION_TIMEOUT).await;
    let load = WriteLoad::start(&cluster, 8);
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    for node in &mut cluster.nodes {
        node.kill();
    }
    let expected = load.stop().await;
    for node in &mut cluster.nodes {
        node.restart();
    }
    assert_all_acknowledged_present(&cluster, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_never_serves_a_stale_read() {
    let _serial = support::serial();
    let mut cluster = Cluster::start(3, &[]);
    let (old_leader, _) = cluster.wait_for_leader(10 * TEST_ELECTION_TIMEOUT).await;
    let old_address = cluster.node(old_leader).client_addr;
    try_put(old_address, "fact", "old").await.unwrap();
    cluster.node(old_leader).signal("STOP");
    // The others elect a new leader and accept a new value.
    let others: Vec<_> = cluster
        .nodes
        .iter()
        .filter(|node| node.client_addr != old_address)
        .map(|node| node.client_addr)
        .collect();
    let deadline = Instant::now() + 20 * TEST_ELECTION_TIMEOUT;
    loop {
        if try_put(others[0], "fact", "new").await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the majority never accepted the new value\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.node(old_leader).signal("CONT");
    // Read from the old leader at once: new value or an error, never "old".
    for _ in 0..20 {
        match get(old_address, "fact", Consistency::Linearizable).await {
            Ok(value) => assert_eq!(
                value,
                Some(b"new".to_vec()),
                "a stale read from the deposed leader"
            ),
            Err(status) => println!(
                "read refused (fine): {:?} {}",
                status.code(),
                status.message()
            ),
        }
    }
    let (leader, _) = cluster.wait_for_leader(10 * TEST_ELECTION_TIMEOUT).await;
    assert_ne!(leader, 0);
}

/// Keys written by [`put_rounds`]: write `index` goes to key `index % 150`.
const ROUND_KEYS: u32 = 150;

/// Writes `writes` in order, write `index` putting `index` under key
/// `key-{index % ROUND_KEYS}`.
async fn put_rounds(
    client: &mut kvstore_proto::kv::v1::kv_client::KvClient<tonic::transport::Channel>,
    writes: std::ops::Range<u32>,
) {
    for index in writes {
        client
            .put(PutRequest {
                key: format!("key-{}", index % ROUND_KEYS).into_bytes(),
                value: index.to_string().into_bytes(),
                ..PutRequest::default()
            })
            .await
            .unwrap();
    }
}

/// Every key holds its write from `last_round` (the last `ROUND_KEYS`
/// writes of [`put_rounds`]), read from `address`'s own state.
async fn expect_last_round(address: std::net::SocketAddr, last_round: std::ops::Range<u32>) {
    for index in last_round {
        let key = format!("key-{}", index % ROUND_KEYS);
        let value = get(address, &key, Consistency::Serializable).await.unwrap();
        assert_eq!(value, Some(index.to_string().into_bytes()), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_catches_up_through_a_snapshot() {
    let _serial = support::serial();
    let mut cluster = Cluster::start(3, &["--snapshot-entries", "100"]);
    let (leader, _) = cluster.wait_for_leader(10 * TEST_ELECTION_TIMEOUT).await;
    let lagging = (1..=3).find(|id| *id != leader).unwrap();
    cluster.node(lagging).kill();
    let leader_address = cluster.node(leader).client_addr;
    let mut client = client_for(leader_address, CLIENT_DEADLINE).await.unwrap();
    put_rounds(&mut client, 0..450).await;
    let leader_status = status_of(leader_address).await.unwrap();
    assert!(
        leader_status.snapshot_index >= 300,
        "the leader took several snapshots: {leader_status:?}"
    );
    cluster.node(lagging).restart();
    cluster
        .wait_for_applied(leader_status.commit_index, Duration::from_secs(30))
        .await;
    let caught_up = status_of(cluster.node(lagging).client_addr).await.unwrap();
    assert!(
        caught_up.snapshot_index > 0,
        "the follower installed a snapshot: {caught_up:?}"
    );
    assert!(cluster
        .node(lagging)
        .log()
        .contains("installed the leader's snapshot"));
    expect_last_round(cluster.node(lagging).client_addr, 300..450).await;

    // Again, over the snapshot it holds: the follower's answer comes back on
    // its stream (the snapshot call's reply is only a receipt), and the
    // leader sends each snapshot about once, not in a loop.
    cluster.node(lagging).kill();
    put_rounds(&mut client, 450..900).await;
    let leader_status = status_of(leader_address).await.unwrap();
    cluster.node(lagging).restart();
    cluster
        .wait_for_applied(leader_status.commit_index, Duration::from_secs(30))
        .await;
    let log = cluster.node(lagging).log();
    assert_eq!(
        log.matches("installed the leader's snapshot").count(),
        2,
        "{log}"
    );
    let sent = cluster.node(leader).log().matches("snapshot sent").count();
    assert!((2..10).contains(&sent), "the leader sent {sent} snapshots");
    expect_last_round(cluster.node(lagging).client_addr, 750..900).await;

    // A snapshot sent again while the follower holds it already (the
    // leader retries while a long restore runs) is acknowledged without
    // being stored again: these chunks are not a snapshot at all.
    let (index, term) = newest_snapshot(&cluster.node(lagging).data_dir);
    let leader_term = status_of(leader_address).await.unwrap().term;
    let chunk = pb::InstallSnapshotChunk {
        header: Some(pb::MessageHeader {
            cluster_id: "kvstore".into(),
            from: leader,
            to: lagging,
            term: leader_term,
            storage_version_max: 0,
        }),
        snapshot: Some(pb::SnapshotMetadata { index, term }),
        offset: 0,
        data: b"not a snapshot".to_vec(),
        done: true,
        total_bytes: 14,
    };
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "http://{}",
        cluster.node(lagging).raft_addr
    ))
    .unwrap()
    .connect()
    .await
    .unwrap();
    let receipt = pb::raft_client::RaftClient::new(channel)
        .install_snapshot(futures::stream::iter([chunk]))
        .await
        .expect("a snapshot held already is acknowledged")
        .into_inner();
    assert_eq!(receipt.index, 0, "the reply is a receipt: {receipt:?}");
    expect_last_round(cluster.node(lagging).client_addr, 750..900).await;
}

/// Index and term of the newest snapshot file in a node's data directory.
fn newest_snapshot(data_dir: &std::path::Path) -> (u64, u64) {
    let name = std::fs::read_dir(data_dir.join("snapshots"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("snapshot-") && name.ends_with(".snap"))
        .max()
        .expect("the follower holds a snapshot");
    let digits = name
        .trim_start_matches("snapshot-")
        .trim_end_matches(".snap");
    let (index, term) = digits.split_once('-').unwrap();
    (index.parse().unwrap(), term.parse().unwrap())
}

/// A follower hears that a write committed within the leader's commit
/// notice delay (10 ms), not at its next heartbeat. Heartbeats here are
/// 3 s apart: each of three writes must be readable on both followers
/// from their own state (serializable) within 500 ms. Were the commit index
/// carried by heartbeats alone, a write would pass only when a heartbeat
/// fell in its window, one chance in six.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_apply_a_write_without_waiting_for_a_heartbeat() {
    const APPLIED_WITHIN: Duration = Duration::from_millis(500);
    let _serial = support::serial();
    let cluster = Cluster::start(
        3,
        &[
            "--election-timeout-ms",
            "6000",
            "--heartbeat-interval-ms",
            "3000",
        ],
    );
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let leader_addr = cluster.nodes[(leader - 1) as usize].client_addr;
    let followers: Vec<_> = cluster
        .nodes
        .iter()
        .map(|node| node.client_addr)
        .filter(|address| *address != leader_addr)
        .collect();
    for round in 0..3 {
        let key = format!("noticed-{round}");
        try_put(leader_addr, &key, "committed").await.unwrap();
        let written = Instant::now();
        for follower in &followers {
            while get(*follower, &key, Consistency::Serializable)
                .await
                .unwrap()
                .is_none()
            {
                assert!(
                    written.elapsed() < APPLIED_WITHIN,
                    "{follower} had not applied write {round} after {:?}",
                    written.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// Many concurrent writes of the largest value through a follower: 64 MiB
/// in flight over the forward stream and the peer streams (whose batches
/// are bounded in bytes), every write acknowledged and readable. With the
/// default timings (1 s election timeout, 100 ms heartbeats): three debug
/// builds moving 64 MiB each on 2 cores can miss the fast test timings'
/// 300 ms, and a new election is not what this test is about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_largest_values_through_a_follower() {
    const WRITES: usize = 64;
    const VALUE_BYTES: usize = 1024 * 1024;
    let _serial = support::serial();
    let cluster = Cluster::start(
        3,
        &[
            "--election-timeout-ms",
            "1000",
            "--heartbeat-interval-ms",
            "100",
        ],
    );
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let follower = cluster
        .nodes
        .iter()
        .enumerate()
        .find(|(position, _)| *position as u64 + 1 != leader)
        .map(|(_, node)| node.client_addr)
        .unwrap();
    let client = client_for(follower, Duration::from_secs(60)).await.unwrap();
    let writes = (0..WRITES).map(|index| {
        let mut client = client.clone();
        async move {
            client
                .put(PutRequest {
                    key: format!("large-{index}").into_bytes(),
                    value: vec![index as u8; VALUE_BYTES],
                    ..PutRequest::default()
                })
                .await
        }
    });
    for (index, result) in futures::future::join_all(writes)
        .await
        .into_iter()
        .enumerate()
    {
        assert!(result.is_ok(), "write {index}: {:?}", result.err());
    }
    let value = get(
        follower,
        &format!("large-{}", WRITES - 1),
        Consistency::Linearizable,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(value, vec![(WRITES - 1) as u8; VALUE_BYTES]);
}
