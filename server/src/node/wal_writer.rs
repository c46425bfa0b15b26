//! The WAL on a thread of its own.
//!
//! The driver submits appends (one per `Ready` that has something to
//! persist) and compactions; the thread runs them strictly in the order they
//! were submitted. Appends already waiting in the queue when the thread
//! gets to them are written together, as one batch with one fdatasync: a
//! leader that hands out a new `Ready` while the previous one is still being
//! written does not pay an fsync for each.
//!
//! An append is either waited for (the driver persists before it sends, as
//! a follower or candidate must) or runs in the background (a leader's, see
//! `kvstore_raft::RaftCore::advance_unpersisted`): its completion then comes
//! back as a [`Persisted`] on the channel the driver listens to.
//!
//! An append the driver waits for while the thread has nothing queued or
//! running is written on the driver's own thread instead: the driver could
//! do nothing else until it is durable anyway, and handing it over would
//! cost two thread wake-ups (to the WAL thread and back) on the path of
//! every follower's acknowledgement. That blocks the async worker running
//! the driver, which with one worker (the default on two cores) is every
//! task of the process: peer streams, client requests, the HTTP endpoints.
//! So it is done only while writes are quick: once one took longer than
//! [`INLINE_WRITE_LATENCY_MAX`], appends go through the thread until the
//! thread's writes are quick again. (`tokio::task::block_in_place` would
//! hand the worker's other tasks to another thread, the very wake-up this
//! saves.) Behind queued work the thread writes, in order.
//!
//! A failed write stops the process (see [`storage_failure`]): the node
//! recovers from its log on restart rather than go on with a log it cannot
//! vouch for.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvstore_raft::{Entry, HardState, Index, SnapshotMetadata, Term};
use kvstore_wal::Wal;
use tokio::sync::{mpsc, oneshot};

use super::persist;
use crate::fatal::storage_failure;
use crate::metrics::Metrics;

/// Appends written together with one fdatasync, at most.
pub const APPENDS_PER_WRITE_MAX: usize = 64;

/// The longest append + fdatasync after which the driver still writes
/// inline: a write on a healthy SSD or virtual disk stays within it. After
/// a slower one (a struggling or spinning disk) the thread writes, so the
/// node goes on serving while its disk is slow (measurements:
/// docs/benchmarks.md, "WAL writes on the driver").
pub const INLINE_WRITE_LATENCY_MAX: Duration = Duration::from_millis(2);

/// A finished append.
#[derive(Debug, Clone, Copy)]
pub struct Persisted {
    /// Index and term of the append's last entry (`None`: hard state only).
    pub last_entry: Option<(Index, Term)>,
    /// Entries in the append.
    pub entry_count: usize,
    /// From submission until durable (queueing included).
    pub elapsed: Duration,
    /// Entries in the write (with one fdatasync) it was part of.
    pub write_entry_count: usize,
    /// Written on the driver's thread (see the module's notes), not on the
    /// WAL thread.
    pub inline: bool,
}

/// Where the completion of an append the thread writes goes.
enum Completion {
    /// The driver waits for it.
    Waiter(oneshot::Sender<Persisted>),
    /// The driver hears of it on its `Persisted` channel.
    Background,
}

struct Append {
    hard_state: Option<HardState>,
    entries: Vec<Entry>,
    submitted: Instant,
}

impl Append {
    fn new(hard_state: Option<HardState>, entries: Vec<Entry>) -> Self {
        Self {
            hard_state,
            entries,
            submitted: Instant::now(),
        }
    }
}

enum Command {
    Append(Append, Completion),
    Compact {
        snapshot: SnapshotMetadata,
        done: oneshot::Sender<()>,
    },
}

/// What the driver and the WAL thread share.
struct Shared {
    /// Locked by whoever writes: the thread, or the driver inline.
    wal: Mutex<Wal>,
    /// Commands submitted and not finished yet. Only the driver submits, so
    /// once it reads 0 nothing comes before an inline append.
    outstanding: AtomicUsize,
    /// How long the last write's append + fdatasync took, in µs.
    last_write_us: AtomicU64,
    metrics: Option<Arc<Metrics>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Wal> {
        // A writer that panicked may have left the WAL half-written.
        self.wal.lock().unwrap_or_else(|_| {
            storage_failure("the WAL is in an unknown state", "a writer panicked")
        })
    }

