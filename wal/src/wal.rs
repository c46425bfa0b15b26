//! The `Wal`: open (replay + repair), append, compact.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::WalError;
use crate::log_state::{Compaction, LogState};
use crate::record::{
    decode_batch, decode_segment_header, decode_snapshot, encode_batch, encode_record,
    encode_segment_header, encode_snapshot, RecordKind, RecordSpan, SegmentHeader,
    BATCH_ENTRY_FIXED_BYTES, BATCH_PAYLOAD_FIXED_BYTES, RECORD_PAYLOAD_BYTES_MAX,
    SEGMENT_HEADER_RECORD_BYTES,
};
use crate::segment::{list_directory, scan_segment, Segment};
use crate::types::{Entry, HardState, Recovered, SnapshotMarker, WalOptions};

/// File in the WAL directory that an open [`Wal`] holds an exclusive lock
/// on, so that two processes never append to the same log.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// The encode buffer is dropped after an append larger than this, so one
/// huge batch does not pin memory for the life of the process. It is well
/// above a batch of a few 1 MiB values: a buffer dropped after every such
/// batch was allocated and page-faulted afresh for the next one.
const ENCODE_BUFFER_BYTES_KEPT_MAX: usize = 16 * 1024 * 1024;

/// Failure injected by unit tests into the next record write.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Write half of the record, then fail.
    Write,
    /// Write the whole record, then fail the fdatasync.
    Sync,
}

/// An open write-ahead log. Single writer: holds [`LOCK_FILE_NAME`].
///
/// Every mutation is validated before anything is written; an invalid one
/// returns an error and changes nothing. An I/O failure while writing
/// poisons the `Wal` (see [`WalError::Poisoned`]).
#[derive(Debug)]
pub struct Wal {
    directory: PathBuf,
    options: WalOptions,
    /// Holds the directory lock for as long as the `Wal` lives.
    _lock_file: File,
    /// Oldest first; the last one is being appended to.
    segments: Vec<Segment>,
    /// The last segment; records are written at `segment_bytes`.
    file: File,
    /// Bytes of records in the last segment: where the next one goes.
    segment_bytes: u64,
    /// Size of the last segment file: `segment_bytes` plus zero padding
    /// written ahead by preallocation.
    file_bytes: u64,
    state: LogState,
    encode_buffer: Vec<u8>,
    poisoned: bool,
    #[cfg(test)]
    fault: Option<Fault>,
}

/// The open last segment: its handle, where its records end, and its size
/// (larger when zero padding follows the records).
struct LastSegmentFile {
    file: File,
    record_bytes: u64,
    file_bytes: u64,
}

/// What replaying the segments produced.
struct Replayed {
    state: LogState,
    /// Offset just past the last whole record of the last segment.
    valid_bytes: u64,
    /// Offset just past the last non-zero byte of the last segment (at least
    /// `valid_bytes`): beyond `valid_bytes`, a torn tail up to here and zero
    /// padding after it.
    nonzero_bytes: u64,
    /// Size of the last segment file.
    file_bytes: u64,
}

