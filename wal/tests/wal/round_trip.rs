//! What is appended and compacted comes back, exactly, after reopening.

use kvstore_wal::{
    Entry, HardState, Recovered, SnapshotMarker, Wal, WalError, WalOptions, LOCK_FILE_NAME,
    RECORD_PAYLOAD_BYTES_MAX,
};

use crate::common::*;

#[test]
fn fresh_directory_is_created_empty() {
    let parent = tempfile::tempdir().unwrap();
    let directory = parent.path().join("a/b/wal");
    let (wal, recovered) = open(&directory, options());
    assert_eq!(recovered, Recovered::default());
    assert_eq!(wal.first_index(), 1);
    assert_eq!(wal.last_index(), 0);
    assert_eq!(wal.segment_count(), 1);
    assert_eq!(segment_paths(&directory).len(), 1);
    assert!(directory.join(LOCK_FILE_NAME).exists());
    drop(wal);
    let (_, recovered) = open(&directory, options());
    assert_eq!(recovered, Recovered::default());
}

#[test]
fn batches_of_hard_states_and_entries_round_trip() {
    let directory = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(directory.path(), options());
    wal.append(Some(&hard_state(1, 1, 0)), &[]).unwrap();
    wal.append(Some(&hard_state(1, 1, 0)), &entries(1, 3, 1))
        .unwrap();
    wal.append(None, &entries(4, 4, 1)).unwrap();
    wal.append(Some(&hard_state(2, 0, 3)), &entries(5, 9, 2))
        .unwrap();
    wal.append(Some(&hard_state(2, 3, 9)), &[]).unwrap();
    assert_eq!(wal.last_index(), 9);
    drop(wal);

    let (wal, recovered) = open(directory.path(), options());
    let mut expected = entries(1, 4, 1);
    expected.extend(entries(5, 9, 2));
    assert_eq!(
        recovered,
        Recovered {
            hard_state: hard_state(2, 3, 9),
            snapshot: None,
            entries: expected,
            truncated_tail_bytes: 0,
        }
    );
    assert_eq!(wal.first_index(), 1);
    assert_eq!(wal.last_index(), 9);
    assert_eq!(wal.hard_state(), hard_state(2, 3, 9));
}

#[test]
fn appending_nothing_writes_nothing() {
    let directory = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(directory.path(), options());
    wal.append(Some(&hard_state(1, 1, 0)), &entries(1, 2, 1))
        .unwrap();
    let segment = segment_paths(directory.path()).pop().unwrap();
    let before = file_bytes(&segment);
    wal.append(None, &[]).unwrap();
    wal.append(Some(&hard_state(1, 1, 0)), &[]).unwrap();
    assert_eq!(file_bytes(&segment), before);
}

#[test]
fn overwriting_a_suffix_replaces_it() {
    let directory = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(directory.path(), options());
    wal.append(Some(&hard_state(1, 1, 2)), &entries(1, 10, 1))
        .unwrap();
    // last = 10, an append starting at 8 replaces 8..=10.
    wal.append(Some(&hard_state(2, 2, 2)), &entries(8, 9, 2))
        .unwrap();
    assert_eq!(wal.last_index(), 9);
    // Replacing exactly at last + 1 is a plain append; at last it replaces one.
    wal.append(None, &entries(9, 12, 2)).unwrap();
    wal.append(Some(&hard_state(3, 0, 2)), &entries(3, 3, 3))
        .unwrap();
    drop(wal);

    let (wal, recovered) = open(directory.path(), options());
    let mut expected = entries(1, 2, 1);
    expected.extend(entries(3, 3, 3));
    assert_eq!(recovered.entries, expected);
    assert_eq!(recovered.hard_state, hard_state(3, 0, 2));
    assert_eq!(wal.last_index(), 3);
}

