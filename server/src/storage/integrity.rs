//! Checks of LevelDB's files that rusty-leveldb 4 does not report.
//!
//! What rusty-leveldb 4.0 checks, read in its source:
//! - `Options::paranoid_checks` exists but nothing reads it, and there are
//!   no read options (no `verify_checksums`).
//! - Each data, index and meta-index block is checked against its CRC when
//!   read (`table_block::read_table_block`), and a mismatch is an error,
//!   but nothing passes it on: `Version::get` and `DB::get_at` take an error
//!   from a table for "not in this table" (`if let Ok(Some(..))`) and look
//!   in older tables, so a corrupt block reads as a missing key or as an
//!   older value of it. Iterators skip a block that fails (`advance`) or
//!   stop (`seek`), and compactions read through them: a compaction drops a
//!   corrupt block's keys and writes a new table with valid checksums.
//! - The filter block is read without its CRC: a damaged Bloom filter says
//!   "absent" for keys that are there.
//! - The footer's magic is checked with `assert_eq!` (a panic).
//! - Its own log (`*.log`) and the manifest are read with checksums, and a
//!   bad record ends the replay as if the file ended there, even when valid
//!   records follow. For a log that keeps a prefix of the write batches:
//!   for the state machine an earlier state with its own applied index,
//!   which the node brings forward from its WAL. For the manifest it can
//!   lose the edit that added a table while the log that table came from is
//!   gone: a state that is no state of the log.
//!
//! So, at start-up, [`verify_store`] checks every file of the store:
//! - each table whole ([`verify_table`]: every block's CRC, the footer, and
//!   that the blocks cover the file exactly);
//! - each manifest: every record's CRC;
//! - each log: every record's CRC, except that a bad tail (a write cut
//!   short by a crash) is left to LevelDB, which drops it.
//!
//! While the store runs, [`VerifyingEnv`] is rusty-leveldb's file access,
//! checking each table read. rusty-leveldb would swallow a failure, so it is
//! recorded in [`Corruption`] for the store to act on after the call.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rusty_leveldb::env::{Env, FileLock, Logger, RandomAccess};
use rusty_leveldb::{PosixDiskEnv, Status, StatusCode};

use super::KeyValue;

/// Suffixes of table file names (`.sst` is LevelDB's old name for them).
const TABLE_SUFFIXES: [&str; 2] = [".ldb", ".sst"];
/// Suffix of LevelDB's own log files.
const LOG_SUFFIX: &str = ".log";
/// Prefix of manifest file names.
const MANIFEST_PREFIX: &str = "MANIFEST-";
/// Logs and manifests are written in blocks of this size.
const LOG_BLOCK_BYTES: usize = 32 * 1024;
/// A log record's header: masked CRC (4), length (2), type (1).
const LOG_HEADER_BYTES: usize = 7;
/// The footer: two block handles, zero padding to 40 bytes, the magic.
const FOOTER_BYTES: usize = 48;
/// Where the magic number starts in the footer.
const FOOTER_MAGIC_AT: usize = 40;
/// LevelDB's table magic number, little-endian.
const TABLE_MAGIC: [u8; 8] = [0x57, 0xfb, 0x80, 0x8b, 0x24, 0x75, 0x47, 0xdb];
/// After each block: its compression type (1 byte) and masked CRC (4 bytes).
const BLOCK_TRAILER_BYTES: usize = 5;
/// Compression type of a block stored as is (the only one our store writes).
const UNCOMPRESSED: u8 = 0;
/// Added to a rotated CRC to mask it (LevelDB's `crc32c::Mask`).
const CRC_MASK_DELTA: u32 = 0xa282_ead8;
/// Prefix of the meta-index key naming the filter block.
const FILTER_KEY_PREFIX: &[u8] = b"filter.";

/// A table file that failed a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptFile {
    /// The table file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for CorruptFile {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}: {}", self.path.display(), self.reason)
    }
}

/// The first table failure seen by a [`VerifyingEnv`], shared with the store
/// that owns it.
#[derive(Debug, Clone, Default)]
pub struct Corruption(Arc<Mutex<Option<CorruptFile>>>);

