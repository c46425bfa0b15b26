//! Criterion micro-benchmarks of the WAL append path: one [`Wal::append`]
//! per Raft `Ready` (a hard state plus a batch of 1, 16 or 64 entries of
//! 256-byte payloads), on real segment files in a temporary directory.
//!
//! - `wal_append_fsync/N`: the durable path, `fdatasync` per append (what the
//!   server runs). Measures the disk under `$TMPDIR` more than our code: on
//!   a shared VM the figure moves from tens of microseconds to milliseconds
//!   with other I/O (a parallel build's writeback), so compare runs made on
//!   a quiet machine.
//! - `wal_append_fsync_unallocated/N`: the same with
//!   `WalOptions::preallocate_bytes = 0`: each record is appended at the
//!   end of the file, so each fdatasync also writes the grown size (the
//!   inode). The difference to `wal_append_fsync` is what preallocation
//!   saves.
//! - `wal_append_no_sync/N`: the same append with `WalOptions::sync = false`:
//!   validation, record encoding, CRC-32C and the `write` into the page
//!   cache, without the fsync. The encoder itself is private; this is the
//!   closest the public API gets to it.
//! - `crc32c/N`: CRC-32C over the same payload bytes, the floor of the
//!   encoding cost.
//!
//! Throughput is reported in entries and payload bytes per second.
//!
//! ```text
//! cargo bench -p kvstore-wal --bench append                              # all
//! cargo bench -p kvstore-wal --bench append -- wal_append_no_sync        # a filter
//! cargo bench -p kvstore-wal --bench append -- --save-baseline before    # then
//! cargo bench -p kvstore-wal --bench append -- --baseline before         # compare
//! cargo bench -p kvstore-wal --bench append -- --test                    # smoke run
//! ```
//!
//! `make bench-micro` runs it with the Raft and apply benchmarks.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use kvstore_wal::{Entry, HardState, SnapshotMarker, Wal, WalOptions, PREALLOCATE_BYTES_DEFAULT};

/// Payload bytes of every entry (the `make bench` default value size).
const ENTRY_PAYLOAD_BYTES: usize = 256;
/// Entries per append, one append per Raft `Ready`.
const BATCH_ENTRY_COUNTS: [usize; 3] = [1, 16, 64];
/// Term of every entry and hard state.
const TERM: u64 = 1;
/// Once the log holds this many entries it is compacted (untimed), so the
/// WAL's in-memory index and its directory stay bounded however many
/// iterations criterion runs.
const LOG_ENTRIES_MAX: u64 = 64 * 1024;

/// A WAL in its own temporary directory and a batch reused for every append.
struct Fixture {
    wal: Wal,
    batch: Vec<Entry>,
    /// Kept alive for the WAL; deleted on drop.
    _directory: tempfile::TempDir,
}

impl Fixture {
    fn new(sync: bool, preallocate_bytes: u64, entry_count: usize) -> Self {
        let directory = tempfile::tempdir().expect("temporary directory");
        let options = WalOptions {
            sync,
            preallocate_bytes,
            ..WalOptions::default()
        };
        let (wal, _) = Wal::open(&directory.path().join("wal"), options).expect("open");
        let batch = (0..entry_count)
            .map(|offset| Entry {
                index: 0,
                term: TERM,
                payload: vec![offset as u8; ENTRY_PAYLOAD_BYTES],
            })
            .collect();
        Fixture {
            wal,
            batch,
            _directory: directory,
        }
    }

    /// Appends the next batch with a hard state, like one Raft `Ready`, and
    /// returns the time `append` took. Renumbering the batch and compacting
    /// are not timed.
    fn append_next(&mut self) -> Duration {
        let first_index = self.wal.last_index() + 1;
        for (offset, entry) in self.batch.iter_mut().enumerate() {
            entry.index = first_index + offset as u64;
        }
        let hard_state = HardState {
            term: TERM,
            vote: 1,
            commit: first_index - 1,
        };
        let started = Instant::now();
        self.wal
            .append(Some(&hard_state), &self.batch)
            .expect("append");
        let elapsed = started.elapsed();
        let last_index = self.wal.last_index();
        if last_index + 1 - self.wal.first_index() >= LOG_ENTRIES_MAX {
            self.wal
                .compact(SnapshotMarker {
                    index: last_index,
                    term: TERM,
                })
                .expect("compact");
        }
        elapsed
    }
}

fn throughput(entry_count: usize) -> Throughput {
    Throughput::ElementsAndBytes {
        elements: entry_count as u64,
        bytes: (entry_count * ENTRY_PAYLOAD_BYTES) as u64,
    }
}

fn bench_append(criterion: &mut Criterion, group_name: &str, sync: bool, preallocate_bytes: u64) {
    let mut group = criterion.benchmark_group(group_name);
    if sync {
        // Milliseconds per iteration: one iteration more per sample rather
        // than 1, 2, ..., n (criterion's advice for slow benchmarks).
        group.sampling_mode(SamplingMode::Flat);
    }
    for entry_count in BATCH_ENTRY_COUNTS {
        group.throughput(throughput(entry_count));
        // One WAL for all samples (criterion calls the closure per sample).
        let mut fixture = Fixture::new(sync, preallocate_bytes, entry_count);
        group.bench_function(BenchmarkId::from_parameter(entry_count), |bencher| {
            bencher.iter_custom(|iterations| (0..iterations).map(|_| fixture.append_next()).sum());
        });
    }
    group.finish();
}

fn append_fsync(criterion: &mut Criterion) {
    bench_append(
        criterion,
        "wal_append_fsync",
        true,
        PREALLOCATE_BYTES_DEFAULT,
    );
}

fn append_fsync_unallocated(criterion: &mut Criterion) {
    bench_append(criterion, "wal_append_fsync_unallocated", true, 0);
}

fn append_no_sync(criterion: &mut Criterion) {
    bench_append(
        criterion,
        "wal_append_no_sync",
        false,
        PREALLOCATE_BYTES_DEFAULT,
    );
}

fn checksum(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("crc32c");
    for entry_count in BATCH_ENTRY_COUNTS {
        let bytes = vec![0x5a_u8; entry_count * ENTRY_PAYLOAD_BYTES];
        group.throughput(throughput(entry_count));
        group.bench_function(BenchmarkId::from_parameter(entry_count), |bencher| {
            bencher.iter(|| crc32c::crc32c(black_box(&bytes)))
        });
    }
    group.finish();
}

criterion_group! {
    name = fsync_benches;
    config = kvstore_devkit::criterion::fsync();
    targets = append_fsync, append_fsync_unallocated
}
criterion_group! {
    name = cpu_benches;
    config = kvstore_devkit::criterion::cpu();
    targets = append_no_sync, checksum
}
criterion_main!(fsync_benches, cpu_benches);
