//! Linearizable reads in the driver: those waiting for the leader's read
//! round to confirm them (by context), and those whose read index is known,
//! waiting for this node to apply it.

use std::collections::HashMap;

use kvstore_raft::{Index, NodeId, ReadIndexError, ReadState, Term};
use tokio::sync::oneshot;

use super::ReadResult;
use crate::errors::KvError;
use crate::node::ServedBy;
use crate::state_machine::Query;

/// A read whose index is known, waiting to be served from the store.
pub(super) struct PendingRead {
    pub(super) query: Query,
    pub(super) request_id: String,
    pub(super) reply: oneshot::Sender<ReadResult>,
    /// The leader that confirmed the index and its term; `None` when it was
    /// this node (as leader).
    pub(super) confirmed_by: Option<(NodeId, Term)>,
}

/// A read waiting for the leader's confirmation (a read round).
pub(super) enum UnconfirmedRead {
    /// Then read the key here.
    Value(PendingRead),
    /// Then hand the index to a follower.
    IndexOnly {
        request_id: String,
        reply: oneshot::Sender<Result<ServedBy, KvError>>,
    },
}

impl UnconfirmedRead {
    fn fail(self, error: KvError) {
        match self {
            UnconfirmedRead::Value(read) => {
                let _ = read.reply.send(Err(error));
            }
            UnconfirmedRead::IndexOnly { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// The reads the driver holds.
pub(super) struct Reads {
    /// Reads waiting for their read round, by the context given to the core.
    unconfirmed: HashMap<u64, UnconfirmedRead>,
    /// The context of the next read: contexts are never reused.
    next_context: u64,
    /// Reads taken in this turn of the loop, not yet handed to the core.
    to_start: Vec<u64>,
    /// Reads with a confirmed index above what the store has been handed,
    /// in the order they came.
    awaiting_apply: Vec<(Index, PendingRead)>,
}

impl Default for Reads {
    fn default() -> Self {
        Self {
            unconfirmed: HashMap::new(),
            next_context: 1,
            to_start: Vec::new(),
            awaiting_apply: Vec::new(),
        }
    }
}

impl Reads {
    /// Queues `read` for the next read round; returns its context.
    pub(super) fn request(&mut self, read: UnconfirmedRead) -> u64 {
        let context = self.next_context;
        self.next_context += 1;
        self.unconfirmed.insert(context, read);
        self.to_start.push(context);
        context
    }

    /// The contexts queued since the last call, for one read round.
    pub(super) fn take_to_start(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.to_start)
    }

    /// The core refused the read round of `contexts`: fails those reads.
    pub(super) fn fail_started(&mut self, contexts: &[u64], error: ReadIndexError) {
        for context in contexts {
            if let Some(read) = self.unconfirmed.remove(context) {
                read.fail(match error {
                    ReadIndexError::NotLeader { leader_hint } => {
                        KvError::NotLeader(format!("leader hint {leader_hint:?}"))
                    }
                    ReadIndexError::TooManyPending => {
                        KvError::Unavailable("too many pending reads; retry".into())
                    }
                });
            }
        }
    }

    /// The read `read_state` confirms, this node leading in `term`: a read
    /// for a follower gets its index here; a read of a value is returned,
    /// to be served once `read_state.index` is applied. A context this node
    /// no longer holds (failed meanwhile) gives `None`.
    pub(super) fn confirm(
        &mut self,
        read_state: &ReadState,
        leader_id: NodeId,
        term: Term,
    ) -> Option<PendingRead> {
        match self.unconfirmed.remove(&read_state.context)? {
            UnconfirmedRead::Value(read) => Some(read),
            UnconfirmedRead::IndexOnly { request_id, reply } => {
                tracing::debug!(
                    request_id,
                    read_index = read_state.index,
                    "read index confirmed for a follower"
                );
                let _ = reply.send(Ok(ServedBy {
                    node_id: leader_id,
                    leader_id,
                    term,
                    index: read_state.index,
                    forwarded_by: 0,
                    revision: 0,
                }));
                None
            }
        }
    }

    /// Holds `read` until the store has been handed every entry up to `index`.
    pub(super) fn wait_for_apply(&mut self, index: Index, read: PendingRead) {
        self.awaiting_apply.push((index, read));
    }

    /// Takes the reads whose index is at most `applied`, in the order they
    /// came.
    pub(super) fn take_applied(&mut self, applied: Index) -> Vec<(Index, PendingRead)> {
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.awaiting_apply)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.awaiting_apply = waiting;
        ready
    }

    /// Fails the reads not confirmed yet (`reason`, e.g. leadership was
    /// lost). Reads whose index was confirmed stay: that index is
    /// committed, so this node applies it whatever its role, and they are
    /// served then.
    pub(super) fn fail_unconfirmed(&mut self, reason: &str) {
        for read in std::mem::take(&mut self.unconfirmed).into_values() {
            read.fail(KvError::NotLeader(format!(
                "{reason} before the read was confirmed"
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot::error::TryRecvError;

    use super::*;

    const LEADER: NodeId = 1;

    fn value_read(key: &str) -> (UnconfirmedRead, oneshot::Receiver<ReadResult>) {
        let (read, answer) = pending_read(key);
        (UnconfirmedRead::Value(read), answer)
    }

    fn index_read() -> (
        UnconfirmedRead,
        oneshot::Receiver<Result<ServedBy, KvError>>,
    ) {
        let (reply, answer) = oneshot::channel();
        let read = UnconfirmedRead::IndexOnly {
            request_id: "index".into(),
            reply,
        };
        (read, answer)
    }

    fn pending_read(key: &str) -> (PendingRead, oneshot::Receiver<ReadResult>) {
        let (reply, answer) = oneshot::channel();
        let read = PendingRead {
            query: Query::Get(key.as_bytes().to_vec()),
            request_id: key.into(),
            reply,
            confirmed_by: None,
        };
        (read, answer)
    }

    fn keys(reads: &[(Index, PendingRead)]) -> Vec<(Index, &[u8])> {
        reads
            .iter()
            .map(|(index, read)| match &read.query {
                Query::Get(key) => (*index, key.as_slice()),
                _ => panic!("only gets here"),
            })
            .collect()
    }

    #[test]
    fn contexts_are_unique_and_increasing_and_take_to_start_drains_once() {
        let mut reads = Reads::default();
        let contexts: Vec<u64> = (0..3).map(|_| reads.request(value_read("a").0)).collect();
        assert!(
            contexts.windows(2).all(|pair| pair[0] < pair[1]),
            "{contexts:?}"
        );
        assert_eq!(reads.take_to_start(), contexts);
        assert!(reads.take_to_start().is_empty(), "each read starts once");
        let next = reads.request(index_read().0);
        assert!(next > contexts[2], "a context is never reused");
        assert_eq!(reads.take_to_start(), [next]);
    }

    #[test]
    fn a_failed_start_maps_not_leader_and_touches_only_its_contexts() {
        let mut reads = Reads::default();
        let (read, mut value) = value_read("a");
        reads.request(read);
        let (read, mut index) = index_read();
        reads.request(read);
        let started = reads.take_to_start();
        let (read, mut later) = value_read("b");
        let later_context = reads.request(read);
        reads.fail_started(
            &started,
            ReadIndexError::NotLeader {
                leader_hint: Some(3),
            },
        );
        assert!(matches!(
            value.try_recv().unwrap(),
            Err(KvError::NotLeader(message)) if message == "leader hint Some(3)"
        ));
        assert!(matches!(
            index.try_recv().unwrap(),
            Err(KvError::NotLeader(message)) if message == "leader hint Some(3)"
        ));
        assert_eq!(later.try_recv().unwrap_err(), TryRecvError::Empty);
        let read_state = ReadState {
            context: later_context,
            index: 4,
        };
        assert!(
            reads.confirm(&read_state, LEADER, 2).is_some(),
            "the read of the next round still waits"
        );
    }

    #[test]
    fn a_failed_start_maps_too_many_pending_to_unavailable() {
        let mut reads = Reads::default();
        let (read, mut value) = value_read("a");
        reads.request(read);
        let started = reads.take_to_start();
        reads.fail_started(&started, ReadIndexError::TooManyPending);
        assert!(matches!(
            value.try_recv().unwrap(),
            Err(KvError::Unavailable(message)) if message == "too many pending reads; retry"
        ));
    }

    #[test]
    fn an_unknown_read_state_context_is_ignored() {
        let mut reads = Reads::default();
        let (read, mut value) = value_read("a");
        let context = reads.request(read);
        let unknown = ReadState {
            context: context + 1,
            index: 4,
        };
        assert!(reads.confirm(&unknown, LEADER, 2).is_none());
        assert_eq!(value.try_recv().unwrap_err(), TryRecvError::Empty);
        let known = ReadState { context, index: 4 };
        assert!(reads.confirm(&known, LEADER, 2).is_some());
        assert!(
            reads.confirm(&known, LEADER, 2).is_none(),
            "a read is confirmed once"
        );
    }

    #[test]
    fn an_index_only_read_answers_with_the_leaders_term() {
        let mut reads = Reads::default();
        let (read, mut answer) = index_read();
        let context = reads.request(read);
        let read_state = ReadState { context, index: 9 };
        assert!(reads.confirm(&read_state, LEADER, 5).is_none());
        assert_eq!(
            answer.try_recv().unwrap().unwrap(),
            ServedBy {
                node_id: LEADER,
                leader_id: LEADER,
                term: 5,
                index: 9,
                forwarded_by: 0,
                revision: 0,
            }
        );
    }

    #[test]
    fn take_applied_returns_exactly_the_reads_at_or_below_applied_in_order() {
        let mut reads = Reads::default();
        for (index, key) in [(5, "a"), (9, "b"), (3, "c"), (6, "d"), (6, "e")] {
            reads.wait_for_apply(index, pending_read(key).0);
        }
        assert!(reads.take_applied(2).is_empty());
        let applied = reads.take_applied(6);
        assert_eq!(
            keys(&applied),
            [(5, &b"a"[..]), (3, b"c"), (6, b"d"), (6, b"e")]
        );
        assert!(reads.take_applied(6).is_empty(), "each read is taken once");
        assert_eq!(keys(&reads.take_applied(9)), [(9, &b"b"[..])]);
    }

    #[test]
    fn fail_unconfirmed_keeps_the_reads_awaiting_apply() {
        let mut reads = Reads::default();
        let (read, mut unconfirmed) = value_read("a");
        reads.request(read);
        let (read, mut index_only) = index_read();
        reads.request(read);
        let (read, mut confirmed) = pending_read("b");
        reads.wait_for_apply(7, read);
        reads.fail_unconfirmed("leadership was lost");
        for message in [
            unconfirmed.try_recv().unwrap().unwrap_err(),
            index_only.try_recv().unwrap().unwrap_err(),
        ] {
            assert!(
                matches!(
                    &message,
                    KvError::NotLeader(message)
                        if message == "leadership was lost before the read was confirmed"
                ),
                "{message:?}"
            );
        }
        assert_eq!(confirmed.try_recv().unwrap_err(), TryRecvError::Empty);
        assert_eq!(keys(&reads.take_applied(7)), [(7, &b"b"[..])]);
    }
}
