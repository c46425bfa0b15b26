//! State-machine snapshots: the file format and the directory that keeps them.
//!
//! A snapshot file holds every user key and value as of one applied log index:
//!
//! ```text
//! "KVSNAP01" | index u64 | term u64
//! { key_length u32 | value_length u32 | key | value } *
//! END_MARKER u32 | pair_count u64 | crc32c u32 (of every byte before it)
//! ```
//!
//! (little-endian). Files are written to a temporary name, fsynced, renamed
//! and the directory fsynced, so a snapshot is either complete and durable or
//! absent — it is made durable before the log it replaces is compacted.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use kvstore_raft::SnapshotMetadata;

use crate::state_machine;
use crate::storage::{KeyValue, Store, StoreError};

const MAGIC: &[u8; 8] = b"KVSNAP01";
const END_MARKER: u32 = u32::MAX;
const FILE_PREFIX: &str = "snapshot-";
const FILE_SUFFIX: &str = ".snap";
const TEMPORARY_SUFFIX: &str = ".tmp";
/// Snapshots kept on disk: the newest one, and one older in case the newest
/// is being streamed to a follower when it is replaced.
pub const SNAPSHOTS_KEPT: usize = 2;
/// Largest key or value accepted when reading a snapshot (sanity bound).
const RECORD_BYTES_MAX: u32 = 64 * 1024 * 1024;
/// Pairs read from the store per scan while writing a snapshot.
const SCAN_CHUNK_KEYS: usize = 1_000;
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

/// Writes the store's whole user state, which reflects `snapshot`, to the
/// temporary file of `snapshot` and syncs it; [`SnapshotDirectory::install`]
/// then moves it into place. Returns the number of pairs written.
pub fn write_from_store(
    store: &mut dyn Store,
    directory: &SnapshotDirectory,
    snapshot: SnapshotMetadata,
) -> Result<u64, SnapshotError> {
    let path = directory.temporary_path_of(snapshot);
    let file = File::create(&path).map_err(io_error(&path))?;
    let mut writer = ChecksumWriter {
        inner: BufWriter::with_capacity(FILE_BUFFER_BYTES, file),
        crc: 0,
    };
    let mut write = |bytes: &[u8]| writer_write(&mut writer, bytes, &path);
    write(MAGIC)?;
    write(&snapshot.index.to_le_bytes())?;
    write(&snapshot.term.to_le_bytes())?;
    let mut pair_count = 0u64;
    let mut start = Vec::new();
    loop {
        let pairs = state_machine::scan_data_from(store, &start, SCAN_CHUNK_KEYS)?;
        let Some((last_key, _)) = pairs.last() else {
            break;
        };
        start = last_key.clone();
        start.push(0);
        for (key, value) in &pairs {
            write(&(key.len() as u32).to_le_bytes())?;
            write(&(value.len() as u32).to_le_bytes())?;
            write(key)?;
            write(value)?;
            pair_count += 1;
        }
    }
    write(&END_MARKER.to_le_bytes())?;
    write(&pair_count.to_le_bytes())?;
    let crc = writer.crc;
    let mut file_writer = writer.inner;
    file_writer
        .write_all(&crc.to_le_bytes())
        .map_err(io_error(&path))?;
    let file = file_writer
        .into_inner()
        .map_err(|error| io_error(&path)(error.into_error()))?;
    file.sync_all().map_err(io_error(&path))?;
    Ok(pair_count)
}

fn writer_write<W: Write>(writer: &mut W, bytes: &[u8], path: &Path) -> Result<(), SnapshotError> {
    writer.write_all(bytes).map_err(io_error(path))
}

