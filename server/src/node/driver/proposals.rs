//! Client writes the leader has proposed, keyed by the index of their entry,
//! until that entry commits (answered with its outcome, or as replaced by a
//! new leader's entry) or leadership is lost (outcome unknown).

use std::collections::BTreeMap;

use kvstore_raft::{Entry, Index, NodeId, ProposeError, Term};
use tokio::sync::oneshot;

use crate::errors::KvError;
use crate::node::{ServedBy, WriteOutcome};
use crate::state_machine;

/// Where the outcome of a write goes.
pub(super) type WriteReply = oneshot::Sender<Result<WriteOutcome, KvError>>;

/// A write in the leader's log, waiting for its entry to commit.
pub(super) struct PendingProposal {
    /// The term the entry was appended in: a committed entry at the same
    /// index with another term is some other leader's, and replaced it.
    term: Term,
    request_id: String,
    reply: WriteReply,
}

/// The writes waiting for their entries to commit.
#[derive(Default)]
pub(super) struct Proposals {
    by_index: BTreeMap<Index, PendingProposal>,
}

/// The proposals that one batch of committed entries settles, answered by
/// [`answer`] once the batch is applied.
pub(super) struct Resolved {
    /// Each proposal with its index and the term of the committed entry.
    proposals: Vec<(Index, Term, PendingProposal)>,
    /// Proposals whose own entry committed.
    pub(super) committed: usize,
    /// Proposals whose index another leader's entry took.
    pub(super) replaced: usize,
}

impl Proposals {
    /// Waits for the entry at `index`, appended in `term`, to commit.
    ///
    /// No proposal should wait at `index` already: a leader's log only grows
    /// while it leads, and losing leadership fails every waiting proposal
    /// (`fail_all`). Should one wait anyway, its entry was replaced: it is
    /// answered so, rather than dropped unanswered.
    pub(super) fn insert(
        &mut self,
        index: Index,
        term: Term,
        request_id: String,
        reply: WriteReply,
    ) {
        let pending = PendingProposal {
            term,
            request_id,
            reply,
        };
        if let Some(replaced) = self.by_index.insert(index, pending) {
            tracing::error!(
                index,
                request_id = replaced.request_id,
                "a proposal was still waiting at an index proposed again; answering it as replaced"
            );
            let _ = replaced.reply.send(Err(replaced_error()));
        }
    }

    /// Takes out the proposals that the committed `entries` settle.
    pub(super) fn resolve(&mut self, entries: &[Entry]) -> Resolved {
        let mut resolved = Resolved {
            proposals: Vec::new(),
            committed: 0,
            replaced: 0,
        };
        for entry in entries {
            if let Some(proposal) = self.by_index.remove(&entry.index) {
                tracing::debug!(
                    request_id = proposal.request_id,
                    index = entry.index,
                    "committed"
                );
                if entry.term == proposal.term {
                    resolved.committed += 1;
                } else {
                    resolved.replaced += 1;
                }
                resolved.proposals.push((entry.index, entry.term, proposal));
            }
        }
        resolved
    }

    /// Answers every proposal that its outcome is unknown (`reason`, e.g.
    /// leadership was lost: the entry may still commit under a new leader).
    pub(super) fn fail_all(&mut self, reason: &str) {
        for (_, proposal) in std::mem::take(&mut self.by_index) {
            let _ = proposal.reply.send(Err(KvError::OutcomeUnknown(format!(
                "{reason} while the write was in flight; it may or may not be applied"
            ))));
        }
    }

    /// How many writes wait.
    pub(super) fn len(&self) -> usize {
        self.by_index.len()
    }
}

