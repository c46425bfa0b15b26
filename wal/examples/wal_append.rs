//! Append latency with fdatasync on: 2,000 batches of 16 entries of 256
//! bytes, each with a hard state, like one Raft `Ready` per batch.
//!
//! ```text
//! cargo run --release -p kvstore-wal --example wal_append [DIRECTORY]
//! ```
//!
//! Without DIRECTORY a temporary directory is used (under $TMPDIR, so it
//! measures that file system).

use std::time::{Duration, Instant};

use kvstore_wal::{Entry, HardState, Wal, WalOptions};

const BATCH_COUNT: u64 = 2_000;
const ENTRIES_PER_BATCH: u64 = 16;
const ENTRY_PAYLOAD_BYTES: usize = 256;

fn main() {
    let temporary = tempfile::tempdir().expect("temporary directory");
    let directory = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| temporary.path().join("wal"));
    let (mut wal, recovered) = Wal::open(&directory, WalOptions::default()).expect("open");
    let mut next_index = wal.last_index() + 1;
    let term = recovered.hard_state.term.max(1);

    let mut latencies: Vec<Duration> = Vec::with_capacity(BATCH_COUNT as usize);
    let started = Instant::now();
    for _ in 0..BATCH_COUNT {
        let batch: Vec<Entry> = (0..ENTRIES_PER_BATCH)
            .map(|offset| Entry {
                index: next_index + offset,
                term,
                payload: vec![(next_index + offset) as u8; ENTRY_PAYLOAD_BYTES],
            })
            .collect();
        let hard_state = HardState {
            term,
            vote: 1,
            commit: next_index - 1,
        };
        let batch_started = Instant::now();
        wal.append(Some(&hard_state), &batch).expect("append");
        latencies.push(batch_started.elapsed());
        next_index += ENTRIES_PER_BATCH;
    }
    let elapsed = started.elapsed();
    latencies.sort();

    let percentile = |fraction: f64| {
        let position = ((latencies.len() as f64 - 1.0) * fraction).round() as usize;
        latencies[position].as_secs_f64() * 1e6
    };
    let average_us = elapsed.as_secs_f64() * 1e6 / BATCH_COUNT as f64;
    let payload_bytes = BATCH_COUNT * ENTRIES_PER_BATCH * ENTRY_PAYLOAD_BYTES as u64;
    println!(
        "{BATCH_COUNT} batches x {ENTRIES_PER_BATCH} entries x {ENTRY_PAYLOAD_BYTES} B, \
         fdatasync per batch, directory {}",
        directory.display()
    );
    println!(
        "batch latency: average {average_us:.0} us, p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        percentile(0.50),
        percentile(0.99),
        percentile(1.0)
    );
    println!(
        "throughput: {:.0} fsyncs/s, {:.0} entries/s, {:.1} MiB/s of payload",
        BATCH_COUNT as f64 / elapsed.as_secs_f64(),
        (BATCH_COUNT * ENTRIES_PER_BATCH) as f64 / elapsed.as_secs_f64(),
        payload_bytes as f64 / elapsed.as_secs_f64() / (1024.0 * 1024.0)
    );
    println!("segments: {}", wal.segment_count());
}
