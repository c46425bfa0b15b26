//! State-machine snapshots: the file format and the directory that keeps them.
//!
//! A snapshot file holds the state machine as of one applied log index. A
//! single-version store (storage version 1) is every user key and value:
//!
//! ```text
//! "KVSNAP01" | index u64 | term u64
//! { key_length u32 | value_length u32 | key | value } *
//! END_MARKER u32 | pair_count u64 | crc32c u32 (of every byte before it)
//! ```
//!
//! A multi-version store (storage version 2) is its revision and history
//! records (the store's own keys, `state_machine::mvcc::keys`) at or below
//! the snapshot's revision, after a header naming that revision:
//!
//! ```text
//! "KVSNAP02" | index u64 | term u64 | revision u64 | compacted u64 | storage_version u32
//! { key_length u32 | value_length u32 | key | value } *
//! END_MARKER u32 | pair_count u64 | crc32c u32
//! ```
//!
//! (little-endian). Files are written to a temporary name, fsynced, renamed
//! and the directory fsynced, so a snapshot is either complete and durable or
//! absent — it is made durable before the log it replaces is compacted.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use kvstore_raft::SnapshotMetadata;

use crate::state_machine::{self, log_encoding, AppliedState, Command};
use crate::storage::{KeyValue, Store, StoreError};

const MAGIC: &[u8; 8] = b"KVSNAP01";
const MAGIC_MULTI_VERSION: &[u8; 8] = b"KVSNAP02";
/// Bytes of a multi-version header after the single-version one.
const MULTI_VERSION_HEADER_BYTES: usize = 20;
const END_MARKER: u32 = u32::MAX;
const FILE_PREFIX: &str = "snapshot-";
const FILE_SUFFIX: &str = ".snap";
const TEMPORARY_SUFFIX: &str = ".tmp";
/// Snapshots kept on disk: the newest one, and one older in case the newest
/// is being streamed to a follower when it is replaced.
pub const SNAPSHOTS_KEPT: usize = 2;
/// Largest key or value accepted when reading a snapshot (sanity bound).
const RECORD_BYTES_MAX: u32 = 64 * 1024 * 1024;
/// Buffer size of snapshot file readers and writers.
const FILE_BUFFER_BYTES: usize = 1024 * 1024;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// File I/O failed.
    #[error("snapshot I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a valid snapshot.
    #[error("snapshot {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The directory holding a node's snapshot files.
#[derive(Debug, Clone)]
pub struct SnapshotDirectory {
    path: PathBuf,
}

impl SnapshotDirectory {
    /// Opens (creating when missing) the directory and removes leftovers of
    /// interrupted writes.
    pub fn open(path: &Path) -> Result<Self, SnapshotError> {
        std::fs::create_dir_all(path).map_err(io_error(path))?;
        let directory = Self {
            path: path.to_path_buf(),
        };
        for entry in std::fs::read_dir(path).map_err(io_error(path))? {
            let entry = entry.map_err(io_error(path))?;
            if entry
                .file_name()
                .to_string_lossy()
                .ends_with(TEMPORARY_SUFFIX)
            {
                std::fs::remove_file(entry.path()).map_err(io_error(&entry.path()))?;
            }
        }
        Ok(directory)
    }

    /// The file of `snapshot`.
    pub fn path_of(&self, snapshot: SnapshotMetadata) -> PathBuf {
        self.path.join(format!(
            "{FILE_PREFIX}{:020}-{:020}{FILE_SUFFIX}",
            snapshot.index, snapshot.term
        ))
    }

    /// The size of the file of `snapshot` (0 when there is none).
    pub fn bytes_of(&self, snapshot: SnapshotMetadata) -> u64 {
        std::fs::metadata(self.path_of(snapshot)).map_or(0, |metadata| metadata.len())
    }

    /// A temporary file to receive `snapshot` into before [`Self::install`].
    pub fn temporary_path_of(&self, snapshot: SnapshotMetadata) -> PathBuf {
        let mut path = self.path_of(snapshot).into_os_string();
        path.push(TEMPORARY_SUFFIX);
        PathBuf::from(path)
    }