    /// Whether the driver may write an append itself (module notes).
    fn inline_allowed(&self) -> bool {
        self.outstanding.load(Ordering::Acquire) == 0
            && self.last_write_us.load(Ordering::Relaxed)
                <= INLINE_WRITE_LATENCY_MAX.as_micros() as u64
    }

    /// Writes `appends` with one fdatasync; returns what to tell each.
    fn write(&self, appends: &[Append], inline: bool) -> Vec<Persisted> {
        // The newest hard state covers the older ones (term and vote never
        // go back, commit only grows).
        let hard_state = appends
            .iter()
            .rev()
            .find_map(|append| append.hard_state.as_ref())
            .map(persist::hard_state_to_wal);
        let entries: Vec<kvstore_wal::Entry> = appends
            .iter()
            .flat_map(|append| append.entries.iter().map(persist::entry_to_wal))
            .collect();
        let started = Instant::now();
        if let Err(error) = self.lock().append(hard_state.as_ref(), &entries) {
            storage_failure("appending to the WAL failed", error);
        }
        let took = started.elapsed();
        self.last_write_us
            .store(took.as_micros() as u64, Ordering::Relaxed);
        if let Some(metrics) = &self.metrics {
            metrics.observe_wal_sync(took);
        }
        appends
            .iter()
            .map(|append| Persisted {
                last_entry: append.entries.last().map(|entry| (entry.index, entry.term)),
                entry_count: append.entries.len(),
                elapsed: append.submitted.elapsed(),
                write_entry_count: entries.len(),
                inline,
            })
            .collect()
    }
}

