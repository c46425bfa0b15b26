//! The state machine's commands: what a normal log entry asks it to do, in
//! the server's own terms. The node proposes them, the state machine
//! applies them; how they are written into the log is
//! [`super::log_encoding`]'s business alone.

use kvstore_raft::Index;

use super::mvcc::store::{Change, MvccError};
use super::mvcc::txn::{InvalidTxn, TxnRequest, TxnResponse};

/// The storage version a store starts at: one value per key, no revisions.
pub const STORAGE_VERSION_SINGLE: u32 = 1;
/// The multi-version store: revisions, ranges, transactions.
pub const STORAGE_VERSION_MVCC: u32 = 2;
/// Leases: the lease table, keys attached to leases (no conversion: a
/// version-2 store is a version-3 store without leases).
pub const STORAGE_VERSION_LEASES: u32 = 3;
/// The highest storage version this release can apply.
pub const STORAGE_VERSION_MAX: u32 = STORAGE_VERSION_LEASES;

/// One client write, as the log carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Store `value` under `key`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// A transaction (also a put with options, or a range delete, as a txn
    /// of one op). Needs [`STORAGE_VERSION_MVCC`].
    Txn(TxnRequest),
    /// Drop history below `revision`. Needs [`STORAGE_VERSION_MVCC`].
    Compact {
        /// The new compacted revision.
        revision: u64,
    },
    /// Raise the storage version (the leader proposes it once every member
    /// supports it).
    SetStorageVersion {
        /// The new version.
        version: u32,
    },
    /// Grant a lease. Needs [`STORAGE_VERSION_LEASES`].
    LeaseGrant {
        /// The lease id (0: the applier picks one from the entry's index).
        id: u64,
        /// Its time to live, in seconds (checked when proposed).
        ttl_seconds: u64,
    },
    /// Revoke a lease: its keys are deleted at one revision. Needs
    /// [`STORAGE_VERSION_LEASES`].
    LeaseRevoke {
        /// The lease.
        id: u64,
    },
    /// Record the remaining time to live of leases, so that a new leader
    /// restarts them from there rather than from their full TTL. Needs
    /// [`STORAGE_VERSION_LEASES`].
    LeaseCheckpoint {
        /// (lease, remaining seconds).
        checkpoints: Vec<(u64, u64)>,
    },
}

impl Command {
    /// The key the command writes, for a single-key write.
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Command::Put { key, .. } | Command::Delete { key } => Some(key),
            Command::Txn(_)
            | Command::Compact { .. }
            | Command::SetStorageVersion { .. }
            | Command::LeaseGrant { .. }
            | Command::LeaseRevoke { .. }
            | Command::LeaseCheckpoint { .. } => None,
        }
    }
}

/// Why an applied command changed nothing (the same on every replica).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The command needs a storage version the cluster has not reached.
    #[error(
        "the cluster's storage version is {current}, this needs {needed}: \
         a member runs a release without revisions (upgrade every member)"
    )]
    StorageVersion {
        /// The cluster's version when it was applied.
        current: u32,
        /// The version needed.
        needed: u32,
    },
    /// A revision compacted or not reached yet (gRPC OUT_OF_RANGE).
    #[error("{0}")]
    Revision(String),
    /// A malformed txn, a key written twice, `ignore_value` on a missing
    /// key (gRPC INVALID_ARGUMENT).
    #[error("{0}")]
    Invalid(String),
    /// The lease does not exist: never granted, expired or revoked (gRPC
    /// NOT_FOUND, etcd's message).
    #[error(
        "etcdserver: requested lease not found (lease {0:x}: never granted, or expired or revoked)"
    )]
    LeaseNotFound(u64),
    /// A lease with this id exists already (gRPC FAILED_PRECONDITION, etcd's
    /// message).
    #[error("etcdserver: lease already exists (lease {0:x})")]
    LeaseExists(u64),
}

impl From<InvalidTxn> for Refusal {
    fn from(error: InvalidTxn) -> Self {
        Refusal::Invalid(error.to_string())
    }
}

impl Refusal {
    /// The refusal an MVCC error stands for; `None` for a storage failure
    /// (not a property of the command: the apply fails).
    pub(crate) fn from_mvcc(error: &MvccError) -> Option<Self> {
        match error {
            MvccError::Store(_) | MvccError::Corrupt(_) => None,
            MvccError::FutureRevision { .. } | MvccError::Compacted { .. } => {
                Some(Refusal::Revision(error.to_string()))
            }
            MvccError::DuplicateKey { .. }
            | MvccError::InvalidRange
            | MvccError::KeyNotFound { .. } => Some(Refusal::Invalid(error.to_string())),
            MvccError::LeaseNotFound { lease } => Some(Refusal::LeaseNotFound(*lease)),
        }
    }
}

/// What applying a revision-aware command returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A txn ran (also a put with options or a range delete).
    Txn(TxnResponse),
    /// A compaction was recorded.
    Compacted,
    /// The storage version is now this one.
    StorageVersion(u32),
    /// A lease was granted.
    LeaseGranted {
        /// Its id.
        id: u64,
        /// Its time to live, in seconds.
        ttl_seconds: u64,
    },
    /// A lease was revoked (its keys deleted at the entry's revision).
    LeaseRevoked {
        /// The lease.
        id: u64,
        /// Keys deleted with it.
        deleted: u64,
    },
    /// Lease checkpoints were recorded: (lease, remaining seconds) of the
    /// leases that exist.
    LeaseCheckpointed(Vec<(u64, u64)>),
    /// The command changed nothing, for this reason.
    Refused(Refusal),
}

/// What applying one entry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The entry's index.
    pub index: Index,
    /// For a delete: whether the key existed. For a put: always true.
    pub found: bool,
    /// The store revision after the entry (0 before storage version 2).
    pub revision: u64,
    /// For a txn, compaction or refused command: what it did.
    pub outcome: Option<Box<Outcome>>,
    /// The writes it made, in order (what watchers are told); empty when it
    /// changed nothing or the store has no revisions.
    pub changes: Vec<Change>,
}

impl Applied {
    /// The outcome of an entry that is not a revision-aware command.
    pub fn simple(index: Index, found: bool, revision: u64) -> Self {
        Self {
            index,
            found,
            revision,
            outcome: None,
            changes: Vec::new(),
        }
    }
}
