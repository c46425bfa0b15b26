//! The physical part of compaction: once a `Compact` is applied, reads
//! below its revision fail at once, and this task drops the history no
//! read needs any more, a batch of writes at a time with a pause between
//! (etcd: 1,000 revisions and 10 ms), so the apply loop never stalls on a
//! large store. Progress is recorded in the store with each batch, so a
//! restart resumes it.
//!
//! Once a compaction's history is all dropped, the deleted records still
//! fill LevelDB's files until its compactions carry the deletes down to
//! the last level, which may never happen in a store that stops growing.
//! So this task then has LevelDB rewrite the compacted key ranges itself,
//! a piece of [`RECLAIM_PIECE_KEYS`] live keys (at most
//! [`RECLAIM_PIECE_BYTES`]) at a time with a pause
//! between, on the engine directly ([`Reclaim`]): the flusher waits for a
//! piece, applies and reads of the current revision do not.
//!
//! A multi-version snapshot reads history while applies go on; it holds
//! [`Compaction::history`] so that no batch drops a record the snapshot's
//! revision still needs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex, MutexGuard, Notify};

use crate::state_machine;
use crate::storage::actor::StoreHandle;
use crate::storage::{KeyRange, Reclaim, StoreError};

/// Writes looked at per compaction batch (etcd's
/// `--experimental-compaction-batch-limit` default).
pub const COMPACTION_BATCH_REVISIONS: usize = 1_000;
/// Pause between two batches, so applies and reads go on between them.
pub const COMPACTION_BATCH_PAUSE: Duration = Duration::from_millis(10);

/// Live keys per piece of a disk reclaim: about 1 MiB of 256-byte values,
/// so that one piece rewrites a few LevelDB files per level (the flusher
/// waits meanwhile).
pub const RECLAIM_PIECE_KEYS: usize = 4_096;
/// Bytes of live pairs per piece at most, for large values.
pub const RECLAIM_PIECE_BYTES: usize = 4 * 1024 * 1024;

/// The compaction task's shared state.
pub struct Compaction {
    /// Held by each batch, and by a snapshot while it reads history.
    history: Mutex<()>,
    /// Rung when a compaction is applied.
    wake: Notify,
    /// The compacted revision whose history is all dropped.
    done: watch::Sender<u64>,
    /// Frees the disk of dropped history.
    reclaimer: Arc<dyn Reclaim>,
}

impl std::fmt::Debug for Compaction {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Compaction")
            .field("done", &*self.done.borrow())
            .finish_non_exhaustive()
    }
}

impl Compaction {
    /// Nothing compacted yet (the task finds out what the store holds);
    /// once a compaction's history is dropped, `reclaimer` frees its disk.
    pub fn new(reclaimer: Arc<dyn Reclaim>) -> Arc<Self> {
        Arc::new(Self {
            history: Mutex::new(()),
            wake: Notify::new(),
            done: watch::channel(0).0,
            reclaimer,
        })
    }

    /// A compaction was applied: start dropping its history.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Keeps compaction from dropping history while the guard lives.
    pub async fn hold_history(&self) -> MutexGuard<'_, ()> {
        self.history.lock().await
    }

    /// The revision whose history is all dropped, as it changes.
    pub fn done(&self) -> watch::Receiver<u64> {
        self.done.subscribe()
    }

    /// Drops history while there is some to drop, then waits to be woken,
    /// until `shutdown`.
    pub async fn run(self: Arc<Self>, store: StoreHandle, mut shutdown: watch::Receiver<bool>) {
        loop {
            let mut dropped = 0;
            loop {
                let step = {
                    let _history = self.history.lock().await;
                    store
                        .with(|store| {
                            state_machine::compaction_step(store, COMPACTION_BATCH_REVISIONS)
                        })
                        .await
                };
                match step {
                    Ok(step) => {
                        dropped += step.dropped;
                        self.done.send_if_modified(|done| {
                            let raised = step.done_through > *done;
                            *done = (*done).max(step.done_through);
                            raised
                        });
                        if step.finished {
                            break;
                        }
                    }
                    Err(error) => {
                        // The next applied compaction (or a restart) tries again.
                        tracing::error!(%error, "a compaction batch failed");
                        break;
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(COMPACTION_BATCH_PAUSE) => {}
                    _ = shutdown.wait_for(|stopping| *stopping) => return,
                }
            }
            let done = *self.done.borrow();
            if dropped > 0 && !reclaim(&self.reclaimer, done, &mut shutdown).await {
                return;
            }
            tokio::select! {
                () = self.wake.notified() => {}
                _ = shutdown.wait_for(|stopping| *stopping) => return,
            }
        }
    }
}

/// Frees the disk of the history a compaction through `compacted` dropped:
/// has the engine rewrite each compacted range a piece at a time. Returns
/// false on `shutdown` (or once the store is closed). A failure is logged;
/// the next compaction tries again.
async fn reclaim(
    reclaimer: &Arc<dyn Reclaim>,
    compacted: u64,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let started = std::time::Instant::now();
    let mut pieces = 0u64;
    // The store closing (shutdown) ends the task quietly.
    let failed = |error: StoreError| {
        if matches!(error, StoreError::Closed) {
            return false;
        }
        tracing::error!(%error, "freeing the disk of compacted history failed");
        true
    };
    // Compaction's last deletes may still be in the write-behind overlay.
    if let Err(error) = on_engine(reclaimer, |reclaimer| reclaimer.settle()).await {
        return failed(error);
    }
    for range in state_machine::compacted_ranges(compacted) {
        let mut rest = Some(range.start.clone());
        while let Some(start) = rest {
            let piece = KeyRange {
                start,
                end: range.end.clone(),
            };
            rest = match on_engine(reclaimer, move |reclaimer| {
                reclaimer.reclaim_piece(&piece, RECLAIM_PIECE_KEYS, RECLAIM_PIECE_BYTES)
            })
            .await
            {
                Ok(rest) => rest,
                Err(error) => return failed(error),
            };
            pieces += 1;
            tokio::select! {
                () = tokio::time::sleep(COMPACTION_BATCH_PAUSE) => {}
                _ = shutdown.wait_for(|stopping| *stopping) => return false,
            }
        }
    }
    tracing::info!(
        compacted,
        pieces,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "freed the disk of compacted history"
    );
    true
}

/// Runs `work` on the engine on a blocking thread.
async fn on_engine<T: Send + 'static>(
    reclaimer: &Arc<dyn Reclaim>,
    work: impl FnOnce(&dyn Reclaim) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let reclaimer = reclaimer.clone();
    tokio::task::spawn_blocking(move || work(reclaimer.as_ref()))
        .await
        .unwrap_or_else(|error| Err(StoreError::Engine(error.to_string())))
}
