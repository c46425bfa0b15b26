//! A LevelDB table damaged on disk, with real processes: the node never
//! answers a wrong "not found" or value for an acknowledged key. It names
//! the file, then either rebuilds its state from the snapshot and the WAL,
//! or stops with exit code 70 and rebuilds on the next start.

// The cluster test holds the serial lock across awaits on purpose: each test
// has its own runtime, and the lock keeps two clusters from running at once.
#![allow(clippy::await_holding_lock)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kvstore_proto::kv::v1::{Consistency, GetRequest, PutRequest, RangeRequest};
use support::{status_of, Cluster, ServerProcess, TEST_ELECTION_TIMEOUT};

/// Keys written: 400 values of 16 KiB, 6.4 MiB, more than LevelDB's 4 MiB
/// memtable, so at least one table file is written.
const KEYS: usize = 400;
/// Keys written when the damage must be met while running: more blocks
/// than LevelDB's block cache holds (1,024; a 16 KiB value fills a block),
/// since the start-up scan of the history (`state_machine::rebuild_latest`)
/// leaves the newest blocks cached and a read of a cached block never
/// reaches the file.
const KEYS_BEYOND_CACHE: usize = 1_300;
const VALUE_BYTES: usize = 16 * 1024;
/// Snapshots every 1 MiB of entries: the rebuild needs the snapshot and the
/// log after it.
const SERVER_ARGS: [&str; 2] = ["--snapshot-log-bytes", "1048576"];
/// Bytes inverted in the middle of the largest table.
const FLIPPED_BYTES: usize = 64;
const EXIT_WAIT: Duration = Duration::from_secs(20);

fn key(index: usize) -> Vec<u8> {
    format!("key-{index:04}").into_bytes()
}

fn value(index: usize) -> Vec<u8> {
    format!("{index:04}").repeat(VALUE_BYTES / 4).into_bytes()
}

async fn put_all(address: SocketAddr, keys: usize) {
    let mut client = support::client_for(address, Duration::from_secs(5))
        .await
        .expect("connecting");
    for index in 0..keys {
        client
            .put(PutRequest {
                key: key(index),
                value: value(index),
                ..PutRequest::default()
            })
            .await
            .unwrap();
    }
}

async fn get(
    address: SocketAddr,
    index: usize,
    consistency: Consistency,
) -> Result<Option<Vec<u8>>, tonic::Status> {
    let mut client = support::client_for(address, Duration::from_secs(5))
        .await
        .ok_or_else(|| tonic::Status::unavailable("connect failed"))?;
    let response = client
        .get(GetRequest {
            key: key(index),
            consistency: consistency as i32,
        })
        .await?
        .into_inner();
    Ok(response.found.then_some(response.value))
}

/// Writes a key outside the workload's; returns the revision it made.
async fn put_marker(address: SocketAddr) -> i64 {
    support::wait_for_revisions(address).await;
    let mut client = support::client_for(address, Duration::from_secs(5))
        .await
        .expect("connecting");
    let response = client
        .put(PutRequest {
            key: b"marker".to_vec(),
            value: b"1".to_vec(),
            ..PutRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    response.header.expect("a header").revision
}

/// Key `index`'s value at `revision` (a linearizable range of the key).
async fn value_at(
    address: SocketAddr,
    index: usize,
    revision: i64,
) -> Result<Option<Vec<u8>>, tonic::Status> {
    let mut client = support::client_for(address, Duration::from_secs(5))
        .await
        .ok_or_else(|| tonic::Status::unavailable("connect failed"))?;
    let response = client
        .range(RangeRequest {
            key: key(index),
            revision,
            ..RangeRequest::default()
        })
        .await?
        .into_inner();
    Ok(response.kvs.into_iter().next().map(|pair| pair.value))
}

/// Every key reads back, linearizable and serializable, through `address`.
async fn assert_every_key(address: SocketAddr, keys: usize) {
    for index in 0..keys {
        for consistency in [Consistency::Linearizable, Consistency::Serializable] {
            let found = get(address, index, consistency).await.expect("read");
            assert!(
                found.as_deref() == Some(&value(index)[..]),
                "key {index} ({consistency:?}) on {address}: {}",
                match found {
                    None => "not found".to_string(),
                    Some(_) => "a wrong value".to_string(),
                }
            );
        }
    }
}

/// Inverts [`FLIPPED_BYTES`] bytes in the middle of the largest LevelDB
/// table of the node in `data_dir`; returns the table.
fn damage_largest_table(data_dir: &Path) -> PathBuf {
    let kv = data_dir.join("kv");
    let table = std::fs::read_dir(&kv)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "ldb"))
        .max_by_key(|path| std::fs::metadata(path).unwrap().len())
        .expect("the workload wrote a LevelDB table");
    let mut bytes = std::fs::read(&table).unwrap();
    let middle = bytes.len() / 2;
    for byte in &mut bytes[middle..middle + FLIPPED_BYTES] {
        *byte = !*byte;
    }
    std::fs::write(&table, bytes).unwrap();
    table
}

