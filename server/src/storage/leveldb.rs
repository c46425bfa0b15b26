//! A [`Store`] on `rusty-leveldb`.
//!
//! `rusty-leveldb` never calls `fsync`: its `write(batch, sync = true)` only
//! flushes a buffered writer into the page cache. That survives a process
//! crash (`kill -9`) but not a power loss. With [`Durability::Fsync`] this
//! store adds the missing step itself: after each write it `fdatasync`s the
//! current LevelDB log file, and when LevelDB has rotated its log (a memtable
//! compaction wrote a new table file) it also syncs the table files, the
//! manifest and the directory. In the Raft era the write-ahead log carries
//! durability and the state machine uses [`Durability::Flush`].
//!
//! rusty-leveldb takes a table block that fails its checksum for a missing
//! key and says nothing ([`super::integrity`]). This store reads its
//! tables through [`VerifyingEnv`], and after every engine call it checks
//! whether a table failed: then the call fails with [`StoreError::Corrupt`]
//! (every later call too), or the store's corruption handler runs
//! ([`LevelDbStore::stop_on_corruption`]), so a value the engine read past a
//! corrupt block is never returned.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rusty_leveldb::{LdbIterator, Options, DB};

use super::integrity::{Corruption, VerifyingEnv};
use super::{KeyRange, KeyValue, Store, StoreError, WriteBatch, WriteOp};

/// How far a write is pushed before [`Store::write`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Into the OS page cache: survives a process crash, not a power loss.
    Flush,
    /// Onto stable storage with `fdatasync`: survives a power loss.
    Fsync,
}

const LOG_FILE_SUFFIX: &str = ".log";

/// A LevelDB database in one directory.
pub struct LevelDbStore {
    db: DB,
    directory: PathBuf,
    durability: Durability,
    /// The log file last synced, kept open to sync it again cheaply.
    synced_log: Option<(PathBuf, File)>,
    /// Table failures seen by the engine's file access.
    corruption: Corruption,
    /// Runs instead of returning [`StoreError::Corrupt`], when set.
    on_corruption: Option<CorruptionHandler>,
}

/// Called with [`StoreError::Corrupt`] when a table fails a check while the
/// store runs; it does not return (the server stops the process).
pub type CorruptionHandler = fn(&StoreError) -> !;

/// Left in the database directory when a table failed a check while the
/// store ran: the next start rebuilds the state even when nothing is found
/// corrupt then (a compaction may have dropped the bad block's keys and
/// deleted the table before the failure was seen). LevelDB ignores it.
pub const REBUILD_MARKER_FILE: &str = "REBUILD";

impl std::fmt::Debug for LevelDbStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LevelDbStore")
            .field("directory", &self.directory)
            .field("durability", &self.durability)
            .finish()
    }
}

