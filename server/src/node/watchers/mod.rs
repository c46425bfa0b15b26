//! The watch hub: one per node, it tells watchers of the writes this node
//! applies (`docs/design-23-watch-lease.md`).
//!
//! A watcher is **synced** while it gets live events: the applier hands
//! each applied batch's writes to [`WatchHub::publish`], which sends every
//! synced watcher its events of each revision with a `try_send` into its
//! stream's bounded buffer, so apply never waits for a client. A watcher
//! whose buffer is full, or that asked for history, is **unsynced**: the
//! catch-up task ([`catchup`]) reads its events from the history in
//! bounded batches, off the apply path, and puts it back among the synced
//! ones once it has every revision published so far. Both paths run under
//! the hub's lock, and each watcher remembers the next revision it needs
//! (`next`), so no revision is skipped or sent twice when a watcher moves
//! between them. A watcher whose next revision compaction removed is
//! cancelled with the compacted revision.
//!
//! No clock and no store here: the catch-up task and the progress ticker
//! (`catchup`) drive the hub from outside.

pub mod catchup;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{mpsc, Notify};

use crate::metrics::{WatchStats, WatchStatsSnapshot};
use crate::state_machine::mvcc::store::{Change, HistoryBatch, KeySpan};
use crate::state_machine::Applied;

/// Responses a stream holds for a client that does not read them; a
/// watcher whose response does not fit is caught up from history later.
pub const STREAM_BUFFER_RESPONSES: usize = 1_024;
/// Default of `--max-watchers`: watches one node serves at once.
pub const WATCHERS_MAX_DEFAULT: usize = 100_000;
/// Unsynced watchers served by one history read (etcd: 512).
pub const CATCHUP_WATCHERS_MAX: usize = 512;
/// Writes read from the history per catch-up step (whole revisions).
pub const CATCHUP_WRITES_MAX: usize = 1_000;

/// A watch stream, one per `Watch` call.
pub type StreamId = u64;
/// A watch's id on its stream (the client's, or picked by the hub).
pub type WatchId = i64;
/// The id of responses about the whole stream (progress, refusals).
pub const STREAM_WIDE_ID: WatchId = -1;

/// What a client asked to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSpec {
    /// The key or range.
    pub span: KeySpan,
    /// The first revision to report (0: the next one).
    pub start_revision: u64,
    /// Leave out puts.
    pub no_put: bool,
    /// Leave out deletes.
    pub no_delete: bool,
    /// Carry each event's previous record.
    pub prev_kv: bool,
    /// Send progress responses while caught up and quiet.
    pub progress_notify: bool,
    /// The id asked for (0: the lowest free one).
    pub watch_id: WatchId,
}

/// What the hub sends a stream (the service turns it into protobuf).
#[derive(Debug, Clone)]
pub enum WatchNews {
    /// The watch exists; events follow.
    Created {
        /// The watch.
        watch_id: WatchId,
        /// The revision published when it was created.
        revision: u64,
    },
    /// A create refused before the watch got an id.
    Refused {
        /// Why.
        reason: String,
        /// The revision published.
        revision: u64,
    },
    /// Events of one watch, in revision order.
    Events {
        /// The watch.
        watch_id: WatchId,
        /// The revision they bring the watch to.
        revision: u64,
        /// The writes (shared by every watcher they concern).
        events: Vec<Arc<Change>>,
        /// Whether to carry the previous records.
        prev_kv: bool,
    },
    /// How far a watch (or the stream, [`STREAM_WIDE_ID`]) has got.
    Progress {
        /// The watch, or [`STREAM_WIDE_ID`].
        watch_id: WatchId,
        /// Every later event has a higher revision.
        revision: u64,
    },
    /// The watch ended.
    Canceled {
        /// The watch.
        watch_id: WatchId,
        /// The revision published.
        revision: u64,
        /// The compacted revision, when compaction ended it (else 0).
        compact_revision: u64,
        /// Why, when not at the client's request.
        reason: String,
    },
    /// The node is stopping: the stream ends.
    Closing,
}

/// Why a stream could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the node is shutting down")]
pub struct HubClosed;

type WatcherKey = (StreamId, WatchId);

#[derive(Debug)]
struct Watcher {
    spec: WatchSpec,
    /// The next revision this watcher needs: it has been sent (or did not
    /// want) every event below it.
    next: u64,
    synced: bool,
    /// Got events since the last progress tick.
    got_events: bool,
    sender: mpsc::Sender<WatchNews>,
}

