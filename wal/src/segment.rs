//! Segment files: names, directory listing, and the structural scan that
//! tells a torn tail from mid-log corruption.

use std::path::{Path, PathBuf};

use crate::error::WalError;
use crate::record::{decode_record_at, find_valid_record_after, RecordSpan};

/// Extension of segment files.
pub const SEGMENT_FILE_EXTENSION: &str = "wal";

/// Length of a segment file name: `{sequence:016x}-{first_index:016x}.wal`.
pub const SEGMENT_FILE_NAME_BYTES: usize = 16 + 1 + 16 + 1 + SEGMENT_FILE_EXTENSION.len();

/// Suffix of a segment being created; such files are removed on open.
pub(crate) const TEMPORARY_FILE_SUFFIX: &str = ".tmp";

/// One segment file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    /// Position in the chain of segments; consecutive.
    pub sequence: u64,
    /// Last index + 1 when the segment was created. Every entry written
    /// after that (so every live entry at or above this index) is in this
    /// segment or a later one. An entry in it may have a smaller index
    /// (a suffix overwrite reaching back).
    pub first_index: u64,
    /// Full path.
    pub path: PathBuf,
}

impl Segment {
    pub fn new(directory: &Path, sequence: u64, first_index: u64) -> Self {
        Segment {
            sequence,
            first_index,
            path: directory.join(segment_file_name(sequence, first_index)),
        }
    }

    /// Where the segment is written before being renamed into place.
    pub fn temporary_path(&self) -> PathBuf {
        let mut name = self.path.file_name().unwrap().to_os_string();
        name.push(TEMPORARY_FILE_SUFFIX);
        self.path.with_file_name(name)
    }
}

/// `{sequence:016x}-{first_index:016x}.wal`: sorts by sequence, shows the
/// first index.
pub(crate) fn segment_file_name(sequence: u64, first_index: u64) -> String {
    let name = format!("{sequence:016x}-{first_index:016x}.{SEGMENT_FILE_EXTENSION}");
    assert_eq!(name.len(), SEGMENT_FILE_NAME_BYTES);
    name
}

fn parse_hex(text: &str) -> Option<u64> {
    let lowercase_hex = text
        .bytes()
        .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
    if text.len() != 16 || !lowercase_hex {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

/// `(sequence, first_index)` from a segment file name.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<(u64, u64)> {
    if name.len() != SEGMENT_FILE_NAME_BYTES {
        return None;
    }
    let stem = name
        .strip_suffix(SEGMENT_FILE_EXTENSION)?
        .strip_suffix('.')?;
    let (sequence, first_index) = stem.split_once('-')?;
    Some((parse_hex(sequence)?, parse_hex(first_index)?))
}

/// What a WAL directory holds.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// Segments sorted by sequence.
    pub segments: Vec<Segment>,
    /// Leftovers of interrupted segment creations.
    pub temporary_files: Vec<PathBuf>,
}

/// Lists segment and temporary files; ignores everything else.
pub(crate) fn list_directory(directory: &Path) -> Result<Listing, WalError> {
    let mut listing = Listing::default();
    let read_directory =
        std::fs::read_dir(directory).map_err(|error| WalError::io("list", directory, error))?;
    for item in read_directory {
        let item = item.map_err(|error| WalError::io("list", directory, error))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if let Some((sequence, first_index)) = parse_segment_file_name(name) {
            listing
                .segments
                .push(Segment::new(directory, sequence, first_index));
        } else if name
            .strip_suffix(TEMPORARY_FILE_SUFFIX)
            .and_then(parse_segment_file_name)
            .is_some()
        {
            listing.temporary_files.push(item.path());
        }
    }
    listing.segments.sort_by_key(|segment| segment.sequence);
    Ok(listing)
}

/// The whole records of a segment, in order.
#[derive(Debug)]
pub(crate) struct Scan {
    pub records: Vec<RecordSpan>,
    /// Offset just past the last whole record; less than the file size when
    /// a torn tail follows.
    pub valid_bytes: usize,
}

/// Splits a segment into records.
///
/// At the first offset where no valid record starts:
/// - a checksum-valid header with impossible fields: corrupt;
/// - in a segment that is not the last: corrupt (every segment but the last
///   was fsynced before the next one was created, so it cannot be torn);
/// - in the last segment, if a valid record starts at ANY later byte offset:
///   corrupt (acknowledged data follows the damage);
/// - otherwise a torn tail: the scan stops there and the caller truncates.
pub(crate) fn scan_segment(
    bytes: &[u8],
    segment: &Segment,
    is_last: bool,
) -> Result<Scan, WalError> {
    let corrupt = |offset: usize, reason: String| WalError::Corrupt {
        path: segment.path.clone(),
        offset: offset as u64,
        reason,
    };
    let mut records = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let defect = match decode_record_at(bytes, segment.sequence, offset) {
            Ok(span) => {
                offset = span.end();
                records.push(span);
                continue;
            }
            Err(defect) => defect,
        };
        if !defect.may_be_torn_write() {
            return Err(corrupt(offset, defect.describe()));
        }
        if !is_last {
            return Err(corrupt(
                offset,
                format!(
                    "{} in a segment that is not the last one",
                    defect.describe()
                ),
            ));
        }
        if let Some(valid_offset) = find_valid_record_after(bytes, segment.sequence, offset) {
            return Err(corrupt(
                offset,
                format!(
                    "{}, followed by a valid record at offset {valid_offset}: \
                     damage in the middle of the log, not a torn tail",
                    defect.describe()
                ),
            ));
        }
        break;
    }
    Ok(Scan {
        records,
        valid_bytes: offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_and_sort() {
        let name = segment_file_name(0x1f, 0x2a);
        assert_eq!(name, "000000000000001f-000000000000002a.wal");
        assert_eq!(parse_segment_file_name(&name), Some((0x1f, 0x2a)));
        assert!(segment_file_name(9, 1) < segment_file_name(10, 1));
        assert_eq!(
            parse_segment_file_name("000000000000001F-000000000000002a.wal"),
            None
        );
        assert_eq!(
            parse_segment_file_name("+00000000000001f-000000000000002a.wal"),
            None
        );
        assert_eq!(
            parse_segment_file_name("000000000000001f-000000000000002a.log"),
            None
        );
        assert_eq!(parse_segment_file_name("LOCK"), None);
    }
}
