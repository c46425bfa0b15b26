//! `KV.Status`: served locally, never forwarded.

use kvstore_proto::kv::v1::{FollowerProgress, StatusResponse};

use super::convert;
use crate::node::{Node, ServedBy};

/// Describes the node.
pub fn handle(node: &Node) -> StatusResponse {
    let status = node.status();
    let not_ready_reason = status.readiness().err().unwrap_or_default();
    StatusResponse {
        header: convert::header(ServedBy {
            node_id: status.id,
            leader_id: status.leader_id,
            term: status.term,
            index: status.commit_index,
            forwarded_by: 0,
            revision: 0,
        }),
        id: status.id,
        role: convert::role(status.role) as i32,
        term: status.term,
        leader_id: status.leader_id,
        commit_index: status.commit_index,
        applied_index: status.applied_index,
        last_log_index: status.last_log_index,
        snapshot_index: status.snapshot_index,
        followers: status
            .followers
            .iter()
            .map(|follower| FollowerProgress {
                id: follower.id,
                match_index: follower.match_index,
                next_index: follower.next_index,
            })
            .collect(),
        cluster_id: status.cluster_id,
        version: env!("CARGO_PKG_VERSION").to_string(),
        not_ready_reason,
    }
}