impl Watcher {
    /// Its events among `changes`, filtered.
    fn wanted(&self, changes: impl IntoIterator<Item = Arc<Change>>) -> Vec<Arc<Change>> {
        changes
            .into_iter()
            .filter(|change| {
                change.revision.main >= self.next
                    && self.spec.span.contains(&change.key)
                    && !(change.record.is_some() && self.spec.no_put)
                    && !(change.record.is_none() && self.spec.no_delete)
            })
            .collect()
    }
}

#[derive(Debug)]
struct StreamState {
    sender: mpsc::Sender<WatchNews>,
    watches: BTreeSet<WatchId>,
    /// A progress request waits for every watch of the stream to be synced.
    progress_requested: bool,
}

#[derive(Debug, Default)]
struct HubState {
    /// The revision of the last applied write handed to [`WatchHub::publish`].
    published: u64,
    closed: bool,
    next_stream: StreamId,
    streams: HashMap<StreamId, StreamState>,
    watchers: HashMap<WatcherKey, Watcher>,
    /// Synced watchers of one key.
    synced_keys: HashMap<Vec<u8>, Vec<WatcherKey>>,
    /// Synced watchers of ranges, grouped by range.
    synced_spans: Vec<(KeySpan, Vec<WatcherKey>)>,
    unsynced: HashSet<WatcherKey>,
}

/// Counts the hub keeps for `/metrics`.
#[derive(Debug, Default)]
pub struct WatchCounters {
    /// Events sent to clients.
    pub events_sent: AtomicU64,
    /// Times a synced watcher's buffer was full (it went to catch-up).
    pub slow_watchers: AtomicU64,
    /// Watchers cancelled because compaction passed them.
    pub compacted_cancels: AtomicU64,
    /// History reads of the catch-up task.
    pub catchup_reads: AtomicU64,
}

/// The node's watch hub (cheap to share: an `Arc`).
#[derive(Debug)]
pub struct WatchHub {
    state: Mutex<HubState>,
    watchers_max: usize,
    /// A deliberate bug (`--inject-fault watch-resume-late`): watches start
    /// one revision after the one asked for.
    resume_late: bool,
    /// Wakes the catch-up task.
    catchup: Notify,
    /// Counters for `/metrics`.
    pub counters: WatchCounters,
}

impl WatchHub {
    /// A hub whose store is at `revision`, serving at most `watchers_max`
    /// watchers (`resume_late`: the deliberate bug of
    /// `--inject-fault watch-resume-late`).
    pub fn new(revision: u64, watchers_max: usize, resume_late: bool) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(HubState {
                published: revision,
                ..HubState::default()
            }),
            watchers_max,
            resume_late,
            catchup: Notify::new(),
            counters: WatchCounters::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The revision of the last write published.
    pub fn published(&self) -> u64 {
        self.lock().published
    }

