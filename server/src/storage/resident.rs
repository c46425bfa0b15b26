//! Keys under one prefix held in memory only, in front of another store.
//!
//! The multi-version layout keeps each key's latest record in a table of
//! its own (`state_machine::mvcc::keys`, `k/`): every read at the current
//! revision, every range and every compare reads it, and every write
//! rewrites it. Held in the engine it cost a LevelDB key and a second copy
//! of the value per write, and a merging iterator over every level per
//! range. A [`ResidentStore`] keeps that table in a `BTreeMap` instead,
//! as Consul keeps its whole state in memory: reads of it never wait for
//! the engine, and the engine receives only the history it must keep.
//!
//! The resident keys are lost with the process: the owner rebuilds them
//! after opening (`state_machine::rebuild_latest` derives the table from
//! the history, which holds every key's newest record). Keys under the
//! prefix found in the engine at open (written there by a release before
//! the table was resident) are deleted from it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{KeyRange, KeyValue, Store, StoreError, WriteBatch, WriteOp};

/// Keys under the prefix deleted from the engine per batch at open.
const PURGE_BATCH_KEYS: usize = 1_000;

/// How many keys a [`ResidentStore`] holds in memory and their bytes,
/// readable from any thread: for metrics.
#[derive(Debug, Clone, Default)]
pub struct ResidentSize {
    keys: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

impl ResidentSize {
    /// Keys held in memory now.
    pub fn keys(&self) -> usize {
        self.keys.load(Ordering::Relaxed)
    }

    /// Bytes of the keys and values held in memory now.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// A [`Store`] that keeps the keys under one prefix in memory and passes
/// every other key to `S` (see the module documentation).
pub struct ResidentStore<S: Store> {
    inner: S,
    prefix: KeyRange,
    resident: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Bytes of the resident keys and values.
    bytes: usize,
    size: ResidentSize,
}

impl<S: Store> std::fmt::Debug for ResidentStore<S> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ResidentStore")
            .field("prefix", &self.prefix.start)
            .field("keys", &self.resident.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl<S: Store> ResidentStore<S> {
    /// Holds the keys under `prefix` in memory, starting empty; deletes any
    /// the engine holds.
    pub fn open(mut inner: S, prefix: &[u8]) -> Result<Self, StoreError> {
        assert!(!prefix.is_empty(), "a resident prefix must not be empty");
        let prefix = KeyRange::prefix(prefix.to_vec());
        let mut purged = 0usize;
        loop {
            let stale = inner.scan(&prefix, PURGE_BATCH_KEYS)?;
            if stale.is_empty() {
                break;
            }
            purged += stale.len();
            let mut batch = WriteBatch::new();
            for (key, _) in stale {
                batch.delete(key);
            }
            inner.write(batch)?;
        }
        if purged > 0 {
            tracing::info!(
                keys = purged,
                "deleted the latest-record table an earlier release kept in LevelDB; it is held in memory now"
            );
        }
        Ok(Self {
            inner,
            prefix,
            resident: BTreeMap::new(),
            bytes: 0,
            size: ResidentSize::default(),
        })
    }

    /// The count and bytes of the resident keys, kept up to date.
    pub fn size(&self) -> ResidentSize {
        self.size.clone()
    }

    /// The store behind.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn is_resident(&self, key: &[u8]) -> bool {
        self.prefix.contains(key)
    }

    /// Applies the resident part of a batch, in order.
    fn apply_resident(&mut self, operations: Vec<WriteOp>) {
        for operation in operations {
            match operation {
                WriteOp::Put { key, value } => {
                    let (key_len, value_len) = (key.len(), value.len());
                    match self.resident.insert(key, value) {
                        Some(replaced) => self.bytes = self.bytes - replaced.len() + value_len,
                        None => self.bytes += key_len + value_len,
                    }
                }
                WriteOp::Delete { key } => {
                    if let Some(removed) = self.resident.remove(&key) {
                        self.bytes -= key.len() + removed.len();
                    }
                }
            }
        }
        self.size.keys.store(self.resident.len(), Ordering::Relaxed);
        self.size.bytes.store(self.bytes, Ordering::Relaxed);
    }

    /// Splits a batch into the operations on resident keys and the rest,
    /// each in order.
    fn split(&self, batch: WriteBatch) -> (Vec<WriteOp>, WriteBatch) {
        let mut resident = Vec::new();
        let mut passed = WriteBatch::new();
        for operation in batch.into_operations() {
            let key = match &operation {
                WriteOp::Put { key, .. } | WriteOp::Delete { key } => key,
            };
            if self.is_resident(key) {
                resident.push(operation);
            } else {
                match operation {
                    WriteOp::Put { key, value } => passed.put(key, value),
                    WriteOp::Delete { key } => passed.delete(key),
                };
            }
        }
        (resident, passed)
    }

    fn scan_resident(&self, range: &KeyRange, limit: usize) -> Vec<KeyValue> {
        if range
            .end
            .as_deref()
            .is_some_and(|end| end <= range.start.as_slice())
        {
            return Vec::new();
        }
        let end = match &range.end {
            Some(end) => Bound::Excluded(end.as_slice()),
            None => Bound::Unbounded,
        };
        self.resident
            .range::<[u8], _>((Bound::Included(range.start.as_slice()), end))
            .take(limit)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }

    /// Where `range` lies against the prefix.
    fn placement(&self, range: &KeyRange) -> Placement {
        let starts_inside = self.prefix.contains(&range.start);
        let ends_inside = match (&range.end, &self.prefix.end) {
            (Some(end), Some(prefix_end)) => end <= prefix_end,
            (None, None) => true,
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        if starts_inside && ends_inside {
            return Placement::Inside;
        }
        let before = range
            .end
            .as_deref()
            .is_some_and(|end| end <= self.prefix.start.as_slice());
        let after = self
            .prefix
            .end
            .as_deref()
            .is_some_and(|prefix_end| range.start.as_slice() >= prefix_end);
        if before || after {
            Placement::Outside
        } else {
            Placement::Across
        }
    }
}

/// Where a scanned range lies against the resident prefix.
enum Placement {
    /// Within the prefix: memory alone answers.
    Inside,
    /// Disjoint from it: the store behind alone answers.
    Outside,
    /// Both hold part of it.
    Across,
}

/// The first `limit` pairs of two sorted lists with distinct keys.
fn merge(first: Vec<KeyValue>, second: Vec<KeyValue>, limit: usize) -> Vec<KeyValue> {
    let mut merged: Vec<KeyValue> = first.into_iter().chain(second).collect();
    merged.sort_by(|left, right| left.0.cmp(&right.0));
    merged.truncate(limit);
    merged
}

impl<S: Store> Store for ResidentStore<S> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if self.is_resident(key) {
            return Ok(self.resident.get(key).cloned());
        }
        self.inner.get(key)
    }

