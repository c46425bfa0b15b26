//! Snapshots of the state machine: when to take one (every so many
//! applied entries or bytes, one at a time), taking it off the driver's
//! thread, and compacting the WAL and the core's log once it is written.

use kvstore_raft::{CompactError, Entry, Index, SnapshotMetadata};

use super::Driver;
use crate::metrics::SnapshotKind;
use crate::node::compactor::Compaction;
use crate::snapshot::{self, SnapshotDirectory};
use crate::state_machine::{self, log_encoding, Command, STORAGE_VERSION_MVCC};
use crate::storage::actor::StoreHandle;

/// Events the driver sends itself from other threads.
pub(super) enum InternalEvent {
    SnapshotWritten {
        snapshot: SnapshotMetadata,
        /// The schedule's `applied_bytes` when the snapshot was started.
        applied_bytes: u64,
        result: Result<u64, String>,
    },
}

/// When the next snapshot is due, and whether one is being written.
pub(super) struct SnapshotSchedule {
    /// The index of the newest snapshot, taken or installed.
    snapshot_index: Index,
    /// A snapshot is being written: no other starts until it finishes.
    in_progress: bool,
    /// Payload bytes of every entry handed to the store since start.
    applied_bytes: u64,
    /// `applied_bytes` when the last snapshot (taken or installed) was
    /// started: the log holds about the difference.
    applied_bytes_at_snapshot: u64,
    /// Applied entries after which a snapshot is due.
    entries_max: u64,
    /// Applied payload bytes after which a snapshot is due, if that comes
    /// before `entries_max`.
    log_bytes_max: u64,
    /// The applied index the running snapshot started at.
    started_at: Index,
    /// After a failed snapshot, none starts before this applied index (a
    /// disk that stays full must not cost a full snapshot per `Ready`).
    retry_at: Index,
    /// Bytes of the newest snapshot file (0: none, or not known).
    snapshot_bytes: u64,
}

/// A snapshot is the whole state (a multi-version one, all of its history),
/// so on a large store the entry threshold alone would write many times
/// more snapshot than log: once the last snapshot is larger than
/// [`SNAPSHOT_RATIO_FLOOR_BYTES`], the entry threshold starts one only when
/// the log since holds at least `1 / SNAPSHOT_SIZE_RATIO` of its size
/// (LogCabin's `snapshotRatio`; etcd's snapshot is its database file and
/// costs nothing to take). The byte threshold, which bounds the log held
/// in memory, still starts one whatever the size.
pub(super) const SNAPSHOT_SIZE_RATIO: u64 = 4;
/// Below this snapshot size the entry threshold alone decides.
pub(super) const SNAPSHOT_RATIO_FLOOR_BYTES: u64 = 64 * 1024 * 1024;

/// After a failed snapshot, the next one waits for this share of the
/// entry threshold to be applied (at least one entry).
const FAILED_SNAPSHOT_RETRY_SHARE: u64 = 10;

/// A snapshot that is due and now in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SnapshotStart {
    /// Entries applied since the last snapshot.
    pub(super) since_snapshot: u64,
    /// Payload bytes applied since the last snapshot.
    pub(super) bytes_since_snapshot: u64,
    /// `applied_bytes` now, handed back to [`SnapshotSchedule::finished`].
    pub(super) applied_bytes: u64,
}

/// What to do with a snapshot that finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Finished {
    /// Written, but a newer snapshot (at `newer`) was installed meanwhile:
    /// do not compact to it.
    Stale { newer: Index },
    /// Written, with `pairs` keys: compact the WAL and the log up to it.
    Compact { pairs: u64 },
    /// Writing it failed: another starts once a tenth of the entry
    /// threshold more is applied.
    Failed { error: String },
}

impl SnapshotSchedule {
    /// A schedule whose last snapshot is at `snapshot_index` (0: none).
    pub(super) fn new(snapshot_index: Index, entries_max: u64, log_bytes_max: u64) -> Self {
        Self {
            snapshot_index,
            in_progress: false,
            applied_bytes: 0,
            applied_bytes_at_snapshot: 0,
            entries_max,
            log_bytes_max,
            started_at: 0,
            retry_at: 0,
            snapshot_bytes: 0,
        }
    }

