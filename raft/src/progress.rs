//! What a leader knows about one follower: how much of the log matches, what
//! to send next, and how fast it may send (etcd's `tracker/progress.go`).
//!
//! * `Probe`: the match point is unknown; send one `AppendEntries` and wait
//!   for its answer (or the next heartbeat answer) before sending another.
//! * `Replicate`: the follower is in sync; pipeline up to
//!   `inflight_appends_max` messages, advancing `next_index` optimistically.
//! * `Snapshot`: the follower needs compacted entries; an `InstallSnapshot`
//!   was sent and nothing else is until it is answered or times out.

use std::collections::VecDeque;

use crate::types::{Index, NodeId};

/// Replication state of one follower, as seen by the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Finding the match point, one message at a time.
    Probe,
    /// Streaming entries with pipelining.
    Replicate,
    /// Waiting for a snapshot to be installed.
    Snapshot,
}

/// Read-only view of a follower's progress, from
/// [`crate::RaftCore::follower_progress`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerProgress {
    /// The follower.
    pub id: NodeId,
    /// Highest index known to match the leader's log.
    pub match_index: Index,
    /// Next index the leader will send.
    pub next_index: Index,
    /// Replication state.
    pub state: ProgressState,
    /// Unacknowledged `AppendEntries` messages (pipelining window in use).
    pub inflight_appends: usize,
}

/// Last indexes of unacknowledged `AppendEntries` messages, oldest first.
#[derive(Clone, Debug)]
pub(crate) struct Inflights {
    last_indexes: VecDeque<Index>,
    capacity: usize,
}

impl Inflights {
    pub(crate) fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "in-flight capacity must be positive");
        Inflights {
            last_indexes: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.last_indexes.len() >= self.capacity
    }

    pub(crate) fn count(&self) -> usize {
        self.last_indexes.len()
    }

    pub(crate) fn add(&mut self, last_index: Index) {
        assert!(!self.is_full(), "in-flight window overflow");
        if let Some(newest) = self.last_indexes.back() {
            assert!(last_index > *newest, "in-flight indexes must increase");
        }
        self.last_indexes.push_back(last_index);
    }

    /// Acknowledges every message whose last index is `<= index`.
    pub(crate) fn free_up_to(&mut self, index: Index) {
        while self
            .last_indexes
            .front()
            .is_some_and(|oldest| *oldest <= index)
        {
            self.last_indexes.pop_front();
        }
    }

    pub(crate) fn free_first(&mut self) {
        self.last_indexes.pop_front();
    }

    pub(crate) fn reset(&mut self) {
        self.last_indexes.clear();
    }
}

/// The leader's bookkeeping for one follower.
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    pub(crate) match_index: Index,
    pub(crate) next_index: Index,
    pub(crate) state: ProgressState,
    /// In `Probe`: a probe was sent and is unanswered.
    pub(crate) probe_sent: bool,
    /// In `Snapshot`: index of the snapshot sent.
    pub(crate) pending_snapshot_index: Index,
    /// In `Snapshot`: ticks since it was sent.
    pub(crate) snapshot_elapsed_ticks: u32,
    pub(crate) inflights: Inflights,
    /// Heard from since the last check-quorum round.
    pub(crate) recent_active: bool,
    /// Highest read round this follower acknowledged in the current term.
    pub(crate) acknowledged_read_round: u64,
    /// Highest commit index sent to this follower (the commit index of an
    /// append, capped at the append's last entry, a heartbeat's, or a
    /// snapshot's index). A message lost on the way is made up for by the
    /// next heartbeat, which always carries the commit index.
    pub(crate) commit_sent: Index,
}

impl Progress {
    pub(crate) fn new(next_index: Index, inflight_appends_max: usize) -> Self {
        assert!(next_index > 0, "next index starts at 1");
        Progress {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            pending_snapshot_index: 0,
            snapshot_elapsed_ticks: 0,
            inflights: Inflights::new(inflight_appends_max),
            recent_active: false,
            acknowledged_read_round: 0,
            commit_sent: 0,
        }
    }

    pub(crate) fn assert_invariants(&self) {
        assert!(
            self.match_index < self.next_index,
            "next index must be above match index"
        );
        if self.state != ProgressState::Replicate {
            assert_eq!(
                self.inflights.count(),
                0,
                "in-flight messages outside Replicate"
            );
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.state = state;
        self.probe_sent = false;
        self.pending_snapshot_index = 0;
        self.snapshot_elapsed_ticks = 0;
        self.inflights.reset();
    }

    pub(crate) fn become_probe(&mut self) {
        // After a snapshot, resume right after it: it was probably installed.
        let resume_after = if self.state == ProgressState::Snapshot {
            self.match_index.max(self.pending_snapshot_index)
        } else {
            self.match_index
        };
        self.reset_state(ProgressState::Probe);
        self.next_index = resume_after + 1;
    }

    /// A snapshot went unanswered for too long: probe from the match point.
    pub(crate) fn retry_after_snapshot_timeout(&mut self) {
        assert_eq!(self.state, ProgressState::Snapshot);
        self.reset_state(ProgressState::Probe);
        self.next_index = self.match_index + 1;
    }

    pub(crate) fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next_index = self.match_index + 1;
    }

