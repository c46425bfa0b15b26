//! A crash mid-write leaves a torn last record: every possible one is
//! detected, cut off, reported, and the WAL stays appendable.

use std::path::{Path, PathBuf};

use kvstore_wal::{Entry, HardState, Recovered, WalOptions};

use crate::common::*;

/// A log whose last segment ends with one whole batch (hard state + three
/// entries) that the tests then damage.
struct History {
    segment: PathBuf,
    /// The segment's bytes with the last batch.
    bytes: Vec<u8>,
    /// Where the last batch starts.
    last_record_offset: usize,
    /// State before the last batch.
    before: Recovered,
    /// The last batch.
    last_hard_state: HardState,
    last_entries: Vec<Entry>,
}

fn write_history(directory: &Path, options: WalOptions) -> History {
    let (mut wal, _) = open(directory, options);
    wal.append(Some(&hard_state(1, 1, 0)), &entries(1, 3, 1))
        .unwrap();
    wal.append(Some(&hard_state(2, 2, 3)), &entries(4, 6, 2))
        .unwrap();
    wal.append(None, &entries(7, 8, 2)).unwrap();
    let segment = segment_paths(directory).pop().unwrap();
    let last_record_offset = file_bytes(&segment) as usize;
    let last_hard_state = hard_state(3, 3, 7);
    let last_entries = entries(7, 9, 3);
    // The last batch overwrites 7..=8 and changes the hard state: if any
    // part of it leaked into the recovered state, the test would see it.
    wal.append(Some(&last_hard_state), &last_entries).unwrap();
    drop(wal);
    let mut expected_entries = entries(1, 3, 1);
    expected_entries.extend(entries(4, 8, 2));
    History {
        bytes: std::fs::read(&segment).unwrap(),
        segment,
        last_record_offset,
        before: Recovered {
            hard_state: hard_state(2, 2, 3),
            snapshot: None,
            entries: expected_entries,
            truncated_tail_bytes: 0,
        },
        last_hard_state,
        last_entries,
    }
}

/// Opens a directory whose last record was damaged, checks exactly the
/// previous state comes back and the tail was cut (reported up to its last
/// non-zero byte: zeros after it may be preallocated space), then appends
/// the lost batch again and checks it survives another reopen.
fn check_recovers_previous_state(
    directory: &Path,
    options: WalOptions,
    history: &History,
    context: &str,
) {
    let damaged = std::fs::read(&history.segment).unwrap();
    let torn_bytes = damaged[history.last_record_offset..]
        .iter()
        .rposition(|&byte| byte != 0)
        .map_or(0, |position| position + 1);
    let (wal, recovered) = open(directory, options);
    assert_eq!(
        recovered,
        Recovered {
            truncated_tail_bytes: torn_bytes as u64,
            ..history.before.clone()
        },
        "{context}"
    );
    assert_eq!(
        file_bytes(&history.segment),
        history.last_record_offset as u64,
        "{context}: file cut to the last whole record"
    );
    check_lost_batch_appends_again(directory, options, history, wal, context);
}

/// After recovering the state before the last batch: the batch is appended
/// again and survives another reopen, with no torn tail reported.
fn check_lost_batch_appends_again(
    directory: &Path,
    options: WalOptions,
    history: &History,
    mut wal: kvstore_wal::Wal,
    context: &str,
) {
    assert_eq!(wal.last_index(), 8, "{context}");
    wal.append(Some(&history.last_hard_state), &history.last_entries)
        .unwrap_or_else(|error| panic!("{context}: append after recovery: {error}"));
    drop(wal);
    let (_, recovered) = open(directory, options);
    let mut expected = history.before.entries[..6].to_vec();
    expected.extend(history.last_entries.iter().cloned());
    assert_eq!(recovered.entries, expected, "{context}");
    assert_eq!(recovered.hard_state, history.last_hard_state, "{context}");
    assert_eq!(recovered.truncated_tail_bytes, 0, "{context}");
}

#[test]
fn truncation_at_every_byte_of_the_last_record_is_a_torn_tail() {
    let directory = tempfile::tempdir().unwrap();
    let history = write_history(directory.path(), options());
    let record_bytes = history.bytes.len() - history.last_record_offset;
    assert!(record_bytes > 60, "the last record is {record_bytes} bytes");
    for cut in history.last_record_offset..history.bytes.len() {
        std::fs::write(&history.segment, &history.bytes[..cut]).unwrap();
        check_recovers_previous_state(
            directory.path(),
            options(),
            &history,
            &format!("cut at {cut}"),
        );
    }
}

