//! Plain data shared by the core, its driver and its peers.
//!
//! Everything here is `Clone + Debug + PartialEq + Eq` and free of behaviour
//! beyond tiny helpers, so the server can convert it to and from protobuf at
//! one boundary module.

use bytes::Bytes;

/// Identifier of a cluster member. `0` is never a valid id (protobuf uses it
/// for "none"), [`crate::Config::validate`] rejects it.
pub type NodeId = u64;

/// A Raft term. Starts at 0 on a fresh node, the first election moves to 1.
pub type Term = u64;

/// The highest term a node accepts or campaigns in. A message with a higher
/// term is dropped, and a node at this term no longer campaigns, so `term + 1`
/// never wraps: one forged or corrupt message carrying a term near
/// `u64::MAX` must not put the cluster where no election can succeed. At one
/// election a millisecond the bound lasts about 8,900 years.
pub const TERM_MAX: Term = 1 << 48;

/// A position in the replicated log. Index 0 is the empty prefix; the first
/// real entry has index 1.
pub type Index = u64;

/// What an [`Entry`] carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntryKind {
    /// A client command: `data` must be applied to the state machine.
    Normal,
    /// A no-op appended by every new leader (so it can commit entries of
    /// earlier terms, Raft §5.4.2). `data` is empty; apply nothing.
    Empty,
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log.
    pub index: Index,
    /// Term of the leader that created the entry.
    pub term: Term,
    /// Command or no-op.
    pub kind: EntryKind,
    /// Opaque command bytes (empty for [`EntryKind::Empty`]). Reference
    /// counted: handing an entry to the WAL, to each peer's AppendEntries and
    /// to the state machine clones a pointer, not the payload (a 1 MiB value
    /// was copied once per peer per send).
    pub data: Bytes,
}

impl Entry {
    /// Bytes this entry counts for against
    /// [`crate::Config::bytes_per_append_max`]: the payload length.
    pub fn size_bytes(&self) -> usize {
        self.data.len()
    }
}

/// State that must be durable (fsynced) before any message of the same
/// [`crate::Ready`] is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    /// Latest term this node has seen.
    pub term: Term,
    /// Candidate this node voted for in `term`, if any.
    pub vote: Option<NodeId>,
    /// Highest index known committed. Persisting it is an optimisation (it
    /// lets a restarted node re-apply without waiting for a leader); it may lag.
    pub commit: Index,
}

/// Identifies a state-machine snapshot: it contains the effect of every entry
/// up to and including `index`, whose term is `term`. The core only handles
/// this metadata; the driver stores and ships the snapshot bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotMetadata {
    /// Last log index covered by the snapshot.
    pub index: Index,
    /// Term of the entry at `index`.
    pub term: Term,
}