    /// Opens a stream: its responses come out of the receiver.
    pub fn open_stream(&self) -> Result<(StreamId, mpsc::Receiver<WatchNews>), HubClosed> {
        let mut state = self.lock();
        if state.closed {
            return Err(HubClosed);
        }
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER_RESPONSES);
        let id = state.next_stream;
        state.next_stream += 1;
        state.streams.insert(
            id,
            StreamState {
                sender,
                watches: BTreeSet::new(),
                progress_requested: false,
            },
        );
        Ok((id, receiver))
    }

    /// Ends a stream and its watchers (the client left, or stopped
    /// sending): its receiver yields what is queued, then ends.
    pub fn close_stream(&self, stream: StreamId) {
        let mut state = self.lock();
        if let Some(closed) = state.streams.remove(&stream) {
            for watch_id in closed.watches {
                state.remove_watcher((stream, watch_id));
            }
        }
    }

    /// Ends every stream (the node stops); no new one opens.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        for (_, stream) in state.streams.drain() {
            let _ = stream.sender.try_send(WatchNews::Closing);
        }
        state.watchers.clear();
        state.synced_keys.clear();
        state.synced_spans.clear();
        state.unsynced.clear();
    }

    /// Creates a watch on `stream`. Its `Created` response comes before any
    /// of its events (waits for room in the stream's buffer for it).
    pub async fn create(&self, stream: StreamId, spec: WatchSpec) {
        let Some(sender) = self.lock().streams.get(&stream).map(|s| s.sender.clone()) else {
            return;
        };
        let Ok(permit) = sender.clone().reserve_owned().await else {
            return;
        };
        let mut state = self.lock();
        let published = state.published;
        let refuse = |reason: String| WatchNews::Refused {
            reason,
            revision: published,
        };
        if spec.span.check().is_err() {
            permit.send(refuse("mvcc: watcher range is empty".into()));
            return;
        }
        if state.watchers.len() >= self.watchers_max {
            permit.send(refuse(format!(
                "too many watchers: this node serves at most {} (--max-watchers)",
                self.watchers_max
            )));
            return;
        }
        let Some(stream_state) = state.streams.get_mut(&stream) else {
            return;
        };
        let watch_id = if spec.watch_id == 0 {
            // The lowest id not in use (0 first, as etcd).
            let mut id = 0;
            while stream_state.watches.contains(&id) {
                id += 1;
            }
            id
        } else if spec.watch_id < 0 {
            permit.send(refuse(format!(
                "watch_id {} is negative (0 lets the server pick one)",
                spec.watch_id
            )));
            return;
        } else if stream_state.watches.contains(&spec.watch_id) {
            permit.send(refuse(
                "mvcc: duplicate watch ID provided on the WatchStream".into(),
            ));
            return;
        } else {
            spec.watch_id
        };
        stream_state.watches.insert(watch_id);
        let next = if spec.start_revision == 0 {
            published + 1
        } else if self.resume_late {
            spec.start_revision + 1
        } else {
            spec.start_revision
        };
        let key = (stream, watch_id);
        state.watchers.insert(
            key,
            Watcher {
                spec,
                next,
                synced: false,
                got_events: false,
                sender,
            },
        );
        permit.send(WatchNews::Created {
            watch_id,
            revision: published,
        });
        if next > published {
            state.make_synced(key);
        } else {
            state.unsynced.insert(key);
            self.catchup.notify_one();
        }
    }

    /// Refuses a create request before it got an id (a bad key, a store
    /// without revisions): `created` and `canceled` with the reason.
    pub async fn refuse(&self, stream: StreamId, reason: String) {
        let Some(sender) = self.lock().streams.get(&stream).map(|s| s.sender.clone()) else {
            return;
        };
        let revision = self.published();
        let _ = sender.send(WatchNews::Refused { reason, revision }).await;
    }

    /// Cancels a watch at the client's request (an unknown id: nothing).
    pub async fn cancel(&self, stream: StreamId, watch_id: WatchId) {
        let sender = {
            let mut state = self.lock();
            let Some(stream_state) = state.streams.get_mut(&stream) else {
                return;
            };
            if !stream_state.watches.remove(&watch_id) {
                return;
            }
            let sender = stream_state.sender.clone();
            state.remove_watcher((stream, watch_id));
            sender
        };
        // After every event queued before it; nothing of it follows.
        let revision = self.published();
        let _ = sender
            .send(WatchNews::Canceled {
                watch_id,
                revision,
                compact_revision: 0,
                reason: String::new(),
            })
            .await;
    }

    /// A progress request: answered once every watch of the stream is
    /// synced (at once if they are).
    pub fn request_progress(&self, stream: StreamId) {
        let mut state = self.lock();
        if let Some(stream_state) = state.streams.get_mut(&stream) {
            stream_state.progress_requested = true;
        }
        state.answer_progress(stream);
    }

    /// A progress tick: every synced watch that asked for progress
    /// notifications and got no event since the last tick is told the
    /// published revision.
    pub fn progress_tick(&self) {
        let mut state = self.lock();
        let published = state.published;
        for (key, watcher) in state.watchers.iter_mut() {
            let quiet = !std::mem::replace(&mut watcher.got_events, false);
            // A watch starting in the future has no progress to report.
            let current = watcher.next <= published + 1;
            if watcher.spec.progress_notify && watcher.synced && quiet && current {
                let _ = watcher.sender.try_send(WatchNews::Progress {
                    watch_id: key.1,
                    revision: published,
                });
            }
        }
    }

    /// Hands the hub the outcomes of one applied batch, in order (it takes
    /// their changes): every synced watcher gets its events of each
    /// revision, or, when its stream's buffer is full, goes to catch-up.
    /// Never waits.
    pub fn publish(&self, outcomes: &mut [Applied]) {
        let Some(last) = outcomes.last().map(|last| last.revision) else {
            return;
        };
        let mut state = self.lock();
        if state.watchers.is_empty() {
            state.published = state.published.max(last);
            return;
        }
        for applied in outcomes {
            if applied.changes.is_empty() || applied.revision <= state.published {
                continue;
            }
            let changes = std::mem::take(&mut applied.changes);
            state.publish_revision(applied.revision, changes, &self.counters, &self.catchup);
        }
        state.published = state.published.max(last);
    }

    /// A snapshot replaced the store: its revisions came without events,
    /// so every synced watcher behind it is caught up from the history.
    pub fn reset_to(&self, revision: u64) {
        let mut state = self.lock();
        // A synced watcher has every revision published so far, matched or
        // not: it needs only those after (else a quiet watcher would be
        // caught up from its creation, and cancelled if that was compacted).
        let published = state.published;
        for watcher in state.watchers.values_mut().filter(|watcher| watcher.synced) {
            watcher.next = watcher.next.max(published + 1);
        }
        state.published = state.published.max(revision);
        let behind: Vec<WatcherKey> = state
            .watchers
            .iter()
            .filter(|(_, watcher)| watcher.synced && watcher.next <= revision)
            .map(|(key, _)| *key)
            .collect();
        for key in behind {
            state.make_unsynced(key);
        }
        self.catchup.notify_one();
    }

    /// Up to [`CATCHUP_WATCHERS_MAX`] unsynced watchers whose streams have
    /// room, the furthest behind first.
    fn pick_for_catchup(&self) -> Vec<CatchupPick> {
        let state = self.lock();
        let mut picks: Vec<CatchupPick> = state
            .unsynced
            .iter()
            .filter_map(|key| state.watchers.get(key).map(|watcher| (key, watcher)))
            .filter(|(_, watcher)| watcher.sender.capacity() > 0)
            .map(|(key, watcher)| CatchupPick {
                key: *key,
                next: watcher.next,
                span: watcher.spec.span.clone(),
                prev_kv: watcher.spec.prev_kv,
            })
            .collect();
        picks.sort_by_key(|pick| pick.next);
        picks.truncate(CATCHUP_WATCHERS_MAX);
        picks
    }

    /// Whether any watcher waits for catch-up.
    fn has_unsynced(&self) -> bool {
        !self.lock().unsynced.is_empty()
    }

    /// Delivers a history read to the watchers it was read for; returns
    /// whether any of them moved on.
    fn deliver_history(&self, picks: &[CatchupPick], batch: HistoryBatch) -> bool {
        // Shared before the lock is taken: no copy, nothing long under it.
        let changes: Vec<Arc<Change>> = batch.changes.into_iter().map(Arc::new).collect();
        let mut state = self.lock();
        let mut moved = false;
        for pick in picks {
            let Some(watcher) = state.watchers.get_mut(&pick.key) else {
                continue;
            };
            if watcher.synced || watcher.next != pick.next {
                continue;
            }
            if batch.compacted > 0 && watcher.next <= batch.compacted {
                let news = WatchNews::Canceled {
                    watch_id: pick.key.1,
                    revision: batch.through,
                    compact_revision: batch.compacted,
                    reason: format!(
                        "mvcc: required revision has been compacted (compacted at {}; watch from {} on)",
                        batch.compacted,
                        batch.compacted + 1
                    ),
                };
                match watcher.sender.try_send(news) {
                    Err(mpsc::error::TrySendError::Full(_)) => continue,
                    _ => {
                        self.counters
                            .compacted_cancels
                            .fetch_add(1, Ordering::Relaxed);
                        state.forget_watch(pick.key);
                        moved = true;
                        continue;
                    }
                }
            }
            if batch.through >= watcher.next {
                let events = watcher.wanted(changes.iter().cloned());
                if !events.is_empty() {
                    let count = events.len() as u64;
                    let news = WatchNews::Events {
                        watch_id: pick.key.1,
                        revision: batch.through,
                        events,
                        prev_kv: watcher.spec.prev_kv,
                    };
                    match watcher.sender.try_send(news) {
                        Ok(()) => {
                            self.counters
                                .events_sent
                                .fetch_add(count, Ordering::Relaxed);
                            watcher.got_events = true;
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => continue,
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            state.forget_watch(pick.key);
                            continue;
                        }
                    }
                }
                watcher.next = batch.through + 1;
                moved = true;
            }
            if watcher.next > state.published {
                state.unsynced.remove(&pick.key);
                state.make_synced(pick.key);
                state.answer_progress(pick.key.0);
            }
        }
        moved
    }
}

