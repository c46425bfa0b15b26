//! The physical part of compaction: once a `Compact` is applied, reads
//! below its revision fail at once, and this task drops the history no
//! read needs any more, a batch of writes at a time with a pause between
//! (etcd: 1,000 revisions and 10 ms), so the apply loop never stalls on a
//! large store. Progress is recorded in the store with each batch, so a
//! restart resumes it. LevelDB reclaims the disk in its own compactions.
//!
//! A multi-version snapshot reads history while applies go on; it holds
//! [`Compaction::history`] so that no batch drops a record the snapshot's
//! revision still needs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex, MutexGuard, Notify};

use crate::state_machine;
use crate::storage::actor::StoreHandle;

/// Writes looked at per compaction batch (etcd's
/// `--experimental-compaction-batch-limit` default).
pub const COMPACTION_BATCH_REVISIONS: usize = 1_000;
/// Pause between two batches, so applies and reads go on between them.
pub const COMPACTION_BATCH_PAUSE: Duration = Duration::from_millis(10);

/// The compaction task's shared state.
#[derive(Debug)]
pub struct Compaction {
    /// Held by each batch, and by a snapshot while it reads history.
    history: Mutex<()>,
    /// Rung when a compaction is applied.
    wake: Notify,
    /// The compacted revision whose history is all dropped.
    done: watch::Sender<u64>,
}

impl Compaction {
    /// Nothing compacted yet (the task finds out what the store holds).
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            history: Mutex::new(()),
            wake: Notify::new(),
            done: watch::channel(0).0,
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
            tokio::select! {
                () = self.wake.notified() => {}
                _ = shutdown.wait_for(|stopping| *stopping) => return,
            }
        }
    }
}
