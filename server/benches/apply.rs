//! Criterion micro-benchmarks of the apply path: `state_machine::apply` of a
//! batch of committed Put entries (1, 64 or 512 per call, as a `Ready`'s
//! `committed_entries`), each a `Command` encoded by `log_encoding::encode`:
//! decode, one write batch with the new applied index, one store write.
//!
//! - `apply_leveldb/N`: the real `LevelDbStore` in a temporary directory,
//!   with `Durability::Flush` as the server runs it (the WAL carries
//!   durability), so LevelDB's inline memtable compactions are included.
//! - `apply_overlay/N`: what the server runs: the write-behind
//!   `OverlayStore` in front of that `LevelDbStore`. The time is what an
//!   answer waits for; the flusher thread's LevelDB work runs beside it
//!   (on this 2-core machine it competes for the other core).
//! - `apply_memory/N`: the in-memory `MemoryStore`, for comparison: the cost
//!   of decoding and batching without a storage engine.
//!
//! Keys cycle through a keyspace of 10,000 (16-byte keys, 256-byte values),
//! so the store stays bounded and most puts overwrite. Throughput is reported
//! in entries and entry bytes per second.
//!
//! ```text
//! cargo bench -p kvstore-server --bench apply                            # all
//! cargo bench -p kvstore-server --bench apply -- apply_leveldb           # a filter
//! cargo bench -p kvstore-server --bench apply -- --save-baseline before  # then
//! cargo bench -p kvstore-server --bench apply -- --baseline before       # compare
//! cargo bench -p kvstore-server --bench apply -- --test                  # smoke run
//! ```
//!
//! `make bench-micro` runs it with the WAL and Raft benchmarks.

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kvstore_raft::{Entry, EntryKind};
use kvstore_server::state_machine::{self, log_encoding, Command};
use kvstore_server::storage::leveldb::{Durability, LevelDbStore};
use kvstore_server::storage::memory::MemoryStore;
use kvstore_server::storage::overlay::{OverlayLimits, OverlayStore};
use kvstore_server::storage::Store;

/// Entries per `apply` call.
const BATCH_ENTRY_COUNTS: [usize; 3] = [1, 64, 512];
/// Distinct keys written, round robin (the `make bench` default keyspace).
const KEYSPACE: usize = 10_000;
/// Bytes of every value (the `make bench` default value size).
const VALUE_BYTES: usize = 256;
const TERM: u64 = 1;

/// Encoded Put commands, one per key of the keyspace.
fn commands() -> Vec<Bytes> {
    (0..KEYSPACE)
        .map(|key| {
            let command = Command::Put {
                key: format!("key-{key:012}").into_bytes(),
                value: vec![(key % 251) as u8; VALUE_BYTES],
            };
            log_encoding::encode(command, "").into()
        })
        .collect()
}

/// A store and the next entries to apply to it.
struct Fixture<S: Store> {
    store: S,
    commands: Vec<Bytes>,
    batch: Vec<Entry>,
    next_index: u64,
}

impl<S: Store> Fixture<S> {
    fn new(store: S, entry_count: usize) -> Self {
        let batch = (0..entry_count)
            .map(|_| Entry {
                index: 0,
                term: TERM,
                kind: EntryKind::Normal,
                data: Bytes::new(),
            })
            .collect();
        Fixture {
            store,
            commands: commands(),
            batch,
            next_index: 1,
        }
    }

    /// Bytes of entry data in one batch.
    fn batch_bytes(&self) -> u64 {
        let command_bytes = self.commands[0].len() * self.batch.len();
        command_bytes as u64
    }

    /// Applies the next batch (the next indexes and keys); returns the time
    /// `apply` took (building the batch excluded).
    fn apply_next(&mut self) -> Duration {
        for entry in &mut self.batch {
            entry.index = self.next_index;
            let command = &self.commands[self.next_index as usize % KEYSPACE];
            entry.data = command.clone();
            self.next_index += 1;
        }
        let started = Instant::now();
        let applied = state_machine::apply(&mut self.store, &self.batch).expect("apply");
        let elapsed = started.elapsed();
        assert_eq!(applied.len(), self.batch.len());
        elapsed
    }
}

fn bench_store<S: Store>(
    criterion: &mut Criterion,
    group_name: &str,
    mut open: impl FnMut() -> (S, Option<tempfile::TempDir>),
) {
    let mut group = criterion.benchmark_group(group_name);
    for entry_count in BATCH_ENTRY_COUNTS {
        let (store, directory) = open();
        let mut fixture = Fixture::new(store, entry_count);
        group.throughput(Throughput::ElementsAndBytes {
            elements: entry_count as u64,
            bytes: fixture.batch_bytes(),
        });
        group.bench_function(BenchmarkId::from_parameter(entry_count), |bencher| {
            bencher.iter_custom(|iterations| (0..iterations).map(|_| fixture.apply_next()).sum());
        });
        // The store first, then its directory.
        drop(fixture);
        drop(directory);
    }
    group.finish();
}

fn apply_leveldb(criterion: &mut Criterion) {
    bench_store(criterion, "apply_leveldb", || {
        let directory = tempfile::tempdir().expect("temporary directory");
        let store = LevelDbStore::open(&directory.path().join("state"), Durability::Flush)
            .expect("open LevelDB");
        (store, Some(directory))
    });
}

fn apply_overlay(criterion: &mut Criterion) {
    bench_store(criterion, "apply_overlay", || {
        let directory = tempfile::tempdir().expect("temporary directory");
        let engine = LevelDbStore::open(&directory.path().join("state"), Durability::Flush)
            .expect("open LevelDB");
        let store = OverlayStore::new(engine, OverlayLimits::default());
        (store, Some(directory))
    });
}

fn apply_memory(criterion: &mut Criterion) {
    bench_store(criterion, "apply_memory", || (MemoryStore::new(), None));
}

criterion_group! {
    name = benches;
    config = kvstore_devkit::criterion::store();
    targets = apply_leveldb, apply_overlay, apply_memory
}
criterion_main!(benches);
