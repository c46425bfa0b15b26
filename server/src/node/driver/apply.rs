//! The driver's hand-off to the store: committed entries to apply (then
//! the proposals they answer), reads to serve once their index is applied,
//! and a snapshot received from the leader to restore.

use std::sync::atomic::Ordering;
use std::time::Instant;

use kvstore_raft::{Entry, Index, SnapshotMetadata};

use super::proposals;
use super::reads::PendingRead;
use super::Driver;
use crate::errors::KvError;
use crate::fatal::storage_failure;
use crate::metrics::SnapshotKind;
use crate::node::ServedBy;
use crate::snapshot;
use crate::state_machine::{self, QueryAnswer};
use crate::storage::{Store, StoreError};

impl Driver {
    /// Serves `read` once the store has been handed every entry up to
    /// `index` (the store thread runs its work in order).
    pub(super) fn read_when_applied(&mut self, read: PendingRead, index: Index) {
        if index <= self.applied_submitted.index {
            self.submit_read(read, index);
        } else {
            self.reads.wait_for_apply(index, read);
        }
    }

    /// A snapshot from the leader: its file is already durable; record it in
    /// the WAL (dropping the entries it replaces) and restore the state
    /// machine from it before anything after it is applied.
    pub(super) async fn install_received_snapshot(&mut self, snapshot: SnapshotMetadata) {
        self.wal.compact(snapshot).await;
        let path = self.snapshots.path_of(snapshot);
        let started = Instant::now();
        let result = self
            .store
            .with(move |store| {
                let restored = snapshot::restore_into_store(store, &path)
                    .map_err(|error| StoreError::Engine(error.to_string()))?;
                Ok((restored, state_machine::lease::all(store)?))
            })
            .await;
        match result {
            Ok(((state, pairs), leases)) => {
                self.lessor
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .reload_at(leases, Instant::now());
                tracing::info!(
                    index = snapshot.index,
                    term = snapshot.term,
                    pairs,
                    storage_version = state.storage_version,
                    revision = state.revision,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "installed the leader's snapshot"
                );
                self.storage_version.send_replace(state.storage_version);
                self.compaction.wake();
                self.watch_hub.reset_to(state.revision);
            }
            Err(error) => storage_failure("restoring a received snapshot failed", error),
        }
        self.metrics.snapshot(SnapshotKind::Installed);
        self.applied_index.store(snapshot.index, Ordering::Release);
        self.applied_submitted = snapshot;
        self.snapshot_schedule.installed(snapshot);
        self.snapshot_schedule
            .set_snapshot_bytes(self.snapshots.bytes_of(snapshot));
        self.flush_reads_awaiting_apply();
    }

    /// Hands committed `entries` to the store; the proposals they settle are
    /// answered once they are applied.
    pub(super) fn submit_apply(&mut self, entries: Vec<Entry>) {
        let last = entries.last().expect("not empty");
        let last = SnapshotMetadata {
            index: last.index,
            term: last.term,
        };
        self.snapshot_schedule
            .record_applied(entries.iter().map(|entry| entry.data.len() as u64).sum());
        let resolved = self.proposals.resolve(&entries);
        for _ in 0..resolved.committed {
            self.metrics.proposal_committed();
        }
        if resolved.replaced > 0 {
            self.metrics.proposals_failed(resolved.replaced);
        }
        let applied_index = self.applied_index.clone();
        let node_id = self.core.id();
        let storage_version = self.storage_version.clone();
        let compaction = self.compaction.clone();
        let revision = self.revision.clone();
        let watch_hub = self.watch_hub.clone();
        let lessor = self.lessor.clone();
        let finish = move |mut outcomes: Vec<state_machine::Applied>| {
            // Before the clients are answered: a client that saw its write
            // acknowledged and then watches from the next revision misses
            // nothing.
            watch_hub.publish(&mut outcomes);
            if let Some(last) = outcomes.last() {
                revision.fetch_max(last.revision, Ordering::AcqRel);
            }
            for outcome in &outcomes {
                match outcome.outcome.as_deref() {
                    Some(state_machine::Outcome::StorageVersion(version))
                        if storage_version.send_replace(*version) < *version =>
                    {
                        tracing::info!(index = outcome.index, version, "storage version raised");
                    }
                    Some(state_machine::Outcome::Compacted) => compaction.wake(),
                    Some(state_machine::Outcome::LeaseGranted { id, ttl_seconds }) => lessor
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .granted(*id, *ttl_seconds, std::time::Instant::now()),
                    Some(state_machine::Outcome::LeaseRevoked { id, .. }) => lessor
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .revoked(*id),
                    Some(state_machine::Outcome::LeaseCheckpointed(checkpoints)) => lessor
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .checkpointed(checkpoints),
                    _ => {}
                }
            }
            applied_index.fetch_max(last.index, Ordering::AcqRel);
            proposals::answer(node_id, resolved, &outcomes);
        };
        // Into the write-behind's memory right here when the store thread
        // has nothing queued and nothing has to wait: that spares a wake-up
        // of the store thread and one back per batch.
        // A panic here (a broken invariant) stops the process, as one on
        // the store thread does: see the driver's task in server.rs.
        let inline = self
            .store
            .try_run_next(|store| state_machine::apply_if_ready(store, &entries));
        match inline {
            Some(Ok(outcomes)) => finish(outcomes),
            Some(Err(error)) => storage_failure("applying committed entries failed", error),
            None => {
                let result =
                    self.store
                        .submit(move |store| match state_machine::apply(store, &entries) {
                            Ok(outcomes) => finish(outcomes),
                            Err(error) => {
                                storage_failure("applying committed entries failed", error)
                            }
                        });
                if let Err(error) = result {
                    storage_failure("the store thread is gone", error);
                }
            }
        }
        self.applied_submitted = last;
        self.flush_reads_awaiting_apply();
    }

    /// Serves the reads waiting for entries the store has now been handed.
    fn flush_reads_awaiting_apply(&mut self) {
        for (index, read) in self.reads.take_applied(self.applied_submitted.index) {
            self.submit_read(read, index);
        }
    }

    /// Reads `read.key` at `read_index`, which the store has been handed.
    fn submit_read(&self, read: PendingRead, read_index: Index) {
        let (leader_id, term) = read
            .confirmed_by
            .unwrap_or((self.core.id(), self.core.term()));
        let served_by = ServedBy {
            node_id: self.core.id(),
            leader_id,
            term,
            index: read_index,
            forwarded_by: 0,
            revision: 0,
        };
        let answer = move |read: PendingRead, result: Result<QueryAnswer, StoreError>| {
            tracing::debug!(
                request_id = read.request_id,
                read_index,
                "read served at the read index"
            );
            let _ = read.reply.send(
                result
                    .map(|answer| (served_by.with_revision_of(&answer), answer))
                    .map_err(KvError::from),
            );
        };
        // Applied already (not only handed to the store thread), the store
        // idle and the value at hand: read here rather than wake the store
        // thread.
        if self.applied_index.load(Ordering::Acquire) >= read_index {
            let inline = self
                .store
                .try_read(|store| state_machine::query_if_ready(store, &read.query));
            if let Some(result) = inline.flatten() {
                answer(read, result);
                return;
            }
        }
        let serve = move |store: &mut dyn Store| {
            let result = state_machine::query(store, &read.query);
            answer(read, result);
        };
        let result = self.store.submit(serve);
        if let Err(error) = result {
            storage_failure("the store thread is gone", error);
        }
    }
}