/// A message between two cores. The driver only transports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Recipient.
    pub to: NodeId,
    /// Sender's term (for a pre-vote request: the term it would campaign in;
    /// for a granted vote or pre-vote: the term of the request).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// The payload of a [`Message`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// Ask for a vote (or, with `pre_vote`, ask whether a vote would be
    /// granted without changing anyone's term).
    RequestVote {
        /// A pre-vote probe: grants and rejections change no state.
        pre_vote: bool,
        /// Index of the candidate's last log entry.
        last_log_index: Index,
        /// Term of the candidate's last log entry.
        last_log_term: Term,
        /// Sent because the leader told the candidate to campaign
        /// ([`MessageBody::TimeoutNow`]): voters ignore their leader lease.
        transfer: bool,
    },
    /// Answer to [`MessageBody::RequestVote`].
    RequestVoteResponse {
        /// Echoes the request's `pre_vote`.
        pre_vote: bool,
        /// Whether the vote (or pre-vote) was granted.
        granted: bool,
    },
    /// Replicate entries following `(prev_log_index, prev_log_term)`.
    AppendEntries {
        /// Index of the entry just before `entries`.
        prev_log_index: Index,
        /// Term of the entry at `prev_log_index`.
        prev_log_term: Term,
        /// Entries to append; may be empty (a probe).
        entries: Vec<Entry>,
        /// Leader's commit index.
        leader_commit: Index,
    },
    /// Answer to [`MessageBody::AppendEntries`].
    AppendEntriesResponse {
        /// The entries were accepted.
        success: bool,
        /// On success: the highest index known to match the leader's log.
        /// On rejection: the `prev_log_index` that did not match.
        index: Index,
        /// On rejection: the largest index at or below the rejected one whose
        /// term is at most the rejected `prev_log_term` (fast backtracking);
        /// the leader resumes probing from there. 0 on success.
        reject_hint_index: Index,
        /// On rejection: the term at `reject_hint_index` (0 if unknown, for
        /// instance compacted). 0 on success.
        reject_hint_term: Term,
    },
    /// Leader liveness signal; also carries the commit index (capped at what
    /// the recipient is known to have) and the read round used by
    /// [`crate::RaftCore::read_index`].
    Heartbeat {
        /// `min(leader commit, recipient's match index)`.
        leader_commit: Index,
        /// The leader's current read round, echoed back.
        read_round: u64,
    },
    /// Answer to [`MessageBody::Heartbeat`].
    HeartbeatResponse {
        /// Echo of the heartbeat's `read_round`.
        read_round: u64,
        /// `Some(last_index)`: the follower's log ends at `last_index`, below
        /// the commit index the heartbeat said it holds. It lost entries it
        /// had acknowledged (its data directory was wiped or its WAL cut), so
        /// the leader must replicate to it again from there.
        log_lost_after: Option<Index>,
    },
    /// The recipient lacks entries the leader has compacted: install the
    /// leader's snapshot. The driver attaches the snapshot bytes whose
    /// metadata equals `snapshot` when sending, and hands them to the
    /// recipient's state machine when [`crate::Ready::snapshot`] says so.
    InstallSnapshot {
        /// Which snapshot.
        snapshot: SnapshotMetadata,
    },
    /// Answer to [`MessageBody::InstallSnapshot`].
    InstallSnapshotResponse {
        /// The recipient's log now matches the leader's up to this index (the
        /// snapshot index, or its commit index if the snapshot was stale).
        /// 0 when answering a request from an older term.
        index: Index,
    },
    /// Leadership transfer: the recipient should campaign immediately.
    TimeoutNow,
    /// Sent with term 0 by a node that lost its durable state: "what is
    /// your current term?" It moves nobody's term (see `catch_up.rs`).
    TermQuery,
    /// Answer to [`MessageBody::TermQuery`]: the message's `term` is the
    /// sender's current term.
    TermAnswer,
}

impl MessageBody {
    /// Short name of the message kind, for logs and metrics labels.
    pub fn kind_name(&self) -> &'static str {
        match self {
            MessageBody::RequestVote { pre_vote: true, .. } => "RequestPreVote",
            MessageBody::RequestVote { .. } => "RequestVote",
            MessageBody::RequestVoteResponse { pre_vote: true, .. } => "RequestPreVoteResponse",
            MessageBody::RequestVoteResponse { .. } => "RequestVoteResponse",
            MessageBody::AppendEntries { .. } => "AppendEntries",
            MessageBody::AppendEntriesResponse { .. } => "AppendEntriesResponse",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
            MessageBody::InstallSnapshotResponse { .. } => "InstallSnapshotResponse",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::TermQuery => "TermQuery",
            MessageBody::TermAnswer => "TermAnswer",
        }
    }
}

/// The role a node plays in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Probing with pre-votes whether it could win an election; its term is
    /// unchanged.
    PreCandidate,
    /// Campaigning in a new term.
    Candidate,
    /// Leads its term.
    Leader,
}

impl std::fmt::Display for Role {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        };
        formatter.write_str(name)
    }
}