impl WatchStats for WatchHub {
    fn watch_stats(&self) -> WatchStatsSnapshot {
        let (streams, watchers, unsynced) = {
            let state = self.lock();
            (
                state.streams.len(),
                state.watchers.len(),
                state.unsynced.len(),
            )
        };
        let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        WatchStatsSnapshot {
            streams,
            synced: watchers - unsynced,
            unsynced,
            events_sent: count(&self.counters.events_sent),
            slow_watchers: count(&self.counters.slow_watchers),
            compacted_cancels: count(&self.counters.compacted_cancels),
            catchup_reads: count(&self.counters.catchup_reads),
        }
    }
}

/// An unsynced watcher chosen for one history read.
#[derive(Debug, Clone)]
struct CatchupPick {
    key: WatcherKey,
    next: u64,
    span: KeySpan,
    prev_kv: bool,
}

impl HubState {
    /// Sends every synced watcher its events of `applied`'s revision.
    fn publish_revision(
        &mut self,
        revision: u64,
        changes: Vec<Change>,
        counters: &WatchCounters,
        catchup: &Notify,
    ) {
        // Each synced watcher with its events of this revision, in order. A
        // watcher is indexed once, so a revision of one write (the common
        // case) needs no map to group them.
        let mut matched: Vec<(WatcherKey, Vec<Arc<Change>>)> = Vec::new();
        let mut position: HashMap<WatcherKey, usize> = HashMap::new();
        let grouped = changes.len() > 1;
        for change in changes {
            let change = Arc::new(change);
            let by_key = self.synced_keys.get(&change.key).into_iter().flatten();
            let by_span = self
                .synced_spans
                .iter()
                .filter(|(span, _)| span.contains(&change.key))
                .flat_map(|(_, keys)| keys);
            for key in by_key.chain(by_span) {
                if !grouped {
                    matched.push((*key, vec![change.clone()]));
                } else if let Some(at) = position.get(key) {
                    matched[*at].1.push(change.clone());
                } else {
                    position.insert(*key, matched.len());
                    matched.push((*key, vec![change.clone()]));
                }
            }
        }
        for (key, changes) in matched {
            let Some(watcher) = self.watchers.get_mut(&key) else {
                continue;
            };
            if revision < watcher.next {
                continue;
            }
            let events = watcher.wanted(changes);
            if events.is_empty() {
                watcher.next = revision + 1;
                continue;
            }
            let count = events.len() as u64;
            let news = WatchNews::Events {
                watch_id: key.1,
                revision,
                events,
                prev_kv: watcher.spec.prev_kv,
            };
            match watcher.sender.try_send(news) {
                Ok(()) => {
                    counters.events_sent.fetch_add(count, Ordering::Relaxed);
                    watcher.next = revision + 1;
                    watcher.got_events = true;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // Caught up from this revision on, off the apply path.
                    watcher.next = revision;
                    counters.slow_watchers.fetch_add(1, Ordering::Relaxed);
                    self.make_unsynced(key);
                    catchup.notify_one();
                }
                Err(mpsc::error::TrySendError::Closed(_)) => self.forget_watch(key),
            }
        }
    }

