//! Elections: the vote rule, pre-vote and real campaigns, and vote tallies.

use crate::quorum::{self, VoteResult};
use crate::raft_core::RaftCore;
use crate::types::{Index, Message, MessageBody, NodeId, Role, Term, TERM_MAX};

/// What a voter knows when it decides on a vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct VoterView {
    pub(crate) term: Term,
    pub(crate) voted_for: Option<NodeId>,
    pub(crate) leader_id: Option<NodeId>,
    pub(crate) last_log_index: Index,
    pub(crate) last_log_term: Term,
    /// It lost its durable state and has not caught up yet.
    pub(crate) catching_up: bool,
}

/// A vote (or pre-vote) request, as the voter sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct VoteRequest {
    pub(crate) candidate: NodeId,
    /// The term the candidate campaigns in (for a pre-vote: would campaign in).
    pub(crate) term: Term,
    pub(crate) pre_vote: bool,
    pub(crate) last_log_index: Index,
    pub(crate) last_log_term: Term,
}

/// Outcome of [`decide_vote`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VoteDecision {
    /// Grant the vote.
    Grant,
    /// The request is from an older term.
    RejectStaleTerm,
    /// Already voted for someone else in this term.
    RejectAlreadyVoted,
    /// Has not voted, but follows a leader in this term.
    RejectLeaderKnown,
    /// The candidate's log is behind ours.
    RejectLogBehind,
    /// We lost our durable state and have not caught up with a leader yet:
    /// we may have voted in this term already, or hold less than we
    /// acknowledged ([`crate::Config::catch_up_before_voting`]).
    RejectCatchingUp,
}

/// The vote-granting rule (Raft §5.2, §5.4.1, plus pre-vote), in one place.
///
/// 1. Term: a request from an older term is rejected; a voter that lost its
///    state and is catching up rejects every other one.
/// 2. One vote per term: in a later term than ours we have not voted yet
///    (for a pre-vote, that is its whole point); in our own term we may only
///    repeat the vote we already cast, or vote if we neither voted nor know a
///    leader.
/// 3. Log: the candidate's log must be at least as up to date as ours:
///    a later last term, or the same last term and a last index at least ours.
///
/// Leader lease (ignoring disruptive requests while a leader is alive) is
/// applied before this, in `RaftCore::step`, because it drops the request
/// without answering.
pub(crate) fn decide_vote(voter: &VoterView, request: &VoteRequest) -> VoteDecision {
    if request.term < voter.term {
        return VoteDecision::RejectStaleTerm;
    }
    if voter.catching_up {
        return VoteDecision::RejectCatchingUp;
    }
    if request.term == voter.term {
        match voter.voted_for {
            Some(candidate) if candidate == request.candidate => {}
            Some(_) => return VoteDecision::RejectAlreadyVoted,
            None if voter.leader_id.is_some() => return VoteDecision::RejectLeaderKnown,
            None => {}
        }
    }
    let candidate_log = (request.last_log_term, request.last_log_index);
    let voter_log = (voter.last_log_term, voter.last_log_index);
    if candidate_log < voter_log {
        return VoteDecision::RejectLogBehind;
    }
    VoteDecision::Grant
}

impl RaftCore {
    /// Starts an election: a pre-vote round first when configured, unless this
    /// is a leadership transfer.
    pub(crate) fn start_election(&mut self, transfer: bool, reason: &'static str) {
        if self.role == Role::Leader || self.is_catching_up() || !self.may_lead {
            return;
        }
        if self.term >= TERM_MAX {
            // No election could ever follow this one: `term + 1` must not
            // wrap. Unreachable unless TERM_MAX elections happened, since
            // messages above it are dropped.
            self.role_change_reason = "term limit reached: no longer campaigns";
            return;
        }
        if self.config.pre_vote && !transfer {
            self.campaign_pre_vote(reason);
        } else {
            self.campaign_real(transfer, reason);
        }
    }

    fn campaign_pre_vote(&mut self, reason: &'static str) {
        self.become_pre_candidate(reason);
        self.votes.insert(self.id, true);
        if self.tally_votes() == VoteResult::Won {
            self.campaign_real(false, "won pre-vote (single voter)");
            return;
        }
        let next_term = self.term + 1;
        self.send_vote_requests(next_term, true, false);
    }

    fn campaign_real(&mut self, transfer: bool, reason: &'static str) {
        self.become_candidate(reason);
        self.votes.insert(self.id, true);
        if self.tally_votes() == VoteResult::Won {
            self.become_leader("won election (single voter)");
            return;
        }
        self.send_vote_requests(self.term, false, transfer);
    }

    fn send_vote_requests(&mut self, term: Term, pre_vote: bool, transfer: bool) {
        let last_log_index = self.log.last_index();
        let last_log_term = self.log.last_term();
        for peer in self.peers() {
            self.send_with_term(
                peer,
                term,
                MessageBody::RequestVote {
                    pre_vote,
                    last_log_index,
                    last_log_term,
                    transfer,
                },
            );
        }
    }

    fn tally_votes(&self) -> VoteResult {
        let granted = self.votes.values().filter(|granted| **granted).count();
        let rejected = self.votes.len() - granted;
        quorum::vote_result(self.config.voters.len(), granted, rejected)
    }

