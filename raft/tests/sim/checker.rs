//! Safety checkers fed by the simulation after every step. Each observation
//! either passes or returns a [`Violation`]; the checkers keep the global
//! history they need ("across history", not just the current state).

use std::collections::BTreeMap;
use std::fmt;

use kvstore_raft::{Entry, Index, NodeId, RaftCore, Term};

/// Which property broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ViolationKind {
    /// Two leaders in one term (across the whole history).
    ElectionSafety,
    /// A node durably voted for two candidates in one term.
    VoteSafety,
    /// Two entries with the same index and term differ, or their
    /// predecessors' terms differ.
    LogMatching,
    /// A new leader lacks an entry that was already committed.
    LeaderCompleteness,
    /// Two nodes applied different entries at one index, or one applied out
    /// of order.
    StateMachineSafety,
    /// A node's term went down (in memory within a life, or durably).
    MonotonicTerm,
    /// A message left its sender before what it acknowledges (a vote, log
    /// entries, a snapshot) was durable there.
    Durability,
    /// A node's commit index went down.
    MonotonicCommit,
    /// A read was confirmed at an index below a commit that happened before
    /// it was requested.
    StaleRead,
    /// After healing, no leader committed a proposal within the bound.
    Liveness,
    /// The in-flight message count exceeded the harness limit.
    MessageStorm,
    /// The core (or the harness) panicked.
    Panic,
}

impl ViolationKind {
    /// Whether this is a cluster-wide consensus property (as opposed to one
    /// node's own durable history).
    pub fn is_consensus(self) -> bool {
        matches!(
            self,
            ViolationKind::ElectionSafety
                | ViolationKind::LogMatching
                | ViolationKind::LeaderCompleteness
                | ViolationKind::StateMachineSafety
                | ViolationKind::StaleRead
        )
    }
}

/// A broken property with a human-readable explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which property.
    pub kind: ViolationKind,
    /// What was observed.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:?}: {}", self.kind, self.detail)
    }
}

fn violation(kind: ViolationKind, detail: String) -> Result<(), Violation> {
    Err(Violation { kind, detail })
}

/// 64-bit FNV-1a, a stable hash for entry digests and state hashes.
pub fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    const FNV_PRIME: u64 = 0x0000_0100_0000_01B3;
    let mut hash = seed;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// Initial hash of a state machine / FNV offset basis.
pub const INITIAL_STATE_HASH: u64 = 0xCBF2_9CE4_8422_2325;

/// Digest of an entry's content (kind and data).
pub fn entry_digest(entry: &Entry) -> u64 {
    let kind_byte = [entry.kind as u8];
    fnv1a(&entry.data, fnv1a(&kind_byte, INITIAL_STATE_HASH))
}

/// The simulated state machine hash after applying `entry` on top of `hash`.
pub fn apply_to_state(hash: u64, entry: &Entry) -> u64 {
    let mut bytes = Vec::with_capacity(24);
    bytes.extend_from_slice(&entry.index.to_le_bytes());
    bytes.extend_from_slice(&entry.term.to_le_bytes());
    bytes.extend_from_slice(&entry_digest(entry).to_le_bytes());
    fnv1a(&bytes, hash)
}

/// What is recorded per `(index, term)` for log matching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LoggedEntry {
    digest: u64,
    previous_term: Option<Term>,
}

/// Global history and the safety checks over it.
#[derive(Default, Debug)]
pub struct Checker {
    leaders_by_term: BTreeMap<Term, NodeId>,
    durable_votes: BTreeMap<(NodeId, Term), NodeId>,
    logged: BTreeMap<(Index, Term), LoggedEntry>,
    /// index -> (term, digest, first node that applied it).
    applied: BTreeMap<Index, (Term, u64, NodeId)>,
    /// Highest term and commit seen per node in its current life.
    term_seen: BTreeMap<NodeId, Term>,
    commit_seen: BTreeMap<NodeId, Index>,
    durable_term: BTreeMap<NodeId, Term>,
}

impl Checker {
    /// Fresh history.
    pub fn new() -> Self {
        Checker::default()
    }

    /// Highest index known applied (hence committed) anywhere.
    pub fn highest_applied_index(&self) -> Index {
        self.applied.keys().next_back().copied().unwrap_or(0)
    }

    /// Term and digest of the entry applied at `index`, if any node applied it.
    pub fn applied_at(&self, index: Index) -> Option<(Term, u64)> {
        self.applied
            .get(&index)
            .map(|(term, digest, _)| (*term, *digest))
    }

    /// `node` is leader in `term`: no other node may ever lead `term`.
    pub fn observe_leader(&mut self, term: Term, node: NodeId) -> Result<(), Violation> {
        match self.leaders_by_term.get(&term) {
            Some(existing) if *existing != node => violation(
                ViolationKind::ElectionSafety,
                format!("term {term} has two leaders: {existing} and {node}"),
            ),
            Some(_) => Ok(()),
            None => {
                self.leaders_by_term.insert(term, node);
                Ok(())
            }
        }
    }