    /// Every complete snapshot on disk, oldest first.
    pub fn list(&self) -> Result<Vec<SnapshotMetadata>, SnapshotError> {
        let mut snapshots = Vec::new();
        for entry in std::fs::read_dir(&self.path).map_err(io_error(&self.path))? {
            let name = entry.map_err(io_error(&self.path))?.file_name();
            let Some(middle) = name
                .to_str()
                .and_then(|name| name.strip_prefix(FILE_PREFIX))
                .and_then(|name| name.strip_suffix(FILE_SUFFIX))
            else {
                continue;
            };
            let mut parts = middle.split('-');
            if let (Some(Ok(index)), Some(Ok(term)), None) = (
                parts.next().map(str::parse::<u64>),
                parts.next().map(str::parse::<u64>),
                parts.next(),
            ) {
                snapshots.push(SnapshotMetadata { index, term });
            }
        }
        snapshots.sort();
        Ok(snapshots)
    }

    /// Moves a fully written and synced temporary file into place, durably.
    pub fn install(&self, snapshot: SnapshotMetadata) -> Result<PathBuf, SnapshotError> {
        let final_path = self.path_of(snapshot);
        let temporary = self.temporary_path_of(snapshot);
        std::fs::rename(&temporary, &final_path).map_err(io_error(&final_path))?;
        sync_directory(&self.path)?;
        Ok(final_path)
    }

    /// Deletes all but the newest [`SNAPSHOTS_KEPT`] snapshots.
    pub fn remove_old(&self) -> Result<(), SnapshotError> {
        let snapshots = self.list()?;
        let excess = snapshots.len().saturating_sub(SNAPSHOTS_KEPT);
        for snapshot in &snapshots[..excess] {
            let path = self.path_of(*snapshot);
            std::fs::remove_file(&path).map_err(io_error(&path))?;
        }
        if excess > 0 {
            sync_directory(&self.path)?;
        }
        Ok(())
    }
}

fn sync_directory(path: &Path) -> Result<(), SnapshotError> {
    File::open(path)
        .and_then(|directory| directory.sync_all())
        .map_err(io_error(path))
}

/// A writer that keeps a running CRC-32C of everything written.
struct ChecksumWriter<W: Write> {
    inner: W,
    crc: u32,
}

