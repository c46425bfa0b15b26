//! The layout of a node's data directory, and the lock that keeps a second
//! process out of it.
//!
//! ```text
//! <data-dir>/
//!   LOCK        held (flock) by the running server
//!   IDENTITY    whose directory this is: cluster id, node id, members
//!               (JSON, written once when the directory is first used)
//!   CATCHING_UP present while the node, having lost its state, has not
//!               caught up (it then neither votes nor campaigns, also
//!               after a restart)
//!   wal/        the Raft write-ahead log (term, vote, entries): durability
//!   snapshots/  state-machine snapshots the log was compacted into
//!   kv/         LevelDB: the applied key-value state, rebuilt from the two
//!               above when lost
//!   kv.corrupt-<unix seconds>/
//!               a state that failed its checks, set aside for inspection
//!               and rebuilt (`storage::recovery`); never read again
//! ```

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const LOCK_FILE: &str = "LOCK";
const IDENTITY_FILE: &str = "IDENTITY";
const CATCHING_UP_FILE: &str = "CATCHING_UP";
/// Version of the IDENTITY file's layout.
const IDENTITY_FORMAT: u32 = 1;
const KV_DIRECTORY: &str = "kv";
const WAL_DIRECTORY: &str = "wal";
const SNAPSHOT_DIRECTORY: &str = "snapshots";

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Another process (most likely another kvstore-server) holds the lock.
    #[error("data directory {0} is in use by another process (its LOCK file is held); stop that process or choose another --data-dir")]
    InUse(PathBuf),
    /// The directory belongs to another node or cluster.
    #[error("data directory {path} belongs to {found}, but this server was started as {expected}: point --data-dir at this node's own directory, or move the directory away to start this node empty (see --initial-cluster-state)")]
    IdentityMismatch {
        /// The directory.
        path: PathBuf,
        /// What its IDENTITY file says.
        found: Box<Identity>,
        /// What the flags say.
        expected: Box<Identity>,
    },
    /// The IDENTITY file cannot be parsed.
    #[error("data directory identity file {path} is unreadable: {reason}")]
    IdentityUnreadable {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The directory or its lock file could not be created or opened.
    #[error("cannot open data directory {path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Whose data directory this is. Stored when the directory is first used,
/// and checked on every start: a node must not adopt the log of another
/// node or cluster, whose entries would then be served as its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Layout version ([`IDENTITY_FORMAT`]).
    pub format: u32,
    /// `--cluster-id`.
    pub cluster_id: String,
    /// `--id`.
    pub node_id: u64,
    /// Every member's id, this node's included, sorted (`--id` and
    /// `--peers`): the membership the directory was created with.
    pub members: Vec<u64>,
}

impl Identity {
    /// The identity of node `node_id` of `cluster_id` with `members`.
    pub fn new(cluster_id: &str, node_id: u64, members: &[u64]) -> Self {
        let mut members = members.to_vec();
        members.sort_unstable();
        Identity {
            format: IDENTITY_FORMAT,
            cluster_id: cluster_id.to_string(),
            node_id,
            members,
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "node {} of cluster {:?} (members {:?})",
            self.node_id, self.cluster_id, self.members
        )
    }
}

/// Records durably that the node lost its state and has not caught up, so
/// that a restart in the middle keeps it from voting
/// (`kvstore_raft::Config::catch_up_before_voting`).
#[derive(Debug, Clone)]
pub struct CatchUpMarker {
    directory: PathBuf,
}

impl CatchUpMarker {
    fn path(&self) -> PathBuf {
        self.directory.join(CATCHING_UP_FILE)
    }

    /// Whether the node was catching up when it stopped.
    pub fn is_set(&self) -> bool {
        self.path().exists()
    }

    /// Creates the marker durably (file and directory fsynced).
    pub fn set(&self) -> std::io::Result<()> {
        File::create(self.path())?.sync_all()?;
        File::open(&self.directory)?.sync_all()
    }

    /// Removes the marker durably.
    pub fn clear(&self) -> std::io::Result<()> {
        match std::fs::remove_file(self.path()) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        File::open(&self.directory)?.sync_all()
    }
}

