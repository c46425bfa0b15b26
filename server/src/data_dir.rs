//! The layout of a node's data directory, and the lock that keeps a second
//! process out of it.
//!
//! ```text
//! <data-dir>/
//!   LOCK        held (flock) by the running server
//!   wal/        the Raft write-ahead log (term, vote, entries): durability
//!   snapshots/  state-machine snapshots the log was compacted into
//!   kv/         LevelDB: the applied key-value state, rebuilt from the two
//!               above when lost
//!   kv.corrupt-<unix seconds>/
//!               a state that failed its checks, set aside for inspection
//!               and rebuilt (`storage::recovery`); never read again
//! ```

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

const LOCK_FILE: &str = "LOCK";
const KV_DIRECTORY: &str = "kv";
const WAL_DIRECTORY: &str = "wal";
const SNAPSHOT_DIRECTORY: &str = "snapshots";

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Another process (most likely another kvstore-server) holds the lock.
    #[error("data directory {0} is in use by another process (its LOCK file is held); stop that process or choose another --data-dir")]
    InUse(PathBuf),
    /// The directory or its lock file could not be created or opened.
    #[error("cannot open data directory {path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
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
}
