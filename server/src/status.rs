//! What a node reports about itself: the types the driver publishes and
//! that the client API, the HTTP port and the metrics read. They sit below
//! `node` and `metrics`, so that neither imports the other.

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

impl NodeRole {
    /// The role as logs, the status page and JSON spell it (the same as
    /// `kvstore_raft::Role`'s `Display`).
    pub fn name(self) -> &'static str {
        match self {
            NodeRole::Follower => "follower",
            NodeRole::PreCandidate => "pre-candidate",
            NodeRole::Candidate => "candidate",
            NodeRole::Leader => "leader",
        }
    }
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

impl NodeStatus {
    /// Whether a node with this status is ready to serve: it knows a leader
    /// and has applied everything it knows committed. The error says why
    /// not.
    pub fn readiness(&self) -> Result<(), String> {
        if let Some(reason) = &self.storage_error {
            return Err(format!("storage cannot take writes: {reason}"));
        }
        if self.catching_up {
            return Err(format!(
                "catching up: node {} lost log entries it had acknowledged and is replicated again from the leader (commit index {})",
                self.id, self.commit_index
            ));
        }
        if self.leader_id == 0 {
            return Err(format!(
                "no leader known (node {} is {} in term {})",
                self.id,
                self.role.name(),
                self.term
            ));
        }
        if self.applied_index < self.commit_index {
            return Err(format!(
                "applied index {} is behind commit index {} ({} entries to apply)",
                self.applied_index,
                self.commit_index,
                self.commit_index - self.applied_index
            ));
        }
        Ok(())
    }
}

/// The counters of one outbound peer link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLinkStatus {
    /// The peer.
    pub id: u64,
    /// Sends that failed (connection refused, timeout, error status).
    pub send_failures: u64,
    /// Messages dropped because the peer was backing off or its queue was
    /// full.
    pub dropped: u64,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A follower that knows no leader, with nothing in its log.
    pub(crate) fn status_for_tests(id: u64) -> NodeStatus {
        NodeStatus {
            id,
            role: NodeRole::Follower,
            term: 1,
            leader_id: 0,
            commit_index: 0,
            applied_index: 0,
            last_log_index: 0,
            snapshot_index: 0,
            followers: Vec::new(),
            cluster_id: "test".into(),
            catching_up: false,
            storage_error: None,
        }
    }

    #[test]
    fn readiness_needs_a_leader_and_everything_committed_applied() {
        let mut status = status_for_tests(1);
        assert!(status.readiness().unwrap_err().contains("no leader"));
        status.leader_id = 2;
        status.commit_index = 5;
        status.applied_index = 4;
        assert!(status.readiness().unwrap_err().contains("behind"));
        status.applied_index = 5;
        assert!(status.readiness().is_ok());
        status.catching_up = true;
        assert!(status.readiness().unwrap_err().contains("catching up"));
        status.storage_error = Some("only 3 bytes free".into());
        let reason = status.readiness().unwrap_err();
        assert!(
            reason.contains("storage cannot take writes: only 3 bytes free"),
            "{reason}"
        );
    }

    #[test]
    fn role_names_match_the_raft_core_display() {
        for role in [
            Role::Follower,
            Role::PreCandidate,
            Role::Candidate,
            Role::Leader,
        ] {
            assert_eq!(NodeRole::from(role).name(), role.to_string());
        }
    }
}
