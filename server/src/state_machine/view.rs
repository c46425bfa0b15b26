//! A [`Store`] seen through the writes of an apply batch not yet handed to
//! it: each entry of the batch reads what the entries before it wrote, and
//! the whole batch reaches the store at once (with the applied index that
//! records it).
//!
//! When waiting is refused (an apply or a read running inline on an async
//! worker), a read or a scan that would wait for the storage engine
//! ([`Store::get_if_ready`], [`Store::scan_if_ready`]), or scans past
//! [`INLINE_SCAN_PAIRS_MAX`] pairs in all, marks the view as *would wait*;
//! what it returned then is not to be trusted, and the caller drops the
//! whole batch and goes through the store thread instead.

use std::collections::BTreeMap;

use crate::storage::{KeyRange, KeyValue, Store, StoreError, WriteBatch, WriteOp};

/// Pairs a view that refuses waiting scans in all before it gives up: an
/// inline range of a million keys would hold an async worker (and the
/// store) for a second; past this it runs on the store thread.
pub const INLINE_SCAN_PAIRS_MAX: usize = 10_000;

/// Whether an apply may wait for the storage engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// It may (on the store thread).
    Allowed,
    /// It may not (inline on an async worker).
    Refused,
}

/// The store with a batch's pending writes in front of it.
pub struct BatchView<'s> {
    store: &'s mut dyn Store,
    waiting: Waiting,
    would_wait: bool,
    /// Pairs scanned so far (bounded when waiting is refused).
    scanned: usize,
    /// Store keys written by the batch so far, `None` for deleted, with the
    /// order of first write kept by the batch (`order`).
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Whether the batch must reach the store whole even across a crash
    /// ([`Store::write_atomic`]).
    atomic: bool,
}

impl std::fmt::Debug for BatchView<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BatchView")
            .field("pending", &self.pending.len())
            .field("would_wait", &self.would_wait)
            .finish()
    }
}

impl<'s> BatchView<'s> {
    /// A view with nothing pending.
    pub fn new(store: &'s mut dyn Store, waiting: Waiting) -> Self {
        Self {
            store,
            waiting,
            would_wait: false,
            scanned: 0,
            pending: BTreeMap::new(),
            atomic: false,
        }
    }

    /// Whether a read would have waited (waiting refused): the batch must
    /// be dropped.
    pub fn would_wait(&self) -> bool {
        self.would_wait
    }

    /// Asks for the batch to be written with [`Store::write_atomic`].
    pub fn require_atomic(&mut self) {
        self.atomic = true;
        if self.waiting == Waiting::Refused {
            // An atomic write flushes everything before it: it waits.
            self.would_wait = true;
        }
    }

    /// Hands the pending writes to the store (nothing when a read would
    /// have waited); `Ok(false)` when the write itself would wait and
    /// waiting is refused, with nothing written.
    pub fn commit(self, mut extra: WriteBatch) -> Result<bool, StoreError> {
        if self.would_wait {
            return Ok(false);
        }
        let mut batch = WriteBatch::new();
        for (key, value) in self.pending {
            match value {
                Some(value) => batch.put(key, value),
                None => batch.delete(key),
            };
        }
        for operation in extra.operations().to_vec() {
            match operation {
                WriteOp::Put { key, value } => batch.put(key, value),
                WriteOp::Delete { key } => batch.delete(key),
            };
        }
        extra = batch;
        if self.waiting == Waiting::Refused && !self.store.writes_without_waiting(extra.len()) {
            return Ok(false);
        }
        if self.atomic {
            self.store.write_atomic(extra)?;
        } else {
            self.store.write(extra)?;
        }
        Ok(true)
    }
}

