//! The simulated disk: what survives a crash, how a `Ready` is written to
//! it, and the durability contract of the messages that leave a `Ready`.
//!
//! A message may acknowledge only what its sender has already made durable
//! (`Ready` contract, step 2 after step 1): a granted vote needs the vote on
//! disk, a successful append or snapshot answer needs the log on disk up to
//! the acknowledged index. The driver records these claims when it takes a
//! `Ready` ([`durability_claims`]) and checks them against the disk just
//! before it sends ([`Durable::check_claim`]).

use kvstore_raft::{Entry, HardState, Index, Message, MessageBody, NodeId, RaftNode, Term};
use kvstore_raft::{Ready, SnapshotMetadata};

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
pub fn durability_claims(ready: &Ready, core: &RaftNode) -> Vec<Option<DurabilityClaim>> {
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

    /// Writes a `Ready`'s durable parts.
    pub fn persist(
        &mut self,
        snapshot: Option<SnapshotMetadata>,
        hard_state: Option<HardState>,
        entries: &[Entry],
    ) {
        if let Some(snapshot) = snapshot {
            self.snapshot = Some(snapshot);
            self.entries.clear();
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
