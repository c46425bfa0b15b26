//! A node's place in its cluster: who it is, which cluster, who the members
//! are. The node, the peer service and the HTTP port read it; every peer
//! message's header is checked against it.

use kvstore_raft::NodeId;

/// A node's place in its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// This node's id.
    pub id: NodeId,
    /// The cluster it belongs to.
    pub cluster_id: String,
    /// Every member, this node included.
    pub members: Vec<NodeId>,
}
