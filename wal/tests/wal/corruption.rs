//! Damage to acknowledged data is a startup error naming the file and the
//! offset, never silently dropped, and the files are left untouched.

use std::path::Path;

use kvstore_wal::{WalError, RECORD_HEADER_BYTES};

use crate::common::*;

fn expect_corrupt(directory: &Path, expected_path: &Path, expected_offset: u64, context: &str) {
    let before = directory_snapshot(directory);
    match open_error(directory, options()) {
        WalError::Corrupt { path, offset, .. } => {
            assert_eq!(path, expected_path, "{context}");
            assert_eq!(offset, expected_offset, "{context}");
        }
        other => panic!("{context}: expected Corrupt, got {other}"),
    }
    assert!(
        before == directory_snapshot(directory),
        "{context}: a failed open modified files"
    );
}

/// Three batches in one segment; returns the segment, its bytes, and the
/// offsets where batch records start.
fn three_batches(directory: &Path) -> (std::path::PathBuf, Vec<u8>, Vec<usize>) {
    let (mut wal, _) = open(directory, options());
    let segment = segment_paths(directory).pop().unwrap();
    let mut offsets = Vec::new();
    for (batch, term) in [(1u64, 1u64), (2, 1), (3, 2)] {
        offsets.push(file_bytes(&segment) as usize);
        let first = batch * 4 - 3;
        wal.append(
            Some(&hard_state(term, 1, first - 1)),
            &entries(first, first + 3, term),
        )
        .unwrap();
    }
    drop(wal);
    let bytes = std::fs::read(&segment).unwrap();
    (segment, bytes, offsets)
}

#[test]
fn a_damaged_byte_in_an_early_record_is_mid_log_corruption() {
    let directory = tempfile::tempdir().unwrap();
    let (segment, bytes, offsets) = three_batches(directory.path());
    // Every byte of the middle batch; valid records follow it.
    for offset in offsets[1]..offsets[2] {
        let mut damaged = bytes.clone();
        damaged[offset] ^= 0xff;
        std::fs::write(&segment, &damaged).unwrap();
        expect_corrupt(
            directory.path(),
            &segment,
            offsets[1] as u64,
            &format!("byte {offset} flipped"),
        );
    }
}

#[test]
fn a_damaged_segment_header_is_corruption() {
    let directory = tempfile::tempdir().unwrap();
    let (segment, bytes, _) = three_batches(directory.path());
    for offset in [0, 4, RECORD_HEADER_BYTES, 40] {
        let mut damaged = bytes.clone();
        damaged[offset] ^= 0x10;
        std::fs::write(&segment, &damaged).unwrap();
        expect_corrupt(directory.path(), &segment, 0, &format!("byte {offset}"));
    }
}

#[test]
fn an_empty_or_headerless_segment_is_corruption() {
    let directory = tempfile::tempdir().unwrap();
    let (segment, _, _) = three_batches(directory.path());
    std::fs::write(&segment, b"").unwrap();
    expect_corrupt(directory.path(), &segment, 0, "empty");
    std::fs::write(&segment, [0u8; 100]).unwrap();
    expect_corrupt(directory.path(), &segment, 0, "zeros");
}

/// Several segments; returns their paths.
fn rotated(directory: &Path) -> Vec<std::path::PathBuf> {
    let (mut wal, _) = open(directory, small_segments(200));
    for index in 1..=30 {
        wal.append(
            Some(&hard_state(1, 1, index - 1)),
            &entries(index, index, 1),
        )
        .unwrap();
    }
    drop(wal);
    let segments = segment_paths(directory);
    assert!(segments.len() >= 4);
    segments
}

#[test]
fn a_torn_looking_tail_in_a_segment_that_is_not_the_last_is_corruption() {
    let directory = tempfile::tempdir().unwrap();
    let segments = rotated(directory.path());
    let bytes = std::fs::read(&segments[1]).unwrap();
    std::fs::write(&segments[1], &bytes[..bytes.len() - 3]).unwrap();
    let before = directory_snapshot(directory.path());
    match open_error(directory.path(), options()) {
        WalError::Corrupt { path, offset, .. } => {
            assert_eq!(path, segments[1]);
            assert!(offset > 0 && offset < bytes.len() as u64, "offset {offset}");
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    assert!(before == directory_snapshot(directory.path()));

    let mut flipped = bytes.clone();
    let last_byte = flipped.len() - 1;
    flipped[last_byte] ^= 1;
    std::fs::write(&segments[1], &flipped).unwrap();
    assert!(matches!(
        open_error(directory.path(), options()),
        WalError::Corrupt { path, .. } if path == segments[1]
    ));
}

#[test]
fn a_missing_middle_segment_is_corruption() {
    let directory = tempfile::tempdir().unwrap();
    let segments = rotated(directory.path());
    std::fs::remove_file(&segments[2]).unwrap();
    expect_corrupt(directory.path(), &segments[3], 0, "missing segment");
}

#[test]
fn a_missing_first_segment_is_corruption() {
    let directory = tempfile::tempdir().unwrap();
    let segments = rotated(directory.path());
    std::fs::remove_file(&segments[0]).unwrap();
    expect_corrupt(
        directory.path(),
        &segments[1],
        0,
        "entries before it are missing",
    );
}

#[test]
fn a_renamed_segment_is_corruption() {
    let directory = tempfile::tempdir().unwrap();
    let segments = rotated(directory.path());
    let last = segments.last().unwrap();
    let name = last.file_name().unwrap().to_str().unwrap();
    // Same sequence, another first index.
    let renamed = last.with_file_name(format!("{}{}", &name[..17], "00000000000000ff.wal"));
    std::fs::rename(last, &renamed).unwrap();
    expect_corrupt(directory.path(), &renamed, 0, "renamed");
}

#[test]
fn a_record_copied_to_another_offset_does_not_validate() {
    // A valid record pasted after garbage is still garbage: the header
    // checksum covers the record's offset. Here the last batch is
    // duplicated at the end: the copy is not valid where it lands, so it
    // is a torn tail, cut off.
    let directory = tempfile::tempdir().unwrap();
    let (segment, bytes, offsets) = three_batches(directory.path());
    let mut damaged = bytes.clone();
    damaged.extend_from_slice(&bytes[offsets[2]..]);
    std::fs::write(&segment, &damaged).unwrap();
    let (_, recovered) = open(directory.path(), options());
    assert_eq!(
        recovered.truncated_tail_bytes,
        (bytes.len() - offsets[2]) as u64
    );
    assert_eq!(recovered.entries.len(), 12);
}