    /// The newest snapshot file (taken or installed) holds `bytes`.
    pub(super) fn set_snapshot_bytes(&mut self, bytes: u64) {
        self.snapshot_bytes = bytes;
    }

    /// The index of the newest snapshot, taken or installed.
    pub(super) fn snapshot_index(&self) -> Index {
        self.snapshot_index
    }

    /// Entries with `bytes` of payload were handed to the store.
    pub(super) fn record_applied(&mut self, bytes: u64) {
        self.applied_bytes += bytes;
    }

    /// Starts a snapshot if none is in progress and, with the store handed
    /// entries up to `applied`, the bytes since the last one reached their
    /// limit, or the entries did and the log since is large enough beside
    /// the last snapshot ([`SNAPSHOT_SIZE_RATIO`]).
    pub(super) fn start_if_due(&mut self, applied: Index) -> Option<SnapshotStart> {
        let since_snapshot = applied.saturating_sub(self.snapshot_index);
        let bytes_since_snapshot = self.applied_bytes - self.applied_bytes_at_snapshot;
        let worth_its_size = self.snapshot_bytes < SNAPSHOT_RATIO_FLOOR_BYTES
            || bytes_since_snapshot.saturating_mul(SNAPSHOT_SIZE_RATIO) >= self.snapshot_bytes;
        let due = bytes_since_snapshot >= self.log_bytes_max
            || (since_snapshot >= self.entries_max && worth_its_size);
        if self.in_progress || applied < self.retry_at || !due {
            return None;
        }
        self.in_progress = true;
        self.started_at = applied;
        Some(SnapshotStart {
            since_snapshot,
            bytes_since_snapshot,
            applied_bytes: self.applied_bytes,
        })
    }

    /// The snapshot at `snapshot`, started when `applied_bytes_at_start`
    /// bytes were applied, was written (`Ok` with its number of pairs) or
    /// failed. Once compacted, the log holds what was applied since the
    /// snapshot started, not since it finished.
    pub(super) fn finished(
        &mut self,
        snapshot: SnapshotMetadata,
        applied_bytes_at_start: u64,
        result: Result<u64, String>,
    ) -> Finished {
        self.in_progress = false;
        match result {
            Ok(_) if snapshot.index <= self.snapshot_index => Finished::Stale {
                newer: self.snapshot_index,
            },
            Ok(pairs) => {
                self.snapshot_index = self.snapshot_index.max(snapshot.index);
                self.applied_bytes_at_snapshot = applied_bytes_at_start;
                Finished::Compact { pairs }
            }
            Err(error) => {
                self.retry_at =
                    self.started_at + (self.entries_max / FAILED_SNAPSHOT_RETRY_SHARE).max(1);
                Finished::Failed { error }
            }
        }
    }

    /// The leader's snapshot at `snapshot` was installed: the next one is
    /// due counting from it.
    pub(super) fn installed(&mut self, snapshot: SnapshotMetadata) {
        self.snapshot_index = snapshot.index;
        self.applied_bytes_at_snapshot = self.applied_bytes;
    }
}

impl Driver {
    /// Compacts to a snapshot written off the driver's thread.
    pub(super) async fn handle_internal(&mut self, event: InternalEvent) {
        match event {
            InternalEvent::SnapshotWritten {
                snapshot,
                applied_bytes,
                result,
            } => match self
                .snapshot_schedule
                .finished(snapshot, applied_bytes, result)
            {
                Finished::Stale { newer } => {
                    tracing::info!(
                        index = snapshot.index,
                        newer,
                        "a newer snapshot was installed meanwhile; this one is not used"
                    );
                }
                Finished::Compact { pairs } => {
                    self.snapshot_schedule
                        .set_snapshot_bytes(self.snapshots.bytes_of(snapshot));
                    self.wal.compact(snapshot).await;
                    match self.core.compact(snapshot.index) {
                        Ok(()) | Err(CompactError::AlreadyCompacted { .. }) => {}
                        Err(error) => tracing::error!(%error, "compacting the raft log failed"),
                    }
                    self.metrics.snapshot(SnapshotKind::Taken);
                    tracing::info!(
                        index = snapshot.index,
                        term = snapshot.term,
                        pairs,
                        "snapshot taken; log compacted"
                    );
                }
                Finished::Failed { error } => {
                    tracing::error!(%error, index = snapshot.index, "taking a snapshot failed")
                }
            },
        }
    }