    /// `node` made `(term, vote)` durable: it may never durably vote for
    /// another candidate in that term, and its durable term never decreases.
    pub fn observe_durable_hard_state(
        &mut self,
        node: NodeId,
        term: Term,
        vote: Option<NodeId>,
    ) -> Result<(), Violation> {
        let previous_term = self.durable_term.insert(node, term).unwrap_or(0);
        if term < previous_term {
            return violation(
                ViolationKind::MonotonicTerm,
                format!("node {node} durably stored term {term} after term {previous_term}"),
            );
        }
        if let Some(candidate) = vote {
            if let Some(existing) = self.durable_votes.get(&(node, term)) {
                if *existing != candidate {
                    return violation(
                        ViolationKind::VoteSafety,
                        format!(
                            "node {node} voted for {existing} and then {candidate} in term {term}"
                        ),
                    );
                }
            }
            self.durable_votes.insert((node, term), candidate);
        }
        Ok(())
    }

    /// An entry enters `node`'s log right after an entry of `previous_term`.
    /// By log matching, every copy of `(index, term)` anywhere must have the
    /// same content and the same predecessor term (which, inductively, makes
    /// the whole prefixes equal).
    pub fn observe_entry(
        &mut self,
        node: NodeId,
        entry: &Entry,
        previous_term: Option<Term>,
    ) -> Result<(), Violation> {
        let logged = LoggedEntry {
            digest: entry_digest(entry),
            previous_term,
        };
        match self.logged.get(&(entry.index, entry.term)) {
            None => {
                self.logged.insert((entry.index, entry.term), logged);
                Ok(())
            }
            Some(existing) => {
                let previous_matches = match (existing.previous_term, previous_term) {
                    (Some(left), Some(right)) => left == right,
                    // The predecessor was compacted on one side: unknown.
                    _ => true,
                };
                if existing.digest != logged.digest || !previous_matches {
                    return violation(
                        ViolationKind::LogMatching,
                        format!(
                            "node {node} holds entry ({}, term {}) as {:?}, another node as {:?}",
                            entry.index, entry.term, logged, existing
                        ),
                    );
                }
                Ok(())
            }
        }
    }

    /// `node` applied `entry`: every node must apply the same entry at an index.
    pub fn observe_applied(&mut self, node: NodeId, entry: &Entry) -> Result<(), Violation> {
        let digest = entry_digest(entry);
        match self.applied.get(&entry.index) {
            None => {
                self.applied.insert(entry.index, (entry.term, digest, node));
                Ok(())
            }
            Some((term, existing_digest, first_node))
                if *term != entry.term || *existing_digest != digest =>
            {
                violation(
                    ViolationKind::StateMachineSafety,
                    format!(
                        "index {}: node {first_node} applied (term {term}, digest {existing_digest:x}), node {node} applied (term {}, digest {digest:x})",
                        entry.index, entry.term
                    ),
                )
            }
            Some(_) => Ok(()),
        }
    }

    /// Forgets `node`'s durable history (its disk was wiped behind our back),
    /// so only the cluster-wide checks can notice the consequences.
    pub fn forget_durable_history(&mut self, node: NodeId) {
        self.durable_term.remove(&node);
        self.durable_votes.retain(|(voter, _), _| *voter != node);
    }

    /// Per-life monotonicity of term and commit. `restarted` starts a new
    /// life: the baseline becomes what the node recovered.
    pub fn observe_term_and_commit(
        &mut self,
        node: NodeId,
        term: Term,
        commit: Index,
        restarted: bool,
    ) -> Result<(), Violation> {
        if restarted {
            self.term_seen.insert(node, term);
            self.commit_seen.insert(node, commit);
            return Ok(());
        }
        let previous_term = self.term_seen.insert(node, term).unwrap_or(0);
        if term < previous_term {
            return violation(
                ViolationKind::MonotonicTerm,
                format!("node {node} term went from {previous_term} to {term}"),
            );
        }
        let previous_commit = self.commit_seen.insert(node, commit).unwrap_or(0);
        if commit < previous_commit {
            return violation(
                ViolationKind::MonotonicCommit,
                format!("node {node} commit went from {previous_commit} to {commit}"),
            );
        }
        Ok(())
    }

    /// A new leader must hold every entry known committed (applied
    /// anywhere) above its snapshot point, with the same term.
    pub fn check_leader_completeness(&self, leader: &RaftCore) -> Result<(), Violation> {
        let snapshot_index = leader.first_index() - 1;
        for (index, (term, _, node)) in self.applied.range(snapshot_index + 1..) {
            let held = leader.term_at(*index);
            if held != Some(*term) {
                return violation(
                    ViolationKind::LeaderCompleteness,
                    format!(
                        "leader {} of term {} has term {held:?} at index {index}, but node {node} applied term {term} there",
                        leader.id(),
                        leader.term()
                    ),
                );
            }
        }
        Ok(())
    }

    /// A read requested when `commit_floor` was already committed somewhere
    /// must be served at an index at least that high.
    pub fn check_read(
        &self,
        node: NodeId,
        context: u64,
        commit_floor: Index,
        read_index: Index,
    ) -> Result<(), Violation> {
        if read_index < commit_floor {
            return violation(
                ViolationKind::StaleRead,
                format!(
                    "node {node} confirmed read {context} at index {read_index}, but {commit_floor} was committed before it was requested"
                ),
            );
        }
        Ok(())
    }
}