#[test]
fn a_flipped_bit_anywhere_in_the_last_record_is_a_torn_tail() {
    let directory = tempfile::tempdir().unwrap();
    let history = write_history(directory.path(), options());
    for offset in history.last_record_offset..history.bytes.len() {
        for bit in 0..8 {
            let mut damaged = history.bytes.clone();
            damaged[offset] ^= 1 << bit;
            std::fs::write(&history.segment, &damaged).unwrap();
            check_recovers_previous_state(
                directory.path(),
                options(),
                &history,
                &format!("bit {bit} of byte {offset} flipped"),
            );
        }
    }
}

#[test]
fn trailing_zeros_are_padding_not_a_torn_tail() {
    let directory = tempfile::tempdir().unwrap();
    let history = write_history(directory.path(), options());
    // Zeros where the last record was (preallocated space, or a file
    // extended whose data never reached the disk), and more zeros after
    // it: the state before the last record, nothing reported as torn, and
    // appends go on over the zeros.
    for zeros in [1, 15, 16, 17, 4096] {
        let mut padded = history.bytes[..history.last_record_offset].to_vec();
        padded.resize(history.last_record_offset + zeros, 0);
        std::fs::write(&history.segment, &padded).unwrap();
        let context = format!("{zeros} zeros");
        let (wal, recovered) = open(directory.path(), options());
        assert_eq!(recovered, history.before, "{context}");
        check_lost_batch_appends_again(directory.path(), options(), &history, wal, &context);
    }
}

#[test]
fn a_torn_record_followed_by_padding_is_cut_and_counted_up_to_its_last_byte() {
    let directory = tempfile::tempdir().unwrap();
    let history = write_history(directory.path(), options());
    let record_bytes = history.bytes.len() - history.last_record_offset;
    for kept in [1, record_bytes / 2, record_bytes - 1] {
        let mut damaged = history.bytes[..history.last_record_offset + kept].to_vec();
        // The record's last kept byte must be non-zero for the count below.
        *damaged.last_mut().unwrap() |= 1;
        damaged.resize(damaged.len() + 1000, 0);
        std::fs::write(&history.segment, &damaged).unwrap();
        check_recovers_previous_state(
            directory.path(),
            options(),
            &history,
            &format!("{kept} bytes of the record, then padding"),
        );
    }
}

#[test]
fn preallocated_segments_grow_in_steps_replay_and_lose_their_padding_on_rotation() {
    let directory = tempfile::tempdir().unwrap();
    let options = WalOptions {
        segment_bytes_max: 600,
        ..preallocated(512)
    };
    let (mut wal, _) = open(directory.path(), options);
    for index in 1..=60 {
        wal.append(
            Some(&hard_state(1, 1, index - 1)),
            &entries(index, index, 1),
        )
        .unwrap();
        let last = segment_paths(directory.path()).pop().unwrap();
        assert_eq!(
            file_bytes(&last) % 512,
            0,
            "the last segment grows by whole steps"
        );
        // Replay refuses anything but whole records in a segment that is
        // not the last: reopening checks that rotation cut the padding.
        if index % 20 == 0 {
            drop(wal);
            let (reopened, recovered) = open(directory.path(), options);
            assert_eq!(recovered.entries, entries(1, index, 1));
            assert_eq!(recovered.hard_state, hard_state(1, 1, index - 1));
            assert_eq!(recovered.truncated_tail_bytes, 0);
            wal = reopened;
        }
    }
    assert!(wal.segment_count() > 3);
    // Reopened without preallocation, the same log replays and appends
    // continue after the last record, before the old padding.
    drop(wal);
    let (mut wal, recovered) = open(directory.path(), self::options());
    assert_eq!(recovered.entries, entries(1, 60, 1));
    wal.append(None, &entries(61, 61, 1)).unwrap();
    drop(wal);
    let (_, recovered) = open(directory.path(), options);
    assert_eq!(recovered.entries, entries(1, 61, 1));
}