impl Corruption {
    /// The first failure recorded, if any (it stays recorded).
    pub fn found(&self) -> Option<CorruptFile> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record(&self, corruption: CorruptFile) -> Status {
        let status = Status::new(StatusCode::Corruption, &corruption.to_string());
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(corruption);
        status
    }
}

/// True for the file name of a table.
fn is_table(path: &Path) -> bool {
    file_kind(path) == Some(FileKind::Table)
}

/// The kind of a file of the store, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Table,
    Log,
    Manifest,
}

fn file_kind(path: &Path) -> Option<FileKind> {
    let name = path.file_name()?.to_str()?;
    if TABLE_SUFFIXES.iter().any(|suffix| name.ends_with(suffix)) {
        Some(FileKind::Table)
    } else if name.ends_with(LOG_SUFFIX) {
        Some(FileKind::Log)
    } else if name.starts_with(MANIFEST_PREFIX) {
        Some(FileKind::Manifest)
    } else {
        None
    }
}

/// Checks the records of a log or manifest file. A record that fails
/// stops the check of its block (its length cannot be trusted); a valid
/// record after it is an error. Returns where the bad tail starts, if the
/// file ends in one.
pub fn verify_log(log: &[u8]) -> Result<Option<usize>, String> {
    let mut bad_at = None;
    let mut at = 0;
    while at < log.len() {
        let block_left = LOG_BLOCK_BYTES - at % LOG_BLOCK_BYTES;
        if block_left < LOG_HEADER_BYTES {
            // The block's zero filler.
            at += block_left;
            continue;
        }
        let header = log.get(at..at + LOG_HEADER_BYTES);
        let length = header.map_or(0, |header| {
            usize::from(u16::from_le_bytes([header[4], header[5]]))
        });
        let end = at + LOG_HEADER_BYTES + length;
        let valid = header.is_some_and(|header| {
            let stored = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
            LOG_HEADER_BYTES + length <= block_left
                && end <= log.len()
                && crc32c::crc32c_append(crc32c::crc32c(&header[6..7]), &log[at + 7..end])
                    == unmask_crc(stored)
        });
        if !valid {
            bad_at.get_or_insert(at);
            at += block_left;
            continue;
        }
        if let Some(bad) = bad_at {
            return Err(format!(
                "the record at byte {bad} fails its checksum, and a valid one follows at byte {at}"
            ));
        }
        at = end;
    }
    Ok(bad_at)
}

/// Offset and size of a block, without its trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BlockHandle {
    offset: u64,
    size: u64,
}

impl BlockHandle {
    /// The end of the block's trailer.
    fn end(&self) -> u64 {
        self.offset + self.size + BLOCK_TRAILER_BYTES as u64
    }
}

/// Reads a LEB128 varint, returning it and the bytes it took.
fn decode_varint(bytes: &[u8]) -> Result<(u64, usize), String> {
    let mut value = 0u64;
    for (position, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * position);
        if byte & 0x80 == 0 {
            return Ok((value, position + 1));
        }
    }
    Err("bad varint".into())
}

fn decode_handle(bytes: &[u8]) -> Result<(BlockHandle, usize), String> {
    let (offset, first) = decode_varint(bytes)?;
    let (size, second) = decode_varint(&bytes[first..])?;
    Ok((BlockHandle { offset, size }, first + second))
}

/// The meta-index and index handles of a footer, with its magic and padding
/// checked.
fn parse_footer(footer: &[u8]) -> Result<(BlockHandle, BlockHandle), String> {
    if footer.len() != FOOTER_BYTES || footer[FOOTER_MAGIC_AT..] != TABLE_MAGIC {
        return Err("bad footer magic".into());
    }
    let (meta_index, first) = decode_handle(&footer[..FOOTER_MAGIC_AT])?;
    let (index, second) = decode_handle(&footer[first..FOOTER_MAGIC_AT])?;
    if footer[first + second..FOOTER_MAGIC_AT]
        .iter()
        .any(|&byte| byte != 0)
    {
        return Err("bad footer padding".into());
    }
    Ok((meta_index, index))
}