impl Wal {
    /// Opens the WAL in `directory` (created if missing), replays it and
    /// repairs a torn tail.
    ///
    /// On [`WalError::Corrupt`] nothing on disk was modified. Otherwise the
    /// torn tail, if any, has been cut off (and fsynced), leftovers of an
    /// interrupted segment creation are removed, and segments made
    /// unnecessary by the recovered snapshot marker are deleted.
    pub fn open(directory: &Path, options: WalOptions) -> Result<(Wal, Recovered), WalError> {
        options.validate()?;
        let directory_existed = directory.is_dir();
        fs::create_dir_all(directory)
            .map_err(|error| WalError::io("create directory", directory, error))?;
        if !directory_existed && options.sync {
            // The new directory's entry lives in its parent.
            if let Some(parent) = directory
                .parent()
                .filter(|parent| !parent.as_os_str().is_empty())
            {
                sync_directory(parent)?;
            }
        }
        let lock_file = lock_directory(directory)?;
        let listing = list_directory(directory)?;

        let replayed = if listing.segments.is_empty() {
            None
        } else {
            check_sequences(&listing.segments)?;
            Some(replay_segments(&listing.segments)?)
        };

        // Everything was read and validated: repairs may start.
        for temporary in &listing.temporary_files {
            fs::remove_file(temporary).map_err(|error| WalError::io("delete", temporary, error))?;
        }
        let (mut wal, recovered) = match replayed {
            None => {
                let state = LogState::new(HardState::default(), None, 1, false);
                let (segment, file, segment_bytes) =
                    create_segment(directory, 0, &state, options.sync)?;
                let wal = Wal::new(
                    directory,
                    options,
                    lock_file,
                    vec![segment],
                    LastSegmentFile {
                        file,
                        record_bytes: segment_bytes,
                        file_bytes: segment_bytes,
                    },
                    state,
                );
                (wal, Recovered::default())
            }
            Some(Replayed {
                mut state,
                valid_bytes,
                nonzero_bytes,
                file_bytes,
            }) => {
                let last = listing.segments.last().expect("segments listed");
                let file = OpenOptions::new()
                    .write(true)
                    .open(&last.path)
                    .map_err(|error| WalError::io("open", &last.path, error))?;
                // Zero padding from preallocation is kept and written over;
                // a torn tail goes, with whatever padding follows it.
                let truncated_tail_bytes = nonzero_bytes - valid_bytes;
                let file_bytes = if truncated_tail_bytes > 0 {
                    file.set_len(valid_bytes)
                        .map_err(|error| WalError::io("truncate", &last.path, error))?;
                    if options.sync {
                        file.sync_all()
                            .map_err(|error| WalError::io("fsync", &last.path, error))?;
                    }
                    valid_bytes
                } else {
                    file_bytes
                };
                let payloads = state.payloads.take().expect("replay keeps payloads");
                let entries = state
                    .terms
                    .iter()
                    .zip(payloads)
                    .enumerate()
                    .map(|(position, (&term, payload))| Entry {
                        index: state.log_start + position as u64,
                        term,
                        payload,
                    })
                    .collect();
                let recovered = Recovered {
                    hard_state: state.hard_state,
                    snapshot: state.snapshot,
                    entries,
                    truncated_tail_bytes,
                };
                let wal = Wal::new(
                    directory,
                    options,
                    lock_file,
                    listing.segments,
                    LastSegmentFile {
                        file,
                        record_bytes: valid_bytes,
                        file_bytes,
                    },
                    state,
                );
                (wal, recovered)
            }
        };
        if !listing.temporary_files.is_empty() && options.sync {
            sync_directory(directory)?;
        }
        // A crash between recording a snapshot and deleting the segments it
        // made unnecessary leaves them behind: finish the job.
        wal.delete_unneeded_segments()?;
        Ok((wal, recovered))
    }

    fn new(
        directory: &Path,
        options: WalOptions,
        lock_file: File,
        segments: Vec<Segment>,
        last: LastSegmentFile,
        state: LogState,
    ) -> Self {
        let LastSegmentFile {
            file,
            record_bytes: segment_bytes,
            file_bytes,
        } = last;
        assert!(!segments.is_empty());
        assert!(segment_bytes <= file_bytes);
        assert!(state.payloads.is_none());
        assert!(state.is_complete());
        Wal {
            directory: directory.to_path_buf(),
            options,
            _lock_file: lock_file,
            segments,
            file,
            segment_bytes,
            file_bytes,
            state,
            encode_buffer: Vec::new(),
            poisoned: false,
            #[cfg(test)]
            fault: None,
        }
    }