/// The driver's handle on the WAL thread.
pub struct WalWriter {
    commands: Option<std_mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl WalWriter {
    /// Moves `wal` to a new thread. Background completions are sent to
    /// `persisted`; each write's append + fdatasync time is recorded in
    /// `metrics`.
    pub fn start(
        wal: Wal,
        persisted: mpsc::UnboundedSender<Persisted>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let (commands, receiver) = std_mpsc::channel();
        let shared = Arc::new(Shared {
            wal: Mutex::new(wal),
            outstanding: AtomicUsize::new(0),
            last_write_us: AtomicU64::new(0),
            metrics,
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("kvstore-wal".into())
                .spawn(move || run(&shared, receiver, persisted))
                .unwrap_or_else(|error| storage_failure("cannot start the WAL thread", error))
        };
        Self {
            commands: Some(commands),
            thread: Some(thread),
            shared,
        }
    }

    fn submit(&self, command: Command) {
        self.shared.outstanding.fetch_add(1, Ordering::AcqRel);
        let sent = self
            .commands
            .as_ref()
            .expect("the WAL writer is running")
            .send(command);
        if sent.is_err() {
            storage_failure("the WAL thread is gone", "channel closed");
        }
    }

    /// Appends in the background; the completion arrives as a [`Persisted`].
    pub fn append_in_background(&self, hard_state: Option<HardState>, entries: Vec<Entry>) {
        self.submit(Command::Append(
            Append::new(hard_state, entries),
            Completion::Background,
        ));
    }

    /// Appends and waits until the append, and so every earlier one, is
    /// durable: on the calling thread when the WAL thread is idle and
    /// writes are quick (see the module's notes), else on the WAL thread
    /// after what is queued.
    pub async fn append(&self, hard_state: Option<HardState>, entries: Vec<Entry>) -> Persisted {
        let append = Append::new(hard_state, entries);
        if self.shared.inline_allowed() {
            return self.shared.write(&[append], true)[0];
        }
        let (done, waiter) = oneshot::channel();
        self.submit(Command::Append(append, Completion::Waiter(done)));
        waiter
            .await
            .unwrap_or_else(|error| storage_failure("the WAL thread is gone", error))
    }

    /// Records a durable snapshot and drops the log before it, after every
    /// append submitted earlier.
    pub async fn compact(&self, snapshot: SnapshotMetadata) {
        let (done, waiter) = oneshot::channel();
        self.submit(Command::Compact { snapshot, done });
        waiter
            .await
            .unwrap_or_else(|error| storage_failure("the WAL thread is gone", error));
    }

    /// Lets the thread finish what was submitted, then joins it.
    pub async fn shut_down(mut self) {
        self.commands = None;
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

fn run(
    shared: &Shared,
    commands: std_mpsc::Receiver<Command>,
    persisted: mpsc::UnboundedSender<Persisted>,
) {
    let mut next = None;
    loop {
        let command = match next.take() {
            Some(command) => command,
            None => match commands.recv() {
                Ok(command) => command,
                Err(_) => return,
            },
        };
        match command {
            Command::Compact { snapshot, done } => {
                if let Err(error) = shared.lock().compact(persist::marker_to_wal(snapshot)) {
                    storage_failure("compacting the WAL failed", error);
                }
                shared.outstanding.fetch_sub(1, Ordering::AcqRel);
                let _ = done.send(());
            }
            Command::Append(first, completion) => {
                let mut appends = vec![first];
                let mut completions = vec![completion];
                while appends.len() < APPENDS_PER_WRITE_MAX {
                    match commands.try_recv() {
                        Ok(Command::Append(append, completion)) if continues(&appends, &append) => {
                            appends.push(append);
                            completions.push(completion);
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let written = shared.write(&appends, false);
                // Idle again before the completions go out, so that whoever
                // hears of one finds it idle. An inline append may then come
                // before the driver has taken a background completion off
                // its channel: the WAL wrote everything in order, and the
                // core ignores a report of entries already durable.
                shared
                    .outstanding
                    .fetch_sub(appends.len(), Ordering::AcqRel);
                for (completion, done) in completions.into_iter().zip(written) {
                    match completion {
                        Completion::Waiter(waiter) => {
                            let _ = waiter.send(done);
                        }
                        Completion::Background => {
                            let _ = persisted.send(done);
                        }
                    }
                }
            }
        }
    }
}

/// Whether `append` can be written in one batch with `group`: its entries
/// follow the group's (or one of them has none).
fn continues(group: &[Append], append: &Append) -> bool {
    let last = group
        .iter()
        .rev()
        .find_map(|earlier| earlier.entries.last().map(|entry| entry.index));
    match (last, append.entries.first()) {
        (Some(last), Some(first)) => first.index == last + 1,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvstore_raft::EntryKind;
    use kvstore_wal::WalOptions;

    fn entry(index: Index) -> Entry {
        Entry {
            index,
            term: 1,
            kind: EntryKind::Normal,
            data: vec![index as u8].into(),
        }
    }

    /// A writer on a new WAL in `directory`, and where its background
    /// completions arrive.
    fn start_writer(
        directory: &std::path::Path,
    ) -> (WalWriter, mpsc::UnboundedReceiver<Persisted>) {
        let (wal, _) = Wal::open(directory, WalOptions::default()).unwrap();
        let (persisted_sender, persisted) = mpsc::unbounded_channel();
        (WalWriter::start(wal, persisted_sender, None), persisted)
    }

    /// What a restart reads from the WAL in `directory`, and its entries' indexes.
    fn recover(directory: &std::path::Path) -> (kvstore_wal::Recovered, Vec<Index>) {
        let (_, recovered) = Wal::open(directory, WalOptions::default()).unwrap();
        let indexes = recovered.entries.iter().map(|entry| entry.index).collect();
        (recovered, indexes)
    }

    fn hard_state(commit: Index) -> HardState {
        HardState {
            term: 1,
            vote: Some(1),
            commit,
        }
    }

    #[tokio::test]
    async fn appends_run_in_order_background_ones_report_and_everything_is_durable() {
        let directory = tempfile::tempdir().unwrap();
        let (writer, mut persisted) = start_writer(directory.path());
        writer.append_in_background(Some(hard_state(0)), vec![entry(1), entry(2)]);
        writer.append_in_background(None, vec![entry(3)]);
        let waited = writer.append(Some(hard_state(3)), vec![entry(4)]).await;
        assert_eq!(waited.last_entry, Some((4, 1)));
        // The background ones finished first, in order (their completions
        // may still be on the way when the waited one was written inline).
        let first = persisted.recv().await.unwrap();
        let second = persisted.recv().await.unwrap();
        assert_eq!(first.last_entry, Some((2, 1)));
        assert_eq!(second.last_entry, Some((3, 1)));
        assert!(persisted.try_recv().is_err());
        writer.compact(SnapshotMetadata { index: 2, term: 1 }).await;
        writer.shut_down().await;

        let (recovered, indexes) = recover(directory.path());
        assert_eq!(indexes, vec![3, 4]);
        assert_eq!(recovered.hard_state.commit, 3);
        assert_eq!(recovered.snapshot.map(|marker| marker.index), Some(2));
    }

    #[tokio::test]
    async fn an_append_with_nothing_queued_is_written_on_the_calling_thread() {
        let directory = tempfile::tempdir().unwrap();
        let (writer, mut persisted) = start_writer(directory.path());
        let done = writer.append(Some(hard_state(1)), vec![entry(1)]).await;
        assert!(done.inline);
        assert_eq!(done.last_entry, Some((1, 1)));
        // Once a background append is finished, the thread is idle again
        // (and the writes quick, whatever they take on this disk).
        writer.append_in_background(None, vec![entry(2)]);
        assert!(!persisted.recv().await.unwrap().inline);
        writer.shared.last_write_us.store(0, Ordering::Relaxed);
        assert!(writer.append(None, vec![entry(3)]).await.inline);
        writer.shut_down().await;

        let (recovered, indexes) = recover(directory.path());
        assert_eq!(indexes, vec![1, 2, 3]);
        assert_eq!(recovered.hard_state.commit, 1);
    }

    /// Waits until `count` commands are submitted and not finished.
    async fn wait_for_outstanding(writer: &WalWriter, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while writer.shared.outstanding.load(Ordering::Acquire) != count {
            assert!(Instant::now() < deadline, "never {count} outstanding");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    // The test holds the WAL across awaits on purpose: that is what keeps
    // the thread busy.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_behind_queued_work_waits_for_the_thread() {
        let directory = tempfile::tempdir().unwrap();
        let (writer, mut persisted) = start_writer(directory.path());
        let writer = Arc::new(writer);
        // Holding the WAL keeps the thread from writing the background append.
        let held = writer.shared.lock();
        writer.append_in_background(Some(hard_state(0)), vec![entry(1)]);
        let waited = tokio::spawn({
            let writer = writer.clone();
            async move { writer.append(None, vec![entry(2)]).await }
        });
        // Both are queued for the thread before it may write.
        wait_for_outstanding(&writer, 2).await;
        assert!(persisted.try_recv().is_err());
        drop(held);
        let waited = waited.await.unwrap();
        assert!(
            !waited.inline,
            "written by the thread, after the queued one"
        );
        assert_eq!(waited.last_entry, Some((2, 1)));
        let background = persisted.recv().await.unwrap();
        assert_eq!(background.last_entry, Some((1, 1)));

        Arc::into_inner(writer).unwrap().shut_down().await;
        let (_, indexes) = recover(directory.path());
        assert_eq!(indexes, vec![1, 2]);
    }

    #[tokio::test]
    async fn after_a_slow_write_the_thread_writes_until_writes_are_quick_again() {
        let directory = tempfile::tempdir().unwrap();
        let (writer, _persisted) = start_writer(directory.path());
        let limit = INLINE_WRITE_LATENCY_MAX.as_micros() as u64;
        // As if the last write had taken just over the limit.
        writer
            .shared
            .last_write_us
            .store(limit + 1, Ordering::Relaxed);
        let done = writer.append(Some(hard_state(0)), vec![entry(1)]).await;
        assert!(!done.inline, "a slow disk: the thread writes");
        // The thread's write recorded what it took (a real write, far from
        // an hour), so whether the next is inline follows the disk again.
        let hour = 3_600_000_000;
        writer.shared.last_write_us.store(hour, Ordering::Relaxed);
        assert!(!writer.append(None, vec![entry(2)]).await.inline);
        assert!(writer.shared.last_write_us.load(Ordering::Relaxed) < hour);
        // Quick again (at the limit itself): inline.
        writer.shared.last_write_us.store(limit, Ordering::Relaxed);
        assert!(writer.append(None, vec![entry(3)]).await.inline);
        writer.shut_down().await;

        let (_, indexes) = recover(directory.path());
        assert_eq!(indexes, vec![1, 2, 3]);
    }

    #[test]
    fn only_following_entries_join_a_group() {
        let append = |entries: Vec<Entry>| Append::new(None, entries);
        let group = vec![append(vec![entry(1), entry(2)]), append(vec![])];
        assert!(continues(&group, &append(vec![entry(3)])));
        assert!(continues(&group, &append(vec![])));
        // A suffix overwrite starts below: it is written on its own.
        assert!(!continues(&group, &append(vec![entry(2)])));
        assert!(!continues(&group, &append(vec![entry(4)])));
        assert!(continues(&[append(vec![])], &append(vec![entry(7)])));
    }
}
