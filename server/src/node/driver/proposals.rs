//! Client writes proposed to the core, waiting for their entries to commit.

use kvstore_raft::{Index, NodeId, ProposeError, Term};
use tokio::sync::oneshot;

use crate::errors::KvError;
use crate::node::{ServedBy, WriteOutcome};
use crate::state_machine;

pub(super) struct PendingProposal {
    pub(super) term: Term,
    pub(super) request_id: String,
    pub(super) reply: oneshot::Sender<Result<WriteOutcome, KvError>>,
}

/// Answers the proposals resolved by one applied batch: the write's
/// outcome, or that a new leader replaced it.
pub(super) fn answer_proposals(
    node_id: NodeId,
    resolved: Vec<(Index, Term, PendingProposal)>,
    outcomes: &[state_machine::Applied],
) {
    for (index, entry_term, proposal) in resolved {
        let outcome = if entry_term != proposal.term {
            Err(KvError::Unavailable(
                "a new leader replaced the write before it committed; it was not applied".into(),
            ))
        } else {
            tracing::debug!(request_id = proposal.request_id, index, "applied");
            let found = outcomes
                .iter()
                .find(|outcome| outcome.index == index)
                .is_none_or(|outcome| outcome.found);
            Ok(WriteOutcome {
                served_by: ServedBy {
                    node_id,
                    leader_id: node_id,
                    term: entry_term,
                    index,
                    forwarded_by: 0,
                },
                found,
            })
        };
        let _ = proposal.reply.send(outcome);
    }
}

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
