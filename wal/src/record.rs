//! Record framing and the three payload encodings. All integers are
//! little-endian.
//!
//! ```text
//! record header (RECORD_HEADER_BYTES = 16):
//!   0..4    payload_bytes     u32   at most RECORD_PAYLOAD_BYTES_MAX
//!   4       kind              u8    1 segment header, 2 batch, 3 snapshot
//!   5..8    reserved          zero
//!   8..12   payload_checksum  u32   CRC-32C of the payload
//!   12..16  header_checksum   u32   CRC-32C of (segment sequence u64,
//!                                   record file offset u64, bytes 0..12)
//! payload (payload_bytes)
//! ```
//!
//! The header checksum covers the length, the kind and the payload checksum,
//! so one chain of CRCs covers every byte of the record. It is salted with
//! the segment sequence and the record's own offset, so a record is valid
//! only where it was written: bytes that happen to contain a copy of a
//! record (an entry payload holding a WAL record, a stale block) never
//! validate elsewhere. Checking a header costs one CRC over 28 bytes, which
//! keeps the forward scan that tells a torn tail from mid-log corruption
//! cheap.

use std::ops::Range;

use crate::types::{Entry, HardState, SnapshotMarker};

/// Bytes of the header in front of every record payload.
pub const RECORD_HEADER_BYTES: usize = 16;

/// Largest record payload: a larger one is refused on write and treated as
/// corruption on read (no buffer is ever sized from an unchecked length).
/// An append bigger than this is split into several records; one entry
/// bigger than this is refused ([`crate::WalError::EntryTooLarge`]).
pub const RECORD_PAYLOAD_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// First 8 bytes of every segment header payload: `KVSTWAL\0`.
const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"KVSTWAL\0");

/// Version of this on-disk format.
const FORMAT_VERSION: u32 = 1;

/// Payload bytes of a segment header: magic, version, flags, sequence,
/// first index, hard state (3 x u64), snapshot index and term.
const SEGMENT_HEADER_PAYLOAD_BYTES: usize = 8 + 4 + 4 + 8 + 8 + 24 + 8 + 8;

/// Size of the record that opens every segment.
pub(crate) const SEGMENT_HEADER_RECORD_BYTES: u64 =
    (RECORD_HEADER_BYTES + SEGMENT_HEADER_PAYLOAD_BYTES) as u64;

/// Payload bytes of a snapshot record: index, term, flags.
const SNAPSHOT_PAYLOAD_BYTES: usize = 8 + 8 + 1;

/// Batch payload bytes apart from the entries: flags, hard state, entry
/// count, first entry index.
pub(crate) const BATCH_PAYLOAD_FIXED_BYTES: u64 = 1 + 24 + 4 + 8;

/// Batch payload bytes per entry apart from its payload: term, length.
pub(crate) const BATCH_ENTRY_FIXED_BYTES: u64 = 8 + 4;

/// Flag bit in a segment header: a snapshot marker is present.
const SEGMENT_FLAG_SNAPSHOT: u32 = 1;

/// Flag bit in a batch: a hard state is present.
const BATCH_FLAG_HARD_STATE: u8 = 1;

/// Flag bit in a snapshot record: the whole log was discarded.
const SNAPSHOT_FLAG_LOG_DISCARDED: u8 = 1;

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordKind {
    /// First record of every segment: the state needed to replay from here.
    SegmentHeader = 1,
    /// One append: an optional hard state and contiguous entries.
    Batch = 2,
    /// One compaction: a snapshot marker.
    Snapshot = 3,
}

impl RecordKind {
    fn from_byte(byte: u8) -> Option<RecordKind> {
        match byte {
            1 => Some(RecordKind::SegmentHeader),
            2 => Some(RecordKind::Batch),
            3 => Some(RecordKind::Snapshot),
            _ => None,
        }
    }
}

/// A whole, checksum-valid record inside a segment's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RecordSpan {
    /// File offset of the record header.
    pub offset: usize,
    /// What it holds.
    pub kind: RecordKind,
    /// Where its payload lies.
    pub payload: Range<usize>,
}