#[test]
fn garbage_after_the_padding_is_a_torn_tail() {
    let directory = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(directory.path(), preallocated(4096));
    wal.append(Some(&hard_state(1, 1, 0)), &entries(1, 3, 1))
        .unwrap();
    drop(wal);
    let segment = segment_paths(directory.path()).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    assert_eq!(bytes.len(), 4096);
    let valid_bytes = bytes.iter().rposition(|&byte| byte != 0).unwrap() + 1;
    let garbage_at = bytes.len() - 10;
    bytes[garbage_at] = 0xab;
    std::fs::write(&segment, &bytes).unwrap();
    let (mut wal, recovered) = open(directory.path(), preallocated(4096));
    assert_eq!(recovered.entries, entries(1, 3, 1));
    assert_eq!(
        recovered.truncated_tail_bytes,
        (garbage_at + 1 - valid_bytes) as u64
    );
    assert_eq!(
        file_bytes(&segment),
        valid_bytes as u64,
        "cut with its padding"
    );
    wal.append(None, &entries(4, 4, 1)).unwrap();
    drop(wal);
    let (_, recovered) = open(directory.path(), preallocated(4096));
    assert_eq!(recovered.entries, entries(1, 4, 1));
    assert_eq!(recovered.truncated_tail_bytes, 0);
}

#[test]
fn torn_tail_in_the_last_of_several_segments() {
    let directory = tempfile::tempdir().unwrap();
    let options = small_segments(200);
    let (mut wal, _) = open(directory.path(), options);
    for index in 1..=30 {
        wal.append(
            Some(&hard_state(1, 1, index - 1)),
            &entries(index, index, 1),
        )
        .unwrap();
    }
    assert!(wal.segment_count() > 3);
    drop(wal);
    let last = segment_paths(directory.path()).pop().unwrap();
    let bytes = std::fs::read(&last).unwrap();
    std::fs::write(&last, &bytes[..bytes.len() - 5]).unwrap();
    let (mut wal, recovered) = open(directory.path(), options);
    assert_eq!(recovered.entries, entries(1, 29, 1));
    assert_eq!(recovered.hard_state, hard_state(1, 1, 28));
    assert!(recovered.truncated_tail_bytes > 0);
    wal.append(None, &entries(30, 31, 1)).unwrap();
    drop(wal);
    let (_, recovered) = open(directory.path(), options);
    assert_eq!(recovered.entries, entries(1, 31, 1));
}

#[test]
fn a_torn_compaction_record_is_cut_and_the_compaction_is_lost() {
    let directory = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(directory.path(), options());
    wal.append(Some(&hard_state(1, 1, 5)), &entries(1, 8, 1))
        .unwrap();
    let segment = segment_paths(directory.path()).pop().unwrap();
    let before = file_bytes(&segment);
    wal.compact(kvstore_wal::SnapshotMarker { index: 4, term: 1 })
        .unwrap();
    drop(wal);
    let bytes = std::fs::read(&segment).unwrap();
    for cut in before as usize..bytes.len() {
        std::fs::write(&segment, &bytes[..cut]).unwrap();
        let (_, recovered) = open(directory.path(), options());
        assert_eq!(recovered.snapshot, None, "cut at {cut}");
        assert_eq!(recovered.entries, entries(1, 8, 1), "cut at {cut}");
    }
}

#[test]
fn a_record_as_large_as_a_step_gets_no_padding_after_it() {
    let directory = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(directory.path(), preallocated(4096));
    let large = Entry {
        index: 1,
        term: 1,
        payload: vec![7; 8192],
    };
    wal.append(Some(&hard_state(1, 1, 0)), std::slice::from_ref(&large))
        .unwrap();
    let segment = segment_paths(directory.path()).pop().unwrap();
    let after_large = file_bytes(&segment);
    let bytes = std::fs::read(&segment).unwrap();
    assert_ne!(
        bytes.last(),
        Some(&0),
        "the file ends with the large record"
    );
    // A small record after it starts padding again, in whole steps.
    wal.append(None, &entries(2, 2, 1)).unwrap();
    assert_eq!(file_bytes(&segment), after_large.next_multiple_of(4096));
    drop(wal);
    let (_, recovered) = open(directory.path(), preallocated(4096));
    let mut expected = vec![large];
    expected.extend(entries(2, 2, 1));
    assert_eq!(recovered.entries, expected);
    assert_eq!(recovered.truncated_tail_bytes, 0);
}
