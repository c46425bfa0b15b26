//! Node configuration, checked up front by [`Config::validate`].

use crate::errors::ConfigError;
use crate::types::NodeId;

/// Default base election timeout, in ticks (the randomized timeout is drawn
/// from `[election_tick, 2 * election_tick)`).
pub const DEFAULT_ELECTION_TICK: u32 = 10;
/// Default heartbeat interval, in ticks.
pub const DEFAULT_HEARTBEAT_TICK: u32 = 1;
/// Default cap on entries in one `AppendEntries` message.
pub const ENTRIES_PER_APPEND_MAX_DEFAULT: usize = 64;
/// Default cap on payload bytes in one `AppendEntries` message (one entry is
/// always sent even if it alone is larger).
pub const BYTES_PER_APPEND_MAX_DEFAULT: usize = 1024 * 1024;
/// Default cap on unacknowledged `AppendEntries` messages per follower.
pub const INFLIGHT_APPENDS_MAX_DEFAULT: usize = 256;
/// Default cap on uncommitted entries (`last_index - commit_index`) before
/// proposals are rejected.
pub const PENDING_PROPOSALS_MAX_DEFAULT: usize = 4096;
/// Default cap on read requests waiting for confirmation.
pub const PENDING_READ_REQUESTS_MAX_DEFAULT: usize = 4096;
/// Default cap on committed entries handed out in one `Ready`.
pub const COMMITTED_ENTRIES_PER_READY_MAX_DEFAULT: usize = 4096;
/// Default number of ticks a leader waits for an answer to an
/// `InstallSnapshot` before sending it again.
pub const DEFAULT_SNAPSHOT_RETRY_TICK: u32 = 50;
/// Largest cluster this core accepts.
pub const VOTERS_MAX: usize = 64;

/// Configuration of one [`crate::RaftCore`].
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
    pub entries_per_append_max: usize,
    /// Cap on payload bytes per `AppendEntries` message (at least one entry
    /// is always sent).
    pub bytes_per_append_max: usize,
    /// Cap on unacknowledged `AppendEntries` messages per follower while
    /// pipelining.
    pub inflight_appends_max: usize,
    /// Proposals fail with [`crate::ProposeError::TooManyPending`] once
    /// `last_index - commit_index` reaches this.
    pub pending_proposals_max: usize,
    /// Read requests fail with [`crate::ReadIndexError::TooManyPending`] once
    /// this many wait for confirmation.
    pub pending_read_requests_max: usize,
    /// Cap on committed entries handed out by one [`crate::RaftCore::ready`].
    pub committed_entries_per_ready_max: usize,
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
            entries_per_append_max: ENTRIES_PER_APPEND_MAX_DEFAULT,
            bytes_per_append_max: BYTES_PER_APPEND_MAX_DEFAULT,
            inflight_appends_max: INFLIGHT_APPENDS_MAX_DEFAULT,
            pending_proposals_max: PENDING_PROPOSALS_MAX_DEFAULT,
            pending_read_requests_max: PENDING_READ_REQUESTS_MAX_DEFAULT,
            committed_entries_per_ready_max: COMMITTED_ENTRIES_PER_READY_MAX_DEFAULT,
            snapshot_retry_tick: DEFAULT_SNAPSHOT_RETRY_TICK,
            catch_up_before_voting: false,
        }
    }

    /// Checks every field; [`crate::RaftCore::new`] calls it too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::IdZero);
        }
        if self.voters.len() > VOTERS_MAX {
            return Err(ConfigError::TooManyVoters {
                count: self.voters.len(),
                limit: VOTERS_MAX,
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
            ("entries_per_append_max", self.entries_per_append_max),
            ("bytes_per_append_max", self.bytes_per_append_max),
            ("inflight_appends_max", self.inflight_appends_max),
            ("pending_proposals_max", self.pending_proposals_max),
            ("pending_read_requests_max", self.pending_read_requests_max),
            (
                "committed_entries_per_ready_max",
                self.committed_entries_per_ready_max,
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
                    inflight_appends_max: 0,
                    ..Config::new(1, vec![1])
                },
                ConfigError::Zero {
                    field: "inflight_appends_max",
                },
            ),
            (
                Config::new(1, (1..=(VOTERS_MAX as u64 + 1)).collect()),
                ConfigError::TooManyVoters {
                    count: VOTERS_MAX + 1,
                    limit: VOTERS_MAX,
                },
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(config.validate(), Err(expected));
        }
    }
}