    /// Appends (optionally) a hard state and entries as ONE batch and, with
    /// [`WalOptions::sync`], fdatasyncs once before returning: when this
    /// returns `Ok`, the batch survives a crash.
    ///
    /// Entries must be contiguous. The first one's index may be at most the
    /// current last index + 1; when it is <= the last index, the log's
    /// suffix from that index is replaced (Raft conflict resolution: with
    /// last = 10, an append starting at 8 replaces 8..=10). A crash never
    /// leaves part of a batch: replay sees all of it or none of it (an
    /// append larger than [`RECORD_PAYLOAD_BYTES_MAX`] is the exception: it
    /// is split into several records, each fdatasynced in turn; the leading
    /// ones carry the new term and vote with the old commit index, the last
    /// one the whole hard state, so a crash may keep a prefix of its
    /// entries without the new commit index).
    ///
    /// Refused without writing anything ([`WalError::InvalidAppend`]) when
    /// the entries are not contiguous, start beyond last + 1 or at or below
    /// the snapshot index or the stored commit index, have decreasing terms
    /// (also relative to the preceding entry) or a term above the hard
    /// state's; or when the hard state moves term or commit backwards,
    /// changes a vote within a term, or has a commit index beyond the new
    /// last index. An entry too large for one record is refused with
    /// [`WalError::EntryTooLarge`]. Appending nothing (no entries, no hard
    /// state or an unchanged one) writes nothing.
    pub fn append(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<(), WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned);
        }
        let first_index = entries.first().map_or(0, |entry| entry.index);
        for (position, entry) in entries.iter().enumerate() {
            let expected = first_index.checked_add(position as u64);
            if Some(entry.index) != expected {
                return Err(WalError::InvalidAppend {
                    reason: format!(
                        "entries are not contiguous: entry {position} of the batch has index {}, \
                         expected {}",
                        entry.index,
                        first_index.saturating_add(position as u64)
                    ),
                });
            }
            let bytes =
                BATCH_PAYLOAD_FIXED_BYTES + BATCH_ENTRY_FIXED_BYTES + entry.payload.len() as u64;
            if bytes > RECORD_PAYLOAD_BYTES_MAX {
                return Err(WalError::EntryTooLarge {
                    index: entry.index,
                    bytes,
                    bytes_max: RECORD_PAYLOAD_BYTES_MAX,
                });
            }
        }
        let terms: Vec<u64> = entries.iter().map(|entry| entry.term).collect();
        self.state
            .check_batch(hard_state, first_index, &terms)
            .map_err(|reason| WalError::InvalidAppend { reason })?;
        if entries.is_empty() && hard_state.is_none_or(|new| *new == self.state.hard_state) {
            return Ok(());
        }
        if let Err(error) = self.write_batch(hard_state, entries) {
            self.poisoned = true;
            return Err(error);
        }
        self.state
            .apply_batch(hard_state.copied(), first_index, &terms, None);
        Ok(())
    }

    /// Records that a durable snapshot covers everything up to
    /// `marker.index`, then deletes the segment files no longer needed and
    /// fsyncs the directory.
    ///
    /// - If our entry at `marker.index` has `marker.term` (the usual local
    ///   log compaction), entries up to it are dropped and later ones kept.
    /// - If `marker.index` is beyond the last index, or our entry there has
    ///   another term (a follower installed its leader's snapshot), the
    ///   whole log is dropped: the log is empty, [`Wal::last_index`] is
    ///   `marker.index` and the next append must start at
    ///   `marker.index + 1`.
    ///
    /// The stored hard state is raised so it never lags the snapshot:
    /// `commit = max(commit, marker.index)`, and if `term < marker.term`
    /// then `term = marker.term, vote = 0` (a vote in a term this node
    /// never persisted was never sent).
    ///
    /// Refused without writing ([`WalError::InvalidCompact`]) when the
    /// marker goes backwards (index or term), has index 0, equals the
    /// current index with another term, or contradicts a committed entry.
    /// The current marker again is a no-op.
    pub fn compact(&mut self, marker: SnapshotMarker) -> Result<(), WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned);
        }
        let log_discarded = match self
            .state
            .plan_compaction(&marker)
            .map_err(|reason| WalError::InvalidCompact { reason })?
        {
            Compaction::Nothing => return Ok(()),
            Compaction::KeepSuffix => false,
            Compaction::DiscardLog => true,
        };
        if let Err(error) = self.write_compaction(&marker, log_discarded) {
            self.poisoned = true;
            return Err(error);
        }
        self.state.apply_compaction(marker, log_discarded);
        if let Err(error) = self.delete_unneeded_segments() {
            self.poisoned = true;
            return Err(error);
        }
        Ok(())
    }

    /// Index of the last entry; the snapshot index when the log is empty
    /// (0 on a fresh WAL).
    pub fn last_index(&self) -> u64 {
        self.state.last_index()
    }

    /// Index of the first entry held: snapshot index + 1 (1 without a
    /// snapshot). Greater than [`Wal::last_index`] when the log is empty.
    pub fn first_index(&self) -> u64 {
        self.state.log_start
    }

    /// Number of segment files (for tests and metrics).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The hard state as stored (including the raise done by
    /// [`Wal::compact`]).
    pub fn hard_state(&self) -> HardState {
        self.state.hard_state
    }

    /// The latest snapshot marker recorded.
    pub fn snapshot(&self) -> Option<SnapshotMarker> {
        self.state.snapshot
    }

    /// Whether an I/O failure poisoned this `Wal` (see
    /// [`WalError::Poisoned`]).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// The WAL directory.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    fn write_batch(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<(), WalError> {
        self.rotate_if_full()?;
        let mut rest = entries;
        loop {
            // As many entries as fit in one record (at least one: the
            // caller checked each fits alone).
            let mut payload_bytes = BATCH_PAYLOAD_FIXED_BYTES;
            let mut count = 0;
            for entry in rest {
                let entry_bytes = BATCH_ENTRY_FIXED_BYTES + entry.payload.len() as u64;
                if payload_bytes + entry_bytes > RECORD_PAYLOAD_BYTES_MAX {
                    break;
                }
                payload_bytes += entry_bytes;
                count += 1;
            }
            assert!(count > 0 || rest.is_empty());
            let (chunk, remainder) = rest.split_at(count);
            // A leading chunk must replay on its own: it carries the new
            // term and vote (persisting them early is always safe) but the
            // old commit index, which its entries may not reach yet.
            let chunk_hard_state = if remainder.is_empty() {
                hard_state.copied()
            } else {
                hard_state.map(|new| HardState {
                    commit: self.state.hard_state.commit,
                    ..*new
                })
            };
            self.write_record(RecordKind::Batch, |buffer| {
                encode_batch(buffer, chunk_hard_state.as_ref(), chunk)
            })?;
            rest = remainder;
            if rest.is_empty() {
                return Ok(());
            }
        }
    }

    fn write_compaction(
        &mut self,
        marker: &SnapshotMarker,
        log_discarded: bool,
    ) -> Result<(), WalError> {
        self.rotate_if_full()?;
        self.write_record(RecordKind::Snapshot, |buffer| {
            encode_snapshot(buffer, marker, log_discarded)
        })
    }

    /// Writes one record after the last one of the last segment (into
    /// preallocated zeros, extending them first if needed) and, with
    /// [`WalOptions::sync`], fdatasyncs it.
    fn write_record(
        &mut self,
        kind: RecordKind,
        write_payload: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), WalError> {
        let segment = self.segments.last().expect("a segment is open");
        self.encode_buffer.clear();
        let record_bytes = encode_record(
            &mut self.encode_buffer,
            segment.sequence,
            self.segment_bytes,
            kind,
            write_payload,
        );
        #[cfg(test)]
        if let Some(fault) = self.fault.take() {
            let written = match fault {
                Fault::Write => &self.encode_buffer[..self.encode_buffer.len() / 2],
                Fault::Sync => &self.encode_buffer[..],
            };
            self.file
                .write_all_at(written, self.segment_bytes)
                .expect("injected partial write");
            return Err(WalError::io(
                if fault == Fault::Write {
                    "write"
                } else {
                    "fdatasync"
                },
                &segment.path,
                std::io::Error::other("injected failure"),
            ));
        }
        let record_end = self.segment_bytes + record_bytes;
        // A record as large as a step is mostly data: its fdatasync gains
        // little from a fixed size, and zero-filling after it would nearly
        // double what is written for a run of large records.
        let preallocate =
            self.options.preallocate_bytes > 0 && record_bytes < self.options.preallocate_bytes;
        if record_end > self.file_bytes && preallocate {
            // Zero-fill ahead; the fdatasync below makes padding and record
            // durable together (one inode write per extension).
            let padded_end = record_end.next_multiple_of(self.options.preallocate_bytes);
            let zeros = vec![0u8; (padded_end - record_end) as usize];
            self.file
                .write_all_at(&zeros, record_end)
                .map_err(|error| WalError::io("preallocate", &segment.path, error))?;
            self.file_bytes = padded_end;
        }
        self.file
            .write_all_at(&self.encode_buffer, self.segment_bytes)
            .map_err(|error| WalError::io("write", &segment.path, error))?;
        self.segment_bytes = record_end;
        self.file_bytes = self.file_bytes.max(record_end);
        if self.options.sync {
            self.file
                .sync_data()
                .map_err(|error| WalError::io("fdatasync", &segment.path, error))?;
        }
        if self.encode_buffer.capacity() > ENCODE_BUFFER_BYTES_KEPT_MAX {
            self.encode_buffer = Vec::new();
        }
        Ok(())
    }

    /// Starts a new segment when the last one is full (and holds more than
    /// its header). The previous segment loses its zero padding first (and
    /// that is fsynced): only the last segment may end in anything but a
    /// whole record. Its records need no fsync here: each was fdatasynced
    /// when written.
    fn rotate_if_full(&mut self) -> Result<(), WalError> {
        if self.segment_bytes < self.options.segment_bytes_max
            || self.segment_bytes <= SEGMENT_HEADER_RECORD_BYTES
        {
            return Ok(());
        }
        if self.file_bytes > self.segment_bytes {
            let path = &self.segments.last().expect("a segment is open").path;
            self.file
                .set_len(self.segment_bytes)
                .map_err(|error| WalError::io("truncate", path, error))?;
            if self.options.sync {
                self.file
                    .sync_all()
                    .map_err(|error| WalError::io("fsync", path, error))?;
            }
            self.file_bytes = self.segment_bytes;
        }
        let sequence = self.segments.last().expect("a segment is open").sequence + 1;
        let (segment, file, segment_bytes) =
            create_segment(&self.directory, sequence, &self.state, self.options.sync)?;
        self.segments.push(segment);
        self.file = file;
        self.segment_bytes = segment_bytes;
        self.file_bytes = segment_bytes;
        Ok(())
    }

    /// Deletes the oldest segments while the remaining ones still hold
    /// everything after the snapshot: keeps from the newest segment whose
    /// first index is <= snapshot index + 1. Every live entry at or above
    /// that segment's first index was written into it or a later one, and
    /// its header carries the hard state and snapshot of that moment, so a
    /// replay starting there rebuilds the same log. Deletes oldest first,
    /// so a crash midway leaves a suffix of segments that replays the same.
    fn delete_unneeded_segments(&mut self) -> Result<(), WalError> {
        let next_needed_index = self.state.snapshot_index() + 1;
        let Some(keep_from) = self
            .segments
            .iter()
            .rposition(|segment| segment.first_index <= next_needed_index)
        else {
            return Ok(());
        };
        if keep_from == 0 {
            return Ok(());
        }
        for _ in 0..keep_from {
            let path = &self.segments[0].path;
            fs::remove_file(path).map_err(|error| WalError::io("delete", path, error))?;
            self.segments.remove(0);
        }
        if self.options.sync {
            sync_directory(&self.directory)?;
        }
        Ok(())
    }

    /// Makes the next record write fail (unit tests only).
    #[cfg(test)]
    pub(crate) fn inject_fault(&mut self, fault: Fault) {
        self.fault = Some(fault);
    }
}

