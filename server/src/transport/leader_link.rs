//! The node's way to the leader: a follower forwards writes and asks for
//! read indexes through [`LeaderLink`], in domain types; [`PeerSet`]
//! implements it over each peer's `ForwardStream`. [`Outbox`] is the
//! driver's way to send Raft messages. The node depends on these traits,
//! never on the wire.

use std::future::Future;
use std::pin::Pin;

use kvstore_proto::raft::v1 as pb;
use kvstore_raft::{Index, Message, NodeId, Term};

use super::peers::PeerSet;
use crate::errors::KvError;
use crate::membership::Membership;
use crate::state_machine::mvcc::txn::TxnResponse;
use crate::state_machine::{kv_encoding, log_encoding, Command, STORAGE_VERSION_MAX};

/// A boxed future, so that the traits here can be used as objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The leader's answer to a forwarded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderReply {
    /// The leader that served it.
    pub leader_id: NodeId,
    /// Its term then.
    pub term: Term,
    /// The write's log index, or the confirmed read index.
    pub index: Index,
    /// For a delete: whether the key existed (true for other writes).
    pub found: bool,
    /// The store revision after the write (0 for a read index, and before
    /// storage version 2).
    pub revision: u64,
    /// What a txn did.
    pub txn: Option<TxnResponse>,
    /// A granted lease, or the answer to a lease query.
    pub lease: Option<LeaseReply>,
}

/// What the leader knows of one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseReply {
    /// The lease.
    pub id: u64,
    /// Whether it exists (neither expired nor revoked).
    pub found: bool,
    /// Its granted time to live, in seconds.
    pub ttl_seconds: u64,
    /// Its remaining time to live, in seconds.
    pub remaining_seconds: u64,
}

impl LeaseReply {
    /// The wire form.
    pub fn to_proto(self) -> pb::LeaseAnswer {
        pb::LeaseAnswer {
            id: self.id,
            found: self.found,
            ttl_seconds: self.ttl_seconds,
            remaining_seconds: self.remaining_seconds,
        }
    }

    /// From the wire form.
    pub fn from_proto(answer: pb::LeaseAnswer) -> Self {
        Self {
            id: answer.id,
            found: answer.found,
            ttl_seconds: answer.ttl_seconds,
            remaining_seconds: answer.remaining_seconds,
        }
    }
}

/// Forwards requests from a follower to its leader.
pub trait LeaderLink: Send + Sync + std::fmt::Debug {
    /// Has `leader` (believed to lead in `term`) propose `command`; answers
    /// once it is applied there.
    fn write<'a>(
        &'a self,
        leader: NodeId,
        term: Term,
        command: Command,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<LeaderReply, KvError>>;

    /// Has `leader` confirm a read index (Raft thesis §6.4).
    fn read_index<'a>(
        &'a self,
        leader: NodeId,
        term: Term,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<LeaderReply, KvError>>;

    /// Asks `leader` for lease `id`'s time to live, renewing it first when
    /// `keep_alive` is set (the answer is in [`LeaderReply::lease`]).
    fn lease<'a>(
        &'a self,
        leader: NodeId,
        term: Term,
        id: u64,
        keep_alive: bool,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<LeaderReply, KvError>>;
}

/// Sends Raft messages to peers, without waiting: a message that cannot
/// be sent now is dropped (Raft retries).
pub trait Outbox: Send + Sync {
    /// Queues `message` for its recipient.
    fn send(&self, message: Message);
}

impl Outbox for PeerSet {
    fn send(&self, message: Message) {
        PeerSet::send(self, message);
    }
}

impl LeaderLink for PeerSet {
    fn write<'a>(
        &'a self,
        leader: NodeId,
        term: Term,
        command: Command,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<LeaderReply, KvError>> {
        let request =
            pb::forward_request::Request::Write(log_encoding::to_proto(command, request_id));
        Box::pin(forward(self, leader, term, request, request_id))
    }

    fn read_index<'a>(
        &'a self,
        leader: NodeId,
        term: Term,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<LeaderReply, KvError>> {
        let request = pb::forward_request::Request::ReadIndex(true);
        Box::pin(forward(self, leader, term, request, request_id))
    }

    fn lease<'a>(
        &'a self,
        leader: NodeId,
        term: Term,
        id: u64,
        keep_alive: bool,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<LeaderReply, KvError>> {
        let request = pb::forward_request::Request::Lease(pb::LeaseQuery { id, keep_alive });
        Box::pin(forward(self, leader, term, request, request_id))
    }
}

async fn forward(
    peers: &PeerSet,
    leader: NodeId,
    term: Term,
    request: pb::forward_request::Request,
    request_id: &str,
) -> Result<LeaderReply, KvError> {
    let is_write = matches!(request, pb::forward_request::Request::Write(_));
    let forwarder = peers
        .forwarder(leader)
        .ok_or_else(|| KvError::Unavailable(format!("leader {leader} is not a configured peer")))?;
    let membership: &Membership = peers.membership();
    let message = pb::ForwardRequest {
        header: Some(pb::MessageHeader {
            cluster_id: membership.cluster_id.clone(),
            from: membership.id,
            to: leader,
            term,
            storage_version_max: STORAGE_VERSION_MAX,
        }),
        request_id: request_id.to_string(),
        request: Some(request),
    };
    match forwarder.call(message).await {
        Ok(response) => Ok(LeaderReply {
            leader_id: leader,
            term: response
                .header
                .as_ref()
                .map(|header| header.term)
                .unwrap_or_default(),
            index: response.index,
            found: response.found,
            revision: u64::try_from(response.revision).unwrap_or(0),
            txn: response.txn.map(kv_encoding::txn_response_from_proto),
            lease: response.lease.map(LeaseReply::from_proto),
        }),
        Err(status) => Err(KvError::from_leader_status(leader, status, is_write)),
    }
}
