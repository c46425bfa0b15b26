//! The simulated disk: what survives a crash, how a `Ready` is written to
//! it, and the durability contract of the messages that leave a `Ready`.
//!
//! A message may acknowledge only what its sender has already made durable
//! (`Ready` contract, step 2 after step 1): a granted vote needs the vote on
//! disk, a successful append or snapshot answer needs the log on disk up to
//! the acknowledged index. The driver records these claims when it takes a
//! `Ready` ([`durability_claims`]) and checks them against the disk just
//! before it sends ([`Durable::check_claim`]).
//!
//! A crash, or a failed fsync, in the middle of writes keeps a prefix of
//! their records ([`Durable::tear`]); what was durable before stays.

use kvstore_raft::{Entry, HardState, Index, Message, MessageBody, NodeId, RaftCore, Term};
use kvstore_raft::{Ready, SnapshotMetadata};
use rand::rngs::SmallRng;
use rand::Rng;

use super::checker::{Violation, ViolationKind};

/// What survives a crash.
#[derive(Clone, Debug, Default)]
pub struct Durable {
    /// Term, vote and commit.
    pub hard_state: HardState,
    /// Metadata of the snapshot the WAL starts after.
    pub snapshot: Option<SnapshotMetadata>,
    /// WAL entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
}

/// A write handed to the disk and not yet complete: a `Ready`'s durable
/// parts.
#[derive(Clone, Debug, Default)]
pub struct WalWrite {
    /// A snapshot received from the leader (replaces the WAL).
    pub snapshot: Option<SnapshotMetadata>,
    /// The new hard state.
    pub hard_state: Option<HardState>,
    /// Entries, the WAL dropping every entry from the first one's index on.
    pub entries: Vec<Entry>,
}

/// One record of a [`WalWrite`], in the order the WAL writes them.
enum Record {
    Snapshot(SnapshotMetadata),
    /// A chunk of entries; `final_chunk` carries the whole hard state, an
    /// earlier one only its term and vote.
    Batch {
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
        final_chunk: bool,
    },
}

/// What [`Durable::tear`] kept.
#[derive(Debug, Default)]
pub struct Torn {
    /// Records kept.
    pub kept: usize,
    /// Records the writes made.
    pub total: usize,
    /// Every hard state that became durable, in order (for the checker).
    pub hard_states: Vec<HardState>,
}

/// What a message leaving a `Ready` says its sender holds durably.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurabilityClaim {
    /// A granted (real) vote for `candidate` in `term`.
    Vote {
        /// The term of the request.
        term: Term,
        /// Who got the vote.
        candidate: NodeId,
    },
    /// The log holds every entry up to `index`, the one at `index` having
    /// `term` (as the sender's log had it when the `Ready` was taken;
    /// `None` if it held no such entry).
    Log {
        /// Highest acknowledged index.
        index: Index,
        /// Term of the entry at `index` in the sender's log.
        term: Option<Term>,
    },
}

/// The claims of each message of `ready`, taken from `core` right after
/// `core.ready()` (its log is then what the `Ready` makes durable). One
/// entry per message, `None` for messages that claim nothing.
pub fn durability_claims(ready: &Ready, core: &RaftCore) -> Vec<Option<DurabilityClaim>> {
    ready
        .messages
        .iter()
        .map(|message| match message.body {
            MessageBody::RequestVoteResponse {
                pre_vote: false,
                granted: true,
            } => Some(DurabilityClaim::Vote {
                term: message.term,
                candidate: message.to,
            }),
            // An answer to a leader of a term this node has since left
            // (in the same `Ready`) makes no claim on the log: a leader of
            // the later term may have overwritten the acknowledged entries,
            // as etcd-raft's batching allows too. Safe: the node held them
            // while in the old term, and a leader it voted for afterwards
            // holds them too (Raft §5.4.3).
            MessageBody::AppendEntriesResponse {
                success: true,
                index,
                ..
            }
            | MessageBody::InstallSnapshotResponse { index }
                if message.term == core.term() =>
            {
                Some(DurabilityClaim::Log {
                    index,
                    term: core.term_at(index),
                })
            }
            _ => None,
        })
        .collect()
}

impl Durable {
    /// Term of the durable entry at `index` (the snapshot's at its index),
    /// `None` if the disk holds no such entry.
    fn term_at(&self, index: Index) -> Option<Term> {
        if index == 0 {
            return Some(0);
        }
        if let Some(snapshot) = self.snapshot {
            if index == snapshot.index {
                return Some(snapshot.term);
            }
        }
        self.entries
            .iter()
            .find(|entry| entry.index == index)
            .map(|entry| entry.term)
    }

    /// Whether the disk covers `index`: in the snapshot or in the WAL.
    fn covers(&self, index: Index) -> bool {
        self.snapshot
            .is_some_and(|snapshot| index <= snapshot.index)
            || self.term_at(index).is_some()
    }