impl<W: Write> Write for ChecksumWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.crc = crc32c::crc32c_append(self.crc, &bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes one snapshot file, pairs in ascending key order, to the temporary
/// path of its snapshot; [`SnapshotDirectory::install`] then moves it in place.
pub struct SnapshotWriter {
    path: PathBuf,
    writer: ChecksumWriter<BufWriter<File>>,
    pair_count: u64,
    last_key: Option<Vec<u8>>,
}

impl SnapshotWriter {
    /// Starts the temporary file of `snapshot` in `directory`.
    pub fn create(
        directory: &SnapshotDirectory,
        snapshot: SnapshotMetadata,
    ) -> Result<Self, SnapshotError> {
        Self::start(directory, snapshot, MAGIC)
    }

    /// Starts the temporary file of a multi-version snapshot of `state`.
    pub fn create_multi_version(
        directory: &SnapshotDirectory,
        state: &AppliedState,
    ) -> Result<Self, SnapshotError> {
        let mut writer = Self::start(directory, state.snapshot, MAGIC_MULTI_VERSION)?;
        writer.write(&state.revision.to_le_bytes())?;
        writer.write(&state.compacted.to_le_bytes())?;
        writer.write(&state.storage_version.to_le_bytes())?;
        Ok(writer)
    }

    fn start(
        directory: &SnapshotDirectory,
        snapshot: SnapshotMetadata,
        magic: &[u8; 8],
    ) -> Result<Self, SnapshotError> {
        let path = directory.temporary_path_of(snapshot);
        let file = File::create(&path).map_err(io_error(&path))?;
        let mut writer = Self {
            writer: ChecksumWriter {
                inner: BufWriter::with_capacity(FILE_BUFFER_BYTES, file),
                crc: 0,
            },
            path,
            pair_count: 0,
            last_key: None,
        };
        writer.write(magic)?;
        writer.write(&snapshot.index.to_le_bytes())?;
        writer.write(&snapshot.term.to_le_bytes())?;
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        self.writer.write_all(bytes).map_err(io_error(&self.path))
    }

    /// Appends one pair; keys must come in strictly ascending order.
    pub fn push(&mut self, key: &[u8], value: &[u8]) -> Result<(), SnapshotError> {
        assert!(
            self.last_key.as_deref().is_none_or(|last| last < key),
            "snapshot keys must be written in ascending order"
        );
        self.write(&(key.len() as u32).to_le_bytes())?;
        self.write(&(value.len() as u32).to_le_bytes())?;
        self.write(key)?;
        self.write(value)?;
        self.pair_count += 1;
        self.last_key = Some(key.to_vec());
        Ok(())
    }

    /// Writes the trailer and syncs the file. Returns the number of pairs.
    pub fn finish(mut self) -> Result<u64, SnapshotError> {
        self.write(&END_MARKER.to_le_bytes())?;
        let pair_count = self.pair_count;
        self.write(&pair_count.to_le_bytes())?;
        let crc = self.writer.crc;
        let path = self.path;
        let mut file_writer = self.writer.inner;
        file_writer
            .write_all(&crc.to_le_bytes())
            .map_err(io_error(&path))?;
        let file = file_writer
            .into_inner()
            .map_err(|error| io_error(&path)(error.into_error()))?;
        file.sync_all().map_err(io_error(&path))?;
        Ok(pair_count)
    }
}

/// Reads the pairs of a snapshot file in order. Open it with
/// [`SnapshotReader::open`], which verifies the checksum first, so nothing is
/// handed over from a corrupt file.
pub struct SnapshotReader {
    path: PathBuf,
    reader: BufReader<File>,
    snapshot: SnapshotMetadata,
    /// For a multi-version snapshot, the state it records.
    multi_version: Option<AppliedState>,
    pair_count: u64,
    last_key: Option<Vec<u8>>,
    finished: bool,
}

impl SnapshotReader {
    /// Verifies the file and positions the reader on its first pair.
    pub fn open(path: &Path) -> Result<Self, SnapshotError> {
        verify_checksum(path)?;
        let file = File::open(path).map_err(io_error(path))?;
        let mut reader = BufReader::with_capacity(FILE_BUFFER_BYTES, file);
        let mut header = [0u8; 24];
        reader.read_exact(&mut header).map_err(io_error(path))?;
        let multi = match &header[..8] {
            magic if magic == MAGIC => false,
            magic if magic == MAGIC_MULTI_VERSION => true,
            _ => return Err(corrupt(path, "bad magic")),
        };
        let snapshot = SnapshotMetadata {
            index: u64::from_le_bytes(header[8..16].try_into().expect("8 bytes")),
            term: u64::from_le_bytes(header[16..24].try_into().expect("8 bytes")),
        };
        let multi_version = if multi {
            let mut more = [0u8; MULTI_VERSION_HEADER_BYTES];
            reader.read_exact(&mut more).map_err(io_error(path))?;
            let storage_version = u32::from_le_bytes(more[16..20].try_into().expect("4 bytes"));
            if storage_version > state_machine::STORAGE_VERSION_MAX {
                return Err(corrupt(
                    path,
                    &format!("storage version {storage_version}: written by a newer release"),
                ));
            }
            Some(AppliedState {
                snapshot,
                revision: u64::from_le_bytes(more[..8].try_into().expect("8 bytes")),
                compacted: u64::from_le_bytes(more[8..16].try_into().expect("8 bytes")),
                storage_version,
            })
        } else {
            None
        };
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            snapshot,
            multi_version,
            pair_count: 0,
            last_key: None,
            finished: false,
        })
    }

    /// The snapshot's identity, from the file header.
    pub fn snapshot(&self) -> SnapshotMetadata {
        self.snapshot
    }

    /// The state a multi-version snapshot records (`None`: a
    /// single-version one).
    pub fn multi_version(&self) -> Option<AppliedState> {
        self.multi_version
    }

    fn read_u32(&mut self) -> Result<u32, SnapshotError> {
        let mut bytes = [0u8; 4];
        self.reader
            .read_exact(&mut bytes)
            .map_err(io_error(&self.path))?;
        Ok(u32::from_le_bytes(bytes))
    }

    /// The next pair, or `None` after the last one.
    pub fn next_pair(&mut self) -> Result<Option<KeyValue>, SnapshotError> {
        if self.finished {
            return Ok(None);
        }
        let key_length = self.read_u32()?;
        if key_length == END_MARKER {
            let mut count = [0u8; 8];
            self.reader
                .read_exact(&mut count)
                .map_err(io_error(&self.path))?;
            if u64::from_le_bytes(count) != self.pair_count {
                return Err(corrupt(&self.path, "pair count mismatch"));
            }
            self.finished = true;
            return Ok(None);
        }
        let value_length = self.read_u32()?;
        if key_length > RECORD_BYTES_MAX || value_length > RECORD_BYTES_MAX {
            return Err(corrupt(
                &self.path,
                &format!("record of {key_length}+{value_length} bytes"),
            ));
        }
        let mut key = vec![0u8; key_length as usize];
        let mut value = vec![0u8; value_length as usize];
        self.reader
            .read_exact(&mut key)
            .map_err(io_error(&self.path))?;
        self.reader
            .read_exact(&mut value)
            .map_err(io_error(&self.path))?;
        if self.last_key.as_ref().is_some_and(|last| *last >= key) {
            return Err(corrupt(&self.path, "keys out of order"));
        }
        self.last_key = Some(key.clone());
        self.pair_count += 1;
        Ok(Some((key, value)))
    }
}

