//! A node that lost its durable state (a wiped data directory, a cut WAL)
//! rejoining under the same id (etcd's `--initial-cluster-state existing`).
//!
//! Before the loss it may have voted in some term `T_max`, promised to
//! ignore leaders of older terms, and acknowledged entries; it remembers
//! none of it. Voting or acknowledging at once could elect a second leader
//! in `T_max`, or let a deposed leader commit with its help. So it goes
//! through two stages before it is an ordinary member again:
//!
//! 1. **Learning the term.** It answers nobody and acknowledges nothing; it
//!    asks its peers for their current terms ([`MessageBody::TermQuery`])
//!    until `n - majority(n) + 1` of them answered. Any majority that could
//!    have elected someone in `T_max` with its vote holds `majority - 1`
//!    other voters that remember `T_max`, and that many answers must include
//!    one of them: the highest answer is at least `T_max`. It moves to that
//!    term, so it ignores every leader deposed before its loss; it votes
//!    again only in a later term (stage 2), so never twice in one.
//! 2. **Catching up.** It follows the leader as usual but neither votes nor
//!    campaigns until it follows a leader of a term above the learned one
//!    and its commit index holds an entry of that leader's term. Such a
//!    leader was elected without it (it refuses every vote meanwhile), so
//!    by a majority that overlaps every majority that committed an entry
//!    with its lost acknowledgements (counted before the loss, or arriving
//!    late): the leader holds all of them, and so does the node once it
//!    holds a commit of that leader's term. Its vote can then no longer help
//!    elect a candidate that lacks one. Under the leader of the learned term
//!    itself that does not hold: that leader may commit entries on
//!    acknowledgements the node sent before its loss, above any commit index
//!    the node has heard of (the simulation found both cases). So a node
//!    that lost its state votes again only after the next election; it
//!    serves (is ready) once it holds a commit of its leader's term.
//!
//! A node that answers term queries only once it is past stage 1: the
//! answer of a node that lost its state says nothing about `T_max`.

use std::collections::BTreeMap;

use crate::quorum;
use crate::raft_core::RaftCore;
use crate::types::{MessageBody, NodeId, Term};

/// Where a node that lost its state stands (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CatchUp {
    /// Its state is whole: it votes and campaigns.
    Done,
    /// Stage 1: the terms its peers answered with so far.
    LearningTerm(BTreeMap<NodeId, Term>),
    /// Stage 2: following the leader until a leader of a term above the
    /// learned one is followed and a commit of its term is held.
    FollowingLeader {
        /// The term learned in stage 1.
        learned_term: Term,
    },
}

impl RaftCore {
    /// Whether this node lost its durable state and neither votes nor
    /// campaigns until it has caught up (see [`crate::Config::catch_up_before_voting`]).
    pub fn is_catching_up(&self) -> bool {
        self.catch_up != CatchUp::Done
    }

    /// Whether this node, catching up, may still lack committed entries:
    /// it has not learned the term yet, or does not hold a commit of its
    /// leader's term. Once it does it serves like any follower, though it
    /// votes again only after the next election ([`RaftCore::is_catching_up`]).
    pub fn lacks_committed_entries(&self) -> bool {
        match self.catch_up {
            CatchUp::Done => false,
            CatchUp::LearningTerm(_) => true,
            CatchUp::FollowingLeader { .. } => {
                self.leader_id.is_none() || !self.committed_in_current_term()
            }
        }
    }

    /// Stage 1 is running: messages other than term answers are dropped.
    pub(crate) fn is_learning_term(&self) -> bool {
        matches!(self.catch_up, CatchUp::LearningTerm(_))
    }

    /// Answers a peer learning the term, unless we are learning it too.
    pub(crate) fn answer_term_query(&mut self, from: NodeId) {
        if !self.is_learning_term() {
            self.send(from, MessageBody::TermAnswer);
        }
    }

    /// Starts stage 1 (at start, or on finding that entries we had
    /// acknowledged are gone). A node without peers has nobody to learn from
    /// or to disagree with.
    pub(crate) fn start_catch_up(&mut self, reason: &'static str) {
        if self.config.voters.len() == 1 {
            self.catch_up = CatchUp::Done;
            return;
        }
        if self.role == crate::types::Role::Follower && self.leader_id.is_some() {
            // Stop following: that leader may be one we had deposed.
            self.become_follower(self.term, None, reason);
        }
        self.role_change_reason = reason;
        self.catch_up = CatchUp::LearningTerm(BTreeMap::new());
        self.send_term_queries();
    }

    /// Asks every peer that has not answered yet (on every tick of stage 1).
    pub(crate) fn send_term_queries(&mut self) {
        let CatchUp::LearningTerm(answered) = &self.catch_up else {
            return;
        };
        let unanswered: Vec<NodeId> = self
            .peers()
            .into_iter()
            .filter(|peer| !answered.contains_key(peer))
            .collect();
        for peer in unanswered {
            // Term 0: the query must not move anyone's term.
            self.send_with_term(peer, 0, MessageBody::TermQuery);
        }
    }

    /// Records a peer's term; with enough answers, moves to the highest one,
    /// counting as having voted in it, and starts stage 2.
    pub(crate) fn record_term_answer(&mut self, from: NodeId, term: Term) {
        let CatchUp::LearningTerm(answered) = &mut self.catch_up else {
            return;
        };
        let known = answered.entry(from).or_insert(term);
        *known = (*known).max(term);
        let voters = self.config.voters.len();
        let answers_needed = voters - quorum::majority(voters) + 1;
        if answered.len() < answers_needed {
            return;
        }
        let highest = answered.values().copied().max().unwrap_or(0);
        if highest > self.term {
            self.become_follower(
                highest,
                None,
                "learned the cluster's term after losing its state",
            );
        }
        self.catch_up = CatchUp::FollowingLeader {
            learned_term: self.term,
        };
        self.role_change_reason = "learned the cluster's term after losing its state: catching up";
    }

    /// Ends stage 2 once we follow a leader elected after the learned term
    /// and hold a commit of its term (see the module documentation).
    pub(crate) fn maybe_finish_catch_up(&mut self) {
        let CatchUp::FollowingLeader { learned_term } = self.catch_up else {
            return;
        };
        if self.term > learned_term && self.leader_id.is_some() && self.committed_in_current_term()
        {
            self.catch_up = CatchUp::Done;
            self.role_change_reason = "caught up with the leader: votes again";
        }
    }
}
