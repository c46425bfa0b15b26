//! Random sequences of appends (with random overwrite points),
//! compactions (local and follower-installed) and reopens, checked against
//! a plain in-memory model after every step and after every reopen. Small
//! segments make rotation and segment deletion happen constantly.

use kvstore_wal::{Entry, HardState, Recovered, SnapshotMarker, Wal, WalError, WalOptions};
use proptest::prelude::*;

use crate::common::open;

#[derive(Clone, Debug)]
enum Operation {
    Append {
        /// How far before last + 1 the batch starts (clamped to what may be
        /// replaced).
        back: u8,
        count: u8,
        new_term: bool,
        with_hard_state: bool,
        commit_advance: u8,
        vote: u8,
        payload_bytes: u8,
    },
    /// Compaction at an index in the log, with the entry's term.
    CompactLocal {
        back: u8,
    },
    /// A follower installing its leader's snapshot past its log.
    CompactBeyond {
        ahead: u8,
        term_increase: u8,
    },
    /// A follower installing a snapshot whose term contradicts its
    /// (uncommitted) entry.
    CompactConflicting {
        back: u8,
    },
    /// A caller bug: must be refused and change nothing.
    AppendWithGap {
        gap: u8,
    },
    Reopen,
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        8 => (0u8..6, 0u8..5, any::<bool>(), any::<bool>(), 0u8..4, 0u8..3, 0u8..40).prop_map(
            |(back, count, new_term, with_hard_state, commit_advance, vote, payload_bytes)| {
                Operation::Append {
                    back,
                    count,
                    new_term,
                    with_hard_state,
                    commit_advance,
                    vote,
                    payload_bytes,
                }
            }
        ),
        2 => (0u8..8).prop_map(|back| Operation::CompactLocal { back }),
        1 => (0u8..5, 0u8..2).prop_map(|(ahead, term_increase)| Operation::CompactBeyond {
            ahead,
            term_increase
        }),
        1 => (0u8..4).prop_map(|back| Operation::CompactConflicting { back }),
        1 => (2u8..5).prop_map(|gap| Operation::AppendWithGap { gap }),
        2 => Just(Operation::Reopen),
    ]
}

/// What the WAL should hold.
#[derive(Clone, Debug, Default)]
struct Model {
    hard_state: HardState,
    snapshot: Option<SnapshotMarker>,
    /// Contiguous, starting at snapshot index + 1.
    entries: Vec<Entry>,
    /// Source of distinct payloads.
    payload_counter: u64,
}

impl Model {
    fn snapshot_index(&self) -> u64 {
        self.snapshot.map_or(0, |marker| marker.index)
    }

    fn first_index(&self) -> u64 {
        self.snapshot_index() + 1
    }

    fn last_index(&self) -> u64 {
        self.snapshot_index() + self.entries.len() as u64
    }

    fn term_at(&self, index: u64) -> u64 {
        self.entries[(index - self.first_index()) as usize].term
    }

    fn compact(&mut self, marker: SnapshotMarker, discard: bool) {
        if discard {
            self.entries.clear();
        } else {
            let drop_count = (marker.index - self.snapshot_index()) as usize;
            self.entries.drain(..drop_count);
        }
        self.snapshot = Some(marker);
        self.hard_state.commit = self.hard_state.commit.max(marker.index);
        if self.hard_state.term < marker.term {
            self.hard_state.term = marker.term;
            self.hard_state.vote = 0;
        }
    }

    fn recovered(&self) -> Recovered {
        Recovered {
            hard_state: self.hard_state,
            snapshot: self.snapshot,
            entries: self.entries.clone(),
            truncated_tail_bytes: 0,
        }
    }
}

fn check_matches(wal: &Wal, model: &Model) {
    assert_eq!(wal.first_index(), model.first_index());
    assert_eq!(wal.last_index(), model.last_index());
    assert_eq!(wal.hard_state(), model.hard_state);
    assert_eq!(wal.snapshot(), model.snapshot);
}