    /// Starts writing a snapshot of what the store has been handed, if one
    /// is due.
    pub(super) fn maybe_snapshot(&mut self) {
        let target = self.applied_submitted;
        let Some(SnapshotStart {
            since_snapshot,
            bytes_since_snapshot,
            applied_bytes,
        }) = self.snapshot_schedule.start_if_due(target.index)
        else {
            return;
        };
        // The new snapshot is the previous one plus the committed entries
        // since: merged from files on a blocking thread, never touching the
        // store, so applies and reads go on meanwhile.
        let base = self.core.snapshot_metadata().filter(|base| base.index > 0);
        let entries: Vec<Entry> = self
            .core
            .log_entries()
            .iter()
            .take_while(|entry| entry.index <= target.index)
            .cloned()
            .collect();
        let directory = self.snapshots.clone();
        let events = self.internal_sender.clone();
        tracing::info!(
            index = target.index,
            since_snapshot,
            bytes_since_snapshot,
            "taking a snapshot"
        );
        // A multi-version store cannot be merged from its commands (a txn's
        // effect depends on the state): its snapshot is read from the store.
        let raises_version = entries.iter().any(|entry| {
            matches!(
                log_encoding::decode_entry(entry),
                Some(Command::SetStorageVersion { .. })
            )
        });
        if raises_version || *self.storage_version.borrow() >= STORAGE_VERSION_MVCC {
            let store = self.store.clone();
            let compaction = self.compaction.clone();
            tokio::spawn(async move {
                let result = write_from_store(&store, &compaction, &directory).await;
                let (snapshot, result) = match result {
                    Ok((snapshot, pairs)) => (snapshot, Ok(pairs)),
                    Err(error) => (target, Err(error)),
                };
                let _ = events.send(InternalEvent::SnapshotWritten {
                    snapshot,
                    applied_bytes,
                    result,
                });
            });
            return;
        }
        tokio::task::spawn_blocking(move || {
            let result =
                snapshot::write_merged(&directory, base, &entries, target).and_then(|pairs| {
                    directory.install(target)?;
                    directory.remove_old()?;
                    Ok(pairs)
                });
            let _ = events.send(InternalEvent::SnapshotWritten {
                snapshot: target,
                applied_bytes,
                result: result.map_err(|error| error.to_string()),
            });
        });
    }
}

/// Pairs read from the store per step of a multi-version snapshot.
const SNAPSHOT_CHUNK_PAIRS: usize = 1_024;