/// An open, locked data directory. The lock is released on drop.
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates `root` when missing and takes its lock.
    pub fn open(root: &Path) -> Result<Self, DataDirError> {
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DataDirError::Io { path, source }
        };
        std::fs::create_dir_all(root).map_err(io_error(root))?;
        let lock_path = root.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(DataDirError::InUse(root.to_path_buf()))
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(DataDirError::Io {
                    path: lock_path,
                    source,
                })
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the write-ahead log lives.
    pub fn wal_directory(&self) -> PathBuf {
        self.root.join(WAL_DIRECTORY)
    }

    /// Where snapshot files live.
    pub fn snapshot_directory(&self) -> PathBuf {
        self.root.join(SNAPSHOT_DIRECTORY)
    }

    /// Where LevelDB keeps the applied key-value state.
    pub fn kv_directory(&self) -> PathBuf {
        self.root.join(KV_DIRECTORY)
    }

    /// The marker of a node catching up after it lost its state.
    pub fn catch_up_marker(&self) -> CatchUpMarker {
        CatchUpMarker {
            directory: self.root.clone(),
        }
    }

    /// The stored identity, if any (a directory never used, or written by
    /// a release before identities were stored, has none).
    pub fn identity(&self) -> Result<Option<Identity>, DataDirError> {
        let path = self.root.join(IDENTITY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(DataDirError::Io { path, source }),
        };
        let identity: Identity =
            serde_json::from_str(&text).map_err(|error| DataDirError::IdentityUnreadable {
                path: path.clone(),
                reason: error.to_string(),
            })?;
        if identity.format != IDENTITY_FORMAT {
            return Err(DataDirError::IdentityUnreadable {
                path,
                reason: format!(
                    "format {} (this release reads format {IDENTITY_FORMAT})",
                    identity.format
                ),
            });
        }
        Ok(Some(identity))
    }

    /// Checks the stored identity against `expected`, storing `expected`
    /// when there is none. Returns whether it was stored now.
    pub fn check_identity(&self, expected: &Identity) -> Result<bool, DataDirError> {
        match self.identity()? {
            Some(found) if found == *expected => Ok(false),
            Some(found) => Err(DataDirError::IdentityMismatch {
                path: self.root.clone(),
                found: Box::new(found),
                expected: Box::new(expected.clone()),
            }),
            None => {
                self.store_identity(expected)?;
                Ok(true)
            }
        }
    }

    /// Writes the IDENTITY file durably: a temporary file, fsynced, renamed
    /// over, and the directory fsynced.
    fn store_identity(&self, identity: &Identity) -> Result<(), DataDirError> {
        let path = self.root.join(IDENTITY_FILE);
        let temporary = self.root.join(format!("{IDENTITY_FILE}.tmp"));
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DataDirError::Io { path, source }
        };
        let mut text = serde_json::to_string_pretty(identity).expect("an identity serializes");
        text.push('\n');
        let mut file = File::create(&temporary).map_err(io_error(&temporary))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_error(&temporary))?;
        std::fs::rename(&temporary, &path).map_err(io_error(&path))?;
        File::open(&self.root)
            .and_then(|directory| directory.sync_all())
            .map_err(io_error(&self.root))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_opener_is_refused_until_the_first_is_dropped() {
        let directory = tempfile::tempdir().unwrap();
        let root = directory.path().join("node-1");
        let first = DataDir::open(&root).unwrap();
        let error = DataDir::open(&root).unwrap_err();
        assert!(matches!(error, DataDirError::InUse(_)), "{error}");
        assert!(error.to_string().contains("in use by another process"));
        drop(first);
        DataDir::open(&root).unwrap();
    }

    #[test]
    fn the_catch_up_marker_is_set_and_cleared() {
        let directory = tempfile::tempdir().unwrap();
        let marker = DataDir::open(directory.path()).unwrap().catch_up_marker();
        assert!(!marker.is_set());
        marker.set().unwrap();
        assert!(marker.is_set());
        marker.clear().unwrap();
        assert!(!marker.is_set());
        marker.clear().unwrap();
    }

    #[test]
    fn the_identity_is_stored_once_and_a_mismatch_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        let data_dir = DataDir::open(directory.path()).unwrap();
        let identity = Identity::new("blue", 3, &[3, 1, 2]);
        assert_eq!(data_dir.identity().unwrap(), None);
        assert!(data_dir.check_identity(&identity).unwrap(), "stored");
        assert!(!data_dir.check_identity(&identity).unwrap(), "matched");
        assert_eq!(data_dir.identity().unwrap(), Some(identity));
        for (other, what) in [
            (Identity::new("green", 3, &[1, 2, 3]), "cluster \"green\""),
            (Identity::new("blue", 2, &[1, 2, 3]), "started as node 2"),
            (Identity::new("blue", 3, &[1, 3, 4]), "members [1, 3, 4]"),
        ] {
            let error = data_dir.check_identity(&other).unwrap_err().to_string();
            assert!(
                error.contains("belongs to node 3 of cluster \"blue\""),
                "{error}"
            );
            assert!(error.contains(what), "{error}");
        }
        std::fs::write(directory.path().join(IDENTITY_FILE), "{not json").unwrap();
        let error = data_dir.identity().unwrap_err().to_string();
        assert!(error.contains("unreadable"), "{error}");
    }
}
