//! The log as the WAL sees it (hard state, snapshot, entry terms), with the
//! rules every append and compaction must follow. Shared by the live `Wal`
//! (which checks before writing) and by replay (which checks every record
//! read back), so both apply exactly the same semantics.
//!
//! During replay that starts at a segment whose predecessors were deleted,
//! the state is partial: `log_start` may exceed `snapshot.index + 1` until
//! the snapshot record that justified the deletion is replayed. Terms of
//! entries below `log_start` are then unknown and the checks that need them
//! are skipped; the final check in `open` (`log_start == snapshot.index + 1`)
//! catches a genuinely missing segment.

use crate::types::{HardState, SnapshotMarker};

/// What a compaction does to the entries after the marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compaction {
    /// The marker equals the current snapshot: nothing to do.
    Nothing,
    /// Our entry at `marker.index` has `marker.term`: by log matching every
    /// entry up to it equals the snapshot's; drop them, keep the suffix.
    KeepSuffix,
    /// The marker is beyond our last index or contradicts our entry at
    /// `marker.index` (a follower installed the leader's snapshot): drop
    /// every entry.
    DiscardLog,
}

#[derive(Clone, Debug)]
pub(crate) struct LogState {
    pub hard_state: HardState,
    pub snapshot: Option<SnapshotMarker>,
    /// Index of `terms[0]`, or of the next entry when `terms` is empty.
    /// Always at least 1.
    pub log_start: u64,
    /// Terms of entries `log_start..=last_index()`.
    pub terms: Vec<u64>,
    /// Entry payloads, parallel to `terms`; kept only during replay.
    pub payloads: Option<Vec<Vec<u8>>>,
}

impl LogState {
    pub fn new(
        hard_state: HardState,
        snapshot: Option<SnapshotMarker>,
        log_start: u64,
        keep_payloads: bool,
    ) -> Self {
        assert!(log_start >= 1);
        LogState {
            hard_state,
            snapshot,
            log_start,
            terms: Vec::new(),
            payloads: keep_payloads.then(Vec::new),
        }
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.map_or(0, |marker| marker.index)
    }

    pub fn snapshot_term(&self) -> u64 {
        self.snapshot.map_or(0, |marker| marker.term)
    }

    pub fn last_index(&self) -> u64 {
        self.log_start + self.terms.len() as u64 - 1
    }

