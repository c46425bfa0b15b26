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
//! `kvstore_raft::RaftNode::advance_unpersisted`): its completion then comes
//! back as a [`Persisted`] on the channel the driver listens to.
//!
//! An append the driver waits for while the thread has nothing queued or
//! running is written on the caller's thread instead: the driver could do
//! nothing else until it is durable anyway, and handing it over would cost
//! two thread wake-ups (to the WAL thread and back) on the path of every
//! follower's acknowledgement. The caller's worker is blocked for that one
//! write; other tasks on it (serializable reads, the HTTP endpoints) wait
//! up to one fdatasync. Behind queued work the thread writes it, in order.
//!
//! A failed write stops the process (see [`storage_failure`]): the node
//! recovers from its log on restart rather than go on with a log it cannot
//! vouch for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvstore_raft::{Entry, HardState, Index, SnapshotMetadata, Term};
use kvstore_wal::Wal;
use tokio::sync::{mpsc, oneshot};

use super::persist;
use crate::metrics::Metrics;

/// Exit code when the node stops because its storage failed: the process
/// exits and recovers from the WAL on restart rather than diverge.
pub const EXIT_CODE_STORAGE_FAILURE: i32 = 70;

/// Appends written together with one fdatasync, at most.
pub const APPENDS_PER_WRITE_MAX: usize = 64;

/// Stops the process after a storage failure.
pub fn storage_failure(context: &str, error: impl std::fmt::Display) -> ! {
    tracing::error!(%error, "{context}; stopping so the node recovers from its log on restart");
    std::process::exit(EXIT_CODE_STORAGE_FAILURE);
}

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
    /// Written on the caller's thread (the WAL thread was idle), not on the
    /// WAL thread.
    pub inline: bool,
}

/// Where the completion of an append goes.
enum Completion {
    /// The driver waits for it.
    Waiter(oneshot::Sender<Persisted>),
    /// The driver hears of it on its `Persisted` channel.
    Background,
    /// The caller wrote it itself and has the result.
    Caller,
}

struct Append {
    hard_state: Option<HardState>,
    entries: Vec<Entry>,
    submitted: Instant,
    completion: Completion,
}

enum Command {
    Append(Append),
    Compact {
        snapshot: SnapshotMetadata,
        done: oneshot::Sender<()>,
    },
}

