//! The node: what the client service calls to read and write.
//!
//! Until Raft lands this is a single node that applies writes directly and
//! durably to its store; the Raft driver replaces the write and read paths
//! behind the same methods.

use crate::errors::KvError;
use crate::state_machine;
use crate::storage::actor::StoreHandle;
use crate::storage::WriteBatch;

/// Who served a request, and where in the log (the client API's header).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServedBy {
    /// Node that answered.
    pub node_id: u64,
    /// Leader when the request was served (0 when unknown).
    pub leader_id: u64,
    /// Raft term (0 before Raft).
    pub term: u64,
    /// Log index of the write, or the read index.
    pub index: u64,
    /// Node that forwarded the request (0 when not forwarded).
    pub forwarded_by: u64,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Reflects every write acknowledged before the read started.
    Linearizable,
    /// Served from local state; may be stale.
    Serializable,
}

/// A node's role, as the Status RPC reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    /// Follows a leader.
    Follower,
    /// Asking for pre-votes.
    PreCandidate,
    /// Running an election.
    Candidate,
    /// Leading.
    Leader,
}

/// What the Status RPC reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// This node.
    pub id: u64,
    /// Its role.
    pub role: NodeRole,
    /// Its term.
    pub term: u64,
    /// The leader it knows (0 when none).
    pub leader_id: u64,
    /// Highest committed index.
    pub commit_index: u64,
    /// Highest applied index.
    pub applied_index: u64,
    /// Last index in the log.
    pub last_log_index: u64,
    /// Index of the latest snapshot.
    pub snapshot_index: u64,
    /// On the leader: (follower id, match index, next index).
    pub followers: Vec<(u64, u64, u64)>,
    /// Cluster id.
    pub cluster_id: String,
}

/// A single kvstore node.
#[derive(Debug, Clone)]
pub struct Node {
    id: u64,
    store: StoreHandle,
}

impl Node {
    /// A node serving from `store`.
    pub fn new(id: u64, store: StoreHandle) -> Self {
        Self { id, store }
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    fn served_by(&self) -> ServedBy {
        ServedBy {
            node_id: self.id,
            leader_id: self.id,
            ..ServedBy::default()
        }
    }

    /// Stores `value` under `key`, durably, before returning.
    pub async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<ServedBy, KvError> {
        let mut batch = WriteBatch::new();
        state_machine::put_into(&mut batch, &key, &value);
        self.store.write(batch).await?;
        Ok(self.served_by())
    }

    /// Removes `key`; tells whether it existed.
    pub async fn delete(&self, key: Vec<u8>) -> Result<(ServedBy, bool), KvError> {
        let existed = self
            .store
            .with(move |store| {
                let existed = state_machine::get(store, &key)?.is_some();
                if existed {
                    let mut batch = WriteBatch::new();
                    state_machine::delete_into(&mut batch, &key);
                    store.write(batch)?;
                }
                Ok(existed)
            })
            .await?;
        Ok((self.served_by(), existed))
    }

    /// Reads `key`.
    pub async fn get(
        &self,
        key: Vec<u8>,
        _consistency: ReadConsistency,
    ) -> Result<(ServedBy, Option<Vec<u8>>), KvError> {
        let value = self
            .store
            .with(move |store| state_machine::get(store, &key))
            .await?;
        Ok((self.served_by(), value))
    }

    /// Describes this node.
    pub fn status(&self) -> NodeStatus {
        NodeStatus {
            id: self.id,
            role: NodeRole::Leader,
            term: 0,
            leader_id: self.id,
            commit_index: 0,
            applied_index: 0,
            last_log_index: 0,
            snapshot_index: 0,
            followers: Vec::new(),
            cluster_id: String::new(),
        }
    }
}
