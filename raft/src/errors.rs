//! One `thiserror` enum per operation. Operating errors are returned;
//! programmer errors (broken invariants) are `assert!`s and panic.

use crate::types::{Index, NodeId, Term};

/// A [`crate::Config`] field is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `id` is 0.
    #[error("node id must not be 0")]
    IdZero,
    /// A voter id is 0.
    #[error("voter ids must not be 0")]
    VoterIdZero,
    /// A voter is listed twice.
    #[error("voter {id} is listed twice")]
    DuplicateVoter {
        /// The repeated id.
        id: NodeId,
    },
    /// `id` is not among `voters`.
    #[error("node {id} is not among the voters")]
    NotAVoter {
        /// This node's id.
        id: NodeId,
    },
    /// More voters than [`crate::VOTERS_MAX`].
    #[error("{count} voters exceed the limit of {limit}")]
    TooManyVoters {
        /// Voters given.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// `election_tick` must exceed `heartbeat_tick`.
    #[error("election_tick {election_tick} must be above heartbeat_tick {heartbeat_tick}")]
    ElectionTickNotAboveHeartbeatTick {
        /// Configured election tick.
        election_tick: u32,
        /// Configured heartbeat tick.
        heartbeat_tick: u32,
    },
    /// A tick count or limit is 0.
    #[error("{field} must not be 0")]
    Zero {
        /// Name of the field.
        field: &'static str,
    },
}

/// [`crate::RaftCore::new`] was given an invalid config or persisted state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RaftError {
    /// The configuration is invalid.
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
    /// Persisted entries have a gap or do not start right after the snapshot.
    #[error("persisted entries are not contiguous: expected index {expected}, found {found}")]
    NonContiguousEntries {
        /// Index that should come next.
        expected: Index,
        /// Index found instead.
        found: Index,
    },
    /// Persisted entry terms decrease.
    #[error("persisted entry {index} has term {entry_term}, below the previous entry's term {previous_term}")]
    DecreasingEntryTerm {
        /// Offending index.
        index: Index,
        /// Its term.
        entry_term: Term,
        /// Term of the entry before it.
        previous_term: Term,
    },
    /// The persisted term is above [`crate::TERM_MAX`].
    #[error("persisted term {term} is above the limit {limit}")]
    TermAboveMax {
        /// Persisted current term.
        term: Term,
        /// [`crate::TERM_MAX`].
        limit: Term,
    },
    /// A persisted entry or the snapshot has a term above the hard state's.
    #[error("persisted log has term {log_term}, above the hard state term {hard_state_term}")]
    LogTermAboveHardState {
        /// Highest term in the log or snapshot.
        log_term: Term,
        /// Persisted current term.
        hard_state_term: Term,
    },
    /// The persisted commit index points past the persisted log.
    #[error("persisted commit index {commit} is beyond the last log index {last_index}")]
    CommitBeyondLog {
        /// Persisted commit index.
        commit: Index,
        /// Last persisted index.
        last_index: Index,
    },
}

/// Why [`crate::RaftCore::propose`] failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader accepts proposals.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this node knows of in its term, if any.
        leader_hint: Option<NodeId>,
    },
    /// `last_index - commit_index` reached `pending_proposals_max`.
    #[error("too many uncommitted proposals")]
    TooManyPending,
    /// A leadership transfer is in progress.
    #[error("leadership transfer in progress")]
    TransferInProgress,
}

/// Why [`crate::RaftCore::read_index`] failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadIndexError {
    /// Only the leader serves read requests.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this node knows of in its term, if any.
        leader_hint: Option<NodeId>,
    },
    /// `pending_read_requests_max` requests already wait.
    #[error("too many pending read requests")]
    TooManyPending,
}

/// Why [`crate::RaftCore::transfer_leader`] failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// Only the leader can transfer leadership.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this node knows of in its term, if any.
        leader_hint: Option<NodeId>,
    },
    /// The target is not a voter.
    #[error("transfer target {target} is not a voter")]
    UnknownTarget {
        /// The requested target.
        target: NodeId,
    },
}

/// Why [`crate::RaftCore::compact`] failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompactError {
    /// Only applied entries can be compacted away.
    #[error("cannot compact to {index}: only {applied} is applied")]
    NotApplied {
        /// Requested index.
        index: Index,
        /// Applied index.
        applied: Index,
    },
    /// The log is already compacted to at least this index.
    #[error("already compacted to {snapshot_index}, cannot compact to {index}")]
    AlreadyCompacted {
        /// Requested index.
        index: Index,
        /// Current snapshot index.
        snapshot_index: Index,
    },
}