/// Reads a snapshot file, handing its pairs to `on_pairs` in chunks of
/// [`state_machine::RESTORE_BATCH_KEYS`]. Verifies the checksum first, so
/// nothing is handed over from a corrupt file. Returns the snapshot's identity.
pub fn read_file(
    path: &Path,
    mut on_pairs: impl FnMut(Vec<KeyValue>) -> Result<(), SnapshotError>,
) -> Result<SnapshotMetadata, SnapshotError> {
    let corrupt = |reason: String| SnapshotError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    verify_checksum(path)?;
    let file = File::open(path).map_err(io_error(path))?;
    let mut reader = BufReader::with_capacity(FILE_BUFFER_BYTES, file);
    let read_u32 = |reader: &mut BufReader<File>| -> Result<u32, SnapshotError> {
        let mut bytes = [0u8; 4];
        reader.read_exact(&mut bytes).map_err(io_error(path))?;
        Ok(u32::from_le_bytes(bytes))
    };
    let mut header = [0u8; 24];
    reader.read_exact(&mut header).map_err(io_error(path))?;
    if &header[..8] != MAGIC {
        return Err(corrupt("bad magic".into()));
    }
    let snapshot = SnapshotMetadata {
        index: u64::from_le_bytes(header[8..16].try_into().expect("8 bytes")),
        term: u64::from_le_bytes(header[16..24].try_into().expect("8 bytes")),
    };
    let mut chunk = Vec::with_capacity(state_machine::RESTORE_BATCH_KEYS);
    let mut pair_count = 0u64;
    loop {
        let key_length = read_u32(&mut reader)?;
        if key_length == END_MARKER {
            break;
        }
        let value_length = read_u32(&mut reader)?;
        if key_length > RECORD_BYTES_MAX || value_length > RECORD_BYTES_MAX {
            return Err(corrupt(format!(
                "record of {key_length}+{value_length} bytes"
            )));
        }
        let mut key = vec![0u8; key_length as usize];
        let mut value = vec![0u8; value_length as usize];
        reader.read_exact(&mut key).map_err(io_error(path))?;
        reader.read_exact(&mut value).map_err(io_error(path))?;
        chunk.push((key, value));
        pair_count += 1;
        if chunk.len() == state_machine::RESTORE_BATCH_KEYS {
            on_pairs(std::mem::take(&mut chunk))?;
        }
    }
    if !chunk.is_empty() {
        on_pairs(chunk)?;
    }
    let mut count = [0u8; 8];
    reader.read_exact(&mut count).map_err(io_error(path))?;
    if u64::from_le_bytes(count) != pair_count {
        return Err(corrupt("pair count mismatch".into()));
    }
    Ok(snapshot)
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
/// store's applied index is the snapshot's. Returns the pairs restored.
pub fn restore_into_store(
    store: &mut dyn Store,
    path: &Path,
) -> Result<(SnapshotMetadata, u64), SnapshotError> {
    verify_checksum(path)?;
    let file_snapshot = peek_metadata(path)?;
    state_machine::begin_restore(store, file_snapshot)?;
    let mut restored = 0u64;
    let snapshot = read_file(path, |pairs| {
        restored += pairs.len() as u64;
        state_machine::restore_pairs(store, pairs).map_err(SnapshotError::from)
    })?;
    state_machine::finish_restore(store, snapshot)?;
    Ok((snapshot, restored))
}

/// The identity recorded in a snapshot file's header.
pub fn peek_metadata(path: &Path) -> Result<SnapshotMetadata, SnapshotError> {
    let mut header = [0u8; 24];
    File::open(path)
        .and_then(|mut file| file.read_exact(&mut header))
        .map_err(io_error(path))?;
    if &header[..8] != MAGIC {
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
    use super::*;
    use crate::storage::memory::MemoryStore;
    use crate::storage::WriteBatch;

    fn filled_store(pairs: usize) -> MemoryStore {
        let mut store = MemoryStore::new();
        let mut batch = WriteBatch::new();
        for index in 0..pairs {
            batch.put(
                state_machine::data_key(format!("key-{index:05}").as_bytes()),
                vec![index as u8; index % 50],
            );
        }
        batch.put(b"m/other".to_vec(), b"not user data".to_vec());
        store.write(batch).unwrap();
        store
    }

    #[test]
    fn a_snapshot_round_trips_into_another_store() {
        let directory = tempfile::tempdir().unwrap();
        let snapshots = SnapshotDirectory::open(directory.path()).unwrap();
        let snapshot = SnapshotMetadata { index: 42, term: 3 };
        let mut source = filled_store(2_500);
        assert_eq!(
            write_from_store(&mut source, &snapshots, snapshot).unwrap(),
            2_500
        );
        let path = snapshots.install(snapshot).unwrap();
        assert_eq!(snapshots.list().unwrap(), vec![snapshot]);

        let mut target = filled_store(10);
        let mut extra = WriteBatch::new();
        extra.put(state_machine::data_key(b"stale"), b"x".to_vec());
        target.write(extra).unwrap();
        let (restored, count) = restore_into_store(&mut target, &path).unwrap();
        assert_eq!((restored, count), (snapshot, 2_500));
        assert_eq!(state_machine::applied(&mut target).unwrap(), snapshot);
        assert_eq!(state_machine::get(&mut target, b"stale").unwrap(), None);
        assert_eq!(
            state_machine::scan_data_from(&mut target, b"", usize::MAX).unwrap(),
            state_machine::scan_data_from(&mut source, b"", usize::MAX).unwrap()
        );
    }

    #[test]
    fn a_corrupt_snapshot_is_refused_before_anything_changes() {
        let directory = tempfile::tempdir().unwrap();
        let snapshots = SnapshotDirectory::open(directory.path()).unwrap();
        let snapshot = SnapshotMetadata { index: 7, term: 1 };
        write_from_store(&mut filled_store(100), &snapshots, snapshot).unwrap();
        let path = snapshots.install(snapshot).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let mut target = filled_store(3);
        let error = restore_into_store(&mut target, &path).unwrap_err();
        assert!(error.to_string().contains("checksum mismatch"), "{error}");
        assert_eq!(
            state_machine::scan_data_from(&mut target, b"", 10)
                .unwrap()
                .len(),
            3
        );
        assert_eq!(
            state_machine::interrupted_restore(&mut target).unwrap(),
            None
        );
    }

    #[test]
    fn old_snapshots_and_temporary_files_are_cleaned_up() {
        let directory = tempfile::tempdir().unwrap();
        let snapshots = SnapshotDirectory::open(directory.path()).unwrap();
        for index in 1..=4 {
            let snapshot = SnapshotMetadata { index, term: 1 };
            write_from_store(&mut filled_store(1), &snapshots, snapshot).unwrap();
            snapshots.install(snapshot).unwrap();
        }
        snapshots.remove_old().unwrap();
        let kept: Vec<u64> = snapshots
            .list()
            .unwrap()
            .iter()
            .map(|snapshot| snapshot.index)
            .collect();
        assert_eq!(kept, vec![3, 4]);
        std::fs::write(
            snapshots.temporary_path_of(SnapshotMetadata { index: 9, term: 1 }),
            b"partial",
        )
        .unwrap();
        let reopened = SnapshotDirectory::open(directory.path()).unwrap();
        assert_eq!(reopened.list().unwrap().len(), 2);
        assert_eq!(
            std::fs::read_dir(directory.path()).unwrap().count(),
            2,
            "the temporary file is gone"
        );
    }
}