fn run(operations: Vec<Operation>, segment_bytes_max: u64) {
    let directory = tempfile::tempdir().unwrap();
    let options = WalOptions {
        segment_bytes_max,
        sync: false,
        preallocate_bytes: 512,
    };
    let (wal, recovered) = open(directory.path(), options);
    assert_eq!(recovered, Recovered::default());
    let mut wal = Some(wal);
    let mut model = Model::default();

    for operation in operations {
        let current = wal.as_mut().unwrap();
        match operation {
            Operation::Append {
                back,
                count,
                new_term,
                with_hard_state,
                commit_advance,
                vote,
                payload_bytes,
            } => {
                let lowest_first = model.hard_state.commit.max(model.snapshot_index()) + 1;
                let first = (model.last_index() + 1)
                    .saturating_sub(u64::from(back))
                    .max(lowest_first);
                let term = model.hard_state.term + u64::from(new_term);
                let batch: Vec<Entry> = (0..u64::from(count))
                    .map(|offset| {
                        model.payload_counter += 1;
                        let mut payload = model.payload_counter.to_le_bytes().to_vec();
                        payload.resize(usize::from(payload_bytes).max(8), 0xa5);
                        Entry {
                            index: first + offset,
                            term,
                            payload,
                        }
                    })
                    .collect();
                let new_last = if batch.is_empty() {
                    model.last_index()
                } else {
                    first + u64::from(count) - 1
                };
                let hard_state = (with_hard_state || new_term).then(|| HardState {
                    term,
                    vote: if new_term || model.hard_state.vote == 0 {
                        u64::from(vote)
                    } else {
                        model.hard_state.vote
                    },
                    commit: (model.hard_state.commit + u64::from(commit_advance)).min(new_last),
                });
                current.append(hard_state.as_ref(), &batch).unwrap();
                if !batch.is_empty() {
                    model
                        .entries
                        .truncate((first - model.first_index()) as usize);
                    model.entries.extend(batch);
                }
                if let Some(hard_state) = hard_state {
                    model.hard_state = hard_state;
                }
            }
            Operation::CompactLocal { back } => {
                if model.entries.is_empty() {
                    continue;
                }
                let index = model
                    .last_index()
                    .saturating_sub(u64::from(back))
                    .max(model.first_index());
                let marker = SnapshotMarker {
                    index,
                    term: model.term_at(index),
                };
                current.compact(marker).unwrap();
                model.compact(marker, false);
            }
            Operation::CompactBeyond {
                ahead,
                term_increase,
            } => {
                let last_term = model
                    .entries
                    .last()
                    .map_or(model.snapshot.map_or(0, |marker| marker.term), |entry| {
                        entry.term
                    });
                let marker = SnapshotMarker {
                    index: model.last_index() + 1 + u64::from(ahead),
                    term: last_term.max(model.hard_state.term) + u64::from(term_increase),
                };
                current.compact(marker).unwrap();
                model.compact(marker, true);
            }
            Operation::CompactConflicting { back } => {
                let lowest = model.hard_state.commit.max(model.snapshot_index()) + 1;
                if model.last_index() < lowest {
                    continue;
                }
                let index = model
                    .last_index()
                    .saturating_sub(u64::from(back))
                    .max(lowest);
                let marker = SnapshotMarker {
                    index,
                    term: model.term_at(index) + 1,
                };
                current.compact(marker).unwrap();
                model.compact(marker, true);
            }
            Operation::AppendWithGap { gap } => {
                let index = model.last_index() + u64::from(gap);
                let batch = [Entry {
                    index,
                    term: model.hard_state.term,
                    payload: vec![1, 2, 3],
                }];
                assert!(matches!(
                    current.append(None, &batch),
                    Err(WalError::InvalidAppend { .. })
                ));
            }
            Operation::Reopen => {
                drop(wal.take());
                let (reopened, recovered) = open(directory.path(), options);
                assert_eq!(recovered, model.recovered());
                wal = Some(reopened);
            }
        }
        check_matches(wal.as_ref().unwrap(), &model);
    }
    drop(wal.take());
    let (_, recovered) = open(directory.path(), options);
    assert_eq!(recovered, model.recovered());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn wal_matches_an_in_memory_model(
        operations in prop::collection::vec(operation(), 1..80),
        segment_bytes_max in prop_oneof![Just(1u64), 100u64..600, Just(1u64 << 20)],
    ) {
        run(operations, segment_bytes_max);
    }
}