#[test]
fn compaction_keeps_the_suffix_and_survives_reopen() {
    let directory = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(directory.path(), options());
    wal.append(Some(&hard_state(1, 1, 4)), &entries(1, 6, 1))
        .unwrap();
    wal.append(Some(&hard_state(2, 1, 6)), &entries(7, 10, 2))
        .unwrap();
    wal.compact(SnapshotMarker { index: 7, term: 2 }).unwrap();
    assert_eq!(wal.first_index(), 8);
    assert_eq!(wal.last_index(), 10);
    // Compacting to the current marker again is a no-op.
    wal.compact(SnapshotMarker { index: 7, term: 2 }).unwrap();
    // The stored commit never lags the snapshot.
    assert_eq!(wal.hard_state(), hard_state(2, 1, 7));
    drop(wal);

    let (mut wal, recovered) = open(directory.path(), options());
    assert_eq!(
        recovered.snapshot,
        Some(SnapshotMarker { index: 7, term: 2 })
    );
    assert_eq!(recovered.entries, entries(8, 10, 2));
    assert_eq!(recovered.hard_state, hard_state(2, 1, 7));
    assert_eq!(wal.first_index(), 8);
    // Entries covered by the snapshot can no longer be replaced.
    assert!(matches!(
        wal.append(None, &entries(7, 7, 2)),
        Err(WalError::InvalidAppend { .. })
    ));
    wal.append(None, &entries(11, 11, 2)).unwrap();
}

#[test]
fn compaction_of_the_whole_log_leaves_it_empty() {
    let directory = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(directory.path(), options());
    wal.append(Some(&hard_state(1, 1, 5)), &entries(1, 5, 1))
        .unwrap();
    wal.compact(SnapshotMarker { index: 5, term: 1 }).unwrap();
    assert_eq!((wal.first_index(), wal.last_index()), (6, 5));
    drop(wal);
    let (_, recovered) = open(directory.path(), options());
    assert_eq!(recovered.entries, vec![]);
    assert_eq!(
        recovered.snapshot,
        Some(SnapshotMarker { index: 5, term: 1 })
    );
}

#[test]
fn follower_snapshot_beyond_the_last_index_empties_the_log() {
    let directory = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(directory.path(), options());
    wal.append(Some(&hard_state(2, 3, 4)), &entries(1, 10, 2))
        .unwrap();
    // The leader's snapshot is at term 5: the stored term is raised, and
    // the vote cleared (it belonged to term 2).
    wal.compact(SnapshotMarker {
        index: 100,
        term: 5,
    })
    .unwrap();
    assert_eq!(wal.last_index(), 100);
    assert_eq!(wal.first_index(), 101);
    assert_eq!(wal.hard_state(), hard_state(5, 0, 100));
    for bad_first in [50, 100, 102] {
        assert!(
            matches!(
                wal.append(None, &entries(bad_first, bad_first, 5)),
                Err(WalError::InvalidAppend { .. })
            ),
            "append at {bad_first}"
        );
    }
    wal.append(Some(&hard_state(5, 2, 100)), &entries(101, 101, 5))
        .unwrap();
    drop(wal);

    let (wal, recovered) = open(directory.path(), options());
    assert_eq!(
        recovered,
        Recovered {
            hard_state: hard_state(5, 2, 100),
            snapshot: Some(SnapshotMarker {
                index: 100,
                term: 5
            }),
            entries: entries(101, 101, 5),
            truncated_tail_bytes: 0,
        }
    );
    assert_eq!(wal.first_index(), 101);
}

#[test]
fn follower_snapshot_contradicting_our_entry_discards_the_log() {
    let directory = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(directory.path(), options());
    wal.append(Some(&hard_state(3, 1, 3)), &entries(1, 10, 1))
        .unwrap();
    // Our entry 6 has term 1, the leader's snapshot says term 2: our
    // uncommitted entries after it are not the leader's. Drop everything.
    wal.compact(SnapshotMarker { index: 6, term: 2 }).unwrap();
    assert_eq!((wal.first_index(), wal.last_index()), (7, 6));
    drop(wal);
    let (_, recovered) = open(directory.path(), options());
    assert_eq!(recovered.entries, vec![]);
    assert_eq!(
        recovered.snapshot,
        Some(SnapshotMarker { index: 6, term: 2 })
    );
    assert_eq!(recovered.hard_state, hard_state(3, 1, 6));
}