    fn get_if_ready(&mut self, key: &[u8]) -> Option<Result<Option<Vec<u8>>, StoreError>> {
        if self.is_resident(key) {
            return Some(Ok(self.resident.get(key).cloned()));
        }
        self.inner.get_if_ready(key)
    }

    fn write(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        let (resident, passed) = self.split(batch);
        if !passed.is_empty() {
            self.inner.write(passed)?;
        }
        self.apply_resident(resident);
        Ok(())
    }

    fn write_atomic(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        let (resident, passed) = self.split(batch);
        self.inner.write_atomic(passed)?;
        self.apply_resident(resident);
        Ok(())
    }

    fn writes_without_waiting(&self, operations: usize) -> bool {
        self.inner.writes_without_waiting(operations)
    }

    fn scan(&mut self, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        match self.placement(range) {
            Placement::Inside => Ok(self.scan_resident(range, limit)),
            Placement::Outside => self.inner.scan(range, limit),
            Placement::Across => {
                let behind = self.inner.scan(range, limit)?;
                Ok(merge(self.scan_resident(range, limit), behind, limit))
            }
        }
    }

    fn scan_if_ready(
        &mut self,
        range: &KeyRange,
        limit: usize,
    ) -> Option<Result<Vec<KeyValue>, StoreError>> {
        match self.placement(range) {
            Placement::Inside => Some(Ok(self.scan_resident(range, limit))),
            Placement::Outside => self.inner.scan_if_ready(range, limit),
            Placement::Across => {
                let behind = match self.inner.scan_if_ready(range, limit)? {
                    Ok(behind) => behind,
                    Err(error) => return Some(Err(error)),
                };
                Some(Ok(merge(self.scan_resident(range, limit), behind, limit)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::storage::memory::MemoryStore;
    use crate::storage::suite::{self, check_against_model, operation};

    #[test]
    fn passes_the_suite() {
        suite::run_suite(|| Box::new(ResidentStore::open(MemoryStore::new(), b"user/").unwrap()));
    }

    #[test]
    fn resident_keys_never_reach_the_engine_and_old_ones_are_deleted_at_open() {
        let mut engine = MemoryStore::new();
        engine.put(b"k/stale", b"old").unwrap();
        engine.put(b"h/kept", b"history").unwrap();
        let mut store = ResidentStore::open(engine, b"k/").unwrap();
        assert_eq!(store.get(b"k/stale").unwrap(), None);
        let mut batch = WriteBatch::new();
        batch
            .put(&b"k/a"[..], &b"1"[..])
            .put(&b"h/a"[..], &b"2"[..])
            .put(&b"k/b"[..], &b"3"[..])
            .delete(&b"k/b"[..]);
        store.write(batch).unwrap();
        assert_eq!((store.size().keys(), store.size().bytes()), (1, 4));
        assert_eq!(
            store
                .scan_if_ready(&KeyRange::prefix(b"k/".to_vec()), 10)
                .unwrap()
                .unwrap(),
            vec![(b"k/a".to_vec(), b"1".to_vec())]
        );
        assert_eq!(store.scan(&KeyRange::all(), 10).unwrap().len(), 3);
        let mut engine = store.into_inner();
        assert_eq!(
            engine.scan(&KeyRange::all(), 10).unwrap(),
            vec![
                (b"h/a".to_vec(), b"2".to_vec()),
                (b"h/kept".to_vec(), b"history".to_vec()),
            ]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn matches_a_btreemap_across_the_prefix(operations in proptest::collection::vec(operation(), 1..60)) {
            // The suite's keys are made of 0x00, 'a', 'b' and 0xff: the
            // prefix "a" splits them into resident and passed keys, and
            // scans start and end on either side of it.
            let mut store = ResidentStore::open(MemoryStore::new(), b"a").unwrap();
            check_against_model(&mut store, &operations);
        }
    }
}