fn lock_directory(directory: &Path) -> Result<File, WalError> {
    let path = directory.join(LOCK_FILE_NAME);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|error| WalError::io("open", &path, error))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(WalError::Locked { path }),
        Err(TryLockError::Error(error)) => Err(WalError::io("lock", &path, error)),
    }
}

fn sync_directory(directory: &Path) -> Result<(), WalError> {
    File::open(directory)
        .and_then(|handle| handle.sync_all())
        .map_err(|error| WalError::io("fsync directory", directory, error))
}

/// Creates segment `sequence` holding only its header (the current state),
/// atomically: written and fsynced under a temporary name, renamed into
/// place, directory fsynced. A segment file under its final name therefore
/// always starts with a whole header. Returns the handle positioned at its
/// end.
fn create_segment(
    directory: &Path,
    sequence: u64,
    state: &LogState,
    sync: bool,
) -> Result<(Segment, File, u64), WalError> {
    let segment = Segment::new(directory, sequence, state.last_index() + 1);
    let temporary = segment.temporary_path();
    let mut buffer = Vec::new();
    let header = SegmentHeader {
        sequence,
        first_index: segment.first_index,
        hard_state: state.hard_state,
        snapshot: state.snapshot,
    };
    let bytes = encode_record(
        &mut buffer,
        sequence,
        0,
        RecordKind::SegmentHeader,
        |buffer| encode_segment_header(buffer, &header),
    );
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)
        .map_err(|error| WalError::io("create", &temporary, error))?;
    file.write_all(&buffer)
        .map_err(|error| WalError::io("write", &temporary, error))?;
    if sync {
        file.sync_all()
            .map_err(|error| WalError::io("fsync", &temporary, error))?;
    }
    fs::rename(&temporary, &segment.path)
        .map_err(|error| WalError::io("rename", &temporary, error))?;
    if sync {
        sync_directory(directory)?;
    }
    Ok((segment, file, bytes))
}