impl RecordSpan {
    /// File offset just past the record.
    pub fn end(&self) -> usize {
        self.payload.end
    }
}

/// Why no valid record starts at some offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Defect {
    /// Fewer than [`RECORD_HEADER_BYTES`] remain.
    HeaderIncomplete { remaining_bytes: usize },
    /// The header checksum does not match.
    HeaderChecksum,
    /// The header checksum matches but a field is impossible. A torn write
    /// cannot produce this, so it is always corruption.
    HeaderInvalid { reason: String },
    /// The payload runs past the end of the file.
    PayloadIncomplete {
        payload_bytes: u64,
        remaining_bytes: usize,
    },
    /// The payload checksum does not match.
    PayloadChecksum,
}

impl Defect {
    /// Whether an interrupted write can explain it.
    pub fn may_be_torn_write(&self) -> bool {
        !matches!(self, Defect::HeaderInvalid { .. })
    }

    /// Human-readable description for [`crate::WalError::Corrupt`].
    pub fn describe(&self) -> String {
        match self {
            Defect::HeaderIncomplete { remaining_bytes } => format!(
                "incomplete record header ({remaining_bytes} of {RECORD_HEADER_BYTES} bytes)"
            ),
            Defect::HeaderChecksum => "record header checksum mismatch".to_string(),
            Defect::HeaderInvalid { reason } => format!("invalid record header: {reason}"),
            Defect::PayloadIncomplete {
                payload_bytes,
                remaining_bytes,
            } => format!(
                "record payload of {payload_bytes} bytes runs past the end of the file \
                 ({remaining_bytes} bytes remain)"
            ),
            Defect::PayloadChecksum => "record payload checksum mismatch".to_string(),
        }
    }
}

fn header_checksum(sequence: u64, offset: u64, header_prefix: &[u8]) -> u32 {
    assert_eq!(header_prefix.len(), 12);
    let mut salt = [0u8; 16];
    salt[..8].copy_from_slice(&sequence.to_le_bytes());
    salt[8..].copy_from_slice(&offset.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&salt), header_prefix)
}

/// Appends one framed record to `buffer`. `offset` is the file offset the
/// record will be written at; `write_payload` appends the payload. Returns
/// the record's size.
pub(crate) fn encode_record(
    buffer: &mut Vec<u8>,
    sequence: u64,
    offset: u64,
    kind: RecordKind,
    write_payload: impl FnOnce(&mut Vec<u8>),
) -> u64 {
    let start = buffer.len();
    buffer.extend_from_slice(&[0u8; RECORD_HEADER_BYTES]);
    write_payload(buffer);
    let payload_bytes = buffer.len() - start - RECORD_HEADER_BYTES;
    assert!(
        payload_bytes as u64 <= RECORD_PAYLOAD_BYTES_MAX,
        "record payload of {payload_bytes} bytes above the limit"
    );
    let payload_checksum = crc32c::crc32c(&buffer[start + RECORD_HEADER_BYTES..]);
    let header = &mut buffer[start..start + RECORD_HEADER_BYTES];
    header[0..4].copy_from_slice(&(payload_bytes as u32).to_le_bytes());
    header[4] = kind as u8;
    header[8..12].copy_from_slice(&payload_checksum.to_le_bytes());
    let checksum = header_checksum(sequence, offset, &header[0..12]);
    header[12..16].copy_from_slice(&checksum.to_le_bytes());
    (RECORD_HEADER_BYTES + payload_bytes) as u64
}

