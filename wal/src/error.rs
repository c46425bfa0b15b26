//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the WAL.
///
/// Three families:
/// - operating errors ([`WalError::Io`]): after one of these during
///   [`crate::Wal::append`] or [`crate::Wal::compact`] the `Wal` is poisoned
///   and every later mutation returns [`WalError::Poisoned`]; reopen it;
/// - damaged files ([`WalError::Corrupt`]), only from [`crate::Wal::open`];
/// - caller bugs (`Invalid*`, [`WalError::EntryTooLarge`]): refused before
///   anything is written, the `Wal` stays usable.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file-system operation failed.
    #[error("WAL I/O error: {operation} {path}: {source}")]
    Io {
        /// What was being done ("write", "fdatasync", "rename", ...).
        operation: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Acknowledged data is damaged: a bad record followed by valid records,
    /// a bad record in a segment that is not the last one, a missing
    /// segment, or records whose content contradicts the log built so far.
    /// Nothing was modified on disk.
    #[error("corrupt WAL segment {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the offending record inside that file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },

    /// Another `Wal` (in this process or another) holds the directory.
    #[error("WAL directory is locked by another open Wal: {path}")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },

    /// The append breaks a log invariant (gap, replacing a committed or
    /// compacted entry, terms going backwards, ...). Nothing was written.
    #[error("WAL append refused, nothing written: {reason}")]
    InvalidAppend {
        /// Which invariant, with the offending values.
        reason: String,
    },

    /// One entry does not fit in a record. Nothing was written.
    #[error("WAL append refused: entry {index} encodes to {bytes} bytes, above the record payload limit of {bytes_max}")]
    EntryTooLarge {
        /// Index of the entry.
        index: u64,
        /// Its encoded size.
        bytes: u64,
        /// [`crate::RECORD_PAYLOAD_BYTES_MAX`].
        bytes_max: u64,
    },

    /// The compaction marker goes backwards or contradicts committed
    /// entries. Nothing was written.
    #[error("WAL compaction refused, nothing written: {reason}")]
    InvalidCompact {
        /// Which invariant, with the offending values.
        reason: String,
    },

    /// [`crate::WalOptions`] out of range.
    #[error("invalid WAL options: {reason}")]
    InvalidOptions {
        /// Which option.
        reason: String,
    },

    /// An earlier write or fsync failed: the file may hold a partial record
    /// and the kernel may have dropped dirty pages, so nothing more is
    /// written. Reopen the WAL to recover (the partial record is then a torn
    /// tail).
    #[error("WAL is poisoned by an earlier I/O failure; reopen it to recover")]
    Poisoned,
}

impl WalError {
    /// Builds a [`WalError::Io`].
    pub(crate) fn io(
        operation: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        WalError::Io {
            operation,
            path: path.into(),
            source,
        }
    }
}
