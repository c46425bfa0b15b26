//! The node serving, as leader, the requests its followers forward: the
//! peer service calls it through [`ForwardedRequests`] (transport defines
//! the interface, so it never imports the node).

use kvstore_raft::NodeId;

use super::{Node, ServedBy, WriteOutcome};
use crate::errors::KvError;
use crate::state_machine::{Command, Outcome};
use crate::transport::inbound::ForwardedRequests;
use crate::transport::leader_link::{BoxFuture, LeaderReply};

fn reply(served_by: ServedBy, found: bool) -> LeaderReply {
    LeaderReply {
        leader_id: served_by.node_id,
        term: served_by.term,
        index: served_by.index,
        found,
        revision: served_by.revision,
        txn: None,
    }
}

fn write_reply(outcome: WriteOutcome) -> LeaderReply {
    LeaderReply {
        txn: match outcome.outcome.map(|outcome| *outcome) {
            Some(Outcome::Txn(response)) => Some(response),
            _ => None,
        },
        ..reply(outcome.served_by, outcome.found)
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
}