fn corrupt(path: &Path, reason: &str) -> SnapshotError {
    SnapshotError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Writes snapshot `target` as the snapshot `base` (none: the empty state)
/// with the committed `entries` after it applied on top, merging the two in
/// key order. It reads only files and the entries, never the store, so it
/// runs on its own thread while writes go on: taking a snapshot never stalls
/// the apply path. Returns the number of pairs written.
pub fn write_merged(
    directory: &SnapshotDirectory,
    base: Option<SnapshotMetadata>,
    entries: &[kvstore_raft::Entry],
    target: SnapshotMetadata,
) -> Result<u64, SnapshotError> {
    let base_index = base.map_or(0, |base| base.index);
    assert!(
        entries
            .first()
            .is_none_or(|first| first.index == base_index + 1)
            && entries.last().is_none_or(|last| last.index == target.index),
        "the entries must lead exactly from the base snapshot to the target"
    );
    let mut changes: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    for entry in entries {
        match log_encoding::decode_entry(entry) {
            Some(Command::Put { key, value }) => changes.insert(key, Some(value)),
            Some(Command::Delete { key }) => changes.insert(key, None),
            // Refused in a single-version store (the caller takes a
            // multi-version snapshot from the store once the storage version
            // is raised).
            Some(
                Command::Txn(_)
                | Command::Compact { .. }
                | Command::LeaseGrant { .. }
                | Command::LeaseRevoke { .. }
                | Command::LeaseCheckpoint { .. },
            )
            | None => None,
            Some(Command::SetStorageVersion { version }) => {
                return Err(SnapshotError::Store(StoreError::Engine(format!(
                    "entry {} raises the storage version to {version}: the snapshot must be taken from the store",
                    entry.index
                ))))
            }
        };
    }
    let mut base_pairs = match base {
        Some(base) => Some(SnapshotReader::open(&directory.path_of(base))?),
        None => None,
    };
    let next_base = |reader: &mut Option<SnapshotReader>| match reader {
        Some(reader) => reader.next_pair(),
        None => Ok(None),
    };
    let mut writer = SnapshotWriter::create(directory, target)?;
    let mut changes = changes.into_iter().peekable();
    let mut current_base = next_base(&mut base_pairs)?;
    loop {
        let take_change = match (&current_base, changes.peek()) {
            (None, None) => break,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some((base_key, _)), Some((change_key, _))) => change_key <= base_key,
        };
        if take_change {
            let (key, value) = changes.next().expect("peeked");
            if current_base
                .as_ref()
                .is_some_and(|(base_key, _)| *base_key == key)
            {
                current_base = next_base(&mut base_pairs)?;
            }
            if let Some(value) = value {
                writer.push(&key, &value)?;
            }
        } else {
            let (key, value) = current_base.take().expect("checked above");
            writer.push(&key, &value)?;
            current_base = next_base(&mut base_pairs)?;
        }
    }
    writer.finish()
}

