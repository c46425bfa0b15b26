//! What a node reports about itself.

use kvstore_raft::Role;

/// A node's role, as the Status RPC reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    /// Follows a leader.
    Follower,
    /// Asking for pre-votes.
    PreCandidate,
    /// Running an election.
    Candidate,
    /// Leading.
    Leader,
}

impl From<Role> for NodeRole {
    fn from(role: Role) -> Self {
        match role {
            Role::Follower => NodeRole::Follower,
            Role::PreCandidate => NodeRole::PreCandidate,
            Role::Candidate => NodeRole::Candidate,
            Role::Leader => NodeRole::Leader,
        }
    }
}

/// One follower's replication progress, as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerStatus {
    /// The follower.
    pub id: u64,
    /// Highest index known replicated on it.
    pub match_index: u64,
    /// Next index to send it.
    pub next_index: u64,
}

/// What the Status RPC reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// This node.
    pub id: u64,
    /// Its role.
    pub role: NodeRole,
    /// Its term.
    pub term: u64,
    /// The leader it knows (0 when none).
    pub leader_id: u64,
    /// Highest committed index.
    pub commit_index: u64,
    /// Highest applied index.
    pub applied_index: u64,
    /// Last index in the log.
    pub last_log_index: u64,
    /// Index of the latest snapshot.
    pub snapshot_index: u64,
    /// On the leader: every follower's progress.
    pub followers: Vec<FollowerStatus>,
    /// Cluster id.
    pub cluster_id: String,
    /// The node lost log entries it had acknowledged (or was started with
    /// `--initial-cluster-state existing` on an empty data directory) and
    /// may still lack committed entries; it neither votes nor campaigns
    /// until it has them and the next election was held without it.
    pub catching_up: bool,
    /// Why the data directory cannot take writes (see `storage_health`);
    /// `None` while it can.
    pub storage_error: Option<String>,
}
