//! Caller bugs are refused before anything is written, and the WAL stays
//! usable afterwards.

use kvstore_wal::{Entry, HardState, SnapshotMarker, Wal, WalError};

use crate::common::*;

/// A WAL with entries 1..=6 of term 1 and 7..=10 of term 2, commit 5,
/// snapshot at 2.
fn populated(directory: &std::path::Path) -> Wal {
    let (mut wal, _) = open(directory, options());
    wal.append(Some(&hard_state(1, 1, 5)), &entries(1, 6, 1))
        .unwrap();
    wal.append(Some(&hard_state(2, 2, 5)), &entries(7, 10, 2))
        .unwrap();
    wal.compact(SnapshotMarker { index: 2, term: 1 }).unwrap();
    wal
}

fn assert_refused_without_writing(
    wal: &mut Wal,
    hard_state: Option<HardState>,
    batch: &[Entry],
    context: &str,
) {
    let directory = wal.directory().to_path_buf();
    let before = directory_snapshot(&directory);
    let last_index = wal.last_index();
    let stored = wal.hard_state();
    match wal.append(hard_state.as_ref(), batch) {
        Err(WalError::InvalidAppend { reason }) => {
            assert!(!reason.is_empty(), "{context}");
        }
        other => panic!("{context}: expected InvalidAppend, got {other:?}"),
    }
    assert!(
        before == directory_snapshot(&directory),
        "{context}: files changed"
    );
    assert_eq!(wal.last_index(), last_index, "{context}");
    assert_eq!(wal.hard_state(), stored, "{context}");
    assert!(!wal.is_poisoned(), "{context}");
}

#[test]
fn invalid_appends_are_refused_without_writing() {
    let directory = tempfile::tempdir().unwrap();
    let mut wal = populated(directory.path());
    let cases: Vec<(&str, Option<HardState>, Vec<Entry>)> = vec![
        ("gap after the last index", None, entries(12, 12, 2)),
        ("far gap", None, entries(1000, 1001, 2)),
        ("not contiguous", None, vec![entry(11, 2), entry(13, 2)]),
        ("decreasing index", None, vec![entry(11, 2), entry(10, 2)]),
        ("replacing a committed entry", None, entries(5, 5, 2)),
        ("replacing a compacted entry", None, entries(2, 2, 2)),
        ("index 0", None, entries(0, 0, 2)),
        ("term below the previous entry", None, entries(11, 11, 1)),
        (
            "terms decreasing inside the batch",
            None,
            vec![entry(11, 2), entry(12, 1)],
        ),
        (
            "entry term above the hard state term",
            None,
            entries(11, 11, 3),
        ),
        (
            "hard state term going back",
            Some(hard_state(1, 2, 5)),
            vec![],
        ),
        (
            "vote changed within a term",
            Some(hard_state(2, 3, 5)),
            vec![],
        ),
        ("commit going back", Some(hard_state(2, 2, 4)), vec![]),
        (
            "commit beyond the last index",
            Some(hard_state(2, 2, 11)),
            vec![],
        ),
        (
            "commit beyond the batch's last index",
            Some(hard_state(2, 2, 9)),
            entries(7, 8, 2),
        ),
    ];
    for (context, hard_state, batch) in cases {
        assert_refused_without_writing(&mut wal, hard_state, &batch, context);
    }
    // Still usable, and the refused appends left no trace.
    wal.append(Some(&hard_state(2, 2, 11)), &entries(11, 11, 2))
        .unwrap();
    drop(wal);
    let (_, recovered) = open(directory.path(), options());
    let mut expected = entries(3, 6, 1);
    expected.extend(entries(7, 11, 2));
    assert_eq!(recovered.entries, expected);
    assert_eq!(recovered.hard_state, hard_state(2, 2, 11));
}

#[test]
fn invalid_compactions_are_refused_without_writing() {
    let directory = tempfile::tempdir().unwrap();
    let mut wal = populated(directory.path());
    let cases = [
        ("index 0", SnapshotMarker { index: 0, term: 0 }),
        ("index going back", SnapshotMarker { index: 1, term: 1 }),
        (
            "same index, other term",
            SnapshotMarker { index: 2, term: 2 },
        ),
        ("term going back", SnapshotMarker { index: 20, term: 0 }),
        (
            "contradicts a committed entry",
            SnapshotMarker { index: 4, term: 2 },
        ),
    ];
    for (context, marker) in cases {
        let before = directory_snapshot(directory.path());
        assert!(
            matches!(wal.compact(marker), Err(WalError::InvalidCompact { .. })),
            "{context}"
        );
        assert!(before == directory_snapshot(directory.path()), "{context}");
        assert_eq!(wal.first_index(), 3, "{context}");
        assert!(!wal.is_poisoned());
    }
    wal.compact(SnapshotMarker { index: 6, term: 1 }).unwrap();
    assert_eq!(wal.first_index(), 7);
}