/// Checks the trailing CRC-32C of a snapshot file.
pub fn verify_checksum(path: &Path) -> Result<(), SnapshotError> {
    let file = File::open(path).map_err(io_error(path))?;
    let length = file.metadata().map_err(io_error(path))?.len();
    if length < (MAGIC.len() + 16 + 4 + 8 + 4) as u64 {
        return Err(SnapshotError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("only {length} bytes"),
        });
    }
    let mut reader = BufReader::with_capacity(FILE_BUFFER_BYTES, file).take(length - 4);
    let mut crc = 0u32;
    let mut buffer = vec![0u8; FILE_BUFFER_BYTES];
    loop {
        let read = reader.read(&mut buffer).map_err(io_error(path))?;
        if read == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buffer[..read]);
    }
    let mut stored = [0u8; 4];
    reader
        .into_inner()
        .read_exact(&mut stored)
        .map_err(io_error(path))?;
    if u32::from_le_bytes(stored) != crc {
        return Err(SnapshotError::Corrupt {
            path: path.to_path_buf(),
            reason: "checksum mismatch".into(),
        });
    }
    Ok(())
}

/// Replaces the store's state with the snapshot in `path`; on success the
/// store's applied index is the snapshot's. Returns the state restored
/// and the pairs.
pub fn restore_into_store(
    store: &mut dyn Store,
    path: &Path,
) -> Result<(AppliedState, u64), SnapshotError> {
    let mut reader = SnapshotReader::open(path)?;
    let snapshot = reader.snapshot();
    let state = reader.multi_version().unwrap_or(AppliedState {
        snapshot,
        ..AppliedState::default()
    });
    state_machine::begin_restore(store, snapshot)?;
    let mut restored = 0u64;
    let mut last_key = None;
    let mut restore = |store: &mut dyn Store, chunk: Vec<KeyValue>| {
        if state.storage_version >= state_machine::STORAGE_VERSION_MVCC {
            state_machine::restore_records(store, chunk, &mut last_key)
        } else {
            state_machine::restore_pairs(store, chunk)
        }
    };
    let mut chunk = Vec::with_capacity(state_machine::RESTORE_BATCH_KEYS);
    while let Some(pair) = reader.next_pair()? {
        chunk.push(pair);
        if chunk.len() == state_machine::RESTORE_BATCH_KEYS {
            restored += chunk.len() as u64;
            restore(store, std::mem::take(&mut chunk))?;
        }
    }
    restored += chunk.len() as u64;
    restore(store, chunk)?;
    state_machine::finish_restore(store, state)?;
    Ok((state, restored))
}

