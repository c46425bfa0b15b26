//! Node configuration, checked up front by [`Config::validate`].

use crate::errors::ConfigError;
use crate::types::NodeId;

/// Default base election timeout, in ticks (the randomized timeout is drawn
/// from `[election_tick, 2 * election_tick)`).
pub const DEFAULT_ELECTION_TICK: u32 = 10;
/// Default heartbeat interval, in ticks.
pub const DEFAULT_HEARTBEAT_TICK: u32 = 1;
/// Default cap on entries in one `AppendEntries` message.
pub const DEFAULT_MAX_ENTRIES_PER_APPEND: usize = 64;
/// Default cap on payload bytes in one `AppendEntries` message (one entry is
/// always sent even if it alone is larger).
pub const DEFAULT_MAX_BYTES_PER_APPEND: usize = 1024 * 1024;
/// Default cap on unacknowledged `AppendEntries` messages per follower.
pub const DEFAULT_MAX_INFLIGHT_APPENDS: usize = 256;
/// Default cap on uncommitted entries (`last_index - commit_index`) before
/// proposals are rejected.
pub const DEFAULT_MAX_PENDING_PROPOSALS: usize = 4096;
/// Default cap on read requests waiting for confirmation.
pub const DEFAULT_MAX_PENDING_READ_REQUESTS: usize = 4096;
/// Default cap on committed entries handed out in one `Ready`.
pub const DEFAULT_MAX_COMMITTED_ENTRIES_PER_READY: usize = 4096;
/// Default number of ticks a leader waits for an answer to an
/// `InstallSnapshot` before sending it again.
pub const DEFAULT_SNAPSHOT_RETRY_TICK: u32 = 50;
/// Largest cluster this core accepts.
pub const MAX_VOTERS: usize = 64;

/// Configuration of one [`crate::RaftNode`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id (non-zero).
    pub id: NodeId,
    /// All voting members, including this node. Membership is static.
    pub voters: Vec<NodeId>,
    /// Base election timeout `T` in ticks; a follower's actual timeout is
    /// drawn from `[T, 2T)`. Also the leader-lease and check-quorum period.
    pub election_tick: u32,
    /// Leader heartbeat interval in ticks; must be below `election_tick`.
    pub heartbeat_tick: u32,
    /// Seed of the election-jitter RNG. It is mixed with `id`, so all nodes
    /// may share one seed and still draw different timeouts.
    pub seed: u64,
    /// A leader that has not heard from a majority within `election_tick`
    /// steps down, and a node that heard from a live leader within
    /// `election_tick` ignores vote requests (leader lease).
    pub check_quorum: bool,
    /// Campaign with a pre-vote round first, so a node that rejoins after a
    /// partition does not raise the cluster's term.
    pub pre_vote: bool,
    /// Cap on entries per `AppendEntries` message.
    pub max_entries_per_append: usize,
    /// Cap on payload bytes per `AppendEntries` message (at least one entry
    /// is always sent).
    pub max_bytes_per_append: usize,
    /// Cap on unacknowledged `AppendEntries` messages per follower while
    /// pipelining.
    pub max_inflight_appends: usize,
    /// Proposals fail with [`crate::ProposeError::TooManyPending`] once
    /// `last_index - commit_index` reaches this.
    pub max_pending_proposals: usize,
    /// Read requests fail with [`crate::ReadIndexError::TooManyPending`] once
    /// this many wait for confirmation.
    pub max_pending_read_requests: usize,
    /// Cap on committed entries handed out by one [`crate::RaftNode::ready`].
    pub max_committed_entries_per_ready: usize,
    /// Ticks a leader waits for an answer to `InstallSnapshot` before it
    /// probes the follower again (and so re-sends the snapshot).
    pub snapshot_retry_tick: u32,
    /// This node's durable state was lost (its data directory was wiped and
    /// it rejoins a cluster that knows it): it may have voted or acknowledged
    /// entries it no longer remembers. It first learns the cluster's term
    /// from its peers, acknowledging nothing meanwhile, then follows the
    /// leader, and grants votes (pre-votes included) or campaigns again only
    /// once it holds a commit of a leader elected after that term (see
    /// `catch_up.rs`). A node that finds out on its own that it lost entries
    /// (a heartbeat says it holds more than it does) does the same.
    pub catch_up_before_voting: bool,
}