fn check_sequences(segments: &[Segment]) -> Result<(), WalError> {
    for pair in segments.windows(2) {
        if pair[1].sequence != pair[0].sequence + 1 {
            return Err(WalError::Corrupt {
                path: pair[1].path.clone(),
                offset: 0,
                reason: format!(
                    "segment sequence {} follows {}: a segment is missing or duplicated",
                    pair[1].sequence, pair[0].sequence
                ),
            });
        }
    }
    Ok(())
}

fn replay_segments(segments: &[Segment]) -> Result<Replayed, WalError> {
    let mut state: Option<LogState> = None;
    let mut tail = (0, 0, 0);
    for (position, segment) in segments.iter().enumerate() {
        let is_last = position + 1 == segments.len();
        let bytes =
            fs::read(&segment.path).map_err(|error| WalError::io("read", &segment.path, error))?;
        let scan = scan_segment(&bytes, segment, is_last)?;
        replay_records(&bytes, segment, &scan.records, &mut state)?;
        if is_last {
            let nonzero_bytes = bytes[scan.valid_bytes..]
                .iter()
                .rposition(|&byte| byte != 0)
                .map_or(scan.valid_bytes, |position| scan.valid_bytes + position + 1);
            tail = (
                scan.valid_bytes as u64,
                nonzero_bytes as u64,
                bytes.len() as u64,
            );
        }
    }
    let state = state.expect("every segment starts with a header");
    if !state.is_complete() {
        return Err(WalError::Corrupt {
            path: segments[0].path.clone(),
            offset: 0,
            reason: format!(
                "entries {}..{} after the snapshot are missing: an earlier segment was lost",
                state.snapshot_index() + 1,
                state.log_start
            ),
        });
    }
    Ok(Replayed {
        state,
        valid_bytes: tail.0,
        nonzero_bytes: tail.1,
        file_bytes: tail.2,
    })
}