    /// Term of the entry at `index`, the snapshot's term at the snapshot
    /// index, 0 at index 0; `None` when unknown.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        if index >= self.log_start && index <= self.last_index() {
            Some(self.terms[(index - self.log_start) as usize])
        } else if index == self.snapshot_index() {
            Some(self.snapshot_term())
        } else {
            None
        }
    }

    /// Checks a batch of entries `first_index..first_index + terms.len()`
    /// (contiguous by construction) plus an optional new hard state.
    pub fn check_batch(
        &self,
        hard_state: Option<&HardState>,
        first_index: u64,
        terms: &[u64],
    ) -> Result<(), String> {
        let current = self.hard_state;
        let mut new_last_index = self.last_index();
        if let Some(&first_term) = terms.first() {
            let last_index = self.last_index();
            if first_index == 0 {
                return Err("entry index 0".to_string());
            }
            if first_index > last_index + 1 {
                return Err(format!(
                    "gap: first entry index {first_index} but last index is {last_index}"
                ));
            }
            if first_index <= self.snapshot_index() {
                return Err(format!(
                    "entry {first_index} is covered by the snapshot at {}",
                    self.snapshot_index()
                ));
            }
            if first_index <= current.commit {
                return Err(format!(
                    "entry {first_index} would replace a committed entry (commit {})",
                    current.commit
                ));
            }
            if let Some(previous_term) = self.term_at(first_index - 1) {
                if first_term < previous_term {
                    return Err(format!(
                        "entry {first_index} has term {first_term}, below the term \
                         {previous_term} of entry {}",
                        first_index - 1
                    ));
                }
            }
            if let Some(position) = terms.windows(2).position(|pair| pair[1] < pair[0]) {
                return Err(format!(
                    "entry {} has a lower term than entry {}",
                    first_index + position as u64 + 1,
                    first_index + position as u64
                ));
            }
            new_last_index = first_index
                .checked_add(terms.len() as u64 - 1)
                .ok_or("entry indexes overflow")?;
        }
        let new_hard_state = match hard_state {
            None => current,
            Some(&new) => {
                if new.term < current.term {
                    return Err(format!(
                        "hard state term {} below the current term {}",
                        new.term, current.term
                    ));
                }
                if new.term == current.term && current.vote != 0 && new.vote != current.vote {
                    return Err(format!(
                        "vote changed from {} to {} within term {}",
                        current.vote, new.vote, new.term
                    ));
                }
                if new.commit < current.commit {
                    return Err(format!(
                        "commit moved back from {} to {}",
                        current.commit, new.commit
                    ));
                }
                new
            }
        };
        if new_hard_state.commit > new_last_index {
            return Err(format!(
                "commit {} beyond the last index {new_last_index}",
                new_hard_state.commit
            ));
        }
        if let Some(&last_term) = terms.last() {
            if last_term > new_hard_state.term {
                return Err(format!(
                    "entry term {last_term} above the hard state term {}",
                    new_hard_state.term
                ));
            }
        }
        Ok(())
    }

    /// Applies a batch accepted by [`LogState::check_batch`].
    pub fn apply_batch(
        &mut self,
        hard_state: Option<HardState>,
        first_index: u64,
        terms: &[u64],
        payloads: Option<Vec<Vec<u8>>>,
    ) {
        assert_eq!(self.payloads.is_some(), payloads.is_some());
        if !terms.is_empty() {
            if first_index < self.log_start {
                // Replay only: the suffix replaced starts in a deleted
                // segment. Everything we hold is at or after it.
                assert!(first_index > self.snapshot_index());
                self.log_start = first_index;
                self.terms.clear();
                if let Some(held) = self.payloads.as_mut() {
                    held.clear();
                }
            }
            let keep = (first_index - self.log_start) as usize;
            self.terms.truncate(keep);
            self.terms.extend_from_slice(terms);
            if let (Some(held), Some(new)) = (self.payloads.as_mut(), payloads) {
                assert_eq!(new.len(), terms.len());
                held.truncate(keep);
                held.extend(new);
            }
        }
        if let Some(hard_state) = hard_state {
            self.hard_state = hard_state;
        }
        self.assert_invariants();
    }

    /// Decides what a new compaction does (live path).
    pub fn plan_compaction(&self, marker: &SnapshotMarker) -> Result<Compaction, String> {
        if marker.index == 0 {
            return Err("snapshot index 0".to_string());
        }
        let current_index = self.snapshot_index();
        if marker.index < current_index {
            return Err(format!(
                "snapshot index {} below the current snapshot index {current_index}",
                marker.index
            ));
        }
        if marker.index == current_index {
            return if marker.term == self.snapshot_term() {
                Ok(Compaction::Nothing)
            } else {
                Err(format!(
                    "snapshot at {} with term {} conflicts with the current one (term {})",
                    marker.index,
                    marker.term,
                    self.snapshot_term()
                ))
            };
        }
        if marker.term < self.snapshot_term() {
            return Err(format!(
                "snapshot term {} below the current snapshot term {}",
                marker.term,
                self.snapshot_term()
            ));
        }
        match self.term_at(marker.index) {
            Some(term) if term == marker.term => Ok(Compaction::KeepSuffix),
            Some(term) if marker.index <= self.hard_state.commit => Err(format!(
                "snapshot at {} with term {} contradicts committed entry {} of term {term}",
                marker.index, marker.term, marker.index
            )),
            _ => Ok(Compaction::DiscardLog),
        }
    }

    /// Checks a compaction read back from disk (replay path).
    pub fn check_recorded_compaction(
        &self,
        marker: &SnapshotMarker,
        log_discarded: bool,
    ) -> Result<(), String> {
        if marker.index <= self.snapshot_index() || marker.term < self.snapshot_term() {
            return Err(format!(
                "snapshot ({}, {}) does not move past the current one ({}, {})",
                marker.index,
                marker.term,
                self.snapshot_index(),
                self.snapshot_term()
            ));
        }
        let known_term = self.term_at(marker.index);
        if log_discarded {
            if known_term == Some(marker.term) {
                return Err("log discarded although the snapshot matches it".to_string());
            }
            if known_term.is_some() && marker.index <= self.hard_state.commit {
                return Err("snapshot contradicts a committed entry".to_string());
            }
        } else {
            if marker.index > self.last_index() {
                return Err(format!(
                    "snapshot at {} keeps a suffix but the last index is {}",
                    marker.index,
                    self.last_index()
                ));
            }
            if known_term.is_some_and(|term| term != marker.term) {
                return Err(format!(
                    "snapshot term {} differs from the term {known_term:?} of entry {}",
                    marker.term, marker.index
                ));
            }
        }
        Ok(())
    }

    /// Applies a compaction. Raises the hard state so that it never lags
    /// the snapshot: `commit >= marker.index` (a snapshot holds only
    /// committed entries) and `term >= marker.term` (with the vote cleared
    /// when the term is raised: no vote was ever persisted, hence sent, in
    /// a term this node never persisted).
    pub fn apply_compaction(&mut self, marker: SnapshotMarker, log_discarded: bool) {
        if log_discarded {
            self.terms.clear();
            if let Some(held) = self.payloads.as_mut() {
                held.clear();
            }
            self.log_start = marker.index + 1;
        } else if marker.index >= self.log_start {
            let drop_count = (marker.index - self.log_start + 1) as usize;
            self.terms.drain(..drop_count);
            if let Some(held) = self.payloads.as_mut() {
                held.drain(..drop_count);
            }
            self.log_start = marker.index + 1;
        }
        self.snapshot = Some(marker);
        self.hard_state.commit = self.hard_state.commit.max(marker.index);
        if self.hard_state.term < marker.term {
            self.hard_state.term = marker.term;
            self.hard_state.vote = 0;
        }
        self.assert_invariants();
    }

    /// Invariants that hold after every step, even on a partial replay.
    fn assert_invariants(&self) {
        assert!(self.log_start >= 1);
        assert!(self.log_start > self.snapshot_index());
        assert!(self.hard_state.commit <= self.last_index());
        assert!(self.hard_state.commit >= self.snapshot_index());
        assert!(self.hard_state.term >= self.snapshot_term());
        if let Some(held) = &self.payloads {
            assert_eq!(held.len(), self.terms.len());
        }
    }

    /// Whether the state is whole: the entries start right after the
    /// snapshot. False only after a replay that lost a segment.
    pub fn is_complete(&self) -> bool {
        self.log_start == self.snapshot_index() + 1
    }
}