/// Validates the record starting at `offset` in a segment's bytes.
pub(crate) fn decode_record_at(
    bytes: &[u8],
    sequence: u64,
    offset: usize,
) -> Result<RecordSpan, Defect> {
    assert!(offset <= bytes.len());
    let remaining_bytes = bytes.len() - offset;
    if remaining_bytes < RECORD_HEADER_BYTES {
        return Err(Defect::HeaderIncomplete { remaining_bytes });
    }
    let header = &bytes[offset..offset + RECORD_HEADER_BYTES];
    let stored_header_checksum = u32::from_le_bytes(header[12..16].try_into().unwrap());
    if header_checksum(sequence, offset as u64, &header[0..12]) != stored_header_checksum {
        return Err(Defect::HeaderChecksum);
    }
    let payload_bytes = u64::from(u32::from_le_bytes(header[0..4].try_into().unwrap()));
    if payload_bytes > RECORD_PAYLOAD_BYTES_MAX {
        return Err(Defect::HeaderInvalid {
            reason: format!(
                "payload of {payload_bytes} bytes above the limit of {RECORD_PAYLOAD_BYTES_MAX}"
            ),
        });
    }
    let Some(kind) = RecordKind::from_byte(header[4]) else {
        return Err(Defect::HeaderInvalid {
            reason: format!("unknown record kind {}", header[4]),
        });
    };
    if header[5..8] != [0, 0, 0] {
        return Err(Defect::HeaderInvalid {
            reason: "reserved header bytes are not zero".to_string(),
        });
    }
    if payload_bytes > (remaining_bytes - RECORD_HEADER_BYTES) as u64 {
        return Err(Defect::PayloadIncomplete {
            payload_bytes,
            remaining_bytes,
        });
    }
    let payload =
        offset + RECORD_HEADER_BYTES..offset + RECORD_HEADER_BYTES + payload_bytes as usize;
    let stored_payload_checksum = u32::from_le_bytes(header[8..12].try_into().unwrap());
    if crc32c::crc32c(&bytes[payload.clone()]) != stored_payload_checksum {
        return Err(Defect::PayloadChecksum);
    }
    Ok(RecordSpan {
        offset,
        kind,
        payload,
    })
}

/// First offset after `bad_offset` where a whole, checksum-valid record
/// starts, if any. Tries every byte offset: a bad length field means record
/// boundaries after `bad_offset` are unknown.
pub(crate) fn find_valid_record_after(
    bytes: &[u8],
    sequence: u64,
    bad_offset: usize,
) -> Option<usize> {
    let last_candidate = bytes.len().checked_sub(RECORD_HEADER_BYTES)?;
    (bad_offset + 1..=last_candidate).find(|&candidate| {
        header_fields_plausible(&bytes[candidate..candidate + RECORD_HEADER_BYTES])
            && decode_record_at(bytes, sequence, candidate).is_ok()
    })
}

/// Cheap filter before computing checksums: a known kind and zero reserved
/// bytes. Rejects almost every offset of a torn region.
fn header_fields_plausible(header: &[u8]) -> bool {
    RecordKind::from_byte(header[4]).is_some() && header[5..8] == [0, 0, 0]
}

/// Reads fixed-size fields off a payload, failing instead of panicking.
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, position: 0 }
    }

    fn remaining_bytes(&self) -> usize {
        self.bytes.len() - self.position
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], String> {
        if count > self.remaining_bytes() {
            return Err(format!(
                "payload truncated: needs {count} bytes at {}, {} remain",
                self.position,
                self.remaining_bytes()
            ));
        }
        let slice = &self.bytes[self.position..self.position + count];
        self.position += count;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn hard_state(&mut self) -> Result<HardState, String> {
        Ok(HardState {
            term: self.u64()?,
            vote: self.u64()?,
            commit: self.u64()?,
        })
    }

    fn finish(self) -> Result<(), String> {
        match self.remaining_bytes() {
            0 => Ok(()),
            trailing => Err(format!("{trailing} unexpected trailing payload bytes")),
        }
    }
}

fn put_u32(buffer: &mut Vec<u8>, value: u32) {
    buffer.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(buffer: &mut Vec<u8>, value: u64) {
    buffer.extend_from_slice(&value.to_le_bytes());
}

fn put_hard_state(buffer: &mut Vec<u8>, hard_state: &HardState) {
    put_u64(buffer, hard_state.term);
    put_u64(buffer, hard_state.vote);
    put_u64(buffer, hard_state.commit);
}

/// The state a segment starts from, so that older segments can be deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    /// Must match the file name.
    pub sequence: u64,
    /// Last index + 1 when the segment was created; matches the file name.
    pub first_index: u64,
    /// Hard state when the segment was created.
    pub hard_state: HardState,
    /// Snapshot marker when the segment was created.
    pub snapshot: Option<SnapshotMarker>,
}

