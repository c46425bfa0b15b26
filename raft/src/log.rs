//! The in-memory Raft log: entries after a snapshot point, plus the commit,
//! applied and persisted watermarks.
//!
//! ```text
//!   snapshot.index   applied <= committed <= last_index
//!        |              |           |          |
//!  ... ] [ entries ......................................]
//!                                 persisted <= last_index
//! ```
//! Entries above `persisted` are not yet durable: [`crate::Ready::entries`]
//! hands them to the driver.

use crate::types::{Entry, Index, SnapshotMetadata, Term};

#[derive(Clone, Debug)]
pub(crate) struct RaftLog {
    /// Everything up to and including `snapshot.index` is compacted away.
    snapshot: SnapshotMetadata,
    /// Entries `snapshot.index + 1 ..= last_index()`, contiguous.
    entries: Vec<Entry>,
    /// Highest index known committed.
    committed: Index,
    /// Highest index the driver has applied (or restored from a snapshot).
    applied: Index,
    /// Highest index known durable and equal to our in-memory entry.
    persisted: Index,
    /// Highest index handed to the driver for persisting (`>= persisted`);
    /// lowered if those entries are truncated before the driver is done.
    persisting: Index,
}

impl RaftLog {
    /// A log restored from durable state: everything given is persisted.
    /// The caller has validated contiguity and `committed <= last index`.
    pub(crate) fn restore_from_storage(
        snapshot: SnapshotMetadata,
        entries: Vec<Entry>,
        committed: Index,
    ) -> Self {
        let log = RaftLog {
            snapshot,
            entries,
            committed: committed.max(snapshot.index),
            applied: snapshot.index,
            persisted: 0,
            persisting: 0,
        };
        let last_index = log.last_index();
        let log = RaftLog {
            persisted: last_index,
            persisting: last_index,
            ..log
        };
        log.assert_invariants();
        log
    }

    pub(crate) fn assert_invariants(&self) {
        // `applied` may lag the snapshot index between a snapshot install and
        // the driver acknowledging it (see `snapshot_applied`).
        assert!(self.applied <= self.committed, "applied beyond commit");
        assert!(
            self.committed <= self.last_index(),
            "commit beyond last index"
        );
        assert!(
            self.persisted <= self.last_index(),
            "persisted beyond last index"
        );
        assert!(
            self.persisted >= self.snapshot.index,
            "persisted below the snapshot"
        );
        assert!(
            self.persisted <= self.persisting && self.persisting <= self.last_index(),
            "persisting watermark out of range"
        );
        if let Some(first) = self.entries.first() {
            assert_eq!(
                first.index,
                self.snapshot.index + 1,
                "entries do not follow the snapshot"
            );
            assert!(
                first.term >= self.snapshot.term,
                "entry term below the snapshot term"
            );
        }
    }

    pub(crate) fn snapshot(&self) -> SnapshotMetadata {
        self.snapshot
    }

    pub(crate) fn first_index(&self) -> Index {
        self.snapshot.index + 1
    }

    pub(crate) fn last_index(&self) -> Index {
        self.snapshot.index + self.entries.len() as Index
    }

    pub(crate) fn last_term(&self) -> Term {
        self.entries
            .last()
            .map_or(self.snapshot.term, |entry| entry.term)
    }

    pub(crate) fn committed(&self) -> Index {
        self.committed
    }

    pub(crate) fn applied(&self) -> Index {
        self.applied
    }

    pub(crate) fn persisted(&self) -> Index {
        self.persisted
    }

    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Term of the entry at `index`; `None` if compacted (below the snapshot
    /// point) or beyond the last index. The snapshot point itself is known.
    pub(crate) fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        self.entry(index).map(|entry| entry.term)
    }

    pub(crate) fn entry(&self, index: Index) -> Option<&Entry> {
        if index < self.first_index() || index > self.last_index() {
            return None;
        }
        let entry = &self.entries[(index - self.first_index()) as usize];
        assert_eq!(entry.index, index, "log entries are not contiguous");
        Some(entry)
    }