    pub(crate) fn voter_view(&self) -> VoterView {
        VoterView {
            term: self.term,
            voted_for: self.vote,
            leader_id: self.leader_id,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            catching_up: self.is_catching_up(),
        }
    }

    /// Answers a vote or pre-vote request (after the term gate in `step`).
    pub(crate) fn handle_request_vote(&mut self, message: &Message) {
        let MessageBody::RequestVote {
            pre_vote,
            last_log_index,
            last_log_term,
            ..
        } = message.body
        else {
            unreachable!("not a vote request");
        };
        let request = VoteRequest {
            candidate: message.from,
            term: message.term,
            pre_vote,
            last_log_index,
            last_log_term,
        };
        let decision = decide_vote(&self.voter_view(), &request);
        if decision == VoteDecision::Grant {
            if !pre_vote {
                assert_eq!(message.term, self.term, "real votes are cast in our term");
                self.vote = Some(message.from);
                self.election_elapsed_ticks = 0;
            }
            // A grant carries the request's term so the candidate counts it.
            self.send_with_term(
                message.from,
                message.term,
                MessageBody::RequestVoteResponse {
                    pre_vote,
                    granted: true,
                },
            );
        } else {
            self.send(
                message.from,
                MessageBody::RequestVoteResponse {
                    pre_vote,
                    granted: false,
                },
            );
        }
    }

    /// Counts a vote answer while campaigning.
    pub(crate) fn handle_vote_response(&mut self, message: &Message) {
        let MessageBody::RequestVoteResponse { pre_vote, granted } = message.body else {
            unreachable!("not a vote response");
        };
        let counts = match self.role {
            // Grants come back with the prospective term, rejections with
            // the voter's own (ours; a higher one already made us step down).
            Role::PreCandidate if pre_vote => {
                (granted && message.term == self.term + 1)
                    || (!granted && message.term == self.term)
            }
            Role::Candidate if !pre_vote => message.term == self.term,
            _ => false,
        };
        if !counts {
            return;
        }
        self.votes.entry(message.from).or_insert(granted);
        match self.tally_votes() {
            VoteResult::Won if self.role == Role::PreCandidate => {
                self.campaign_real(false, "won pre-vote");
            }
            VoteResult::Won => {
                self.become_leader("won election");
            }
            VoteResult::Lost => {
                let reason = if pre_vote {
                    "lost pre-vote"
                } else {
                    "lost election"
                };
                self.become_follower(self.term, None, reason);
            }
            VoteResult::Pending => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANDIDATE: NodeId = 2;
    const OTHER: NodeId = 3;

    fn voter(term: Term, voted_for: Option<NodeId>, leader_id: Option<NodeId>) -> VoterView {
        // Our log ends at index 5, term 2.
        VoterView {
            term,
            voted_for,
            leader_id,
            last_log_index: 5,
            last_log_term: 2,
            catching_up: false,
        }
    }

    fn request(
        term: Term,
        pre_vote: bool,
        last_log_index: Index,
        last_log_term: Term,
    ) -> VoteRequest {
        VoteRequest {
            candidate: CANDIDATE,
            term,
            pre_vote,
            last_log_index,
            last_log_term,
        }
    }

    #[test]
    fn vote_rule_table() {
        use VoteDecision::*;
        let cases = [
            // Term check.
            (
                voter(4, None, None),
                request(3, false, 9, 9),
                RejectStaleTerm,
            ),
            (
                voter(4, None, None),
                request(3, true, 9, 9),
                RejectStaleTerm,
            ),
            // One vote per term.
            (voter(4, None, None), request(4, false, 5, 2), Grant),
            (
                voter(4, Some(CANDIDATE), None),
                request(4, false, 5, 2),
                Grant,
            ),
            (
                voter(4, Some(OTHER), None),
                request(4, false, 9, 9),
                RejectAlreadyVoted,
            ),
            (
                voter(4, None, Some(OTHER)),
                request(4, false, 9, 9),
                RejectLeaderKnown,
            ),
            // A later term is a fresh vote, whatever we did in ours.
            (
                voter(4, Some(OTHER), Some(OTHER)),
                request(5, false, 5, 2),
                Grant,
            ),
            // Pre-votes ask about the next term: free of our vote...
            (
                voter(4, Some(OTHER), Some(OTHER)),
                request(5, true, 5, 2),
                Grant,
            ),
            // ...but one for our own term obeys the same rule as a vote.
            (
                voter(4, Some(OTHER), None),
                request(4, true, 5, 2),
                RejectAlreadyVoted,
            ),
            // Log comparison: last term first, then last index.
            (
                voter(4, None, None),
                request(4, false, 4, 2),
                RejectLogBehind,
            ),
            (
                voter(4, None, None),
                request(4, false, 100, 1),
                RejectLogBehind,
            ),
            (voter(4, None, None), request(4, false, 1, 3), Grant),
            (voter(4, None, None), request(4, false, 6, 2), Grant),
            (
                voter(4, None, None),
                request(5, true, 4, 2),
                RejectLogBehind,
            ),
            (
                voter(0, None, None),
                request(1, false, 0, 0),
                RejectLogBehind,
            ),
            (voter(0, None, None), request(1, false, 5, 2), Grant),
        ];
        for (position, (view, vote_request, expected)) in cases.iter().enumerate() {
            assert_eq!(
                decide_vote(view, vote_request),
                *expected,
                "case {position}: {view:?} {vote_request:?}"
            );
        }
    }
}