    /// `message`, about to be sent by `node`, claims `claim`: the disk must
    /// back it.
    pub fn check_claim(
        &self,
        node: NodeId,
        message: &Message,
        claim: DurabilityClaim,
    ) -> Result<(), Violation> {
        let backed = match claim {
            DurabilityClaim::Vote { term, candidate } => {
                let durable = self.hard_state;
                durable.term > term || (durable.term == term && durable.vote == Some(candidate))
            }
            DurabilityClaim::Log { index, term } => {
                let within_snapshot = self.snapshot.is_some_and(|snapshot| index < snapshot.index);
                within_snapshot || (self.covers(index) && self.term_at(index) == term)
            }
        };
        if backed {
            return Ok(());
        }
        Err(Violation {
            kind: ViolationKind::Durability,
            detail: format!(
                "node {node} sends {} claiming {claim:?}, but its disk holds hard state {:?}, snapshot {:?}, entries up to {:?}",
                super::describe(message),
                self.hard_state,
                self.snapshot,
                self.entries.last().map(|entry| (entry.index, entry.term)),
            ),
        })
    }

    /// The records of `write`: its snapshot, then its entries in chunks of
    /// random sizes, every chunk but the last carrying only the new term and
    /// vote (persisting them early is safe; a commit index may not precede
    /// its entries), the last the whole hard state.
    fn records(write: &WalWrite, rng: &mut SmallRng) -> Vec<Record> {
        let mut records = Vec::new();
        if let Some(snapshot) = write.snapshot {
            records.push(Record::Snapshot(snapshot));
        }
        let mut rest: &[Entry] = &write.entries;
        loop {
            let size = if rest.is_empty() {
                0
            } else {
                rng.random_range(1..=rest.len())
            };
            let (chunk, remainder) = rest.split_at(size);
            let final_chunk = remainder.is_empty();
            if !chunk.is_empty() || write.hard_state.is_some() {
                records.push(Record::Batch {
                    hard_state: write.hard_state,
                    entries: chunk.to_vec(),
                    final_chunk,
                });
            }
            rest = remainder;
            if final_chunk {
                return records;
            }
        }
    }

    /// A crash (or a failed fsync) in the middle of `writes`, in the order
    /// they were handed to the disk: a random prefix of their records
    /// survives. The server's WAL makes one record of a batch below 64 MiB;
    /// cutting any batch anywhere is the weaker disk the core must survive
    /// too.
    pub fn tear(&mut self, writes: &[WalWrite], rng: &mut SmallRng) -> Torn {
        let records: Vec<Record> = writes
            .iter()
            .flat_map(|write| Self::records(write, rng))
            .collect();
        let kept = rng.random_range(0..=records.len());
        let mut torn = Torn {
            kept,
            total: records.len(),
            hard_states: Vec::new(),
        };
        for record in records.into_iter().take(kept) {
            let before = self.hard_state;
            match record {
                Record::Snapshot(snapshot) => self.persist(Some(snapshot), None, &[]),
                Record::Batch {
                    hard_state,
                    entries,
                    final_chunk,
                } => {
                    let commit = self.hard_state.commit;
                    let hard_state = hard_state.map(|new| {
                        if final_chunk {
                            new
                        } else {
                            HardState { commit, ..new }
                        }
                    });
                    self.persist(None, hard_state, &entries);
                }
            }
            if self.hard_state != before {
                torn.hard_states.push(self.hard_state);
            }
        }
        torn
    }

    /// Writes a `Ready`'s durable parts. A snapshot raises the stored hard
    /// state so that it never lags it, as the WAL's compaction does.
    pub fn persist(
        &mut self,
        snapshot: Option<SnapshotMetadata>,
        hard_state: Option<HardState>,
        entries: &[Entry],
    ) {
        if let Some(snapshot) = snapshot {
            self.snapshot = Some(snapshot);
            self.entries.clear();
            self.hard_state.commit = self.hard_state.commit.max(snapshot.index);
            if self.hard_state.term < snapshot.term {
                self.hard_state = HardState {
                    term: snapshot.term,
                    vote: None,
                    commit: self.hard_state.commit,
                };
            }
        }
        if let Some(first) = entries.first() {
            let snapshot_index = self.snapshot.map_or(0, |snapshot| snapshot.index);
            let durable_last = self
                .entries
                .last()
                .map_or(snapshot_index, |entry| entry.index);
            assert!(
                first.index > snapshot_index && first.index <= durable_last + 1,
                "Ready entries at {} do not fit the WAL (snapshot {snapshot_index}, last {durable_last})",
                first.index
            );
            self.entries.retain(|entry| entry.index < first.index);
            self.entries.extend(entries.iter().cloned());
        }
        if let Some(hard_state) = hard_state {
            self.hard_state = hard_state;
        }
    }
}