/// Writes a multi-version snapshot of the store as it stands once every
/// entry handed to it so far is applied, reading its history a chunk at a
/// time (applies go on between chunks; physical compaction waits).
async fn write_from_store(
    store: &StoreHandle,
    compaction: &Compaction,
    directory: &SnapshotDirectory,
) -> Result<(SnapshotMetadata, u64), String> {
    let failed = |error: &dyn std::fmt::Display| error.to_string();
    let _history = compaction.hold_history().await;
    // The lease table carries no revision: it is read here, with the
    // applied record, at the snapshot's index (the history is filtered by
    // revision as it is read below, while applies go on).
    let (state, leases) = store
        .with(|store| {
            let state = state_machine::applied_state(store)?;
            let leases = state_machine::snapshot_leases(store)?;
            Ok((state, leases))
        })
        .await
        .map_err(|error| failed(&error))?;
    if state.storage_version < STORAGE_VERSION_MVCC {
        return Err(format!(
            "the store is at storage version {} at index {}",
            state.storage_version, state.snapshot.index
        ));
    }
    let mut writer = snapshot::SnapshotWriter::create_multi_version(directory, &state)
        .map_err(|error| failed(&error))?;
    let mut start = None;
    loop {
        let (pairs, next) = store
            .with(move |store| {
                state_machine::snapshot_records(store, start, state.revision, SNAPSHOT_CHUNK_PAIRS)
            })
            .await
            .map_err(|error| failed(&error))?;
        for (key, value) in &pairs {
            writer.push(key, value).map_err(|error| failed(&error))?;
        }
        match next {
            Some(next) => start = Some(next),
            None => break,
        }
    }
    // After the history: `l/` sorts after `h/`.
    for (key, value) in &leases {
        writer.push(key, value).map_err(|error| failed(&error))?;
    }
    let directory = directory.clone();
    let snapshot = state.snapshot;
    tokio::task::spawn_blocking(move || {
        let pairs = writer.finish()?;
        directory.install(snapshot)?;
        directory.remove_old()?;
        Ok::<_, snapshot::SnapshotError>(pairs)
    })
    .await
    .map_err(|error| failed(&error))?
    .map(|pairs| (snapshot, pairs))
    .map_err(|error| failed(&error))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRIES_MAX: u64 = 100;
    const LOG_BYTES_MAX: u64 = 1_000;

    fn schedule() -> SnapshotSchedule {
        SnapshotSchedule::new(0, ENTRIES_MAX, LOG_BYTES_MAX)
    }

    fn at(index: Index) -> SnapshotMetadata {
        SnapshotMetadata { index, term: 2 }
    }

    #[test]
    fn a_snapshot_starts_at_the_entry_threshold() {
        let mut schedule = schedule();
        schedule.record_applied(10);
        assert_eq!(schedule.start_if_due(ENTRIES_MAX - 1), None);
        assert_eq!(
            schedule.start_if_due(ENTRIES_MAX),
            Some(SnapshotStart {
                since_snapshot: ENTRIES_MAX,
                bytes_since_snapshot: 10,
                applied_bytes: 10,
            })
        );
    }

    #[test]
    fn a_snapshot_starts_at_the_byte_threshold_if_that_comes_first() {
        let mut schedule = schedule();
        schedule.record_applied(LOG_BYTES_MAX - 1);
        assert_eq!(schedule.start_if_due(3), None);
        schedule.record_applied(1);
        assert_eq!(
            schedule.start_if_due(4),
            Some(SnapshotStart {
                since_snapshot: 4,
                bytes_since_snapshot: LOG_BYTES_MAX,
                applied_bytes: LOG_BYTES_MAX,
            })
        );
    }

    #[test]
    fn past_the_floor_the_entry_threshold_waits_for_a_quarter_of_the_snapshot_in_log() {
        let log_bytes_max = SNAPSHOT_RATIO_FLOOR_BYTES;
        let mut schedule = SnapshotSchedule::new(0, ENTRIES_MAX, log_bytes_max);
        let snapshot_bytes = 2 * SNAPSHOT_RATIO_FLOOR_BYTES;
        schedule.set_snapshot_bytes(snapshot_bytes);
        let quarter = snapshot_bytes / SNAPSHOT_SIZE_RATIO;
        schedule.record_applied(quarter - 1);
        assert_eq!(schedule.start_if_due(10 * ENTRIES_MAX), None);
        schedule.record_applied(1);
        assert!(schedule.start_if_due(10 * ENTRIES_MAX).is_some());
    }

    #[test]
    fn the_byte_threshold_starts_one_whatever_the_snapshot_size() {
        let mut schedule = schedule();
        schedule.set_snapshot_bytes(100 * SNAPSHOT_RATIO_FLOOR_BYTES);
        schedule.record_applied(LOG_BYTES_MAX - 1);
        assert_eq!(schedule.start_if_due(ENTRIES_MAX), None);
        schedule.record_applied(1);
        assert!(schedule.start_if_due(ENTRIES_MAX).is_some());
    }

    #[test]
    fn below_the_floor_the_snapshot_size_does_not_matter() {
        let mut schedule = schedule();
        schedule.set_snapshot_bytes(SNAPSHOT_RATIO_FLOOR_BYTES - 1);
        assert!(schedule.start_if_due(ENTRIES_MAX).is_some());
    }

    #[test]
    fn entries_count_from_the_last_snapshot() {
        let mut schedule = SnapshotSchedule::new(50, ENTRIES_MAX, LOG_BYTES_MAX);
        assert_eq!(schedule.start_if_due(50 + ENTRIES_MAX - 1), None);
        assert!(schedule.start_if_due(50 + ENTRIES_MAX).is_some());
    }

    #[test]
    fn none_starts_while_one_is_in_progress() {
        let mut schedule = schedule();
        assert!(schedule.start_if_due(ENTRIES_MAX).is_some());
        schedule.record_applied(LOG_BYTES_MAX);
        assert_eq!(schedule.start_if_due(ENTRIES_MAX * 2), None);
    }

    #[test]
    fn a_stale_finish_does_not_compact_and_clears_in_progress() {
        let mut schedule = schedule();
        let start = schedule.start_if_due(ENTRIES_MAX).unwrap();
        // The leader's snapshot, newer, is installed meanwhile.
        schedule.installed(at(ENTRIES_MAX + 5));
        assert_eq!(
            schedule.finished(at(ENTRIES_MAX), start.applied_bytes, Ok(3)),
            Finished::Stale {
                newer: ENTRIES_MAX + 5
            }
        );
        assert_eq!(schedule.snapshot_index(), ENTRIES_MAX + 5);
        assert!(
            schedule.start_if_due(2 * ENTRIES_MAX + 5).is_some(),
            "no longer in progress"
        );
    }

    #[test]
    fn a_snapshot_at_the_index_installed_meanwhile_is_stale_too() {
        let mut schedule = schedule();
        let start = schedule.start_if_due(ENTRIES_MAX).unwrap();
        schedule.installed(at(ENTRIES_MAX));
        assert_eq!(
            schedule.finished(at(ENTRIES_MAX), start.applied_bytes, Ok(3)),
            Finished::Stale { newer: ENTRIES_MAX }
        );
    }

    #[test]
    fn a_compact_finish_records_the_applied_bytes_from_when_the_snapshot_started() {
        let mut schedule = schedule();
        schedule.record_applied(200);
        let start = schedule.start_if_due(ENTRIES_MAX).unwrap();
        assert_eq!(start.applied_bytes, 200);
        // Applied while the snapshot was written: still only in the log.
        schedule.record_applied(LOG_BYTES_MAX - 1);
        assert_eq!(
            schedule.finished(at(ENTRIES_MAX), start.applied_bytes, Ok(3)),
            Finished::Compact { pairs: 3 }
        );
        assert_eq!(schedule.snapshot_index(), ENTRIES_MAX);
        // Counted from 200, LOG_BYTES_MAX - 1 bytes are in the log.
        assert_eq!(schedule.start_if_due(ENTRIES_MAX + 1), None);
        schedule.record_applied(1);
        assert_eq!(
            schedule.start_if_due(ENTRIES_MAX + 1),
            Some(SnapshotStart {
                since_snapshot: 1,
                bytes_since_snapshot: LOG_BYTES_MAX,
                applied_bytes: 200 + LOG_BYTES_MAX,
            })
        );
    }

    #[test]
    fn a_failed_snapshot_is_retried_after_a_tenth_of_the_threshold() {
        let mut schedule = schedule();
        let start = schedule.start_if_due(ENTRIES_MAX).unwrap();
        assert_eq!(
            schedule.finished(
                at(ENTRIES_MAX),
                start.applied_bytes,
                Err("disk full".into())
            ),
            Finished::Failed {
                error: "disk full".into()
            }
        );
        assert_eq!(schedule.snapshot_index(), 0, "nothing was compacted");
        let retry_at = ENTRIES_MAX + ENTRIES_MAX / FAILED_SNAPSHOT_RETRY_SHARE;
        assert_eq!(schedule.start_if_due(ENTRIES_MAX), None);
        assert_eq!(schedule.start_if_due(retry_at - 1), None);
        let again = schedule.start_if_due(retry_at).expect("retried");
        assert_eq!(again.applied_bytes, start.applied_bytes);
    }

    #[test]
    fn installed_resets_the_counters() {
        let mut schedule = schedule();
        schedule.record_applied(LOG_BYTES_MAX - 1);
        schedule.installed(at(500));
        assert_eq!(schedule.snapshot_index(), 500);
        schedule.record_applied(LOG_BYTES_MAX - 1);
        assert_eq!(
            schedule.start_if_due(500 + ENTRIES_MAX - 1),
            None,
            "neither entries nor bytes from before the snapshot count"
        );
        schedule.record_applied(1);
        assert_eq!(
            schedule.start_if_due(500 + ENTRIES_MAX - 1),
            Some(SnapshotStart {
                since_snapshot: ENTRIES_MAX - 1,
                bytes_since_snapshot: LOG_BYTES_MAX,
                applied_bytes: 2 * LOG_BYTES_MAX - 1,
            })
        );
    }
}