pub(crate) fn encode_segment_header(buffer: &mut Vec<u8>, header: &SegmentHeader) {
    let start = buffer.len();
    put_u64(buffer, SEGMENT_MAGIC);
    put_u32(buffer, FORMAT_VERSION);
    let flags = if header.snapshot.is_some() {
        SEGMENT_FLAG_SNAPSHOT
    } else {
        0
    };
    put_u32(buffer, flags);
    put_u64(buffer, header.sequence);
    put_u64(buffer, header.first_index);
    put_hard_state(buffer, &header.hard_state);
    let snapshot = header
        .snapshot
        .unwrap_or(SnapshotMarker { index: 0, term: 0 });
    put_u64(buffer, snapshot.index);
    put_u64(buffer, snapshot.term);
    assert_eq!(buffer.len() - start, SEGMENT_HEADER_PAYLOAD_BYTES);
}

pub(crate) fn decode_segment_header(payload: &[u8]) -> Result<SegmentHeader, String> {
    let mut reader = Reader::new(payload);
    let magic = reader.u64()?;
    if magic != SEGMENT_MAGIC {
        return Err(format!("bad segment magic {magic:#018x}"));
    }
    let version = reader.u32()?;
    if version != FORMAT_VERSION {
        return Err(format!(
            "unsupported format version {version} (this build reads {FORMAT_VERSION})"
        ));
    }
    let flags = reader.u32()?;
    if flags & !SEGMENT_FLAG_SNAPSHOT != 0 {
        return Err(format!("unknown segment header flags {flags:#x}"));
    }
    let sequence = reader.u64()?;
    let first_index = reader.u64()?;
    let hard_state = reader.hard_state()?;
    let snapshot = SnapshotMarker {
        index: reader.u64()?,
        term: reader.u64()?,
    };
    reader.finish()?;
    let snapshot = if flags & SEGMENT_FLAG_SNAPSHOT != 0 {
        Some(snapshot)
    } else if snapshot == (SnapshotMarker { index: 0, term: 0 }) {
        None
    } else {
        return Err("snapshot fields set without the snapshot flag".to_string());
    };
    if first_index == 0 {
        return Err("segment first index is 0".to_string());
    }
    Ok(SegmentHeader {
        sequence,
        first_index,
        hard_state,
        snapshot,
    })
}

/// Exact payload size of a batch.
pub(crate) fn batch_payload_bytes(entries: &[Entry]) -> u64 {
    BATCH_PAYLOAD_FIXED_BYTES
        + entries
            .iter()
            .map(|entry| BATCH_ENTRY_FIXED_BYTES + entry.payload.len() as u64)
            .sum::<u64>()
}

/// Encodes a batch payload. `entries` must be contiguous (checked by the
/// caller).
pub(crate) fn encode_batch(
    buffer: &mut Vec<u8>,
    hard_state: Option<&HardState>,
    entries: &[Entry],
) {
    let start = buffer.len();
    buffer.push(if hard_state.is_some() {
        BATCH_FLAG_HARD_STATE
    } else {
        0
    });
    put_hard_state(buffer, &hard_state.copied().unwrap_or_default());
    put_u32(
        buffer,
        u32::try_from(entries.len()).expect("entry count fits u32"),
    );
    put_u64(buffer, entries.first().map_or(0, |entry| entry.index));
    for entry in entries {
        put_u64(buffer, entry.term);
        put_u32(
            buffer,
            u32::try_from(entry.payload.len()).expect("payload fits u32"),
        );
        buffer.extend_from_slice(&entry.payload);
    }
    assert_eq!((buffer.len() - start) as u64, batch_payload_bytes(entries));
}

/// A decoded batch, borrowing entry payloads from the segment's bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct DecodedBatch<'a> {
    pub hard_state: Option<HardState>,
    /// Index of the first entry (0 when there are none).
    pub first_index: u64,
    pub terms: Vec<u64>,
    pub payloads: Vec<&'a [u8]>,
}

