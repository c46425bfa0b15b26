//! Linearizable reads: waiting for the leader's confirmation, then for the
//! read index to be applied.

use kvstore_raft::{NodeId, Term};
use tokio::sync::oneshot;

use super::ReadResult;
use crate::errors::KvError;
use crate::node::ServedBy;

/// A read whose index is known, waiting to be served from the store.
pub(super) struct PendingRead {
    pub(super) key: Vec<u8>,
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
    pub(super) fn fail(self, error: KvError) {
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