/// Answers the proposals resolved by one applied batch: the write's
/// outcome, or that a new leader replaced it. `outcomes` are in index
/// order, as `state_machine::apply` returns them.
pub(super) fn answer(node_id: NodeId, resolved: Resolved, outcomes: &[state_machine::Applied]) {
    for (index, entry_term, proposal) in resolved.proposals {
        let outcome = if entry_term != proposal.term {
            Err(replaced_error())
        } else {
            tracing::debug!(request_id = proposal.request_id, index, "applied");
            // Outcomes come in index order (one per applied entry).
            let applied = outcomes
                .binary_search_by_key(&index, |outcome| outcome.index)
                .ok()
                .map(|position| &outcomes[position]);
            let served_by = ServedBy {
                node_id,
                leader_id: node_id,
                term: entry_term,
                index,
                forwarded_by: 0,
                revision: applied.map_or(0, |applied| applied.revision),
            };
            match applied.and_then(|applied| applied.outcome.as_deref()) {
                // Refused the same way on every replica: the client's error.
                Some(state_machine::Outcome::Refused(refusal)) => Err(refusal.clone().into()),
                outcome => Ok(WriteOutcome {
                    served_by,
                    found: applied.is_none_or(|applied| applied.found),
                    outcome: outcome.cloned().map(Box::new),
                }),
            }
        };
        let _ = proposal.reply.send(outcome);
    }
}

/// The client's error for a write whose entry another leader's replaced:
/// it was not applied, so a retry is safe.
fn replaced_error() -> KvError {
    KvError::Unavailable(
        "a new leader replaced the write before it committed; it was not applied".into(),
    )
}

