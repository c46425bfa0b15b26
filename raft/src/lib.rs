//! Pure, deterministic Raft consensus core for kvstore.
//!
//! The core does no I/O, reads no clock, spawns nothing and draws randomness
//! only from an RNG seeded by [`Config::seed`]. Time is counted in ticks. A
//! driver feeds it inputs ([`RaftCore::tick`], [`RaftCore::step`],
//! [`RaftCore::propose`], [`RaftCore::read_index`],
//! [`RaftCore::transfer_leader`], [`RaftCore::compact`]) and handles its
//! output, a [`Ready`]: persist, then send, then apply, then
//! [`RaftCore::advance`] (see [`Ready`] and the crate README).
//!
//! Structure follows etcd-raft: `node.rs` holds roles, ticks and the message
//! gate; `election.rs` the vote rule and campaigns; `replication.rs` the
//! leader's flow-controlled replication and commit rule; `follower.rs` the
//! follower's handlers; `read_index.rs` linearizable reads; `log.rs` the
//! in-memory log; `progress.rs` per-follower flow control; `quorum.rs`
//! majority arithmetic; `ready.rs` the driver hand-off.
//!
//! Features: pre-vote, check-quorum with leader lease, randomized election
//! timeouts in `[T, 2T)`, a no-op entry on election and commit by counting
//! only entries of the current term, leadership transfer, ReadIndex reads,
//! snapshots (metadata only; the driver ships the bytes), flow control
//! (entries and bytes per append, in-flight window, probe/replicate/snapshot
//! states, fast backtracking), a cap on uncommitted proposals. Membership is
//! static.
#![deny(missing_docs)]

mod catch_up;
mod config;
mod election;
mod errors;
mod follower;
mod log;
mod progress;
mod quorum;
mod raft_core;
mod read_index;
mod ready;
mod replication;
mod types;

pub use config::{
    Config, BYTES_PER_APPEND_MAX_DEFAULT, COMMITTED_ENTRIES_PER_READY_MAX_DEFAULT,
    DEFAULT_ELECTION_TICK, DEFAULT_HEARTBEAT_TICK, DEFAULT_SNAPSHOT_RETRY_TICK,
    ENTRIES_PER_APPEND_MAX_DEFAULT, INFLIGHT_APPENDS_MAX_DEFAULT, PENDING_PROPOSALS_MAX_DEFAULT,
    PENDING_READ_REQUESTS_MAX_DEFAULT, VOTERS_MAX,
};
pub use errors::{
    CompactError, ConfigError, ProposeError, RaftError, ReadIndexError, TransferError,
};
pub use progress::{PeerProgress, ProgressState};
pub use raft_core::RaftCore;
pub use ready::{ReadState, Ready, SoftState};
pub use types::{
    Entry, EntryKind, HardState, Index, Message, MessageBody, NodeId, Role, SnapshotMetadata, Term,
    TERM_MAX,
};
