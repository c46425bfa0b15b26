//! Linearizable reads without writing to the log (Raft thesis §6.4).
//!
//! A read requested at time `t` gets the commit index at `t` once the leader
//! has proven it still led after `t`: it starts a new *read round* (a counter
//! carried by heartbeats and echoed by followers) and waits until a majority
//! (itself included) echoed that round or a later one. A follower only echoes
//! heartbeats of its current term, so an echo of a round started after `t`
//! proves no newer leader had been elected when it answered. Before the leader
//! has committed an entry of its own term its commit index may be stale, so
//! requests wait for that first commit.

use std::collections::VecDeque;

use crate::errors::ReadIndexError;
use crate::quorum;
use crate::raft_core::RaftCore;
use crate::ready::ReadState;
use crate::types::{Index, Role};

#[derive(Clone, Copy, Debug)]
struct PendingRead {
    context: u64,
    index: Index,
    required_round: u64,
}

/// The leader's read requests: those waiting for the first commit of its
/// term, and those waiting for a majority to confirm a round.
#[derive(Clone, Debug)]
pub(crate) struct ReadTracker {
    round: u64,
    awaiting_commit: VecDeque<u64>,
    /// `required_round` is non-decreasing front to back.
    awaiting_confirmation: VecDeque<PendingRead>,
    pending_max: usize,
}

impl ReadTracker {
    pub(crate) fn new(pending_max: usize) -> Self {
        ReadTracker {
            round: 0,
            awaiting_commit: VecDeque::new(),
            awaiting_confirmation: VecDeque::new(),
            pending_max,
        }
    }

    pub(crate) fn round(&self) -> u64 {
        self.round
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.awaiting_commit.is_empty() && self.awaiting_confirmation.is_empty()
    }

    fn pending_count(&self) -> usize {
        self.awaiting_commit.len() + self.awaiting_confirmation.len()
    }

    /// Forgets every request and restarts rounds (on any role change).
    pub(crate) fn clear(&mut self) {
        self.round = 0;
        self.awaiting_commit.clear();
        self.awaiting_confirmation.clear();
    }
}

impl RaftCore {
    pub(crate) fn request_reads(&mut self, contexts: &[u64]) -> Result<(), ReadIndexError> {
        if self.role != Role::Leader {
            return Err(ReadIndexError::NotLeader {
                leader_hint: self.leader_id,
            });
        }
        if self.reads.pending_count() + contexts.len() > self.reads.pending_max {
            return Err(ReadIndexError::TooManyPending);
        }
        if contexts.is_empty() {
            return Ok(());
        }
        self.reads.awaiting_commit.extend(contexts);
        self.start_reads_awaiting_commit();
        Ok(())
    }

    /// Once an entry of our term is committed, moves the waiting requests to
    /// a fresh round (or, alone in the cluster, serves them at once).
    pub(crate) fn start_reads_awaiting_commit(&mut self) {
        if self.reads.awaiting_commit.is_empty() || !self.committed_in_current_term() {
            return;
        }
        let index = self.log.committed();
        if self.config.voters.len() == 1 {
            for context in self.reads.awaiting_commit.drain(..) {
                self.read_states.push(ReadState { context, index });
            }
            return;
        }
        self.reads.round += 1;
        let required_round = self.reads.round;
        for context in self.reads.awaiting_commit.drain(..) {
            self.reads.awaiting_confirmation.push_back(PendingRead {
                context,
                index,
                required_round,
            });
        }
        self.broadcast_heartbeat();
    }

    /// Serves, in order, every request whose round a majority confirmed.
    pub(crate) fn release_confirmed_reads(&mut self) {
        let needed = quorum::majority(self.config.voters.len());
        while let Some(front) = self.reads.awaiting_confirmation.front().copied() {
            let confirmations = 1 + self
                .progress
                .values()
                .filter(|progress| progress.acknowledged_read_round >= front.required_round)
                .count();
            if confirmations < needed {
                break;
            }
            self.reads.awaiting_confirmation.pop_front();
            self.read_states.push(ReadState {
                context: front.context,
                index: front.index,
            });
        }
    }
}