    pub(crate) fn match_term(&self, index: Index, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// Entries from `low` on, at most `count_max` of them and at most
    /// `bytes_max` of payload (but at least one if any exist). `None` if
    /// `low` is compacted.
    pub(crate) fn entries_from(
        &self,
        low: Index,
        count_max: usize,
        bytes_max: usize,
    ) -> Option<Vec<Entry>> {
        if low < self.first_index() {
            return None;
        }
        let mut selected = Vec::new();
        let mut total_bytes = 0usize;
        let mut index = low;
        while let Some(entry) = self.entry(index) {
            if selected.len() >= count_max {
                break;
            }
            total_bytes = total_bytes.saturating_add(entry.size_bytes());
            if !selected.is_empty() && total_bytes > bytes_max {
                break;
            }
            selected.push(entry.clone());
            index += 1;
        }
        Some(selected)
    }

    /// Entries not yet handed to the driver for persisting (with writes done
    /// one `Ready` at a time, the entries not yet persisted).
    pub(crate) fn unstable_entries(&self) -> &[Entry] {
        let start = (self.persisting - self.snapshot.index) as usize;
        &self.entries[start..]
    }

    /// Appends `entries`, truncating any existing suffix from the first
    /// entry's index on. Returns the new last index.
    pub(crate) fn append(&mut self, entries: &[Entry]) -> Index {
        let Some(first) = entries.first() else {
            return self.last_index();
        };
        assert!(
            first.index > self.committed,
            "appending at {} would overwrite committed entries up to {}",
            first.index,
            self.committed
        );
        assert!(
            first.index <= self.last_index() + 1,
            "appending leaves a gap"
        );
        for pair in entries.windows(2) {
            assert_eq!(
                pair[1].index,
                pair[0].index + 1,
                "appended entries not contiguous"
            );
            assert!(
                pair[1].term >= pair[0].term,
                "appended entry terms decrease"
            );
        }
        let keep = (first.index - self.first_index()) as usize;
        self.entries.truncate(keep);
        self.persisted = self.persisted.min(first.index - 1);
        self.persisting = self.persisting.min(first.index - 1);
        self.entries.extend_from_slice(entries);
        self.assert_invariants();
        self.last_index()
    }

    /// Index of the first entry in `entries` that our log lacks or holds with
    /// another term; `None` if we already hold all of them.
    pub(crate) fn find_conflict(&self, entries: &[Entry]) -> Option<Index> {
        entries
            .iter()
            .find(|entry| !self.match_term(entry.index, entry.term))
            .map(|entry| entry.index)
    }

    /// The follower side of `AppendEntries`: if our log matches at
    /// `(prev_index, prev_term)`, append whatever of `entries` is new (never
    /// truncating for entries we already hold, so a reordered old message is
    /// harmless), advance commit to `min(leader_commit, last new index)` and
    /// return that last new index.
    pub(crate) fn maybe_append(
        &mut self,
        prev_index: Index,
        prev_term: Term,
        leader_commit: Index,
        entries: &[Entry],
    ) -> Option<Index> {
        if !self.match_term(prev_index, prev_term) {
            return None;
        }
        let last_new_index = prev_index + entries.len() as Index;
        if let Some(conflict) = self.find_conflict(entries) {
            let offset = (conflict - prev_index - 1) as usize;
            self.append(&entries[offset..]);
        }
        self.commit_to(leader_commit.min(last_new_index));
        Some(last_new_index)
    }

    /// Largest index at or below `index` whose term is at most `term`, with
    /// that term; `(index, 0)` for the first position whose term is unknown
    /// (compacted). Used for fast backtracking on both sides.
    pub(crate) fn find_conflict_by_term(&self, index: Index, term: Term) -> (Index, Term) {
        let mut candidate = index.min(self.last_index());
        loop {
            match self.term(candidate) {
                Some(found) if found > term && candidate > 0 => candidate -= 1,
                Some(found) => return (candidate, found),
                None => return (candidate, 0),
            }
        }
    }

    pub(crate) fn commit_to(&mut self, index: Index) {
        if index <= self.committed {
            return;
        }
        assert!(
            index <= self.last_index(),
            "commit {index} beyond last index {}",
            self.last_index()
        );
        self.committed = index;
    }

    pub(crate) fn applied_to(&mut self, index: Index) {
        assert!(
            index <= self.committed,
            "applied {index} beyond commit {}",
            self.committed
        );
        assert!(
            index >= self.applied,
            "applied index moved back from {} to {index}",
            self.applied
        );
        self.applied = index;
    }

    /// Entries up to `index` were handed to the driver to persist.
    pub(crate) fn persisting_to(&mut self, index: Index) {
        assert!(index <= self.last_index(), "persisting beyond the log");
        self.persisting = self.persisting.max(index);
    }

    /// The driver finished persisting what it was handed (minus anything
    /// truncated meanwhile, which `append` cut from the watermark).
    pub(crate) fn persisting_done(&mut self) {
        self.persisted = self.persisting;
    }

    /// The driver finished persisting entries up to `index`, the last one
    /// having `term`, from a write it ran in the background. Returns whether
    /// `persisted` moved: a report about entries truncated meanwhile (or
    /// replaced by entries of another term) or already covered changes
    /// nothing.
    pub(crate) fn persisted_to(&mut self, index: Index, term: Term) -> bool {
        if index <= self.persisted || index > self.persisting || self.term(index) != Some(term) {
            return false;
        }
        self.persisted = index;
        self.assert_invariants();
        true
    }

    /// Whether a write handed to the driver is still outstanding.
    pub(crate) fn persisting_outstanding(&self) -> bool {
        self.persisting > self.persisted
    }

    /// Drops entries up to `index` (already applied), remembering its term.
    pub(crate) fn compact(&mut self, index: Index) {
        assert!(index > self.snapshot.index, "compacting backwards");
        assert!(index <= self.applied, "compacting unapplied entries");
        assert!(index <= self.persisted, "compacting unpersisted entries");
        let term = self.term(index).expect("applied entry present");
        let drop_count = (index - self.snapshot.index) as usize;
        self.entries.drain(..drop_count);
        self.snapshot = SnapshotMetadata { index, term };
        self.assert_invariants();
    }

    /// Replaces the whole log with a snapshot point received from the leader.
    /// The caller checked the snapshot is ahead of our commit index.
    pub(crate) fn restore(&mut self, snapshot: SnapshotMetadata) {
        assert!(
            snapshot.index > self.committed,
            "restoring a stale snapshot"
        );
        self.entries.clear();
        self.snapshot = snapshot;
        self.committed = snapshot.index;
        self.persisted = snapshot.index;
        self.persisting = snapshot.index;
        self.assert_invariants();
    }

    /// The driver restored its state machine from the snapshot at `index`.
    pub(crate) fn snapshot_applied(&mut self, index: Index) {
        assert!(index <= self.committed, "snapshot beyond commit");
        self.applied = self.applied.max(index);
    }

    /// First index whose entry has not been handed out for applying: entries
    /// covered by the snapshot come with it.
    fn apply_from(&self) -> Index {
        self.applied.max(self.snapshot.index) + 1
    }

    /// Highest index that may be handed out for applying: the commit index,
    /// but while a background write is outstanding, no further than what is
    /// durable here (an entry applied before its own write is durable could
    /// be in the state machine and missing from the log after a crash).
    /// Without background writes the driver persists each `Ready` before
    /// applying it, so entries of the same `Ready` may be applied.
    fn apply_limit(&self) -> Index {
        if self.persisting_outstanding() {
            self.committed.min(self.persisted)
        } else {
            self.committed
        }
    }

    /// Committed entries not yet applied, at most `count_max` of them.
    pub(crate) fn next_committed_entries(&self, count_max: usize) -> Vec<Entry> {
        let low = self.apply_from();
        let high = self
            .apply_limit()
            .min((low - 1).saturating_add(count_max as Index));
        (low..=high)
            .map(|index| self.entry(index).expect("committed entry present").clone())
            .collect()
    }

    pub(crate) fn has_next_committed_entries(&self) -> bool {
        self.apply_limit() >= self.apply_from()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryKind;
    use proptest::prelude::*;

    fn entry(index: Index, term: Term) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Normal,
            data: vec![index as u8, term as u8].into(),
        }
    }

