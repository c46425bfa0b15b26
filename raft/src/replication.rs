//! The leader's side of log replication: sending appends, snapshots and
//! heartbeats under flow control, handling the answers, and advancing the
//! commit index by counting replicas of entries of the current term.
//!
//! A new commit index travels with the next append or heartbeat instead of
//! in an empty append of its own (hashicorp/raft does the same; etcd-raft
//! broadcasts one at once). Under a steady stream of writes the next append
//! is at most one write away, and the broadcast, with its answer from each
//! follower, took a large share of the servers' CPU per single-client put
//! (measurements: docs/benchmarks.md, "The commit index on the next
//! append"). The driver bounds how long a follower in sync may go without
//! hearing of entries it holds being committed:
//! [`RaftCore::has_unsent_commit`] says that one has not heard,
//! [`RaftCore::send_commit`] tells it (a follower whose in-flight window is
//! full hears with its next append or heartbeat).
//! A follower owed the commit index also gets it as soon as it answers a
//! heartbeat, so that a read waiting there for its read index is not held
//! up.

use crate::progress::{Progress, ProgressState};
use crate::quorum;
use crate::raft_core::RaftCore;
use crate::types::{Entry, Index, MessageBody, NodeId, Role, Term};

impl RaftCore {
    /// Appends one entry of our term to our log; the next `ready()` sends it
    /// to every peer whose flow control allows, with every other entry
    /// appended meanwhile (see [`RaftCore::send_pending_appends`]).
    pub(crate) fn leader_append(&mut self, entry: Entry) {
        assert_eq!(
            entry.term, self.term,
            "a leader appends entries of its term"
        );
        assert_eq!(
            entry.index,
            self.log.last_index() + 1,
            "leader appends at the end"
        );
        self.log.append(std::slice::from_ref(&entry));
        // Our own copy counts toward commit once persisted (see `advance`).
    }

    /// Whether this node leads and holds entries appended since the last
    /// `ready()`: the log's entries not yet handed out for persisting.
    fn appends_pending(&self) -> bool {
        self.role == Role::Leader && !self.log.unstable_entries().is_empty()
    }

    /// Sends every peer the entries appended since the last `ready()`, as
    /// few appends as flow control allows. Sending them as each proposal
    /// is appended made one append per proposal per peer: under load a
    /// `Ready` holds many proposals, so the leader sent many one-entry
    /// appends where one per peer does, and each follower stepped and
    /// acknowledged every one (measurements: docs/benchmarks.md, "One
    /// append per follower per Ready").
    pub(crate) fn send_pending_appends(&mut self) {
        if !self.appends_pending() {
            return;
        }
        for peer in self.peers() {
            while self.send_append(peer, false) {}
        }
    }