/// The client's error for a write the core refused to propose.
pub(super) fn propose_error(error: ProposeError) -> KvError {
    match error {
        ProposeError::NotLeader { leader_hint } => {
            KvError::NotLeader(format!("leader hint {leader_hint:?}"))
        }
        ProposeError::TooManyPending => {
            KvError::Unavailable("too many writes in flight; retry".into())
        }
        ProposeError::TransferInProgress => {
            KvError::Unavailable("leadership transfer in progress; retry".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use kvstore_raft::EntryKind;
    use state_machine::Applied;
    use tokio::sync::oneshot::error::TryRecvError;

    use super::*;

    const NODE: NodeId = 1;

    type Answer = oneshot::Receiver<Result<WriteOutcome, KvError>>;

    fn entry(index: Index, term: Term) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Normal,
            data: Bytes::from_static(b"put"),
        }
    }

    fn propose(proposals: &mut Proposals, index: Index, term: Term) -> Answer {
        let (reply, answer) = oneshot::channel();
        proposals.insert(index, term, format!("request-{index}"), reply);
        answer
    }

    #[test]
    fn a_matching_term_is_answered_with_its_index_and_found() {
        let mut proposals = Proposals::default();
        let mut answer = propose(&mut proposals, 7, 3);
        let resolved = proposals.resolve(&[entry(7, 3)]);
        assert_eq!((resolved.committed, resolved.replaced), (1, 0));
        assert_eq!(proposals.len(), 0);
        // A delete of a missing key: the outcome's `found` must come through.
        super::answer(NODE, resolved, &[Applied::simple(7, false, 0)]);
        let outcome = answer.try_recv().unwrap().unwrap();
        assert_eq!(
            outcome,
            WriteOutcome {
                served_by: ServedBy {
                    node_id: NODE,
                    leader_id: NODE,
                    term: 3,
                    index: 7,
                    forwarded_by: 0,
                    revision: 0,
                },
                found: false,
                outcome: None,
            }
        );
    }

    #[test]
    fn a_different_term_at_the_same_index_is_replaced() {
        let mut proposals = Proposals::default();
        let mut answer = propose(&mut proposals, 7, 3);
        let resolved = proposals.resolve(&[entry(7, 4)]);
        assert_eq!((resolved.committed, resolved.replaced), (0, 1));
        assert_eq!(proposals.len(), 0);
        super::answer(NODE, resolved, &[Applied::simple(7, true, 0)]);
        match answer.try_recv().unwrap() {
            Err(KvError::Unavailable(message)) => assert!(
                message.contains("a new leader replaced the write"),
                "{message}"
            ),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[test]
    fn entries_without_proposals_resolve_nothing() {
        let mut proposals = Proposals::default();
        let mut waiting = propose(&mut proposals, 9, 3);
        let resolved = proposals.resolve(&[entry(7, 3), entry(8, 3)]);
        assert_eq!((resolved.committed, resolved.replaced), (0, 0));
        assert!(resolved.proposals.is_empty());
        assert_eq!(proposals.len(), 1, "the write at 9 still waits");
        super::answer(NODE, resolved, &[]);
        assert_eq!(waiting.try_recv().unwrap_err(), TryRecvError::Empty);
    }

    #[test]
    fn only_the_committed_indexes_are_taken_in_a_batch() {
        let mut proposals = Proposals::default();
        let mut first = propose(&mut proposals, 7, 3);
        let mut second = propose(&mut proposals, 8, 3);
        let mut later = propose(&mut proposals, 10, 3);
        let resolved = proposals.resolve(&[entry(7, 3), entry(8, 3), entry(9, 3)]);
        assert_eq!((resolved.committed, resolved.replaced), (2, 0));
        super::answer(NODE, resolved, &[]);
        assert_eq!(first.try_recv().unwrap().unwrap().served_by.index, 7);
        assert_eq!(second.try_recv().unwrap().unwrap().served_by.index, 8);
        assert_eq!(later.try_recv().unwrap_err(), TryRecvError::Empty);
        assert_eq!(proposals.len(), 1);
    }

    #[test]
    fn fail_all_gives_outcome_unknown_and_empties_the_set() {
        let mut proposals = Proposals::default();
        let mut answers = [propose(&mut proposals, 7, 3), propose(&mut proposals, 8, 3)];
        proposals.fail_all("leadership was lost");
        assert_eq!(proposals.len(), 0);
        for answer in &mut answers {
            match answer.try_recv().unwrap() {
                Err(KvError::OutcomeUnknown(message)) => assert_eq!(
                    message,
                    "leadership was lost while the write was in flight; \
                     it may or may not be applied"
                ),
                other => panic!("expected OutcomeUnknown, got {other:?}"),
            }
        }
        let resolved = proposals.resolve(&[entry(7, 3)]);
        assert!(resolved.proposals.is_empty(), "nothing is answered twice");
    }

    #[test]
    fn found_defaults_to_true_when_there_is_no_outcome_for_that_index() {
        let mut proposals = Proposals::default();
        let mut answer = propose(&mut proposals, 7, 3);
        let resolved = proposals.resolve(&[entry(7, 3)]);
        // An outcome for another index only.
        super::answer(NODE, resolved, &[Applied::simple(6, false, 0)]);
        assert!(answer.try_recv().unwrap().unwrap().found);
    }

    #[test]
    fn each_proposal_of_a_batch_gets_its_own_outcome() {
        let mut proposals = Proposals::default();
        let mut answers: Vec<_> = (5..=9)
            .map(|index| propose(&mut proposals, index, 3))
            .collect();
        let entries: Vec<Entry> = (5..=9).map(|index| entry(index, 3)).collect();
        let resolved = proposals.resolve(&entries);
        // Deletes at 6 and 8 found nothing.
        let outcomes: Vec<Applied> = (5..=9)
            .map(|index| Applied::simple(index, index % 2 == 1, 0))
            .collect();
        super::answer(NODE, resolved, &outcomes);
        let found: Vec<bool> = answers
            .iter_mut()
            .map(|answer| answer.try_recv().unwrap().unwrap().found)
            .collect();
        assert_eq!(found, [true, false, true, false, true]);
    }

    #[test]
    fn a_proposal_still_waiting_at_a_reused_index_is_answered_as_replaced() {
        let mut proposals = Proposals::default();
        let mut first = propose(&mut proposals, 7, 3);
        let _second = propose(&mut proposals, 7, 4);
        assert_eq!(proposals.len(), 1);
        match first.try_recv().unwrap() {
            Err(KvError::Unavailable(message)) => {
                assert!(message.contains("replaced"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refused_proposal_maps_to_the_clients_error() {
        assert!(matches!(
            propose_error(ProposeError::NotLeader {
                leader_hint: Some(2)
            }),
            KvError::NotLeader(message) if message == "leader hint Some(2)"
        ));
        assert!(matches!(
            propose_error(ProposeError::TooManyPending),
            KvError::Unavailable(message) if message == "too many writes in flight; retry"
        ));
        assert!(matches!(
            propose_error(ProposeError::TransferInProgress),
            KvError::Unavailable(message) if message == "leadership transfer in progress; retry"
        ));
    }
}