    fn log_with_terms(terms: &[Term]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(position, term)| entry(position as Index + 1, *term))
            .collect();
        RaftLog::restore_from_storage(SnapshotMetadata::default(), entries, 0)
    }

    #[test]
    fn follower_with_divergent_suffix_is_repaired() {
        // Follower has 1:1 2:1 3:2 4:2 (uncommitted suffix from a dead leader);
        // the new leader's log is 1:1 2:1 3:3 4:3 5:3.
        let mut follower = log_with_terms(&[1, 1, 2, 2]);
        follower.commit_to(2);
        // The leader probes at its last entry: mismatch (we have no 5).
        assert_eq!(follower.maybe_append(5, 3, 2, &[]), None);
        // Hint: largest index <= 4 with term <= 3 is 4 (term 2).
        assert_eq!(follower.find_conflict_by_term(4, 3), (4, 2));
        // The leader's log has term 3 at 4: it looks for term <= 2 -> index 2.
        let leader = log_with_terms(&[1, 1, 3, 3, 3]);
        assert_eq!(leader.find_conflict_by_term(4, 2), (2, 1));
        // Probe at 2 matches; the divergent suffix is replaced.
        let sent = leader.entries_from(3, 10, usize::MAX).unwrap();
        assert_eq!(follower.maybe_append(2, 1, 5, &sent), Some(5));
        assert_eq!(follower.entries(), leader.entries());
        assert_eq!(follower.committed(), 5);
        assert_eq!(
            follower.persisted(),
            2,
            "truncated suffix is no longer persisted"
        );
        assert_eq!(follower.unstable_entries(), &leader.entries()[2..]);
    }

    #[test]
    fn old_reordered_append_does_not_truncate() {
        let mut follower = log_with_terms(&[1, 1, 1, 1]);
        // A late AppendEntries carrying only entries 2..=3 we already hold.
        assert_eq!(
            follower.maybe_append(1, 1, 0, &[entry(2, 1), entry(3, 1)]),
            Some(3)
        );
        assert_eq!(follower.last_index(), 4);
    }

    #[test]
    fn entries_from_respects_count_and_bytes() {
        let log = log_with_terms(&[1, 1, 1, 1, 1]);
        assert_eq!(log.entries_from(1, 2, usize::MAX).unwrap().len(), 2);
        // Each entry is 2 bytes: 5 bytes allow 2 entries.
        assert_eq!(log.entries_from(1, 10, 5).unwrap().len(), 2);
        // A single oversize entry is still sent.
        assert_eq!(log.entries_from(1, 10, 1).unwrap().len(), 1);
        assert_eq!(log.entries_from(6, 10, 10).unwrap().len(), 0);
    }

    #[test]
    fn entries_handed_out_share_their_payload() {
        let log = log_with_terms(&[1, 1]);
        let sent = log.entries_from(1, 10, usize::MAX).unwrap();
        assert_eq!(sent[1].data.as_ptr(), log.entry(2).unwrap().data.as_ptr());
    }

    #[test]
    fn compaction_keeps_the_snapshot_term() {
        let mut log = log_with_terms(&[1, 2, 2, 3]);
        log.commit_to(3);
        log.applied_to(3);
        log.compact(2);
        assert_eq!(log.first_index(), 3);
        assert_eq!(log.term(2), Some(2));
        assert_eq!(log.term(1), None);
        assert_eq!(log.entries_from(2, 10, 10), None);
        assert_eq!(log.find_conflict_by_term(4, 1), (1, 0));
    }

    #[test]
    fn truncation_while_persisting_keeps_only_the_untouched_prefix() {
        let mut log = log_with_terms(&[1]);
        log.append(&[entry(2, 1), entry(3, 1), entry(4, 1)]);
        log.persisting_to(4);
        // A new leader replaces 3..: only 2 of what was handed out survives.
        log.append(&[entry(3, 2)]);
        log.persisting_done();
        assert_eq!(log.persisted(), 2);
        assert_eq!(log.unstable_entries(), &[entry(3, 2)]);
    }

    /// Operations for the model-based property test.
    #[derive(Clone, Debug)]
    enum Operation {
        /// Follower-style append after position `prev` (clamped), with
        /// `count` entries of `term`.
        Append {
            prev: u64,
            count: u64,
            term: u64,
        },
        Commit {
            index: u64,
        },
        Apply {
            index: u64,
        },
        /// Hand everything unstable to the "driver".
        StartPersist,
        /// The "driver" is done.
        FinishPersist,
        /// The "driver" reports a background write durable up to `index`
        /// (with the term it wrote there, or a stale one).
        ReportPersisted {
            index: u64,
            stale_term: bool,
        },
        Compact {
            index: u64,
        },
    }

    fn operation() -> impl Strategy<Value = Operation> {
        prop_oneof![
            (0..30u64, 0..5u64, 0..4u64).prop_map(|(prev, count, term)| Operation::Append {
                prev,
                count,
                term
            }),
            (0..30u64).prop_map(|index| Operation::Commit { index }),
            (0..30u64).prop_map(|index| Operation::Apply { index }),
            Just(Operation::StartPersist),
            Just(Operation::FinishPersist),
            (0..30u64, proptest::bool::weighted(0.2)).prop_map(|(index, stale_term)| {
                Operation::ReportPersisted { index, stale_term }
            }),
            (0..30u64).prop_map(|index| Operation::Compact { index }),
        ]
    }

    proptest! {
        /// `RaftLog` against a plain `Vec<Entry>` holding the whole log.
        #[test]
        fn raft_log_matches_vec_model(operations in proptest::collection::vec(operation(), 1..60)) {
            let mut log = RaftLog::restore_from_storage(SnapshotMetadata::default(), vec![], 0);
            let mut model: Vec<Entry> = Vec::new();
            let mut model_snapshot: Index = 0;
            let mut model_committed: Index = 0;
            let mut model_applied: Index = 0;
            let mut model_persisted: Index = 0;
            let mut model_persisting: Index = 0;
            let mut next_payload = 0u8;
            for operation in operations {
                match operation {
                    Operation::Append { prev, count, term } => {
                        let prev = prev.clamp(model_committed, model.len() as u64);
                        let base_term = if prev == 0 { 1 } else { model[prev as usize - 1].term };
                        let new_term = base_term + term;
                        let new_entries: Vec<Entry> = (1..=count).map(|offset| {
                            next_payload = next_payload.wrapping_add(1);
                            Entry { index: prev + offset, term: new_term, kind: EntryKind::Normal, data: vec![next_payload].into() }
                        }).collect();
                        let prev_term = log.term(prev).unwrap();
                        let result = log.maybe_append(prev, prev_term, 0, &new_entries);
                        prop_assert_eq!(result, Some(prev + count));
                        // Model: replace from the first differing entry.
                        for entry in new_entries {
                            let position = entry.index as usize - 1;
                            if position < model.len() {
                                if model[position].term != entry.term {
                                    model.truncate(position);
                                    model_persisted = model_persisted.min(position as u64);
                                    model_persisting = model_persisting.min(position as u64);
                                    model.push(entry);
                                }
                            } else {
                                model.push(entry);
                            }
                        }
                    }
                    Operation::Commit { index } => {
                        let index = index.min(model.len() as u64);
                        log.commit_to(index);
                        model_committed = model_committed.max(index);
                    }
                    Operation::Apply { index } => {
                        let index = index.clamp(model_applied, model_committed);
                        log.applied_to(index);
                        model_applied = index;
                    }
                    Operation::StartPersist => {
                        log.persisting_to(model.len() as u64);
                        model_persisting = model.len() as u64;
                    }
                    Operation::FinishPersist => {
                        log.persisting_done();
                        model_persisted = model_persisting;
                    }
                    Operation::ReportPersisted { index, stale_term } => {
                        let Some(term) = log.term(index) else { continue };
                        let term = if stale_term { term + 1 } else { term };
                        let moved = log.persisted_to(index, term);
                        let expected = !stale_term && index > model_persisted && index <= model_persisting;
                        prop_assert_eq!(moved, expected);
                        if expected {
                            model_persisted = index;
                        }
                    }
                    Operation::Compact { index } => {
                        let index = index.min(model_applied).min(model_persisted);
                        if index > model_snapshot {
                            log.compact(index);
                            model_snapshot = index;
                        }
                    }
                }
                log.assert_invariants();
                prop_assert_eq!(log.last_index(), model.len() as u64);
                prop_assert_eq!(log.first_index(), model_snapshot + 1);
                prop_assert_eq!(log.committed(), model_committed);
                prop_assert_eq!(log.applied(), model_applied);
                prop_assert_eq!(log.persisted(), model_persisted);
                for index in 0..=model.len() as u64 + 1 {
                    let expected = if index < model_snapshot || index > model.len() as u64 {
                        None
                    } else if index == 0 {
                        Some(0)
                    } else {
                        Some(model[index as usize - 1].term)
                    };
                    prop_assert_eq!(log.term(index), expected);
                }
                prop_assert_eq!(log.entries(), &model[model_snapshot as usize..]);
                prop_assert_eq!(log.unstable_entries(), &model[model_persisting as usize..]);
                // While a write is outstanding, nothing beyond the durable
                // prefix is handed out for applying.
                let apply_limit = if model_persisting > model_persisted {
                    model_committed.min(model_persisted)
                } else {
                    model_committed
                };
                prop_assert_eq!(
                    log.next_committed_entries(usize::MAX),
                    model[model_applied as usize..apply_limit.max(model_applied) as usize].to_vec()
                );
            }
        }
    }
}