fn check_segment_header(header: &SegmentHeader, segment: &Segment) -> Result<(), String> {
    if header.sequence != segment.sequence || header.first_index != segment.first_index {
        return Err(format!(
            "header says sequence {} first index {}, the file name says {} and {}",
            header.sequence, header.first_index, segment.sequence, segment.first_index
        ));
    }
    let last_index = header.first_index - 1;
    let snapshot = header
        .snapshot
        .unwrap_or(SnapshotMarker { index: 0, term: 0 });
    let consistent = snapshot.index <= last_index
        && header.hard_state.commit <= last_index
        && header.hard_state.commit >= snapshot.index
        && header.hard_state.term >= snapshot.term;
    if !consistent {
        return Err(format!("inconsistent segment header {header:?}"));
    }
    Ok(())
}

fn replay_records(
    bytes: &[u8],
    segment: &Segment,
    records: &[RecordSpan],
    state: &mut Option<LogState>,
) -> Result<(), WalError> {
    let corrupt = |offset: usize, reason: String| WalError::Corrupt {
        path: segment.path.clone(),
        offset: offset as u64,
        reason,
    };
    match records.first() {
        None => return Err(corrupt(0, "segment holds no header record".to_string())),
        Some(first) if first.kind != RecordKind::SegmentHeader => {
            return Err(corrupt(
                first.offset,
                "segment does not start with a header record".to_string(),
            ))
        }
        Some(_) => {}
    }
    for span in records {
        let payload = &bytes[span.payload.clone()];
        let at = |reason: String| corrupt(span.offset, reason);
        match span.kind {
            RecordKind::SegmentHeader => {
                if span.offset != 0 {
                    return Err(at("segment header in the middle of a segment".to_string()));
                }
                let header = decode_segment_header(payload).map_err(at)?;
                check_segment_header(&header, segment).map_err(at)?;
                match state {
                    None => {
                        *state = Some(LogState::new(
                            header.hard_state,
                            header.snapshot,
                            header.first_index,
                            true,
                        ));
                    }
                    Some(current) => {
                        let agrees = header.first_index == current.last_index() + 1
                            && header.hard_state == current.hard_state
                            && header.snapshot == current.snapshot;
                        if !agrees {
                            return Err(at(format!(
                                "segment header (first index {}, {:?}, {:?}) disagrees with the \
                                 log replayed so far (last index {}, {:?}, {:?})",
                                header.first_index,
                                header.hard_state,
                                header.snapshot,
                                current.last_index(),
                                current.hard_state,
                                current.snapshot
                            )));
                        }
                    }
                }
            }
            RecordKind::Batch => {
                let batch = decode_batch(payload).map_err(at)?;
                let current = state.as_mut().expect("header replayed first");
                current
                    .check_batch(batch.hard_state.as_ref(), batch.first_index, &batch.terms)
                    .map_err(at)?;
                let payloads = batch
                    .payloads
                    .iter()
                    .map(|payload| payload.to_vec())
                    .collect();
                current.apply_batch(
                    batch.hard_state,
                    batch.first_index,
                    &batch.terms,
                    Some(payloads),
                );
            }
            RecordKind::Snapshot => {
                let (marker, log_discarded) = decode_snapshot(payload).map_err(at)?;
                let current = state.as_mut().expect("header replayed first");
                current
                    .check_recorded_compaction(&marker, log_discarded)
                    .map_err(at)?;
                current.apply_compaction(marker, log_discarded);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> WalOptions {
        WalOptions {
            segment_bytes_max: 1024,
            sync: false,
            preallocate_bytes: 256,
        }
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            payload: index.to_le_bytes().to_vec(),
        }
    }

    fn hard_state(term: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote: 1,
            commit,
        }
    }

    #[test]
    fn wal_can_move_to_a_blocking_thread() {
        fn assert_send<T: Send + 'static>() {}
        assert_send::<Wal>();
        assert_send::<WalError>();
    }

    #[test]
    fn write_failure_poisons_and_reopen_cuts_the_partial_record() {
        let directory = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(directory.path(), options()).unwrap();
        wal.append(Some(&hard_state(1, 0)), &[entry(1, 1), entry(2, 1)])
            .unwrap();
        wal.inject_fault(Fault::Write);
        let error = wal
            .append(Some(&hard_state(1, 2)), &[entry(3, 1)])
            .unwrap_err();
        assert!(
            matches!(
                error,
                WalError::Io {
                    operation: "write",
                    ..
                }
            ),
            "{error}"
        );
        assert!(wal.is_poisoned());
        assert!(matches!(
            wal.append(None, &[entry(3, 1)]),
            Err(WalError::Poisoned)
        ));
        assert!(matches!(
            wal.compact(SnapshotMarker { index: 1, term: 1 }),
            Err(WalError::Poisoned)
        ));
        drop(wal);

        let (mut wal, recovered) = Wal::open(directory.path(), options()).unwrap();
        assert!(recovered.truncated_tail_bytes > 0);
        assert_eq!(recovered.entries, vec![entry(1, 1), entry(2, 1)]);
        assert_eq!(recovered.hard_state, hard_state(1, 0));
        wal.append(None, &[entry(3, 1)]).unwrap();
    }

    #[test]
    fn sync_failure_poisons_even_though_the_bytes_were_written() {
        let directory = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(directory.path(), options()).unwrap();
        wal.append(Some(&hard_state(1, 0)), &[entry(1, 1)]).unwrap();
        wal.inject_fault(Fault::Sync);
        assert!(wal.append(None, &[entry(2, 1)]).is_err());
        assert!(matches!(
            wal.append(None, &[entry(2, 1)]),
            Err(WalError::Poisoned)
        ));
        assert_eq!(wal.last_index(), 1, "a failed append is not applied");
        drop(wal);
        // The bytes reached the page cache: after reopening they are simply
        // there (the caller was told the append failed, so either outcome
        // is allowed; the WAL must be consistent either way).
        let (_, recovered) = Wal::open(directory.path(), options()).unwrap();
        assert_eq!(recovered.truncated_tail_bytes, 0);
        assert_eq!(recovered.entries, vec![entry(1, 1), entry(2, 1)]);
    }

    #[test]
    fn compaction_write_failure_poisons() {
        let directory = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(directory.path(), options()).unwrap();
        wal.append(Some(&hard_state(1, 1)), &[entry(1, 1), entry(2, 1)])
            .unwrap();
        wal.inject_fault(Fault::Write);
        assert!(wal.compact(SnapshotMarker { index: 1, term: 1 }).is_err());
        assert_eq!(wal.snapshot(), None);
        assert!(matches!(
            wal.append(None, &[entry(3, 1)]),
            Err(WalError::Poisoned)
        ));
        drop(wal);
        let (_, recovered) = Wal::open(directory.path(), options()).unwrap();
        assert_eq!(recovered.snapshot, None);
        assert_eq!(recovered.entries.len(), 2);
    }
}
