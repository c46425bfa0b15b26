//! The follower's side of replication: `AppendEntries`, `Heartbeat` and
//! `InstallSnapshot` from the leader of our term.
//!
//! Every answer is queued in the outbox and so leaves in a `Ready` whose
//! entries, hard state and snapshot the driver persists *before* sending its
//! messages: a follower never acknowledges what is not durable.

use crate::raft_core::RaftCore;
use crate::types::{Entry, Index, MessageBody, NodeId, SnapshotMetadata, Term};

impl RaftCore {
    pub(crate) fn handle_append_entries(
        &mut self,
        from: NodeId,
        prev_log_index: Index,
        prev_log_term: Term,
        entries: &[Entry],
        leader_commit: Index,
    ) {
        let committed = self.log.committed();
        if prev_log_index < committed {
            // Everything up to our commit index matches the leader already.
            self.send(
                from,
                MessageBody::AppendEntriesResponse {
                    success: true,
                    index: committed,
                    reject_hint_index: 0,
                    reject_hint_term: 0,
                },
            );
            return;
        }
        match self
            .log
            .maybe_append(prev_log_index, prev_log_term, leader_commit, entries)
        {
            Some(last_new_index) => self.send(
                from,
                MessageBody::AppendEntriesResponse {
                    success: true,
                    index: last_new_index,
                    reject_hint_index: 0,
                    reject_hint_term: 0,
                },
            ),
            None => {
                // Fast backtracking: point the leader at the last entry that
                // could match, skipping our entries of terms above theirs.
                let search_from = prev_log_index.min(self.log.last_index());
                let (reject_hint_index, reject_hint_term) =
                    self.log.find_conflict_by_term(search_from, prev_log_term);
                self.send(
                    from,
                    MessageBody::AppendEntriesResponse {
                        success: false,
                        index: prev_log_index,
                        reject_hint_index,
                        reject_hint_term,
                    },
                );
            }
        }
    }

    pub(crate) fn handle_heartbeat(&mut self, from: NodeId, leader_commit: Index, read_round: u64) {
        // The leader caps `leader_commit` at our match index: entries we
        // acknowledged, which a log never loses while its leader stays the
        // same. Holding less means we lost them (a wiped data directory, a
        // cut WAL): say so, or the leader would never send them again.
        let last_index = self.log.last_index();
        if leader_commit > last_index {
            // No read round acknowledged: this leader may be one we had
            // deposed before the loss.
            self.send(
                from,
                MessageBody::HeartbeatResponse {
                    read_round: 0,
                    log_lost_after: Some(last_index),
                },
            );
            self.start_catch_up(
                "lost log entries it had acknowledged: learning the cluster's term",
            );
            return;
        }
        self.log.commit_to(leader_commit);
        self.send(
            from,
            MessageBody::HeartbeatResponse {
                read_round,
                log_lost_after: None,
            },
        );
    }

    pub(crate) fn handle_install_snapshot(&mut self, from: NodeId, snapshot: SnapshotMetadata) {
        let index = if snapshot.index <= self.log.committed() {
            // Stale: we already have (and may have applied) all of it.
            self.log.committed()
        } else if self.log.match_term(snapshot.index, snapshot.term) {
            // We hold the snapshot's last entry, hence (log matching) every
            // entry before it: just commit up to it and keep our suffix.
            self.log.commit_to(snapshot.index);
            snapshot.index
        } else {
            self.log.restore(snapshot);
            self.pending_snapshot = Some(snapshot);
            snapshot.index
        };
        self.send(from, MessageBody::InstallSnapshotResponse { index });
    }
}