pub(crate) fn decode_batch(payload: &[u8]) -> Result<DecodedBatch<'_>, String> {
    let mut reader = Reader::new(payload);
    let flags = reader.u8()?;
    if flags & !BATCH_FLAG_HARD_STATE != 0 {
        return Err(format!("unknown batch flags {flags:#x}"));
    }
    let hard_state = reader.hard_state()?;
    let hard_state = if flags & BATCH_FLAG_HARD_STATE != 0 {
        Some(hard_state)
    } else if hard_state == HardState::default() {
        None
    } else {
        return Err("hard state fields set without the hard state flag".to_string());
    };
    let entry_count = reader.u32()? as usize;
    let first_index = reader.u64()?;
    if entry_count == 0 && first_index != 0 {
        return Err("first index set in a batch without entries".to_string());
    }
    if entry_count > 0 {
        if first_index == 0 {
            return Err("entry index 0".to_string());
        }
        if first_index.checked_add(entry_count as u64 - 1).is_none() {
            return Err("entry indexes overflow".to_string());
        }
    }
    // Bound the allocation by what the payload can hold.
    if entry_count as u64 * BATCH_ENTRY_FIXED_BYTES > reader.remaining_bytes() as u64 {
        return Err(format!(
            "{entry_count} entries cannot fit in {} bytes",
            reader.remaining_bytes()
        ));
    }
    let mut terms = Vec::with_capacity(entry_count);
    let mut payloads = Vec::with_capacity(entry_count);
    for _ in 0..entry_count {
        terms.push(reader.u64()?);
        let payload_bytes = reader.u32()? as usize;
        payloads.push(reader.take(payload_bytes)?);
    }
    reader.finish()?;
    Ok(DecodedBatch {
        hard_state,
        first_index,
        terms,
        payloads,
    })
}

pub(crate) fn encode_snapshot(buffer: &mut Vec<u8>, marker: &SnapshotMarker, log_discarded: bool) {
    put_u64(buffer, marker.index);
    put_u64(buffer, marker.term);
    buffer.push(if log_discarded {
        SNAPSHOT_FLAG_LOG_DISCARDED
    } else {
        0
    });
}