#[test]
fn segments_rotate_and_compaction_deletes_the_old_ones() {
    let directory = tempfile::tempdir().unwrap();
    let options = small_segments(256);
    let (mut wal, _) = open(directory.path(), options);
    for index in 1..=100u64 {
        let commit = index.saturating_sub(2);
        wal.append(Some(&hard_state(1, 1, commit)), &entries(index, index, 1))
            .unwrap();
    }
    let rotated_count = wal.segment_count();
    assert!(rotated_count > 10, "{rotated_count} segments");
    assert_eq!(segment_paths(directory.path()).len(), rotated_count);
    drop(wal);

    let (mut wal, recovered) = open(directory.path(), options);
    assert_eq!(recovered.entries, entries(1, 100, 1));
    assert_eq!(wal.segment_count(), rotated_count);

    wal.compact(SnapshotMarker { index: 90, term: 1 }).unwrap();
    let compacted_count = wal.segment_count();
    assert!(compacted_count < 5, "{compacted_count} segments left");
    assert_eq!(segment_paths(directory.path()).len(), compacted_count);
    drop(wal);

    let (mut wal, recovered) = open(directory.path(), options);
    assert_eq!(
        recovered.snapshot,
        Some(SnapshotMarker { index: 90, term: 1 })
    );
    assert_eq!(recovered.entries, entries(91, 100, 1));
    assert_eq!(recovered.hard_state, hard_state(1, 1, 98));
    wal.compact(SnapshotMarker {
        index: 200,
        term: 2,
    })
    .unwrap();
    assert_eq!(wal.segment_count(), 1);
    drop(wal);
    let (_, recovered) = open(directory.path(), options);
    assert_eq!(recovered.entries, vec![]);
    assert_eq!(
        recovered.snapshot,
        Some(SnapshotMarker {
            index: 200,
            term: 2
        })
    );
}

#[test]
fn overwrite_reaching_into_an_earlier_segment_survives_deletion() {
    let directory = tempfile::tempdir().unwrap();
    let options = small_segments(300);
    let (mut wal, _) = open(directory.path(), options);
    for index in 1..=40u64 {
        wal.append(
            Some(&hard_state(1, 1, index.min(5))),
            &entries(index, index, 1),
        )
        .unwrap();
    }
    // The new leader replaces 10.. from the newest segment.
    wal.append(Some(&hard_state(2, 2, 5)), &entries(10, 15, 2))
        .unwrap();
    wal.append(Some(&hard_state(2, 2, 12)), &entries(16, 30, 2))
        .unwrap();
    wal.compact(SnapshotMarker { index: 12, term: 2 }).unwrap();
    drop(wal);
    let (_, recovered) = open(directory.path(), options);
    assert_eq!(recovered.entries, entries(13, 30, 2));
    assert_eq!(recovered.hard_state, hard_state(2, 2, 12));
}

#[test]
fn segments_left_behind_by_a_crash_during_compaction_are_deleted_on_open() {
    let directory = tempfile::tempdir().unwrap();
    let options = small_segments(256);
    let (mut wal, _) = open(directory.path(), options);
    for index in 1..=50 {
        wal.append(Some(&hard_state(1, 1, index)), &entries(index, index, 1))
            .unwrap();
    }
    let before = directory_snapshot(directory.path());
    wal.compact(SnapshotMarker { index: 45, term: 1 }).unwrap();
    let kept = wal.segment_count();
    drop(wal);
    // Put back the deleted files, as if the process died right after the
    // snapshot record was synced and before the deletions.
    for (path, bytes) in &before {
        if !path.exists() {
            std::fs::write(path, bytes).unwrap();
        }
    }
    assert!(segment_paths(directory.path()).len() > kept);
    let (wal, recovered) = open(directory.path(), options);
    assert_eq!(recovered.entries, entries(46, 50, 1));
    assert_eq!(wal.segment_count(), kept);
    assert_eq!(segment_paths(directory.path()).len(), kept);
}