/// The identity recorded in a snapshot file's header.
pub fn peek_metadata(path: &Path) -> Result<SnapshotMetadata, SnapshotError> {
    let mut header = [0u8; 24];
    File::open(path)
        .and_then(|mut file| file.read_exact(&mut header))
        .map_err(io_error(path))?;
    if &header[..8] != MAGIC && &header[..8] != MAGIC_MULTI_VERSION {
        return Err(SnapshotError::Corrupt {
            path: path.to_path_buf(),
            reason: "bad magic".into(),
        });
    }
    Ok(SnapshotMetadata {
        index: u64::from_le_bytes(header[8..16].try_into().expect("8 bytes")),
        term: u64::from_le_bytes(header[16..24].try_into().expect("8 bytes")),
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use kvstore_raft::{Entry, EntryKind};

    use super::*;
    use crate::state_machine::test_entries::{delete, put};
    use crate::storage::memory::MemoryStore;
    use crate::storage::overlay::{OverlayLimits, OverlayStore};

    fn snapshot(index: u64) -> SnapshotMetadata {
        SnapshotMetadata { index, term: 1 }
    }

    /// The state a store reaches by applying `entries` from scratch.
    fn applied_state(entries: &[Entry]) -> Vec<KeyValue> {
        let mut store = MemoryStore::new();
        state_machine::apply(&mut store, entries).unwrap();
        state_machine::scan_data_from(&mut store, b"", usize::MAX).unwrap()
    }

    fn read_all(path: &Path) -> Vec<KeyValue> {
        let mut reader = SnapshotReader::open(path).unwrap();
        let mut pairs = Vec::new();
        while let Some(pair) = reader.next_pair().unwrap() {
            pairs.push(pair);
        }
        pairs
    }

    #[test]
    fn merged_snapshots_equal_applying_every_entry() {
        let directory = tempfile::tempdir().unwrap();
        let snapshots = SnapshotDirectory::open(directory.path()).unwrap();
        let mut entries = Vec::new();
        let mut index = 0;
        let mut next = |entries: &mut Vec<Entry>, entry: fn(u64) -> Entry| {
            index += 1;
            entries.push(entry(index));
        };
        for round in 0..3u64 {
            for key in 0..40u64 {
                let _ = round;
                next(&mut entries, |index| {
                    put(index, &format!("key-{:02}", index % 37), &index.to_string())
                });
                if key % 7 == 0 {
                    next(&mut entries, |index| {
                        delete(index, &format!("key-{:02}", (index * 3) % 37))
                    });
                }
                if key % 11 == 0 {
                    next(&mut entries, |index| Entry {
                        index,
                        term: 1,
                        kind: EntryKind::Empty,
                        data: Bytes::new(),
                    });
                }
            }
        }
        // Three snapshots, each merged from the previous one.
        let cuts = [entries.len() / 3, 2 * entries.len() / 3, entries.len()];
        let mut base: Option<SnapshotMetadata> = None;
        for cut in cuts {
            let from = base.map_or(0, |base| base.index) as usize;
            let target = snapshot(cut as u64);
            let pairs = write_merged(&snapshots, base, &entries[from..cut], target).unwrap();
            let path = snapshots.install(target).unwrap();
            let expected = applied_state(&entries[..cut]);
            assert_eq!(pairs, expected.len() as u64);
            assert_eq!(read_all(&path), expected, "snapshot at {cut}");
            base = Some(target);
        }
    }

    /// Restores a 2,500-key snapshot into `target`, which holds a stale key.
    fn restore_replaces_the_state_of(target: &mut dyn Store) -> Vec<Entry> {
        let directory = tempfile::tempdir().unwrap();
        let snapshots = SnapshotDirectory::open(directory.path()).unwrap();
        let entries: Vec<Entry> = (1..=2_500)
            .map(|index| put(index, &format!("key-{index:05}"), "v"))
            .collect();
        write_merged(&snapshots, None, &entries, snapshot(2_500)).unwrap();
        let path = snapshots.install(snapshot(2_500)).unwrap();

        state_machine::apply(target, &[put(1, "stale", "x")]).unwrap();
        let (restored, count) = restore_into_store(target, &path).unwrap();
        assert_eq!((restored.snapshot, count), (snapshot(2_500), 2_500));
        assert_eq!(state_machine::applied(target).unwrap(), snapshot(2_500));
        assert_eq!(state_machine::consistent_at(target).unwrap(), 2_500);
        assert_eq!(state_machine::get(target, b"stale").unwrap().value, None);
        assert_eq!(
            state_machine::scan_data_from(target, b"", usize::MAX).unwrap(),
            applied_state(&entries)
        );
        entries
    }

    #[test]
    fn a_snapshot_restores_into_a_store_replacing_its_state() {
        restore_replaces_the_state_of(&mut MemoryStore::new());
    }

    /// As the server runs it: the stale key waits in memory, the restore's
    /// large batches bypass the overlay and its small ones go through it;
    /// the engine ends with exactly the snapshot's state.
    #[test]
    fn a_snapshot_restores_through_a_write_behind_overlay() {
        let limits = OverlayLimits {
            freeze_age: std::time::Duration::from_secs(3600),
            ..OverlayLimits::default()
        };
        let mut target = OverlayStore::new(MemoryStore::new(), limits);
        let entries = restore_replaces_the_state_of(&mut target);
        let mut engine = target.into_engine().unwrap();
        assert_eq!(
            state_machine::applied(&mut engine).unwrap(),
            snapshot(2_500)
        );
        assert_eq!(
            state_machine::scan_data_from(&mut engine, b"", usize::MAX).unwrap(),
            applied_state(&entries)
        );
    }

    #[test]
    fn a_corrupt_snapshot_is_refused_before_anything_changes() {
        let directory = tempfile::tempdir().unwrap();
        let snapshots = SnapshotDirectory::open(directory.path()).unwrap();
        let entries: Vec<Entry> = (1..=100)
            .map(|index| put(index, &format!("k{index:03}"), "value"))
            .collect();
        write_merged(&snapshots, None, &entries, snapshot(100)).unwrap();
        let path = snapshots.install(snapshot(100)).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let mut target = MemoryStore::new();
        state_machine::apply(&mut target, &[put(1, "a", "1"), put(2, "b", "2")]).unwrap();
        let error = restore_into_store(&mut target, &path).unwrap_err();
        assert!(error.to_string().contains("checksum mismatch"), "{error}");
        assert_eq!(
            state_machine::scan_data_from(&mut target, b"", 10)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            state_machine::interrupted_restore(&mut target).unwrap(),
            None
        );
    }

    #[test]
    #[should_panic(expected = "ascending order")]
    fn keys_out_of_order_are_a_bug() {
        let directory = tempfile::tempdir().unwrap();
        let snapshots = SnapshotDirectory::open(directory.path()).unwrap();
        let mut writer = SnapshotWriter::create(&snapshots, snapshot(1)).unwrap();
        writer.push(b"b", b"").unwrap();
        writer.push(b"a", b"").unwrap();
    }

    #[test]
    fn old_snapshots_and_temporary_files_are_cleaned_up() {
        let directory = tempfile::tempdir().unwrap();
        let snapshots = SnapshotDirectory::open(directory.path()).unwrap();
        for index in 1..=4 {
            SnapshotWriter::create(&snapshots, snapshot(index))
                .unwrap()
                .finish()
                .unwrap();
            snapshots.install(snapshot(index)).unwrap();
        }
        snapshots.remove_old().unwrap();
        let kept: Vec<u64> = snapshots
            .list()
            .unwrap()
            .iter()
            .map(|snapshot| snapshot.index)
            .collect();
        assert_eq!(kept, vec![3, 4]);
        std::fs::write(snapshots.temporary_path_of(snapshot(9)), b"partial").unwrap();
        let reopened = SnapshotDirectory::open(directory.path()).unwrap();
        assert_eq!(reopened.list().unwrap().len(), 2);
        assert_eq!(
            std::fs::read_dir(directory.path()).unwrap().count(),
            2,
            "the temporary file is gone"
        );
    }
}
