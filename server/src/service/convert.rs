//! Conversions between the node's types and the client API's protobuf types.

use kvstore_proto::kv::v1::{Consistency, ResponseHeader, Role};

use crate::errors::KvError;
use crate::node::{ReadConsistency, ServedBy};
use crate::status::NodeRole;

/// The response header for `served_by`.
pub fn header(served_by: ServedBy) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        node_id: served_by.node_id,
        leader_id: served_by.leader_id,
        term: served_by.term,
        index: served_by.index,
        forwarded_by: served_by.forwarded_by,
        revision: i64::try_from(served_by.revision).unwrap_or(i64::MAX),
    })
}

/// The read consistency a request asked for.
pub fn consistency(value: i32) -> Result<ReadConsistency, KvError> {
    match Consistency::try_from(value) {
        Ok(Consistency::Unspecified | Consistency::Linearizable) => {
            Ok(ReadConsistency::Linearizable)
        }
        Ok(Consistency::Serializable) => Ok(ReadConsistency::Serializable),
        Err(_) => Err(KvError::InvalidArgument(format!(
            "unknown consistency {value}"
        ))),
    }
}

/// The protobuf role.
pub fn role(role: NodeRole) -> Role {
    match role {
        NodeRole::Follower => Role::Follower,
        NodeRole::PreCandidate => Role::PreCandidate,
        NodeRole::Candidate => Role::Candidate,
        NodeRole::Leader => Role::Leader,
    }
}
