//! Key-value storage: the [`Store`] trait and its implementations.
//!
//! - [`memory::MemoryStore`]: a `BTreeMap`, for tests and as the reference model.
//! - [`leveldb::LevelDbStore`]: `rusty-leveldb` on disk.
//! - [`overlay::OverlayStore`]: write-behind in front of another store; the
//!   server runs the LevelDB store behind one.
//! - [`resident::ResidentStore`]: the keys under one prefix in memory only
//!   (the latest-record table), in front of the overlay.
//!
//! [`integrity`] checks LevelDB's files, whose failed checksums rusty-leveldb
//! does not report; [`recovery`] opens the node's state
//! so that a store failing those checks is rebuilt, never served.
//!
//! All pass the same test suite (`suite.rs`). A store is owned by one thread
//! (`rusty-leveldb`'s `DB` is not `Sync`); async code reaches it through
//! [`actor::StoreHandle`].

pub mod actor;
pub mod integrity;
pub mod leveldb;
pub mod memory;
pub mod overlay;
pub mod recovery;
pub mod resident;
#[cfg(test)]
mod suite;

/// A key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Errors of a storage engine.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The underlying engine failed (I/O, corruption, ...).
    #[error("storage engine error: {0}")]
    Engine(String),
    /// A filesystem operation of our own failed.
    #[error("storage I/O error on {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A LevelDB table failed a checksum or structure check: the store may
    /// lack some of its keys.
    #[error("LevelDB table {path} is corrupt: {reason}")]
    Corrupt {
        /// The table file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The store's owner thread is gone (the store was closed).
    #[error("the store is closed")]
    Closed,
}

/// One operation of a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
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
}

/// Operations applied atomically and in order: after a crash either all of
/// them are visible or none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    operations: Vec<WriteOp>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.operations.push(WriteOp::Put {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.operations.push(WriteOp::Delete { key: key.into() });
        self
    }

    /// The operations, in order.
    pub fn operations(&self) -> &[WriteOp] {
        &self.operations
    }

    /// The operations, in order, taken out of the batch.
    pub fn into_operations(self) -> Vec<WriteOp> {
        self.operations
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.operations.len()
    }

    /// True when the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }
}

/// A range of keys in byte order: `start` inclusive, `end` exclusive
/// (`None`: up to the last key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// First key of the range (inclusive).
    pub start: Vec<u8>,
    /// Bound after the last key (exclusive); `None` means unbounded.
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> Self {
        Self {
            start: Vec::new(),
            end: None,
        }
    }

    /// Keys in `[start, end)`.
    pub fn between(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        Self {
            start: start.into(),
            end: Some(end.into()),
        }
    }

    /// Every key starting with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let start = prefix.into();
        let end = prefix_successor(&start);
        Self { start, end }
    }

    /// True when `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None`
/// when there is none (the prefix is empty or all `0xff`).
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Frees the disk that deleted records of a key range hold, off the store
/// thread: a handle to the engine behind a write-behind overlay
/// ([`overlay::OverlayStore::reclaimer`]), used after physical compaction.
pub trait Reclaim: Send + Sync {
    /// Returns once the engine holds every write made before the call.
    fn settle(&self) -> Result<(), StoreError>;

    /// Rewrites the part of `range` that holds its first `keys` live keys
    /// or `bytes` of live pairs, whichever ends first (all of it if less),
    /// with [`Store::compact_span`], holding the engine only meanwhile.
    /// Returns where the rest starts; `None` once the range is done.
    /// `range` must have an end.
    fn reclaim_piece(
        &self,
        range: &KeyRange,
        keys: usize,
        bytes: usize,
    ) -> Result<Option<Vec<u8>>, StoreError>;
}

/// An ordered key-value store owned by one thread.
pub trait Store: Send {
    /// The value stored under `key`, if any.
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// The value stored under `key`, unless getting it means waiting for
    /// work in progress (the engine busy behind a write-behind overlay):
    /// then `None`, and the caller reads through the store thread instead.
    fn get_if_ready(&mut self, key: &[u8]) -> Option<Result<Option<Vec<u8>>, StoreError>> {
        Some(self.get(key))
    }

    /// Applies `batch`: readers see all of it or none. After a crash, a
    /// store that writes through keeps all of it or none; a write-behind
    /// store ([`overlay::OverlayStore`]) may keep only a key-order prefix
    /// of what it had not finished writing.
    fn write(&mut self, batch: WriteBatch) -> Result<(), StoreError>;

    /// [`Store::write`], kept whole even by a crash: a write-behind store
    /// writes everything before it and then `batch` as one engine batch.
    /// For changes that a torn write could not be repaired from (a change
    /// of the whole layout).
    fn write_atomic(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        self.write(batch)
    }

    /// Whether a [`Store::write`] of `operations` operations would return
    /// at once, without waiting for I/O or for work in progress: only then
    /// may a caller on an async worker write inline. A store that cannot
    /// tell says no.
    fn writes_without_waiting(&self, operations: usize) -> bool {
        let _ = operations;
        false
    }

    /// Up to `limit` pairs of `range`, in ascending key order.
    fn scan(&mut self, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError>;

    /// [`Store::scan`], unless scanning means waiting for work in progress
    /// (the engine behind a write-behind overlay): then `None`, and the
    /// caller scans through the store thread instead.
    fn scan_if_ready(
        &mut self,
        range: &KeyRange,
        limit: usize,
    ) -> Option<Result<Vec<KeyValue>, StoreError>> {
        Some(self.scan(range, limit))
    }

    /// Rewrites the engine's files over `first..=last` now, so that what
    /// deletes hid there leaves the disk (LevelDB's manual compaction). An
    /// engine that frees space as it deletes does nothing.
    fn compact_span(&mut self, first: &[u8], last: &[u8]) -> Result<(), StoreError> {
        let _ = (first, last);
        Ok(())
    }

    /// Stores `value` under `key`.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::new();
        batch.put(key, value);
        self.write(batch)
    }

    /// Removes `key` (a missing key is not an error).
    fn delete(&mut self, key: &[u8]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::new();
        batch.delete(key);
        self.write(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_successor_handles_carry_and_all_ones() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[b'a', 0xff]), Some(b"b".to_vec()));
        assert_eq!(prefix_successor(&[0xff, 0xff]), None);
        assert_eq!(prefix_successor(b""), None);
    }

    #[test]
    fn key_range_contains() {
        let range = KeyRange::prefix(b"user/".to_vec());
        assert!(range.contains(b"user/"));
        assert!(range.contains(b"user/zz"));
        assert!(!range.contains(b"user0"));
        assert!(!range.contains(b"use"));
        assert!(KeyRange::all().contains(b""));
    }
}
