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
//! A failed write stops the process (see [`storage_failure`]): the node
//! recovers from its log on restart rather than go on with a log it cannot
//! vouch for.

use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
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
}

/// Where the completion of an append goes.
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
        let thread = std::thread::Builder::new()
            .name("kvstore-wal".into())
            .spawn(move || run(wal, receiver, persisted, metrics))
            .unwrap_or_else(|error| storage_failure("cannot start the WAL thread", error));
        Self {
            commands: Some(commands),
            thread: Some(thread),
        }
    }

    fn submit(&self, command: Command) {
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
    /// durable.
    pub async fn append(&self, hard_state: Option<HardState>, entries: Vec<Entry>) -> Persisted {
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

fn run(
    mut wal: Wal,
    commands: std_mpsc::Receiver<Command>,
    persisted: mpsc::UnboundedSender<Persisted>,
    metrics: Option<Arc<Metrics>>,
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
                if let Err(error) = wal.compact(persist::marker_to_wal(snapshot)) {
                    storage_failure("compacting the WAL failed", error);
                }
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
                write_group(&mut wal, group, &persisted, metrics.as_deref());
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

fn write_group(
    wal: &mut Wal,
    group: Vec<Append>,
    persisted: &mpsc::UnboundedSender<Persisted>,
    metrics: Option<&Metrics>,
) {
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
    for append in group {
        let done = Persisted {
            last_entry: append.entries.last().map(|entry| (entry.index, entry.term)),
            entry_count: append.entries.len(),
            elapsed: append.submitted.elapsed(),
            write_entry_count,
        };
        match append.completion {
            Completion::Waiter(waiter) => {
                let _ = waiter.send(done);
            }
            Completion::Background => {
                let _ = persisted.send(done);
            }
        }
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
