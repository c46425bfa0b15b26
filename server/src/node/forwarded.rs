//! The node serving, as leader, the requests its followers forward: the
//! peer service calls it through [`ForwardedRequests`] (transport defines
//! the interface, so it never imports the node).

use kvstore_raft::NodeId;

use super::{Node, ServedBy};
use crate::errors::KvError;
use crate::state_machine::Command;
use crate::transport::inbound::ForwardedRequests;
use crate::transport::leader_link::{BoxFuture, LeaderReply};

fn reply(served_by: ServedBy, found: bool) -> LeaderReply {
    LeaderReply {
        leader_id: served_by.node_id,
        term: served_by.term,
        index: served_by.index,
        found,
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
            let (served_by, found) = node.write_as_leader(command, &request_id, from).await?;
            Ok(reply(served_by, found))
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