impl Config {
    /// A configuration with the `DEFAULT_*` limits, check-quorum and pre-vote
    /// enabled, and seed 0.
    pub fn new(id: NodeId, voters: Vec<NodeId>) -> Self {
        Config {
            id,
            voters,
            election_tick: DEFAULT_ELECTION_TICK,
            heartbeat_tick: DEFAULT_HEARTBEAT_TICK,
            seed: 0,
            check_quorum: true,
            pre_vote: true,
            max_entries_per_append: DEFAULT_MAX_ENTRIES_PER_APPEND,
            max_bytes_per_append: DEFAULT_MAX_BYTES_PER_APPEND,
            max_inflight_appends: DEFAULT_MAX_INFLIGHT_APPENDS,
            max_pending_proposals: DEFAULT_MAX_PENDING_PROPOSALS,
            max_pending_read_requests: DEFAULT_MAX_PENDING_READ_REQUESTS,
            max_committed_entries_per_ready: DEFAULT_MAX_COMMITTED_ENTRIES_PER_READY,
            snapshot_retry_tick: DEFAULT_SNAPSHOT_RETRY_TICK,
            catch_up_before_voting: false,
        }
    }

    /// Checks every field; [`crate::RaftNode::new`] calls it too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::IdZero);
        }
        if self.voters.len() > MAX_VOTERS {
            return Err(ConfigError::TooManyVoters {
                count: self.voters.len(),
                limit: MAX_VOTERS,
            });
        }
        for (position, voter) in self.voters.iter().enumerate() {
            if *voter == 0 {
                return Err(ConfigError::VoterIdZero);
            }
            if self.voters[..position].contains(voter) {
                return Err(ConfigError::DuplicateVoter { id: *voter });
            }
        }
        if !self.voters.contains(&self.id) {
            return Err(ConfigError::NotAVoter { id: self.id });
        }
        if self.heartbeat_tick == 0 {
            return Err(ConfigError::Zero {
                field: "heartbeat_tick",
            });
        }
        if self.election_tick <= self.heartbeat_tick {
            return Err(ConfigError::ElectionTickNotAboveHeartbeatTick {
                election_tick: self.election_tick,
                heartbeat_tick: self.heartbeat_tick,
            });
        }
        let limits = [
            ("max_entries_per_append", self.max_entries_per_append),
            ("max_bytes_per_append", self.max_bytes_per_append),
            ("max_inflight_appends", self.max_inflight_appends),
            ("max_pending_proposals", self.max_pending_proposals),
            ("max_pending_read_requests", self.max_pending_read_requests),
            (
                "max_committed_entries_per_ready",
                self.max_committed_entries_per_ready,
            ),
            ("snapshot_retry_tick", self.snapshot_retry_tick as usize),
        ];
        for (field, value) in limits {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = Config::new(1, vec![1, 2, 3]);
        assert_eq!(config.validate(), Ok(()));
        assert!(config.check_quorum && config.pre_vote);
        assert_eq!(config.election_tick, DEFAULT_ELECTION_TICK);
    }

    #[test]
    fn rejects_bad_fields() {
        let cases: Vec<(Config, ConfigError)> = vec![
            (Config::new(0, vec![1]), ConfigError::IdZero),
            (
                Config::new(4, vec![1, 2, 3]),
                ConfigError::NotAVoter { id: 4 },
            ),
            (
                Config::new(1, vec![1, 2, 2]),
                ConfigError::DuplicateVoter { id: 2 },
            ),
            (Config::new(1, vec![1, 0]), ConfigError::VoterIdZero),
            (
                Config {
                    election_tick: 1,
                    ..Config::new(1, vec![1])
                },
                ConfigError::ElectionTickNotAboveHeartbeatTick {
                    election_tick: 1,
                    heartbeat_tick: 1,
                },
            ),
            (
                Config {
                    heartbeat_tick: 0,
                    ..Config::new(1, vec![1])
                },
                ConfigError::Zero {
                    field: "heartbeat_tick",
                },
            ),
            (
                Config {
                    max_inflight_appends: 0,
                    ..Config::new(1, vec![1])
                },
                ConfigError::Zero {
                    field: "max_inflight_appends",
                },
            ),
            (
                Config::new(1, (1..=(MAX_VOTERS as u64 + 1)).collect()),
                ConfigError::TooManyVoters {
                    count: MAX_VOTERS + 1,
                    limit: MAX_VOTERS,
                },
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(config.validate(), Err(expected));
        }
    }
}