impl Store for BatchView<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(value) = self.pending.get(key) {
            return Ok(value.clone());
        }
        match self.waiting {
            Waiting::Allowed => self.store.get(key),
            Waiting::Refused => match self.store.get_if_ready(key) {
                Some(result) => result,
                None => {
                    self.would_wait = true;
                    Ok(None)
                }
            },
        }
    }

    fn write(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        for operation in batch.into_operations() {
            match operation {
                WriteOp::Put { key, value } => self.pending.insert(key, Some(value)),
                WriteOp::Delete { key } => self.pending.insert(key, None),
            };
        }
        Ok(())
    }

    fn scan(&mut self, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        // Enough of the store's pairs that, after the pending deletes drop
        // some, `limit` remain when the store has them.
        let deleted = self
            .pending
            .iter()
            .filter(|(key, value)| value.is_none() && range.contains(key))
            .count();
        let wanted = limit.saturating_add(deleted);
        let scanned = match self.waiting {
            Waiting::Allowed => self.store.scan(range, wanted)?,
            Waiting::Refused => match self.store.scan_if_ready(range, wanted) {
                Some(result) => result?,
                None => {
                    self.would_wait = true;
                    return Ok(Vec::new());
                }
            },
        };
        self.scanned = self.scanned.saturating_add(scanned.len());
        if self.waiting == Waiting::Refused && self.scanned > INLINE_SCAN_PAIRS_MAX {
            self.would_wait = true;
            return Ok(Vec::new());
        }
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = scanned.into_iter().collect();
        let store_exhausted = merged.len() < wanted;
        let store_last = merged.keys().next_back().cloned();
        for (key, value) in &self.pending {
            if !range.contains(key) {
                continue;
            }
            // A pending key past the store's last scanned pair is only
            // known to belong when the store has nothing more there.
            if !store_exhausted && store_last.as_ref().is_some_and(|last| key > last) {
                continue;
            }
            match value {
                Some(value) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStore;
    use crate::storage::overlay::{OverlayLimits, OverlayStore};

    fn pairs(items: &[(&str, &str)]) -> Vec<KeyValue> {
        items
            .iter()
            .map(|(key, value)| (key.as_bytes().to_vec(), value.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn scans_merge_pending_writes_in_key_order_within_the_limit() {
        let mut store = MemoryStore::new();
        for key in ["a", "b", "c", "d", "e"] {
            store.put(key.as_bytes(), b"store").unwrap();
        }
        let mut view = BatchView::new(&mut store, Waiting::Allowed);
        let mut batch = WriteBatch::new();
        batch
            .delete(&b"a"[..])
            .delete(&b"b"[..])
            .put(&b"bb"[..], &b"new"[..]);
        batch.put(&b"z"[..], &b"new"[..]);
        view.write(batch).unwrap();
        let range = KeyRange::all();
        assert_eq!(
            view.scan(&range, 2).unwrap(),
            pairs(&[("bb", "new"), ("c", "store")])
        );
        assert_eq!(
            view.scan(&range, 10).unwrap(),
            pairs(&[
                ("bb", "new"),
                ("c", "store"),
                ("d", "store"),
                ("e", "store"),
                ("z", "new")
            ])
        );
        // Every limit gives a prefix of the whole scan.
        let whole = view.scan(&range, usize::MAX).unwrap();
        for limit in 0..7 {
            assert_eq!(
                view.scan(&range, limit).unwrap(),
                whole[..limit.min(whole.len())]
            );
        }
        assert_eq!(view.get(b"a").unwrap(), None);
        assert_eq!(view.get(b"z").unwrap(), Some(b"new".to_vec()));
        assert!(view.commit(WriteBatch::new()).unwrap());
        assert_eq!(store.get(b"a").unwrap(), None);
        assert_eq!(store.get(b"bb").unwrap(), Some(b"new".to_vec()));
    }

    #[test]
    fn a_refused_wait_drops_the_batch() {
        // The overlay's scans always go through the store thread.
        let mut store = OverlayStore::new(MemoryStore::new(), OverlayLimits::default());
        let mut view = BatchView::new(&mut store, Waiting::Refused);
        view.put(b"a", b"1").unwrap();
        view.scan(&KeyRange::all(), 1).unwrap();
        assert!(view.would_wait());
        assert!(!view.commit(WriteBatch::new()).unwrap());
        assert_eq!(store.get(b"a").unwrap(), None);
    }

    #[test]
    fn an_inline_view_gives_up_past_its_scan_budget() {
        let mut store = MemoryStore::new();
        let mut batch = WriteBatch::new();
        for index in 0..=INLINE_SCAN_PAIRS_MAX {
            batch.put(format!("{index:06}").into_bytes(), b"v".to_vec());
        }
        store.write(batch).unwrap();
        let mut view = BatchView::new(&mut store, Waiting::Refused);
        assert_eq!(
            view.scan(&KeyRange::all(), INLINE_SCAN_PAIRS_MAX)
                .unwrap()
                .len(),
            INLINE_SCAN_PAIRS_MAX
        );
        assert!(!view.would_wait());
        view.scan(&KeyRange::all(), 1).unwrap();
        assert!(view.would_wait());
        let mut waiting = BatchView::new(&mut store, Waiting::Allowed);
        assert_eq!(
            waiting.scan(&KeyRange::all(), usize::MAX).unwrap().len(),
            INLINE_SCAN_PAIRS_MAX + 1
        );
    }

    #[test]
    fn a_scan_that_is_ready_is_merged_without_waiting() {
        let mut store = MemoryStore::new();
        store.put(b"a", b"store").unwrap();
        let mut view = BatchView::new(&mut store, Waiting::Refused);
        view.put(b"b", b"new").unwrap();
        assert_eq!(
            view.scan(&KeyRange::all(), 10).unwrap(),
            pairs(&[("a", "store"), ("b", "new")])
        );
        assert!(!view.would_wait());
        assert!(view.commit(WriteBatch::new()).unwrap());
    }
}
