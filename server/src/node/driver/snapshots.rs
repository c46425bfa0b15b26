//! Taking snapshots of the state machine and compacting the log behind them.

use kvstore_raft::{CompactError, Entry, SnapshotMetadata};

use super::Driver;
use crate::metrics::SnapshotKind;
use crate::snapshot;

/// Events the driver sends itself from other threads.
pub(super) enum InternalEvent {
    SnapshotWritten {
        snapshot: SnapshotMetadata,
        /// The driver's `applied_bytes` when the snapshot was started.
        applied_bytes: u64,
        result: Result<u64, String>,
    },
}

impl Driver {
    pub(super) async fn handle_internal(&mut self, event: InternalEvent) {
        match event {
            InternalEvent::SnapshotWritten {
                snapshot,
                applied_bytes,
                result,
            } => {
                self.snapshot_in_progress = false;
                match result {
                    Ok(_) if snapshot.index <= self.snapshot_index => {
                        tracing::info!(
                            index = snapshot.index,
                            newer = self.snapshot_index,
                            "a newer snapshot was installed meanwhile; this one is not used"
                        );
                    }
                    Ok(pairs) => {
                        self.wal.compact(snapshot).await;
                        match self.core.compact(snapshot.index) {
                            Ok(()) | Err(CompactError::AlreadyCompacted { .. }) => {}
                            Err(error) => tracing::error!(%error, "compacting the raft log failed"),
                        }
                        self.snapshot_index = self.snapshot_index.max(snapshot.index);
                        self.applied_bytes_at_snapshot = applied_bytes;
                        self.metrics.snapshot(SnapshotKind::Taken);
                        tracing::info!(
                            index = snapshot.index,
                            term = snapshot.term,
                            pairs,
                            "snapshot taken; log compacted"
                        );
                    }
                    Err(error) => {
                        tracing::error!(%error, index = snapshot.index, "taking a snapshot failed")
                    }
                }
            }
        }
    }

    pub(super) fn maybe_snapshot(&mut self) {
        let since_snapshot = self
            .applied_submitted
            .index
            .saturating_sub(self.snapshot_index);
        let bytes_since_snapshot = self.applied_bytes - self.applied_bytes_at_snapshot;
        if self.snapshot_in_progress
            || (since_snapshot < self.settings.snapshot_entries
                && bytes_since_snapshot < self.settings.snapshot_log_bytes)
        {
            return;
        }
        self.snapshot_in_progress = true;
        let applied_bytes = self.applied_bytes;
        // The new snapshot is the previous one plus the committed entries
        // since: merged from files on a blocking thread, never touching the
        // store, so applies and reads go on meanwhile.
        let target = self.applied_submitted;
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