fn engine_error(error: rusty_leveldb::Status) -> StoreError {
    StoreError::Engine(error.to_string())
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl LevelDbStore {
    /// Opens the database in `directory`, creating the directory and the
    /// database when missing. A database held by another process is refused
    /// with a clear error (LevelDB's own `LOCK` file).
    pub fn open(directory: &Path, durability: Durability) -> Result<Self, StoreError> {
        std::fs::create_dir_all(directory).map_err(io_error(directory))?;
        let corruption = Corruption::default();
        let options = Options {
            create_if_missing: true,
            env: Rc::new(Box::new(VerifyingEnv::new(corruption.clone()))),
            ..Options::default()
        };
        let db = DB::open(directory, options).map_err(|error| {
            StoreError::Engine(format!(
                "cannot open LevelDB in {}: {error}",
                directory.display()
            ))
        })?;
        let mut store = Self {
            db,
            directory: directory.to_path_buf(),
            durability,
            synced_log: None,
            corruption,
            on_corruption: None,
        };
        store.check_tables()?;
        if durability == Durability::Fsync {
            store.sync_all_files()?;
        }
        Ok(store)
    }

    /// From now on a table failing a check runs `handler` instead of
    /// failing the call with [`StoreError::Corrupt`].
    pub fn stop_on_corruption(&mut self, handler: CorruptionHandler) {
        self.on_corruption = Some(handler);
    }

    /// Fails when a table failed a check during an engine call so far:
    /// whatever the call returned may lack that table's keys.
    fn check_tables(&self) -> Result<(), StoreError> {
        let Some(found) = self.corruption.found() else {
            return Ok(());
        };
        if let Err(marking) = self.mark_for_rebuild(&found.path, &found.reason) {
            tracing::error!(error = %marking, "cannot leave the rebuild marker in the LevelDB directory");
        }
        let error = StoreError::Corrupt {
            path: found.path,
            reason: found.reason,
        };
        match self.on_corruption {
            Some(handler) => handler(&error),
            None => Err(error),
        }
    }

    /// Leaves [`REBUILD_MARKER_FILE`] durably in the directory, naming the
    /// file and the reason on two lines.
    fn mark_for_rebuild(&self, file: &Path, reason: &str) -> std::io::Result<()> {
        use std::io::Write;
        let mut marker = std::fs::File::create(self.directory.join(REBUILD_MARKER_FILE))?;
        writeln!(marker, "{}\n{reason}", file.display())?;
        marker.sync_all()?;
        std::fs::File::open(&self.directory)?.sync_all()
    }

    /// The directory holding the database.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// Flushes buffered writes and releases the database (and its lock).
    pub fn close(mut self) -> Result<(), StoreError> {
        self.db.close().map_err(engine_error)?;
        if self.durability == Durability::Fsync {
            self.sync_all_files()?;
        }
        Ok(())
    }

    /// The newest LevelDB log file in the directory.
    fn current_log_file(&self) -> Result<Option<PathBuf>, StoreError> {
        let mut newest: Option<(u64, PathBuf)> = None;
        for entry in std::fs::read_dir(&self.directory).map_err(io_error(&self.directory))? {
            let entry = entry.map_err(io_error(&self.directory))?;
            let name = entry.file_name();
            let Some(number) = name
                .to_str()
                .and_then(|name| name.strip_suffix(LOG_FILE_SUFFIX))
                .and_then(|number| number.parse::<u64>().ok())
            else {
                continue;
            };
            if newest.as_ref().is_none_or(|(best, _)| number > *best) {
                newest = Some((number, entry.path()));
            }
        }
        Ok(newest.map(|(_, path)| path))
    }

    /// Makes the write just flushed durable (see the module docs).
    fn sync_after_write(&mut self) -> Result<(), StoreError> {
        let current = self.current_log_file()?;
        let rotated = match (&self.synced_log, &current) {
            (Some((synced, _)), Some(current)) => synced != current,
            _ => true,
        };
        if rotated {
            // A new log means the previous one was compacted into a table file
            // that LevelDB did not sync; sync everything once.
            self.sync_all_files()?;
            return Ok(());
        }
        if let Some((path, file)) = &self.synced_log {
            file.sync_data().map_err(io_error(path))?;
        }
        Ok(())
    }

    /// Syncs every file of the database and the directory itself.
    fn sync_all_files(&mut self) -> Result<(), StoreError> {
        for entry in std::fs::read_dir(&self.directory).map_err(io_error(&self.directory))? {
            let path = entry.map_err(io_error(&self.directory))?.path();
            if path.is_file() {
                // A file may vanish between listing and opening (LevelDB
                // deletes obsolete files); that is fine.
                match File::open(&path) {
                    Ok(file) => file.sync_all().map_err(io_error(&path))?,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => return Err(io_error(&path)(error)),
                }
            }
        }
        File::open(&self.directory)
            .and_then(|directory| directory.sync_all())
            .map_err(io_error(&self.directory))?;
        self.synced_log = match self.current_log_file()? {
            Some(path) => {
                let file = File::open(&path).map_err(io_error(&path))?;
                Some((path, file))
            }
            None => None,
        };
        Ok(())
    }
}

impl Store for LevelDbStore {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let snapshot = self.db.get_snapshot();
        let value = self.db.get_at(&snapshot, key).map_err(engine_error)?;
        self.check_tables()?;
        Ok(value.map(|value| value.to_vec()))
    }

    fn write(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut leveldb_batch = rusty_leveldb::WriteBatch::default();
        for operation in batch.operations() {
            match operation {
                WriteOp::Put { key, value } => leveldb_batch.put(key, value),
                WriteOp::Delete { key } => leveldb_batch.delete(key),
            }
        }
        let written = self.db.write(leveldb_batch, true).map_err(engine_error);
        // A compaction inside the write reads tables.
        self.check_tables()?;
        written?;
        if self.durability == Durability::Fsync {
            self.sync_after_write()?;
        }
        Ok(())
    }

    fn scan(&mut self, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        let mut iterator = self.db.new_iter().map_err(engine_error)?;
        let mut pairs = Vec::new();
        // Both seeks leave the iterator standing on the first candidate.
        // `advance` on an exhausted iterator would wrap to the first key, so
        // the loop stops as soon as it is no longer valid.
        if range.start.is_empty() {
            iterator.seek_to_first();
        } else {
            iterator.seek(&range.start);
        }
        while pairs.len() < limit && iterator.valid() {
            let Some((key, value)) = iterator.current() else {
                break;
            };
            if !range.contains(&key) {
                break;
            }
            pairs.push((key.to_vec(), value.to_vec()));
            if !iterator.advance() {
                break;
            }
        }
        self.check_tables()?;
        Ok(pairs)
    }

    fn compact_span(&mut self, first: &[u8], last: &[u8]) -> Result<(), StoreError> {
        let compacted = self.db.compact_range(first, last).map_err(engine_error);
        self.check_tables()?;
        compacted?;
        if self.durability == Durability::Fsync {
            self.sync_all_files()?;
        }
        Ok(())
    }
}
