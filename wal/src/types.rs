//! The content the WAL stores and its options. The driver converts these to
//! and from its Raft types.

use crate::error::WalError;

/// Default for [`WalOptions::segment_bytes_max`]: 64 MiB.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;

/// Default for [`WalOptions::preallocate_bytes`]: 1 MiB. Zero-filling it
/// costs one larger write and fdatasync, once per few thousand small
/// entries (measurements: docs/benchmarks.md, "WAL preallocation").
pub const PREALLOCATE_BYTES_DEFAULT: u64 = 1024 * 1024;

/// Raft state that must survive a crash: written before any message that
/// depends on it is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    /// Latest term this node has seen.
    pub term: u64,
    /// Node voted for in `term`; `0` means none.
    pub vote: u64,
    /// Highest index known committed (may lag the real commit index).
    pub commit: u64,
}

/// One log entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Entry {
    /// Position in the log; the first entry ever has index 1.
    pub index: u64,
    /// Term of the leader that created it.
    pub term: u64,
    /// Opaque bytes (the driver encodes the entry kind and data in them).
    pub payload: Vec<u8>,
}

/// Says that a durable snapshot contains the effect of every entry up to and
/// including `index`, whose term is `term`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SnapshotMarker {
    /// Last log index covered by the snapshot.
    pub index: u64,
    /// Term of the entry at `index`.
    pub term: u64,
}

/// How a [`crate::Wal`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// Once the current segment holds at least this many bytes, the next
    /// append starts a new segment. A segment may exceed it by one append.
    /// Must be at least 1.
    pub segment_bytes_max: u64,
    /// `true`: `fdatasync` the segment on every append and compaction, and
    /// `fsync` the directory whenever a segment file is created, renamed,
    /// truncated or deleted. `false`: no fsync at all; data then survives a
    /// process crash (it is in the page cache) but not a kernel crash or a
    /// power cut. Only for tests and benchmarks.
    pub sync: bool,
    /// When an append would pass the end of the last segment file, the file
    /// is first extended by at least this many zero bytes, written out.
    /// Later appends then overwrite blocks that already exist in a file
    /// whose size does not change, so their `fdatasync` writes the data
    /// alone, not the inode too, which on ext4 is quicker (measurements:
    /// docs/benchmarks.md, "WAL preallocation"). Replay tells the zero
    /// padding from a torn tail. A record of this size or more is written
    /// without padding after it. `0` appends to the end of the file instead.
    pub preallocate_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            sync: true,
            preallocate_bytes: PREALLOCATE_BYTES_DEFAULT,
        }
    }
}

impl WalOptions {
    /// Checks the ranges documented on each field.
    pub(crate) fn validate(&self) -> Result<(), WalError> {
        if self.segment_bytes_max == 0 {
            return Err(WalError::InvalidOptions {
                reason: "segment_bytes_max must be at least 1".to_string(),
            });
        }
        Ok(())
    }
}

/// What [`crate::Wal::open`] found: everything needed to rebuild the node.
///
/// Invariants (checked during replay):
/// - `entries` are contiguous and the first one has index
///   `snapshot.index + 1` (or 1 without a snapshot);
/// - entry terms never decrease and are at least `snapshot.term`;
/// - `hard_state.commit` is at most the last index (the last entry's, or
///   `snapshot.index` when `entries` is empty) and at least
///   `snapshot.index`; `hard_state.term` is at least every entry's term and
///   the snapshot's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The latest hard state written (raised by compaction, see
    /// [`crate::Wal::compact`]); all zero on a fresh WAL.
    pub hard_state: HardState,
    /// The latest snapshot marker, if any compaction was recorded.
    pub snapshot: Option<SnapshotMarker>,
    /// The log after the snapshot.
    pub entries: Vec<Entry>,
    /// How many bytes of torn tail were cut from the last segment (0 after a
    /// clean shutdown). Zero padding left by preallocation
    /// ([`WalOptions::preallocate_bytes`]) is not counted: only the bytes up
    /// to the last non-zero one.
    pub truncated_tail_bytes: u64,
}