/// The state set aside next to `kv/`, if any.
fn set_aside_states(data_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("kv.corrupt-"))
        })
        .collect()
}

/// The log names the damaged table and the rebuild, and the damaged state
/// was set aside.
fn assert_rebuilt(server: &ServerProcess, table: &Path) {
    let log = server.log();
    let name = table.file_name().unwrap().to_string_lossy();
    assert!(
        log.lines()
            .any(|line| line.contains("a LevelDB file is corrupt") && line.contains(&*name)),
        "the log does not name {name}: {log}"
    );
    assert!(
        log.contains("rebuilt from the snapshot and the WAL"),
        "{log}"
    );
    assert_eq!(set_aside_states(&server.data_dir).len(), 1);
}

fn stop(server: &mut ServerProcess) {
    server.signal("TERM");
    assert_eq!(server.wait_exit(EXIT_WAIT), Some(0), "{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_damaged_while_stopped_is_found_at_start_and_rebuilt() {
    let directory = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&directory.path().join("node"), &SERVER_ARGS);
    put_all(server.client_addr, KEYS).await;
    stop(&mut server);
    let table = damage_largest_table(&server.data_dir);
    server.restart();
    assert_every_key(server.client_addr, KEYS).await;
    assert_rebuilt(&server, &table);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_damaged_while_running_stops_the_node_with_70_and_the_restart_rebuilds() {
    let directory = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&directory.path().join("node"), &SERVER_ARGS);
    put_all(server.client_addr, KEYS_BEYOND_CACHE).await;
    // Restarted, so that the keys are read from the table, not from memory.
    stop(&mut server);
    server.restart();
    // Reads at the current revision come from memory (the latest-record
    // table is resident); reads at a past revision read the history in
    // LevelDB.
    let past = put_marker(server.client_addr).await - 1;
    let table = damage_largest_table(&server.data_dir);
    let mut refused = None;
    for index in 0..KEYS_BEYOND_CACHE {
        match value_at(server.client_addr, index, past).await {
            Ok(found) => assert!(
                found.as_deref() == Some(&value(index)[..]),
                "key {index}: {}",
                if found.is_none() {
                    "not found"
                } else {
                    "a wrong value"
                }
            ),
            Err(status) => {
                refused = Some((index, status));
                break;
            }
        }
    }
    let (index, status) = refused.expect("no read met the damaged block");
    assert_eq!(
        server.wait_exit(EXIT_WAIT),
        Some(70),
        "after key {index} ({status}): {}",
        server.log()
    );
    let name = table.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        server
            .log()
            .lines()
            .any(|line| line.contains("a LevelDB table is corrupt")
                && line.contains(&name)
                && line.contains("checksum mismatch")),
        "{}",
        server.log()
    );
    // The same table is found at the next start: rebuilt, not a loop.
    server.restart();
    assert_every_key(server.client_addr, KEYS_BEYOND_CACHE).await;
    assert_rebuilt(&server, &table);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_a_damaged_table_is_rebuilt_and_answers_every_key() {
    let _serial = support::serial();
    let mut cluster = Cluster::start(3, &SERVER_ARGS);
    let (leader, _) = cluster.wait_for_leader(20 * TEST_ELECTION_TIMEOUT).await;
    let leader_addr = cluster.node(leader).client_addr;
    put_all(leader_addr, KEYS).await;
    let commit = status_of(leader_addr).await.unwrap().commit_index;
    cluster
        .wait_for_applied(commit, Duration::from_secs(30))
        .await;
    let follower = if leader == 1 { 2 } else { 1 };
    stop(cluster.node(follower));
    let table = damage_largest_table(&cluster.node(follower).data_dir);
    cluster.node(follower).restart();
    cluster.wait_for_leader(20 * TEST_ELECTION_TIMEOUT).await;
    let follower_addr = cluster.node(follower).client_addr;
    assert_every_key(follower_addr, KEYS).await;
    assert_rebuilt(cluster.node(follower), &table);
}