/// Returns the marker and whether the whole log was discarded.
pub(crate) fn decode_snapshot(payload: &[u8]) -> Result<(SnapshotMarker, bool), String> {
    if payload.len() != SNAPSHOT_PAYLOAD_BYTES {
        return Err(format!(
            "snapshot payload of {} bytes, expected {SNAPSHOT_PAYLOAD_BYTES}",
            payload.len()
        ));
    }
    let mut reader = Reader::new(payload);
    let marker = SnapshotMarker {
        index: reader.u64()?,
        term: reader.u64()?,
    };
    let flags = reader.u8()?;
    reader.finish()?;
    if flags & !SNAPSHOT_FLAG_LOG_DISCARDED != 0 {
        return Err(format!("unknown snapshot flags {flags:#x}"));
    }
    if marker.index == 0 {
        return Err("snapshot index 0".to_string());
    }
    Ok((marker, flags & SNAPSHOT_FLAG_LOG_DISCARDED != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, payload: &[u8]) -> Entry {
        Entry {
            index,
            term,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn batch_round_trip() {
        let hard_state = HardState {
            term: 7,
            vote: 3,
            commit: 11,
        };
        let entries = vec![entry(12, 7, b"a"), entry(13, 7, b""), entry(14, 7, b"xyz")];
        let mut buffer = Vec::new();
        let bytes = encode_record(&mut buffer, 5, 100, RecordKind::Batch, |buffer| {
            encode_batch(buffer, Some(&hard_state), &entries)
        });
        assert_eq!(bytes as usize, buffer.len());
        assert_eq!(
            bytes,
            RECORD_HEADER_BYTES as u64 + batch_payload_bytes(&entries)
        );
        let mut file = vec![0u8; 100];
        file.extend_from_slice(&buffer);
        let span = decode_record_at(&file, 5, 100).unwrap();
        assert_eq!(span.kind, RecordKind::Batch);
        assert_eq!(span.end(), file.len());
        let batch = decode_batch(&file[span.payload]).unwrap();
        assert_eq!(batch.hard_state, Some(hard_state));
        assert_eq!(batch.first_index, 12);
        assert_eq!(batch.terms, vec![7, 7, 7]);
        assert_eq!(batch.payloads, vec![&b"a"[..], b"", b"xyz"]);
    }

    #[test]
    fn header_checksum_is_bound_to_sequence_and_offset() {
        let mut buffer = Vec::new();
        encode_record(&mut buffer, 5, 0, RecordKind::Snapshot, |buffer| {
            encode_snapshot(buffer, &SnapshotMarker { index: 3, term: 2 }, false)
        });
        assert!(decode_record_at(&buffer, 5, 0).is_ok());
        assert_eq!(decode_record_at(&buffer, 6, 0), Err(Defect::HeaderChecksum));
        let mut shifted = vec![0u8; 8];
        shifted.extend_from_slice(&buffer);
        assert_eq!(
            decode_record_at(&shifted, 5, 8),
            Err(Defect::HeaderChecksum)
        );
    }

    #[test]
    fn defects_are_classified() {
        let mut buffer = Vec::new();
        encode_record(&mut buffer, 1, 0, RecordKind::Snapshot, |buffer| {
            encode_snapshot(buffer, &SnapshotMarker { index: 3, term: 2 }, true)
        });
        assert_eq!(
            decode_record_at(&buffer[..10], 1, 0),
            Err(Defect::HeaderIncomplete {
                remaining_bytes: 10
            })
        );
        assert_eq!(
            decode_record_at(&buffer[..20], 1, 0),
            Err(Defect::PayloadIncomplete {
                payload_bytes: SNAPSHOT_PAYLOAD_BYTES as u64,
                remaining_bytes: 20
            })
        );
        let mut flipped = buffer.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            decode_record_at(&flipped, 1, 0),
            Err(Defect::PayloadChecksum)
        );

        // An unknown kind under a valid header checksum is never torn.
        let mut unknown = buffer.clone();
        unknown[4] = 9;
        let checksum = header_checksum(1, 0, &unknown[0..12]);
        unknown[12..16].copy_from_slice(&checksum.to_le_bytes());
        let defect = decode_record_at(&unknown, 1, 0).unwrap_err();
        assert!(!defect.may_be_torn_write(), "{defect:?}");
    }

    #[test]
    fn oversized_length_is_corruption_not_an_allocation() {
        let mut header = [0u8; RECORD_HEADER_BYTES];
        header[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        header[4] = RecordKind::Batch as u8;
        let checksum = header_checksum(0, 0, &header[0..12]);
        header[12..16].copy_from_slice(&checksum.to_le_bytes());
        let defect = decode_record_at(&header, 0, 0).unwrap_err();
        assert!(matches!(defect, Defect::HeaderInvalid { .. }), "{defect:?}");
    }

    #[test]
    fn segment_header_round_trip() {
        let header = SegmentHeader {
            sequence: 9,
            first_index: 42,
            hard_state: HardState {
                term: 4,
                vote: 0,
                commit: 40,
            },
            snapshot: Some(SnapshotMarker { index: 30, term: 3 }),
        };
        let mut buffer = Vec::new();
        let bytes = encode_record(&mut buffer, 9, 0, RecordKind::SegmentHeader, |buffer| {
            encode_segment_header(buffer, &header)
        });
        assert_eq!(bytes, SEGMENT_HEADER_RECORD_BYTES);
        let span = decode_record_at(&buffer, 9, 0).unwrap();
        assert_eq!(decode_segment_header(&buffer[span.payload]), Ok(header));
    }

    #[test]
    fn malformed_payloads_are_refused() {
        assert!(decode_batch(&[]).is_err());
        let mut buffer = Vec::new();
        encode_batch(&mut buffer, None, &[entry(1, 1, b"abc")]);
        assert!(decode_batch(&buffer[..buffer.len() - 1]).is_err());
        let mut trailing = buffer.clone();
        trailing.push(0);
        assert!(decode_batch(&trailing).is_err());
        // A huge entry count is refused before any allocation.
        let mut huge = buffer.clone();
        huge[25..29].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_batch(&huge).is_err());
        assert!(decode_snapshot(&[0u8; SNAPSHOT_PAYLOAD_BYTES]).is_err());
    }
}