    fn make_synced(&mut self, key: WatcherKey) {
        let Some(watcher) = self.watchers.get_mut(&key) else {
            return;
        };
        watcher.synced = true;
        let span = &watcher.spec.span;
        if span.range_end.is_empty() {
            self.synced_keys
                .entry(span.key.clone())
                .or_default()
                .push(key);
        } else if let Some((_, keys)) = self.synced_spans.iter_mut().find(|(s, _)| s == span) {
            keys.push(key);
        } else {
            self.synced_spans.push((span.clone(), vec![key]));
        }
    }

    fn make_unsynced(&mut self, key: WatcherKey) {
        self.unindex(key);
        if let Some(watcher) = self.watchers.get_mut(&key) {
            watcher.synced = false;
            self.unsynced.insert(key);
        }
    }

    /// Takes `key` out of the synced index.
    fn unindex(&mut self, key: WatcherKey) {
        let Some(watcher) = self.watchers.get(&key) else {
            return;
        };
        if !watcher.synced {
            return;
        }
        let span = &watcher.spec.span;
        if span.range_end.is_empty() {
            if let Some(keys) = self.synced_keys.get_mut(&span.key) {
                keys.retain(|k| *k != key);
                if keys.is_empty() {
                    self.synced_keys.remove(&span.key);
                }
            }
        } else if let Some(at) = self.synced_spans.iter().position(|(s, _)| s == span) {
            let keys = &mut self.synced_spans[at].1;
            keys.retain(|k| *k != key);
            if keys.is_empty() {
                self.synced_spans.swap_remove(at);
            }
        }
    }