fn unmask_crc(masked: u32) -> u32 {
    let rotated = masked.wrapping_sub(CRC_MASK_DELTA);
    rotated.rotate_left(15)
}

/// Checks `contents` against `trailer` (compression type and masked CRC);
/// `at` names the block in the error.
fn check_block(contents: &[u8], trailer: &[u8], at: u64) -> Result<(), String> {
    let stored = u32::from_le_bytes(trailer[1..5].try_into().expect("4 bytes"));
    let crc = crc32c::crc32c_append(crc32c::crc32c(contents), &trailer[..1]);
    if crc != unmask_crc(stored) {
        return Err(format!("checksum mismatch in the block at byte {at}"));
    }
    Ok(())
}

/// The contents of the block at `handle` in `table`, checked.
fn checked_block(table: &[u8], handle: BlockHandle, limit: u64) -> Result<&[u8], String> {
    if handle.end() > limit {
        return Err(format!(
            "block at byte {} of {} bytes runs past byte {limit}",
            handle.offset, handle.size
        ));
    }
    let start = handle.offset as usize;
    let end = start + handle.size as usize;
    check_block(
        &table[start..end],
        &table[end..end + BLOCK_TRAILER_BYTES],
        handle.offset,
    )?;
    Ok(&table[start..end])
}

/// The entries (key, value) of a block: prefix-compressed entries, then an
/// array of restart offsets and its length (u32 each).
fn block_entries(block: &[u8]) -> Result<Vec<KeyValue>, String> {
    let malformed = || "malformed block".to_string();
    let restarts_length = block
        .len()
        .checked_sub(4)
        .map(|at| u32::from_le_bytes(block[at..].try_into().expect("4 bytes")) as usize)
        .ok_or_else(malformed)?;
    let entries_end = restarts_length
        .checked_mul(4)
        .and_then(|bytes| block.len().checked_sub(4 + bytes))
        .ok_or_else(malformed)?;
    let mut entries = Vec::new();
    let mut key: Vec<u8> = Vec::new();
    let mut at = 0;
    while at < entries_end {
        let mut field = || -> Result<usize, String> {
            let (value, length) = decode_varint(&block[at..entries_end])?;
            at += length;
            usize::try_from(value).map_err(|_| malformed())
        };
        let (shared, unshared, value_length) = (field()?, field()?, field()?);
        let value_at = at.checked_add(unshared).ok_or_else(malformed)?;
        let end = value_at.checked_add(value_length).ok_or_else(malformed)?;
        if shared > key.len() || end > entries_end {
            return Err(malformed());
        }
        key.truncate(shared);
        key.extend_from_slice(&block[at..value_at]);
        entries.push((key.clone(), block[value_at..end].to_vec()));
        at = end;
    }
    Ok(entries)
}

/// Entries of a block that must be stored uncompressed to be read here
/// (the index and meta-index blocks; our store never compresses).
fn uncompressed_entries(
    table: &[u8],
    handle: BlockHandle,
    limit: u64,
) -> Result<Vec<KeyValue>, String> {
    let contents = checked_block(table, handle, limit)?;
    let compression = table[(handle.offset + handle.size) as usize];
    if compression != UNCOMPRESSED {
        return Err(format!(
            "block at byte {} has compression type {compression}",
            handle.offset
        ));
    }
    block_entries(contents)
}

/// Checks every byte of a table file's contents: the footer, the CRC of
/// every block (data, filter, meta-index, index), and that the blocks
/// follow each other from the first byte to the footer with no gap.
pub fn verify_table(table: &[u8]) -> Result<(), String> {
    let footer_at = table
        .len()
        .checked_sub(FOOTER_BYTES)
        .ok_or_else(|| format!("only {} bytes", table.len()))?;
    let limit = footer_at as u64;
    let (meta_index, index) = parse_footer(&table[footer_at..])?;
    let mut blocks = vec![meta_index, index];
    for (_, value) in uncompressed_entries(table, meta_index, limit)?
        .into_iter()
        .chain(uncompressed_entries(table, index, limit)?)
    {
        blocks.push(decode_handle(&value)?.0);
    }
    blocks.sort_by_key(|block| block.offset);
    let mut expected_at = 0;
    for block in blocks {
        if block.offset != expected_at {
            return Err(format!(
                "the block at byte {} does not follow the one before (byte {expected_at})",
                block.offset
            ));
        }
        checked_block(table, block, limit)?;
        expected_at = block.end();
    }
    if expected_at != limit {
        return Err(format!(
            "the blocks end at byte {expected_at}, the footer starts at byte {limit}"
        ));
    }
    Ok(())
}