    /// The follower was sent `commit` as the index it may apply up to.
    pub(crate) fn commit_sent_up_to(&mut self, commit: Index) {
        self.commit_sent = self.commit_sent.max(commit);
    }

    pub(crate) fn become_snapshot(&mut self, snapshot_index: Index) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot_index = snapshot_index;
    }

    /// The follower's log matches up to `index`. Returns whether that is news.
    pub(crate) fn maybe_update(&mut self, index: Index) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index + 1);
        updated
    }

    /// The follower rejected an append after `rejected`; `hint` is where its
    /// log may match. Returns false for a stale rejection.
    pub(crate) fn maybe_decrease_to(&mut self, rejected: Index, hint: Index) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.match_index {
                return false;
            }
            self.next_index = self.match_index + 1;
            return true;
        }
        if self.next_index - 1 != rejected {
            return false;
        }
        self.next_index = rejected.min(hint + 1).max(self.match_index + 1);
        self.probe_sent = false;
        true
    }

    /// The follower lost entries it had acknowledged; its log ends at
    /// `last_index`. Nothing is known to match any more (its entries may
    /// differ from ours): probe from its last entry, as for a new follower.
    pub(crate) fn log_lost(&mut self, last_index: Index) {
        self.reset_state(ProgressState::Probe);
        self.match_index = 0;
        self.next_index = last_index + 1;
        self.commit_sent = 0;
    }

    /// Whether sending must wait.
    pub(crate) fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.is_full(),
            ProgressState::Snapshot => true,
        }
    }

    /// An `AppendEntries` with `count` entries ending at `last_index` was sent.
    pub(crate) fn sent_entries(&mut self, count: usize, last_index: Index) {
        match self.state {
            ProgressState::Replicate => {
                if count > 0 {
                    self.next_index = last_index + 1;
                    self.inflights.add(last_index);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => unreachable!("no appends while a snapshot is pending"),
        }
    }

    pub(crate) fn view(&self, id: NodeId) -> PeerProgress {
        PeerProgress {
            id,
            match_index: self.match_index,
            next_index: self.next_index,
            state: self.state,
            inflight_appends: self.inflights.count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sends_one_at_a_time() {
        let mut progress = Progress::new(5, 4);
        assert!(!progress.is_paused());
        progress.sent_entries(3, 7);
        assert!(progress.is_paused());
        assert_eq!(progress.next_index, 5, "probe does not advance next");
        assert!(progress.maybe_update(7));
        assert!(!progress.is_paused());
    }

    #[test]
    fn replicate_pipelines_up_to_the_window() {
        let mut progress = Progress::new(1, 2);
        progress.become_replicate();
        progress.sent_entries(2, 2);
        progress.sent_entries(2, 4);
        assert!(progress.is_paused());
        assert_eq!(progress.next_index, 5);
        progress.maybe_update(2);
        progress.inflights.free_up_to(2);
        assert!(!progress.is_paused());
    }

    #[test]
    fn stale_rejections_are_ignored() {
        let mut progress = Progress::new(10, 4);
        progress.match_index = 3;
        // Probe: only a rejection of next - 1 counts.
        assert!(!progress.maybe_decrease_to(5, 2));
        assert!(progress.maybe_decrease_to(9, 6));
        assert_eq!(progress.next_index, 7);
        // The hint never goes below match + 1.
        assert!(progress.maybe_decrease_to(6, 0));
        assert_eq!(progress.next_index, 4);
        progress.become_replicate();
        assert!(
            !progress.maybe_decrease_to(3, 0),
            "at or below match is stale"
        );
    }

    #[test]
    fn a_follower_that_lost_its_log_is_probed_from_its_last_entry() {
        let mut progress = Progress::new(10, 4);
        progress.maybe_update(9);
        progress.become_replicate();
        progress.sent_entries(3, 12);
        progress.commit_sent_up_to(9);
        progress.log_lost(4);
        assert_eq!(progress.state, ProgressState::Probe);
        assert_eq!((progress.match_index, progress.next_index), (0, 5));
        assert_eq!(progress.inflights.count(), 0);
        assert_eq!(progress.commit_sent, 0);
        progress.assert_invariants();
        // Its answer to the probe at 4 restores the match point.
        progress.sent_entries(1, 5);
        assert!(progress.maybe_update(5));
    }

    #[test]
    fn snapshot_resumes_after_the_snapshot() {
        let mut progress = Progress::new(3, 4);
        progress.become_snapshot(20);
        assert!(progress.is_paused());
        progress.become_probe();
        assert_eq!(progress.next_index, 21);
        progress.become_snapshot(20);
        progress.retry_after_snapshot_timeout();
        assert_eq!(progress.next_index, 1);
    }
}