    /// Removes a watcher from the indexes and the watcher table.
    fn remove_watcher(&mut self, key: WatcherKey) {
        self.unindex(key);
        self.unsynced.remove(&key);
        self.watchers.remove(&key);
    }

    /// Removes a watcher and its id on its stream.
    fn forget_watch(&mut self, key: WatcherKey) {
        self.remove_watcher(key);
        if let Some(stream) = self.streams.get_mut(&key.0) {
            stream.watches.remove(&key.1);
        }
        self.answer_progress(key.0);
    }

    /// Answers `stream`'s progress request if every watch of it is synced.
    fn answer_progress(&mut self, stream: StreamId) {
        let Some(stream_state) = self.streams.get(&stream) else {
            return;
        };
        if !stream_state.progress_requested {
            return;
        }
        let all_synced = stream_state.watches.iter().all(|watch_id| {
            self.watchers
                .get(&(stream, *watch_id))
                .is_none_or(|watcher| watcher.synced)
        });
        if !all_synced {
            return;
        }
        let news = WatchNews::Progress {
            watch_id: STREAM_WIDE_ID,
            revision: self.published,
        };
        if !matches!(
            stream_state.sender.try_send(news),
            Err(mpsc::error::TrySendError::Full(_))
        ) {
            if let Some(stream_state) = self.streams.get_mut(&stream) {
                stream_state.progress_requested = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::mvcc::record::KeyRecord;
    use crate::state_machine::mvcc::Revision;

    fn spec(key: &str) -> WatchSpec {
        WatchSpec {
            span: KeySpan::single(key),
            start_revision: 0,
            no_put: false,
            no_delete: false,
            prev_kv: false,
            progress_notify: false,
            watch_id: 0,
        }
    }

    /// The outcome of a put of `key` at `revision`.
    fn put(key: &str, revision: u64) -> Applied {
        Applied {
            changes: vec![Change {
                key: key.into(),
                revision: Revision::new(revision),
                record: Some(KeyRecord {
                    create_revision: revision,
                    mod_revision: revision,
                    version: 1,
                    lease: 0,
                    value: Vec::new(),
                }),
                previous: None,
            }],
            ..Applied::simple(revision, true, revision)
        }
    }

    #[tokio::test]
    async fn a_snapshot_sends_watchers_to_catch_up_from_what_they_lack_only() {
        let hub = WatchHub::new(100, 10, false);
        let (stream, mut news) = hub.open_stream().unwrap();
        hub.create(stream, spec("quiet")).await;
        hub.create(stream, spec("busy")).await;
        assert!(matches!(news.recv().await, Some(WatchNews::Created { .. })));
        assert!(matches!(news.recv().await, Some(WatchNews::Created { .. })));
        // Revisions 101..=200, none of the quiet watcher's key.
        let mut outcomes: Vec<Applied> =
            (101..=200).map(|revision| put("busy", revision)).collect();
        hub.publish(&mut outcomes);
        for _ in 101..=200 {
            assert!(matches!(news.recv().await, Some(WatchNews::Events { .. })));
        }
        // A snapshot at 300: both need 201 on, not their creation's 101.
        hub.reset_to(300);
        let mut picks = hub.pick_for_catchup();
        picks.sort_by_key(|pick| pick.key);
        let next: Vec<u64> = picks.iter().map(|pick| pick.next).collect();
        assert_eq!(next, vec![201, 201]);
        // A history batch compacted at 150 cancels neither.
        let batch = HistoryBatch {
            compacted: 150,
            through: 300,
            changes: Vec::new(),
        };
        assert!(hub.deliver_history(&picks, batch));
        assert_eq!(hub.watch_stats().synced, 2);
        assert!(news.try_recv().is_err(), "no cancellation, no event");
    }
}
