//! What the peer service hands the node, in the node's terms: Raft messages
//! into the driver's peer queue ([`PeerInbound`]), and followers' forwarded
//! client requests ([`ForwardedRequests`], which the node implements). The
//! service imports nothing of the node; the node imports this.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

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
    releases: Arc<PeerReleases>,
}

/// What each peer's release supports, as the header of its latest message
/// said: the highest storage version it can apply (0 from a release before
/// storage versions, which has only version 1). The leader raises the
/// cluster's storage version once every member supports it.
#[derive(Debug, Default)]
pub struct PeerReleases {
    reported: Mutex<HashMap<NodeId, u32>>,
}

impl PeerReleases {
    /// Records what `peer` reported.
    pub fn record(&self, peer: NodeId, storage_version_max: u32) {
        let mut reported = self.reported.lock().unwrap_or_else(PoisonError::into_inner);
        if reported.get(&peer) != Some(&storage_version_max) {
            reported.insert(peer, storage_version_max);
        }
    }

    /// The lowest storage version `peers` support (0 when one was not heard
    /// from yet).
    pub fn lowest(&self, peers: &[NodeId]) -> u32 {
        let reported = self.reported.lock().unwrap_or_else(PoisonError::into_inner);
        peers
            .iter()
            .map(|peer| reported.get(peer).copied().unwrap_or(0))
            .min()
            .unwrap_or(u32::MAX)
    }
}

impl PeerInbound {
    /// The sending side of the driver's peer queue; what peers report of
    /// their release goes into `releases`.
    pub fn new(queue: mpsc::Sender<Message>, releases: Arc<PeerReleases>) -> Self {
        Self { queue, releases }
    }

    /// Records what a peer's message header said of its release.
    pub fn record_release(&self, peer: NodeId, storage_version_max: u32) {
        self.releases.record(peer, storage_version_max);
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

    /// Answers what this leader knows of lease `id`, renewing it first when
    /// `keep_alive` is set.
    fn lease(
        &self,
        id: u64,
        keep_alive: bool,
        request_id: String,
    ) -> BoxFuture<'static, Result<LeaderReply, KvError>>;
}

/// The node as the peer service holds it.
pub type SharedForwardedRequests = Arc<dyn ForwardedRequests>;
