//! A data directory written by an earlier release is served unchanged: its
//! WAL, snapshots and LevelDB store, and its log replayed from scratch when
//! the store is gone. The fixture `fixtures/data-dir-4232c83` was written by
//! the server at commit 4232c83 with `scripts/make-log-fixture.sh`
//! (`fixtures/README.md`); [`expected_state`] is that script's recipe.

// The tests hold the serial lock across awaits on purpose: each has its own
// runtime, and the lock keeps two servers from running at once.
#![allow(clippy::await_holding_lock)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvstore_proto::kv::v1::{Consistency, GetRequest, PutRequest};
use support::ServerProcess;

/// Keys the recipe writes, `key-000` to `key-119`.
const RECIPE_KEYS: usize = 120;
/// Every `DELETE_EVERY`-th key is deleted at the end.
const DELETE_EVERY: usize = 7;
/// Longest wait for the restarted node to lead and serve.
const SERVE_WAIT: Duration = Duration::from_secs(20);
/// Longest wait for a graceful stop.
const EXIT_WAIT: Duration = Duration::from_secs(20);

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data-dir-4232c83")
}

/// What the fixture's recipe leaves: round 2's values, minus the deleted
/// keys, plus a binary and an empty value.
fn expected_state() -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut state = BTreeMap::new();
    for index in 0..RECIPE_KEYS {
        if index % DELETE_EVERY != 0 {
            state.insert(
                format!("key-{index:03}").into_bytes(),
                format!("v{index}-r2").into_bytes(),
            );
        }
    }
    state.insert(b"binary".to_vec(), vec![0x00, 0xff, 0x01, b'\n']);
    state.insert(b"empty".to_vec(), Vec::new());
    state
}

/// Every key the recipe ever wrote, deleted ones and the start-up probe
/// included.
fn keys_written() -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = (0..RECIPE_KEYS)
        .map(|index| format!("key-{index:03}").into_bytes())
        .collect();
    keys.extend([
        b"binary".to_vec(),
        b"empty".to_vec(),
        b"probe-leader".to_vec(),
    ]);
    keys
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Starts the current server on a copy of the fixture.
fn start_on_copy(scratch: &Path, adjust: impl FnOnce(&Path)) -> ServerProcess {
    let data_dir = scratch.join("node-1");
    copy_dir(&fixture(), &data_dir);
    adjust(&data_dir);
    ServerProcess::start(&data_dir, &["--id", "1", "--cluster-id", "compat"])
}

/// Every key the recipe wrote, read linearizably, as a map of those found.
async fn read_state(address: SocketAddr) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let deadline = Instant::now() + SERVE_WAIT;
    let mut client = loop {
        if let Some(client) = support::client_for(address, Duration::from_secs(5)).await {
            break client;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not serve in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut state = BTreeMap::new();
    for key in keys_written() {
        let response = loop {
            let request = GetRequest {
                key: key.clone(),
                consistency: Consistency::Linearizable as i32,
            };
            match client.get(request).await {
                Ok(response) => break response.into_inner(),
                // No leader yet after the start.
                Err(status) if Instant::now() < deadline => {
                    eprintln!(
                        "get {}: {status:?}; retrying",
                        String::from_utf8_lossy(&key)
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(status) => panic!("get failed: {status:?}"),
            }
        };
        if response.found {
            state.insert(key, response.value);
        }
    }
    state
}

async fn put(address: SocketAddr, key: &[u8], value: &[u8]) {
    let mut client = support::client_for(address, Duration::from_secs(5))
        .await
        .expect("connecting");
    client
        .put(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..PutRequest::default()
        })
        .await
        .expect("put");
}

/// The node serves the recipe's state, takes a write, and serves both after
/// a restart.
async fn serves_the_recipe_then_a_write(server: &mut ServerProcess) {
    assert_eq!(read_state(server.client_addr).await, expected_state());
    put(server.client_addr, b"key-000", b"after the upgrade").await;
    server.signal("TERM");
    assert_eq!(server.wait_exit(EXIT_WAIT), Some(0), "{}", server.log());
    server.restart();
    let mut expected = expected_state();
    expected.insert(b"key-000".to_vec(), b"after the upgrade".to_vec());
    assert_eq!(read_state(server.client_addr).await, expected);
}

#[tokio::test]
async fn a_data_directory_of_4232c83_is_served_unchanged() {
    let _serial = support::serial();
    let scratch = tempfile::tempdir().unwrap();
    let mut server = start_on_copy(scratch.path(), |_| {});
    serves_the_recipe_then_a_write(&mut server).await;
}

#[tokio::test]
async fn it_is_rebuilt_from_its_snapshot_and_log_when_leveldb_is_gone() {
    let _serial = support::serial();
    let scratch = tempfile::tempdir().unwrap();
    let mut server = start_on_copy(scratch.path(), |data_dir| {
        std::fs::remove_dir_all(data_dir.join("kv")).unwrap();
    });
    serves_the_recipe_then_a_write(&mut server).await;
}

/// Below the server: the fixture's newest snapshot plus the entries its WAL
/// holds after it, decoded by this release's `log_encoding` and applied by
/// its state machine, give the recipe's state, and every normal entry
/// decodes to a command.
#[test]
fn the_wal_and_snapshot_of_4232c83_decode_to_the_recipe() {
    use kvstore_raft::EntryKind;
    use kvstore_server::node::persist::entry_from_wal;
    use kvstore_server::snapshot::restore_into_store;
    use kvstore_server::state_machine::{self, log_encoding};
    use kvstore_server::storage::memory::MemoryStore;

    let scratch = tempfile::tempdir().unwrap();
    let data_dir = scratch.path().join("node-1");
    copy_dir(&fixture(), &data_dir);
    let (_wal, recovered) =
        kvstore_wal::Wal::open(&data_dir.join("wal"), kvstore_wal::WalOptions::default())
            .expect("the fixture's WAL opens");
    let newest_snapshot = std::fs::read_dir(data_dir.join("snapshots"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "snap")
        })
        .max()
        .expect("the fixture holds a snapshot");
    let mut store = MemoryStore::new();
    let (restored, _) = restore_into_store(&mut store, &newest_snapshot).unwrap();
    let snapshot = restored.snapshot;
    let marker = recovered.snapshot.expect("the WAL records its compaction");
    assert_eq!((marker.index, marker.term), (snapshot.index, snapshot.term));
    let entries: Vec<_> = recovered
        .entries
        .into_iter()
        .map(|entry| entry_from_wal(entry).unwrap())
        .collect();
    assert!(
        !entries.is_empty(),
        "the WAL holds entries after the snapshot"
    );
    for entry in &entries {
        if entry.kind == EntryKind::Normal {
            assert!(
                log_encoding::decode_entry(entry).is_some(),
                "entry {} does not decode",
                entry.index
            );
        }
    }
    state_machine::apply(&mut store, &entries).unwrap();
    let state: BTreeMap<Vec<u8>, Vec<u8>> = state_machine::scan_data_from(&mut store, b"", 10_000)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(state, expected_state());
}
