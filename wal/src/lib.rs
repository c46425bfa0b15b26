//! Write-ahead log that makes kvstore's Raft state durable.
//!
//! The Raft driver calls [`Wal::append`] once per `Ready` batch (hard state
//! plus new entries, one `fdatasync` for the whole batch) and
//! [`Wal::compact`] once a durable snapshot covers a prefix of the log.
//! [`Wal::open`] replays the segment files and returns everything needed to
//! rebuild the node: the hard state, the last snapshot marker and the entries
//! after it ([`Recovered`]).
//!
//! The log is a directory of segment files named
//! `{sequence:016x}-{first_index:016x}.wal`, written in order; the last one
//! is zero-filled ahead ([`WalOptions::preallocate_bytes`]) so that each
//! `fdatasync` writes data, not the inode. Every record is framed by a
//! 16-byte header carrying its length, its kind, a CRC-32C of the payload and
//! a CRC-32C of the header itself (salted with the segment sequence and the
//! record's file offset). Each `append` becomes one record (or several, only
//! when it exceeds [`RECORD_PAYLOAD_BYTES_MAX`]), so a crash never leaves
//! half a batch behind. The format, the recovery rules and the durability
//! contract are described in the crate's `README.md`.
//!
//! Recovery in one paragraph: a bad record at the end of the LAST segment,
//! with no valid record anywhere after it, is a torn tail of an
//! unacknowledged write; it is cut off (and reported in
//! [`Recovered::truncated_tail_bytes`]). A bad record followed by any valid
//! record, or a bad record in any segment but the last, is corruption of
//! acknowledged data: [`Wal::open`] fails with [`WalError::Corrupt`]. Zeros
//! after the last whole record are preallocated space, not a torn tail.

#![deny(missing_docs)]

mod error;
mod log_state;
mod record;
mod segment;
mod types;
mod wal;

pub use error::WalError;
pub use record::{RECORD_HEADER_BYTES, RECORD_PAYLOAD_BYTES_MAX};
pub use segment::{SEGMENT_FILE_EXTENSION, SEGMENT_FILE_NAME_BYTES};
pub use types::{
    Entry, HardState, Recovered, SnapshotMarker, WalOptions, PREALLOCATE_BYTES_DEFAULT,
    SEGMENT_BYTES_MAX_DEFAULT,
};
pub use wal::{Wal, LOCK_FILE_NAME};
