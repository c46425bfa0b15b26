//! An in-memory [`Store`] on a `BTreeMap`: for tests and as the reference model.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::{KeyRange, KeyValue, Store, StoreError, WriteBatch, WriteOp};

/// A store that keeps everything in a `BTreeMap` and loses it on drop.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.entries.get(key).cloned())
    }

    fn write(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        for operation in batch.operations {
            match operation {
                WriteOp::Put { key, value } => {
                    self.entries.insert(key, value);
                }
                WriteOp::Delete { key } => {
                    self.entries.remove(&key);
                }
            }
        }
        Ok(())
    }

    fn writes_without_waiting(&self, _operations: usize) -> bool {
        true
    }

    fn scan(&mut self, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        let end = match &range.end {
            Some(end) => Bound::Excluded(end.clone()),
            None => Bound::Unbounded,
        };
        if range
            .end
            .as_deref()
            .is_some_and(|end| end <= range.start.as_slice())
        {
            return Ok(Vec::new());
        }
        Ok(self
            .entries
            .range((Bound::Included(range.start.clone()), end))
            .take(limit)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect())
    }
}