    /// Sends `peer` the next batch of entries (at most `entries_per_append_max`
    /// entries and `bytes_per_append_max` bytes), or an `InstallSnapshot` if
    /// they are compacted. Returns whether anything was sent.
    pub(crate) fn send_append(&mut self, peer: NodeId, send_if_empty: bool) -> bool {
        let progress = &self.progress[&peer];
        if progress.is_paused() {
            return false;
        }
        let next_index = progress.next_index;
        let prev_log_index = next_index - 1;
        let prev_log_term = self.log.term(prev_log_index);
        let entries = self.log.entries_from(
            next_index,
            self.config.entries_per_append_max,
            self.config.bytes_per_append_max,
        );
        let (Some(prev_log_term), Some(entries)) = (prev_log_term, entries) else {
            self.send_snapshot(peer);
            return true;
        };
        if entries.is_empty() && !send_if_empty {
            return false;
        }
        let count = entries.len();
        let last_index = prev_log_index + count as Index;
        let progress = self.progress.get_mut(&peer).expect("peer progress");
        progress.sent_entries(count, last_index);
        let leader_commit = self.log.committed();
        progress.commit_sent_up_to(leader_commit.min(last_index));
        self.send(
            peer,
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            },
        );
        true
    }

    fn send_snapshot(&mut self, peer: NodeId) {
        let snapshot = self.log.snapshot();
        assert!(
            snapshot.index > 0,
            "entries are missing but nothing was compacted"
        );
        let progress = self.progress.get_mut(&peer).expect("peer progress");
        progress.become_snapshot(snapshot.index);
        // A snapshot holds only committed entries: installing it commits them.
        progress.commit_sent_up_to(snapshot.index);
        self.send(peer, MessageBody::InstallSnapshot { snapshot });
    }

    /// Heartbeats to every peer: liveness, the commit index each one can
    /// safely apply (capped at its match index), and the read round.
    pub(crate) fn broadcast_heartbeat(&mut self) {
        let commit = self.log.committed();
        let read_round = self.reads.round();
        let targets: Vec<(NodeId, Index)> = self
            .progress
            .iter_mut()
            .map(|(peer, progress)| {
                let leader_commit = progress.match_index.min(commit);
                progress.commit_sent_up_to(leader_commit);
                (*peer, leader_commit)
            })
            .collect();
        for (peer, leader_commit) in targets {
            self.send(
                peer,
                MessageBody::Heartbeat {
                    leader_commit,
                    read_round,
                },
            );
        }
    }

    /// Re-probes followers whose snapshot went unanswered for
    /// `snapshot_retry_tick` ticks (the message or its answer was lost).
    pub(crate) fn tick_snapshot_retries(&mut self) {
        let retry_tick = self.config.snapshot_retry_tick;
        let mut expired = Vec::new();
        for (peer, progress) in self.progress.iter_mut() {
            if progress.state == ProgressState::Snapshot {
                progress.snapshot_elapsed_ticks += 1;
                if progress.snapshot_elapsed_ticks >= retry_tick {
                    progress.retry_after_snapshot_timeout();
                    expired.push(*peer);
                }
            }
        }
        for peer in expired {
            self.send_append(peer, true);
        }
    }

    /// Handles an `AppendEntriesResponse` (and, as a success at `index`, an
    /// `InstallSnapshotResponse`).
    pub(crate) fn handle_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        index: Index,
        reject_hint_index: Index,
        reject_hint_term: Term,
    ) {
        let last_index = self.log.last_index();
        let first_index = self.log.first_index();
        if !success {
            // Fast backtracking: skip every entry of ours whose term is above
            // the follower's term at the hint.
            let probe_hint = if reject_hint_term > 0 {
                self.log
                    .find_conflict_by_term(reject_hint_index.min(last_index), reject_hint_term)
                    .0
            } else {
                reject_hint_index
            };
            let progress = self.progress.get_mut(&from).expect("peer progress");
            progress.recent_active = true;
            if progress.maybe_decrease_to(index, probe_hint) {
                if progress.state == ProgressState::Replicate {
                    progress.become_probe();
                }
                self.send_append(from, true);
            }
            return;
        }
        let progress = self.progress.get_mut(&from).expect("peer progress");
        progress.recent_active = true;
        let was_paused = progress.is_paused();
        let updated = progress.maybe_update(index);
        // A probe answered at the match point we already knew still proves
        // the logs match there: start replicating.
        let probe_confirmed =
            progress.match_index == index && progress.state == ProgressState::Probe;
        if !updated && !probe_confirmed {
            return;
        }
        match progress.state {
            ProgressState::Probe => progress.become_replicate(),
            ProgressState::Snapshot => {
                if progress.match_index >= progress.pending_snapshot_index
                    || progress.match_index + 1 >= first_index
                {
                    progress.become_probe();
                    progress.become_replicate();
                }
            }
            ProgressState::Replicate => progress.inflights.free_up_to(index),
        }
        if self.maybe_commit() {
            self.on_commit_advanced();
        } else if was_paused {
            self.send_append(from, true);
        }
        // Entries proposed since the last `Ready` go out with it, to every
        // peer in one append; sending them now would split that batch.
        if !self.appends_pending() {
            while self.send_append(from, false) {}
        }
        if self.transfer_target == Some(from) && self.progress[&from].match_index == last_index {
            self.send(from, MessageBody::TimeoutNow);
        }
    }

    /// Handles a `HeartbeatResponse`: the peer is alive and acknowledged our
    /// leadership at `read_round`; resume a paused flow if it lags.
    pub(crate) fn handle_heartbeat_response(
        &mut self,
        from: NodeId,
        read_round: u64,
        log_lost_after: Option<Index>,
    ) {
        let last_index = self.log.last_index();
        let progress = self.progress.get_mut(&from).expect("peer progress");
        progress.recent_active = true;
        progress.acknowledged_read_round = progress.acknowledged_read_round.max(read_round);
        if let Some(follower_last_index) = log_lost_after {
            // Its rejections at or below the match index would be ignored as
            // stale: forget the match point and probe from its last entry.
            progress.log_lost(follower_last_index.min(last_index));
        }
        match progress.state {
            ProgressState::Probe => progress.probe_sent = false,
            ProgressState::Replicate if progress.inflights.is_full() => {
                // An append or its answer may be lost: make room for a new
                // one, which the follower rejects if it has a gap.
                progress.inflights.free_first();
            }
            ProgressState::Replicate | ProgressState::Snapshot => {}
        }
        let commit = self.log.committed();
        if progress.match_index < last_index || Self::commit_unsent_to(progress, commit) {
            // Behind, or owed the commit index: a read on that follower
            // waits for it, and the heartbeat, sent before the follower
            // acknowledged the entries, could not carry it.
            self.send_append(from, true);
        }
        self.release_confirmed_reads();
    }

    /// Advances the commit index to the highest index a majority has durably
    /// stored, but only if that entry is of our term (Raft §5.4.2, Figure 8):
    /// older entries commit indirectly. Our own copy counts once persisted.
    pub(crate) fn maybe_commit(&mut self) -> bool {
        let match_indexes: Vec<Index> = self
            .config
            .voters
            .iter()
            .map(|voter| {
                if *voter == self.id {
                    self.log.persisted()
                } else {
                    self.progress[voter].match_index
                }
            })
            .collect();
        let majority_index = quorum::committed_index(match_indexes);
        if majority_index > self.log.committed() && self.log.term(majority_index) == Some(self.term)
        {
            self.log.commit_to(majority_index);
            return true;
        }
        false
    }

    /// Serves reads that were waiting for the first commit of our term. The
    /// followers hear of the new commit index with the next append or
    /// heartbeat (see the module documentation).
    pub(crate) fn on_commit_advanced(&mut self) {
        self.start_reads_awaiting_commit();
    }

    /// Whether this node leads and a follower holds committed entries that
    /// it has not been told are committed (it applies them once told).
    pub fn has_unsent_commit(&self) -> bool {
        let commit = self.log.committed();
        self.role == Role::Leader
            && self
                .progress
                .values()
                .any(|progress| Self::commit_unsent_to(progress, commit))
    }

    /// Tells every follower of [`RaftCore::has_unsent_commit`] the commit
    /// index, in an append (empty unless entries wait for it; one whose
    /// in-flight window is full is skipped).
    pub fn send_commit(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let commit = self.log.committed();
        let owed: Vec<NodeId> = self
            .progress
            .iter()
            .filter(|(_, progress)| Self::commit_unsent_to(progress, commit))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in owed {
            self.send_append(peer, true);
        }
    }

    /// Only a follower in sync is owed: a lagging one hears the commit
    /// index with the entries it is missing.
    fn commit_unsent_to(progress: &Progress, commit: Index) -> bool {
        progress.state == ProgressState::Replicate
            && progress.match_index.min(commit) > progress.commit_sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_follower_in_sync_is_owed_the_commit_index_it_holds() {
        let mut progress = Progress::new(1, 4);
        progress.match_index = 5;
        progress.commit_sent = 3;
        // Probing (after a rejection, or under a new leader) or being sent a
        // snapshot: it hears the commit index with what it is sent next, so
        // the driver's notice timer is not armed for it.
        assert!(!RaftCore::commit_unsent_to(&progress, 5));
        progress.become_snapshot(9);
        assert!(!RaftCore::commit_unsent_to(&progress, 5));
        progress.become_probe();
        progress.become_replicate();
        assert!(RaftCore::commit_unsent_to(&progress, 5));
        // Owed what it holds of the commit, no more.
        progress.commit_sent_up_to(5);
        assert!(!RaftCore::commit_unsent_to(&progress, 8));
        progress.match_index = 8;
        assert!(RaftCore::commit_unsent_to(&progress, 6));
        progress.commit_sent_up_to(6);
        assert!(!RaftCore::commit_unsent_to(&progress, 6));
    }
}
