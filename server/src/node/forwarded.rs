//! The node serving, as leader, the requests its followers forward: the
//! peer service calls it through [`ForwardedRequests`] (transport defines
//! the interface, so it never imports the node).

use kvstore_raft::NodeId;

use super::{Node, ServedBy, WriteOutcome};
use crate::errors::KvError;
use crate::state_machine::{Command, Outcome};
use crate::transport::inbound::ForwardedRequests;
use crate::transport::leader_link::{BoxFuture, LeaderReply, LeaseReply};

fn reply(served_by: ServedBy, found: bool) -> LeaderReply {
    LeaderReply {
        leader_id: served_by.node_id,
        term: served_by.term,
        index: served_by.index,
        found,
        revision: served_by.revision,
        txn: None,
        lease: None,
    }
}

fn write_reply(outcome: WriteOutcome) -> LeaderReply {
    let base = reply(outcome.served_by, outcome.found);
    match outcome.outcome.map(|outcome| *outcome) {
        Some(Outcome::Txn(response)) => LeaderReply {
            txn: Some(response),
            ..base
        },
        Some(Outcome::LeaseGranted { id, ttl_seconds }) => LeaderReply {
            lease: Some(LeaseReply {
                id,
                found: true,
                ttl_seconds,
                remaining_seconds: ttl_seconds,
            }),
            ..base
        },
        _ => base,
    }
}

impl ForwardedRequests for Node {
    fn write(
        &self,
        command: Command,
        request_id: String,
        from: NodeId,
    ) -> BoxFuture<'static, Result<LeaderReply, KvError>> {
        let node = self.clone();
        Box::pin(async move {
            let outcome = node.write_as_leader(command, &request_id, from).await?;
            Ok(write_reply(outcome))
        })
    }

    fn read_index(
        &self,
        request_id: String,
        from: NodeId,
    ) -> BoxFuture<'static, Result<LeaderReply, KvError>> {
        let node = self.clone();
        Box::pin(async move {
            let served_by = node.read_index_as_leader(&request_id, from).await?;
            Ok(reply(served_by, false))
        })
    }

    fn lease(
        &self,
        id: u64,
        keep_alive: bool,
        request_id: String,
    ) -> BoxFuture<'static, Result<LeaderReply, KvError>> {
        let node = self.clone();
        Box::pin(async move {
            let leader = node.id();
            if node.status().leader_id != leader {
                return Err(KvError::NotLeader(format!("node {leader} does not lead")));
            }
            let (served_by, lease) = node.lease_query(id, keep_alive, &request_id).await?;
            if served_by.node_id != leader {
                // Leadership moved meanwhile: the follower asks the new one.
                return Err(KvError::NotLeader(format!("node {leader} no longer leads")));
            }
            Ok(LeaderReply {
                lease: Some(lease),
                ..reply(served_by, lease.found)
            })
        })
    }
}