/// What a start-up check of a store read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreChecked {
    /// Files checked: tables, logs and manifests.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Logs that end in a bad record (left to LevelDB, which drops it).
    pub torn_logs: usize,
}

/// Checks every table, log and manifest file in `directory` (see the
/// module documentation); the first that fails is returned as the error.
pub fn verify_store(directory: &Path) -> Result<StoreChecked, CorruptFile> {
    let failed = |path: &Path, reason: String| CorruptFile {
        path: path.to_path_buf(),
        reason,
    };
    let mut checked = StoreChecked {
        files: 0,
        bytes: 0,
        torn_logs: 0,
    };
    let entries = std::fs::read_dir(directory)
        .map_err(|error| failed(directory, format!("cannot list the files: {error}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|error| failed(directory, format!("cannot list the files: {error}")))?
            .path();
        if let Some(kind) = file_kind(&path) {
            files.push((path, kind));
        }
    }
    files.sort_by(|(left, _), (right, _)| left.cmp(right));
    for (path, kind) in files {
        let bytes =
            std::fs::read(&path).map_err(|error| failed(&path, format!("unreadable: {error}")))?;
        match kind {
            FileKind::Table => verify_table(&bytes),
            FileKind::Log => verify_log(&bytes).map(|torn| {
                checked.torn_logs += usize::from(torn.is_some());
            }),
            FileKind::Manifest => verify_log(&bytes).and_then(|torn| match torn {
                Some(at) => Err(format!("the record at byte {at} fails its checksum")),
                None => Ok(()),
            }),
        }
        .map_err(|reason| failed(&path, reason))?;
        checked.files += 1;
        checked.bytes += bytes.len() as u64;
    }
    Ok(checked)
}

/// rusty-leveldb's disk access, with every read of a table checked (see
/// the module documentation). Failures are recorded in [`Corruption`].
pub struct VerifyingEnv {
    disk: PosixDiskEnv,
    corruption: Corruption,
}

impl VerifyingEnv {
    /// Disk access that records table failures in `corruption`.
    pub fn new(corruption: Corruption) -> Self {
        Self {
            disk: PosixDiskEnv::new(),
            corruption,
        }
    }
}

/// A table file open for rusty-leveldb, whose reads are checked.
///
/// rusty-leveldb reads a table in three ways: the footer (48 bytes at the
/// end), the filter block without its trailer, and every other block with
/// its trailer. The footer and the filter block's place are checked when the
/// file is opened; a read of the footer must then return those very bytes,
/// a read of the filter block is checked against its trailer, and any other
/// read must end in a trailer that matches it.
struct VerifiedTable {
    file: Box<dyn RandomAccess>,
    path: PathBuf,
    footer: [u8; FOOTER_BYTES],
    footer_at: u64,
    filter: Option<BlockHandle>,
    corruption: Corruption,
}

fn read_exactly(file: &dyn RandomAccess, offset: u64, length: usize) -> Result<Vec<u8>, String> {
    let mut bytes = vec![0; length];
    let read = file
        .read_at(offset as usize, &mut bytes)
        .map_err(|status| format!("read at byte {offset} failed: {status}"))?;
    if read != length {
        return Err(format!(
            "short read at byte {offset}: {read} of {length} bytes"
        ));
    }
    Ok(bytes)
}

impl VerifiedTable {
    fn open(
        file: Box<dyn RandomAccess>,
        path: &Path,
        size: u64,
        corruption: Corruption,
    ) -> Result<Self, String> {
        let footer_at = size
            .checked_sub(FOOTER_BYTES as u64)
            .ok_or_else(|| format!("only {size} bytes"))?;
        let footer: [u8; FOOTER_BYTES] = read_exactly(file.as_ref(), footer_at, FOOTER_BYTES)?
            .try_into()
            .expect("read exactly the footer");
        let (meta_index, _) = parse_footer(&footer)?;
        if meta_index.end() > footer_at {
            return Err("the meta-index block runs into the footer".into());
        }
        let block = read_exactly(
            file.as_ref(),
            meta_index.offset,
            meta_index.size as usize + BLOCK_TRAILER_BYTES,
        )?;
        let mut filter = None;
        // The block is read from offset 0 of `block`, hence the handle.
        let local = BlockHandle {
            offset: 0,
            size: meta_index.size,
        };
        for (key, value) in uncompressed_entries(&block, local, local.end())? {
            if key.starts_with(FILTER_KEY_PREFIX) {
                filter = Some(decode_handle(&value)?.0);
            }
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            footer,
            footer_at,
            filter,
            corruption,
        })
    }

    /// Checks bytes just read at `offset`.
    fn check_read(&self, offset: u64, bytes: &[u8]) -> Result<(), String> {
        if offset == self.footer_at && bytes.len() == FOOTER_BYTES {
            if bytes != self.footer {
                return Err("the footer changed since the file was opened".into());
            }
            return Ok(());
        }
        if let Some(filter) = self.filter {
            if offset == filter.offset && bytes.len() as u64 == filter.size {
                let trailer = read_exactly(
                    self.file.as_ref(),
                    offset + filter.size,
                    BLOCK_TRAILER_BYTES,
                )?;
                return check_block(bytes, &trailer, offset);
            }
        }
        let Some(contents_end) = bytes.len().checked_sub(BLOCK_TRAILER_BYTES) else {
            return Err(format!(
                "unexpected read of {} bytes at byte {offset}",
                bytes.len()
            ));
        };
        check_block(&bytes[..contents_end], &bytes[contents_end..], offset)
    }
}

impl RandomAccess for VerifiedTable {
    fn read_at(&self, offset: usize, destination: &mut [u8]) -> rusty_leveldb::Result<usize> {
        let read = self.file.read_at(offset, destination)?;
        match self.check_read(offset as u64, &destination[..read]) {
            Ok(()) => Ok(read),
            Err(reason) => Err(self.corruption.record(CorruptFile {
                path: self.path.clone(),
                reason,
            })),
        }
    }
}

impl Env for VerifyingEnv {
    fn open_sequential_file(&self, path: &Path) -> rusty_leveldb::Result<Box<dyn Read>> {
        self.disk.open_sequential_file(path)
    }

    fn open_random_access_file(&self, path: &Path) -> rusty_leveldb::Result<Box<dyn RandomAccess>> {
        let file = self.disk.open_random_access_file(path)?;
        if !is_table(path) {
            return Ok(file);
        }
        let size = self.disk.size_of(path)? as u64;
        match VerifiedTable::open(file, path, size, self.corruption.clone()) {
            Ok(table) => Ok(Box::new(table)),
            Err(reason) => Err(self.corruption.record(CorruptFile {
                path: path.to_path_buf(),
                reason,
            })),
        }
    }

    fn open_writable_file(&self, path: &Path) -> rusty_leveldb::Result<Box<dyn Write>> {
        self.disk.open_writable_file(path)
    }

    fn open_appendable_file(&self, path: &Path) -> rusty_leveldb::Result<Box<dyn Write>> {
        self.disk.open_appendable_file(path)
    }

    fn exists(&self, path: &Path) -> rusty_leveldb::Result<bool> {
        self.disk.exists(path)
    }

    fn children(&self, path: &Path) -> rusty_leveldb::Result<Vec<PathBuf>> {
        self.disk.children(path)
    }

    fn size_of(&self, path: &Path) -> rusty_leveldb::Result<usize> {
        self.disk.size_of(path)
    }

    fn delete(&self, path: &Path) -> rusty_leveldb::Result<()> {
        self.disk.delete(path)
    }

    fn mkdir(&self, path: &Path) -> rusty_leveldb::Result<()> {
        self.disk.mkdir(path)
    }

    fn rmdir(&self, path: &Path) -> rusty_leveldb::Result<()> {
        self.disk.rmdir(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> rusty_leveldb::Result<()> {
        self.disk.rename(from, to)
    }

    fn lock(&self, path: &Path) -> rusty_leveldb::Result<FileLock> {
        self.disk.lock(path)
    }

    fn unlock(&self, lock: FileLock) -> rusty_leveldb::Result<()> {
        self.disk.unlock(lock)
    }

    fn new_logger(&self, path: &Path) -> rusty_leveldb::Result<Logger> {
        self.disk.new_logger(path)
    }

    fn micros(&self) -> u64 {
        self.disk.micros()
    }

    fn sleep_for(&self, micros: u32) {
        self.disk.sleep_for(micros);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::storage::leveldb::{Durability, LevelDbStore};
    use crate::storage::{KeyRange, Store, StoreError, WriteBatch};

    /// Keys written by [`store_with_tables`]: 6 MB, more than one memtable
    /// (4 MiB), so LevelDB writes at least one table.
    pub(crate) const KEYS: usize = 6_000;

    pub(crate) fn key(index: usize) -> Vec<u8> {
        format!("key-{index:05}").into_bytes()
    }

    pub(crate) fn value(index: usize) -> Vec<u8> {
        format!("{index:05}").repeat(200).into_bytes()
    }

    /// A closed store in `directory` holding [`KEYS`] keys; returns its
    /// table files, largest first.
    pub(crate) fn store_with_tables(directory: &Path) -> Vec<PathBuf> {
        let mut store = LevelDbStore::open(directory, Durability::Flush).unwrap();
        for first in (0..KEYS).step_by(100) {
            let mut batch = WriteBatch::new();
            for index in first..first + 100 {
                batch.put(key(index), value(index));
            }
            store.write(batch).unwrap();
        }
        store.close().unwrap();
        let mut tables: Vec<PathBuf> = std::fs::read_dir(directory)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| is_table(path))
            .collect();
        tables.sort_by_key(|path| std::cmp::Reverse(std::fs::metadata(path).unwrap().len()));
        assert!(!tables.is_empty(), "the workload wrote no table");
        tables
    }

    /// [`store_with_tables`], then 64 bytes inverted in the middle of its
    /// largest table, which is returned.
    pub(crate) fn store_with_a_corrupt_table(directory: &Path) -> PathBuf {
        let table = store_with_tables(directory).swap_remove(0);
        let length = std::fs::metadata(&table).unwrap().len() as usize;
        flip(&table, length / 2, 64);
        table
    }

    /// Inverts `count` bytes of `path` from `at`.
    pub(crate) fn flip(path: &Path, at: usize, count: usize) {
        let mut bytes = std::fs::read(path).unwrap();
        for byte in &mut bytes[at..at + count] {
            *byte = !*byte;
        }
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_flipped_block_fails_the_check_naming_its_table() {
        let directory = tempfile::tempdir().unwrap();
        let tables = store_with_tables(directory.path());
        let checked = verify_store(directory.path()).unwrap();
        assert!(checked.files > tables.len(), "{checked:?}");
        let length = std::fs::metadata(&tables[0]).unwrap().len() as usize;
        flip(&tables[0], length / 2, 64);
        let corruption = verify_store(directory.path()).unwrap_err();
        assert_eq!(corruption.path, tables[0]);
        assert!(corruption.reason.contains("checksum"), "{corruption}");
    }

    /// Every byte is covered: by a block's CRC, by the footer's magic and
    /// padding, or by the blocks tiling the file exactly. (A small table,
    /// written by LevelDB with a 32 KiB memtable, so that every byte of it
    /// can be tried.)
    #[test]
    fn any_flipped_byte_of_a_table_fails_the_check() {
        let directory = tempfile::tempdir().unwrap();
        let options = rusty_leveldb::Options {
            write_buffer_size: 32 * 1024,
            ..rusty_leveldb::Options::default()
        };
        let mut db = rusty_leveldb::DB::open(directory.path(), options).unwrap();
        for index in 0..1_000 {
            db.put(&key(index), &value(index)[..100]).unwrap();
        }
        db.close().unwrap();
        verify_store(directory.path()).unwrap();
        let table = std::fs::read_dir(directory.path())
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .find(|path| is_table(path))
            .unwrap();
        let table = std::fs::read(table).unwrap();
        let mut damaged = table.clone();
        for position in 0..table.len() {
            damaged[position] ^= 0x10;
            assert!(
                verify_table(&damaged).is_err(),
                "a flip at byte {position} of {} passed",
                table.len()
            );
            damaged[position] ^= 0x10;
        }
        assert!(
            verify_table(&table[..table.len() - 1]).is_err(),
            "truncated"
        );
    }

    /// The newest file named `prefix*` or `*suffix` in `directory`.
    fn file_named(directory: &Path, matches: impl Fn(&str) -> bool) -> PathBuf {
        std::fs::read_dir(directory)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| matches(&path.file_name().unwrap().to_string_lossy()))
            .max()
            .unwrap()
    }

    #[test]
    fn a_flipped_log_record_with_records_after_it_fails_the_check() {
        let directory = tempfile::tempdir().unwrap();
        store_with_tables(directory.path());
        let log = file_named(directory.path(), |name| name.ends_with(LOG_SUFFIX));
        let length = std::fs::metadata(&log).unwrap().len() as usize;
        assert!(length > 4 * LOG_BLOCK_BYTES, "{length} bytes of log");
        flip(&log, length / 2, 64);
        let corruption = verify_store(directory.path()).unwrap_err();
        assert_eq!(corruption.path, log);
        assert!(
            corruption.reason.contains("a valid one follows"),
            "{corruption}"
        );
    }

    /// A crash cuts the last write short: LevelDB drops that record, and
    /// what it keeps is a prefix of the batches.
    #[test]
    fn a_log_cut_short_is_left_to_leveldb() {
        let directory = tempfile::tempdir().unwrap();
        store_with_tables(directory.path());
        let log = file_named(directory.path(), |name| name.ends_with(LOG_SUFFIX));
        let length = std::fs::metadata(&log).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(length - 100)
            .unwrap();
        assert_eq!(verify_store(directory.path()).unwrap().torn_logs, 1);
    }

    #[test]
    fn a_flipped_manifest_record_fails_the_check() {
        let directory = tempfile::tempdir().unwrap();
        store_with_tables(directory.path());
        let manifest = file_named(directory.path(), |name| name.starts_with(MANIFEST_PREFIX));
        let length = std::fs::metadata(&manifest).unwrap().len() as usize;
        flip(&manifest, length - 8, 1);
        let corruption = verify_store(directory.path()).unwrap_err();
        assert_eq!(corruption.path, manifest);
    }

    /// rusty-leveldb alone would answer "not found" for the keys of a
    /// corrupt block; the store fails the read instead, and every later one.
    #[test]
    fn reads_past_a_corrupt_block_fail_instead_of_missing_keys() {
        let directory = tempfile::tempdir().unwrap();
        let table = store_with_a_corrupt_table(directory.path());
        let mut store = LevelDbStore::open(directory.path(), Durability::Flush).unwrap();
        let mut failed = 0;
        for index in 0..KEYS {
            match store.get(&key(index)) {
                Ok(found) => assert_eq!(found, Some(value(index)), "key {index}"),
                Err(StoreError::Corrupt { path, reason }) => {
                    assert_eq!(path, table, "{reason}");
                    failed += 1;
                }
                Err(error) => panic!("key {index}: {error}"),
            }
        }
        assert!(failed > 0, "no read met the corrupt block");
    }

    #[test]
    fn a_scan_over_a_corrupt_block_fails() {
        let directory = tempfile::tempdir().unwrap();
        store_with_a_corrupt_table(directory.path());
        let mut store = LevelDbStore::open(directory.path(), Durability::Flush).unwrap();
        let error = store.scan(&KeyRange::all(), usize::MAX).unwrap_err();
        assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
    }
}
