//! The tasks that drive the watch hub: catch-up of unsynced watchers from
//! the history, and progress notifications.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::WatchHub;
use crate::state_machine::mvcc::store as mvcc_store;
use crate::storage::actor::StoreHandle;
use crate::storage::StoreError;

/// Wait before a catch-up step is tried again when no watcher could take
/// anything (every buffer full), as etcd's 100 ms.
pub const CATCHUP_RETRY: Duration = Duration::from_millis(100);
/// Default of `--watch-progress-notify-interval-ms` (etcd's 10 minutes).
pub const PROGRESS_NOTIFY_INTERVAL_MS_DEFAULT: u64 = 600_000;
/// Shortest progress interval accepted (etcd clamps to 100 ms too).
pub const PROGRESS_NOTIFY_INTERVAL_MS_MIN: u64 = 100;

/// Catches unsynced watchers up from the history until `stopped`: one
/// bounded read at a time, through the store thread, so apply never waits
/// for a watcher.
pub async fn run_catchup(
    hub: Arc<WatchHub>,
    store: StoreHandle,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        if *stopped.borrow() {
            return;
        }
        let picks = hub.pick_for_catchup();
        if picks.is_empty() {
            let retry = hub.has_unsynced();
            tokio::select! {
                _ = hub.catchup.notified() => {}
                _ = tokio::time::sleep(CATCHUP_RETRY), if retry => {}
                _ = stopped.changed() => {}
            }
            continue;
        }
        let from = picks.iter().map(|pick| pick.next).min().expect("not empty");
        let spans: Vec<_> = picks.iter().map(|pick| pick.span.clone()).collect();
        let with_previous = picks.iter().any(|pick| pick.prev_kv);
        hub.counters
            .catchup_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let read = store
            .with(move |store| {
                mvcc_store::history_after(
                    store,
                    from,
                    super::CATCHUP_WRITES_MAX,
                    |key| spans.iter().any(|span| span.contains(key)),
                    with_previous,
                )
                .map_err(|error| StoreError::Engine(error.to_string()))
            })
            .await;
        match read {
            Ok(batch) => {
                if !hub.deliver_history(&picks, batch) {
                    tokio::time::sleep(CATCHUP_RETRY).await;
                }
            }
            Err(error) => {
                tracing::error!(%error, from, "reading the history for watchers failed; retrying");
                tokio::time::sleep(CATCHUP_RETRY).await;
            }
        }
    }
}

/// Sends progress notifications every `interval` until `stopped`.
pub async fn run_progress(
    hub: Arc<WatchHub>,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => hub.progress_tick(),
            _ = stopped.changed() => {
                if *stopped.borrow() {
                    return;
                }
            }
        }
    }
}
