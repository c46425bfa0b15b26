//! What the peer service hands the node, in the node's terms: Raft messages
//! into the driver's peer queue ([`PeerInbound`]), and followers' forwarded
//! client requests ([`ForwardedRequests`], which the node implements). The
//! service imports nothing of the node; the node imports this.

use std::sync::Arc;

use kvstore_raft::{Message, NodeId};
use tokio::sync::mpsc;

use super::leader_link::{BoxFuture, LeaderReply};
use crate::errors::KvError;
use crate::state_machine::Command;

/// The driver's queue of peers' Raft messages: every inbound message,
/// requests and answers alike, enters the node here.
#[derive(Debug, Clone)]
pub struct PeerInbound {
    queue: mpsc::Sender<Message>,
}

impl PeerInbound {
    /// The sending side of the driver's peer queue.
    pub fn new(queue: mpsc::Sender<Message>) -> Self {
        Self { queue }
    }

    /// Queues `message` for the driver, waiting while the queue is full
    /// (which slows the sender's stream down: backpressure).
    pub async fn deliver(&self, message: Message) -> Result<(), KvError> {
        self.queue
            .send(message)
            .await
            .map_err(|_| KvError::Unavailable("the node is shutting down".into()))
    }
}

/// Client requests a follower forwarded to this node, served as its leader.
pub trait ForwardedRequests: Send + Sync + 'static {
    /// Proposes `command` (checked against the request limits first) and
    /// answers once it is committed and applied; `from` is the follower.
    fn write(
        &self,
        command: Command,
        request_id: String,
        from: NodeId,
    ) -> BoxFuture<'static, Result<LeaderReply, KvError>>;

    /// Confirms a read index for `from`, which serves the read itself once
    /// it has applied that index.
    fn read_index(
        &self,
        request_id: String,
        from: NodeId,
    ) -> BoxFuture<'static, Result<LeaderReply, KvError>>;
}

/// The node as the peer service holds it.
pub type SharedForwardedRequests = Arc<dyn ForwardedRequests>;