#[test]
fn leftover_temporary_segment_is_removed() {
    let directory = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(directory.path(), options());
    wal.append(Some(&hard_state(1, 1, 0)), &entries(1, 3, 1))
        .unwrap();
    drop(wal);
    let temporary = directory
        .path()
        .join("0000000000000001-0000000000000004.wal.tmp");
    std::fs::write(&temporary, b"half a header").unwrap();
    let (_, recovered) = open(directory.path(), options());
    assert_eq!(recovered.entries, entries(1, 3, 1));
    assert!(!temporary.exists());
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let (wal, _) = open(directory.path(), options());
    assert!(matches!(
        open_error(directory.path(), options()),
        WalError::Locked { .. }
    ));
    drop(wal);
    open(directory.path(), options());
}

#[test]
fn appends_larger_than_one_record_are_split_and_round_trip() {
    let directory = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(directory.path(), options());
    let big = |index: u64| Entry {
        index,
        term: 1,
        payload: vec![index as u8; 30 * 1024 * 1024],
    };
    let batch: Vec<Entry> = (1..=3).map(big).collect();
    wal.append(Some(&hard_state(1, 1, 3)), &batch).unwrap();
    drop(wal);
    let (wal, recovered) = open(directory.path(), options());
    assert_eq!(recovered.entries, batch);
    assert_eq!(recovered.hard_state, hard_state(1, 1, 3));
    drop(wal);

    // Entries 1 and 2 went into the first record, entry 3 and the hard
    // state into the second. Tear the second: the first replays on its own,
    // with the new term and vote but the old commit.
    let segment = segment_paths(directory.path()).pop().unwrap();
    let size = file_bytes(&segment);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(size - 1)
        .unwrap();
    let (mut wal, recovered) = open(directory.path(), options());
    assert_eq!(recovered.entries, batch[..2].to_vec());
    assert_eq!(recovered.hard_state, hard_state(1, 1, 0));
    assert!(recovered.truncated_tail_bytes > 30 * 1024 * 1024);

    let too_big = Entry {
        index: 3,
        term: 1,
        payload: vec![0; RECORD_PAYLOAD_BYTES_MAX as usize],
    };
    assert!(matches!(
        wal.append(None, &[too_big]),
        Err(WalError::EntryTooLarge { index: 3, .. })
    ));
    assert_eq!(wal.last_index(), 2);
}

#[test]
fn synced_appends_round_trip() {
    // The default options (fdatasync on) take the same paths plus fsyncs.
    let directory = tempfile::tempdir().unwrap();
    let options = WalOptions {
        segment_bytes_max: 512,
        ..WalOptions::default()
    };
    assert!(options.sync);
    let (mut wal, _) = open(directory.path(), options);
    for index in 1..=20 {
        wal.append(
            Some(&hard_state(1, 1, index - 1)),
            &entries(index, index, 1),
        )
        .unwrap();
    }
    wal.compact(SnapshotMarker { index: 15, term: 1 }).unwrap();
    drop(wal);
    let (_, recovered) = open(directory.path(), options);
    assert_eq!(recovered.entries, entries(16, 20, 1));
    assert_eq!(
        recovered.hard_state,
        HardState {
            term: 1,
            vote: 1,
            commit: 19
        }
    );
}

#[test]
fn zero_segment_size_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    assert!(matches!(
        Wal::open(directory.path(), small_segments(0)),
        Err(WalError::InvalidOptions { .. })
    ));
}