/// The driver's handle on the WAL thread.
pub struct WalWriter {
    commands: Option<std_mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
    /// Locked by whoever writes: the thread, or the caller of an inline
    /// append.
    wal: Arc<Mutex<Wal>>,
    /// Commands submitted and not finished yet. Only the driver submits, so
    /// once it reads 0 nothing comes before an inline append.
    outstanding: Arc<AtomicUsize>,
    metrics: Option<Arc<Metrics>>,
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
        let wal = Arc::new(Mutex::new(wal));
        let outstanding = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (wal, outstanding, metrics) = (wal.clone(), outstanding.clone(), metrics.clone());
            std::thread::Builder::new()
                .name("kvstore-wal".into())
                .spawn(move || run(&wal, &outstanding, receiver, persisted, metrics.as_deref()))
                .unwrap_or_else(|error| storage_failure("cannot start the WAL thread", error))
        };
        Self {
            commands: Some(commands),
            thread: Some(thread),
            wal,
            outstanding,
            metrics,
        }
    }

    fn submit(&self, command: Command) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
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
        self.submit(Command::Append(Append {
            hard_state,
            entries,
            submitted: Instant::now(),
            completion: Completion::Background,
        }));
    }

    /// Appends and waits until the append, and so every earlier one, is
    /// durable: on the calling thread when the WAL thread is idle (see the
    /// module's notes), else on the WAL thread after what is queued.
    pub async fn append(&self, hard_state: Option<HardState>, entries: Vec<Entry>) -> Persisted {
        if self.outstanding.load(Ordering::Acquire) == 0 {
            let append = Append {
                hard_state,
                entries,
                submitted: Instant::now(),
                completion: Completion::Caller,
            };
            let mut group =
                write_group(&mut lock(&self.wal), vec![append], self.metrics.as_deref());
            let (_, done) = group.pop().expect("one append");
            return Persisted {
                inline: true,
                ..done
            };
        }
        let (done, waiter) = oneshot::channel();
        self.submit(Command::Append(Append {
            hard_state,
            entries,
            submitted: Instant::now(),
            completion: Completion::Waiter(done),
        }));
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

/// The WAL, also when a writer panicked while holding it (it then stopped
/// the process, see `storage_failure`; a panic is a broken invariant).
fn lock(wal: &Mutex<Wal>) -> MutexGuard<'_, Wal> {
    wal.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn run(
    wal: &Mutex<Wal>,
    outstanding: &AtomicUsize,
    commands: std_mpsc::Receiver<Command>,
    persisted: mpsc::UnboundedSender<Persisted>,
    metrics: Option<&Metrics>,
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
                if let Err(error) = lock(wal).compact(persist::marker_to_wal(snapshot)) {
                    storage_failure("compacting the WAL failed", error);
                }
                outstanding.fetch_sub(1, Ordering::AcqRel);
                let _ = done.send(());
            }
            Command::Append(first) => {
                let mut group = vec![first];
                while group.len() < APPENDS_PER_WRITE_MAX {
                    match commands.try_recv() {
                        Ok(Command::Append(append)) if continues(&group, &append) => {
                            group.push(append)
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let appends = group.len();
                let written = write_group(&mut lock(wal), group, metrics);
                // Idle again before the completions go out, so that whoever
                // hears of one finds it idle. An inline append may then come
                // before the driver has taken a background completion off
                // its channel: the WAL wrote everything in order, and the
                // core ignores a report of entries already durable.
                outstanding.fetch_sub(appends, Ordering::AcqRel);
                for (completion, done) in written {
                    match completion {
                        Completion::Waiter(waiter) => {
                            let _ = waiter.send(done);
                        }
                        Completion::Background => {
                            let _ = persisted.send(done);
                        }
                        Completion::Caller => unreachable!("the caller writes its own"),
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

/// Writes `group` with one fdatasync; returns each append's completion
/// with what to tell it.
fn write_group(
    wal: &mut Wal,
    group: Vec<Append>,
    metrics: Option<&Metrics>,
) -> Vec<(Completion, Persisted)> {
    // The newest hard state covers the older ones (term and vote never go
    // back, commit only grows).
    let hard_state = group
        .iter()
        .rev()
        .find_map(|append| append.hard_state.as_ref())
        .map(persist::hard_state_to_wal);
    let entries: Vec<kvstore_wal::Entry> = group
        .iter()
        .flat_map(|append| append.entries.iter().map(persist::entry_to_wal))
        .collect();
    let started = Instant::now();
    if let Err(error) = wal.append(hard_state.as_ref(), &entries) {
        storage_failure("appending to the WAL failed", error);
    }
    if let Some(metrics) = metrics {
        metrics.observe_wal_sync(started.elapsed());
    }
    let write_entry_count = entries.len();
    group
        .into_iter()
        .map(|append| {
            let done = Persisted {
                last_entry: append.entries.last().map(|entry| (entry.index, entry.term)),
                entry_count: append.entries.len(),
                elapsed: append.submitted.elapsed(),
                write_entry_count,
                inline: false,
            };
            (append.completion, done)
        })
        .collect()
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
        let (wal, _) = Wal::open(directory.path(), WalOptions::default()).unwrap();
        let (persisted_sender, mut persisted) = mpsc::unbounded_channel();
        let writer = WalWriter::start(wal, persisted_sender, None);
        writer.append_in_background(Some(hard_state(0)), vec![entry(1), entry(2)]);
        writer.append_in_background(None, vec![entry(3)]);
        let waited = writer.append(Some(hard_state(3)), vec![entry(4)]).await;
        assert_eq!(waited.last_entry, Some((4, 1)));
        // The background ones finished first, in order.
        let first = persisted.try_recv().unwrap();
        let second = persisted.try_recv().unwrap();
        assert_eq!(first.last_entry, Some((2, 1)));
        assert_eq!(second.last_entry, Some((3, 1)));
        assert!(persisted.try_recv().is_err());
        writer.compact(SnapshotMetadata { index: 2, term: 1 }).await;
        writer.shut_down().await;

        let (_, recovered) = Wal::open(directory.path(), WalOptions::default()).unwrap();
        let indexes: Vec<Index> = recovered.entries.iter().map(|entry| entry.index).collect();
        assert_eq!(indexes, vec![3, 4]);
        assert_eq!(recovered.hard_state.commit, 3);
        assert_eq!(recovered.snapshot.map(|marker| marker.index), Some(2));
    }

    #[tokio::test]
    async fn an_append_with_nothing_queued_is_written_on_the_calling_thread() {
        let directory = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(directory.path(), WalOptions::default()).unwrap();
        let (persisted_sender, mut persisted) = mpsc::unbounded_channel();
        let writer = WalWriter::start(wal, persisted_sender, None);
        let done = writer.append(Some(hard_state(1)), vec![entry(1)]).await;
        assert!(done.inline);
        assert_eq!(done.last_entry, Some((1, 1)));
        // Once a background append is finished, the thread is idle again.
        writer.append_in_background(None, vec![entry(2)]);
        assert!(!persisted.recv().await.unwrap().inline);
        assert!(writer.append(None, vec![entry(3)]).await.inline);
        writer.shut_down().await;

        let (_, recovered) = Wal::open(directory.path(), WalOptions::default()).unwrap();
        let indexes: Vec<Index> = recovered.entries.iter().map(|entry| entry.index).collect();
        assert_eq!(indexes, vec![1, 2, 3]);
        assert_eq!(recovered.hard_state.commit, 1);
    }

    // The test holds the WAL across awaits on purpose: that is what keeps
    // the thread busy.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_behind_queued_work_waits_for_the_thread() {
        let directory = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(directory.path(), WalOptions::default()).unwrap();
        let (persisted_sender, mut persisted) = mpsc::unbounded_channel();
        let writer = Arc::new(WalWriter::start(wal, persisted_sender, None));
        // Holding the WAL keeps the thread from writing the background append.
        let held = lock(&writer.wal);
        writer.append_in_background(Some(hard_state(0)), vec![entry(1)]);
        let waited = tokio::spawn({
            let writer = writer.clone();
            async move { writer.append(None, vec![entry(2)]).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waited.is_finished());
        assert!(persisted.try_recv().is_err());
        drop(held);
        let waited = waited.await.unwrap();
        assert!(
            !waited.inline,
            "written by the thread, after the queued one"
        );
        assert_eq!(waited.last_entry, Some((2, 1)));
        let background = persisted.try_recv().unwrap();
        assert_eq!(background.last_entry, Some((1, 1)));

        Arc::into_inner(writer).unwrap().shut_down().await;
        let (_, recovered) = Wal::open(directory.path(), WalOptions::default()).unwrap();
        let indexes: Vec<Index> = recovered.entries.iter().map(|entry| entry.index).collect();
        assert_eq!(indexes, vec![1, 2]);
    }

    #[test]
    fn only_following_entries_join_a_group() {
        let append = |entries: Vec<Entry>| Append {
            hard_state: None,
            entries,
            submitted: Instant::now(),
            completion: Completion::Background,
        };
        let group = vec![append(vec![entry(1), entry(2)]), append(vec![])];
        assert!(continues(&group, &append(vec![entry(3)])));
        assert!(continues(&group, &append(vec![])));
        // A suffix overwrite starts below: it is written on its own.
        assert!(!continues(&group, &append(vec![entry(2)])));
        assert!(!continues(&group, &append(vec![entry(4)])));
        assert!(continues(&[append(vec![])], &append(vec![entry(7)])));
    }
}
