//! The key-value state machine on top of a [`Store`].
//!
//! User keys live under a data prefix so that metadata — the last applied
//! log index and a "restore in progress" mark — shares the same database and
//! the same write batches: an entry's effect and the applied index that
//! records it are written together, so a restart never skips an entry.
//!
//! The server's store writes behind ([`crate::storage::overlay`]): after a
//! crash, LevelDB may hold part of a batch with the applied index before
//! it. Replaying the log from that index rewrites the same values (puts and
//! deletes are blind writes), so the state ends the same; meanwhile the
//! data mixes two indexes. The applied index is therefore written twice, under
//! a key sorting before all data and one sorting after: the first reaches
//! LevelDB first, so when they differ, [`consistent_at`] names the index the
//! node must apply again before its local state is a state of the log.

pub mod command;
pub mod log_encoding;
pub mod mvcc;

pub use command::{Applied, Command};
use kvstore_raft::{Entry, Index, SnapshotMetadata};

use crate::storage::{KeyRange, KeyValue, Store, StoreError, WriteBatch};

/// Prefix of every user key in the store.
const DATA_PREFIX: &[u8] = b"d/";
/// Metadata key: index and term of the last applied entry. It sorts after
/// every data key: a write-behind store ([`crate::storage::overlay`]) writes
/// in key order, so the applied index never reaches the engine before the
/// data it covers.
const APPLIED_KEY: &[u8] = b"m/applied";
/// Metadata key: the applied index again, sorting before every data key, so
/// that it reaches the engine before the data it covers (see the module
/// documentation).
const APPLIED_AHEAD_KEY: &[u8] = b"0/applied";
/// Metadata key: set while a snapshot is being restored (the data is then
/// incomplete and the restore must be redone on restart).
const RESTORING_KEY: &[u8] = b"m/restoring";
/// Keys written per batch while restoring or clearing.
pub const RESTORE_BATCH_KEYS: usize = 1_000;

/// The store key of a user key.
pub fn data_key(key: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(DATA_PREFIX.len() + key.len());
    stored.extend_from_slice(DATA_PREFIX);
    stored.extend_from_slice(key);
    stored
}

/// The user key of a store key under the data prefix.
pub fn user_key(stored: &[u8]) -> Option<&[u8]> {
    stored.strip_prefix(DATA_PREFIX)
}

/// Reads a user key.
pub fn get(store: &mut dyn Store, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    store.get(&data_key(key))
}

/// Reads a user key unless that means waiting for the storage engine
/// (see [`Store::get_if_ready`]).
pub fn get_if_ready(
    store: &mut dyn Store,
    key: &[u8],
) -> Option<Result<Option<Vec<u8>>, StoreError>> {
    store.get_if_ready(&data_key(key))
}

/// Up to `limit` user pairs with keys at or after `start`, in key order.
pub fn scan_data_from(
    store: &mut dyn Store,
    start: &[u8],
    limit: usize,
) -> Result<Vec<KeyValue>, StoreError> {
    let range = KeyRange {
        start: data_key(start),
        end: KeyRange::prefix(DATA_PREFIX.to_vec()).end,
    };
    let pairs = store.scan(&range, limit)?;
    Ok(pairs
        .into_iter()
        .filter_map(|(key, value)| user_key(&key).map(|key| (key.to_vec(), value)))
        .collect())
}

fn encode_metadata(snapshot: SnapshotMetadata) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(16);
    bytes.extend_from_slice(&snapshot.index.to_be_bytes());
    bytes.extend_from_slice(&snapshot.term.to_be_bytes());
    bytes
}

fn decode_metadata(bytes: &[u8]) -> Result<SnapshotMetadata, StoreError> {
    if bytes.len() != 16 {
        return Err(StoreError::Engine(format!(
            "metadata record has {} bytes, expected 16",
            bytes.len()
        )));
    }
    Ok(SnapshotMetadata {
        index: u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
        term: u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes")),
    })
}

/// Index and term of the last applied entry ((0, 0) for a fresh store).
pub fn applied(store: &mut dyn Store) -> Result<SnapshotMetadata, StoreError> {
    applied_from(store.get(APPLIED_KEY)?)
}

/// The applied index and term in the record under [`APPLIED_KEY`] ((0, 0)
/// when there is none).
fn applied_from(record: Option<Vec<u8>>) -> Result<SnapshotMetadata, StoreError> {
    record.map_or(Ok(SnapshotMetadata::default()), |bytes| {
        decode_metadata(&bytes)
    })
}

/// The applied index at which the stored data is a state of the log again:
/// the applied index, or, after a crash while a write-behind was partly
/// written, the index that write came from. Reads that do not wait for the
/// log (serializable ones) must wait until the node has applied it.
pub fn consistent_at(store: &mut dyn Store) -> Result<Index, StoreError> {
    let applied = applied(store)?.index;
    let ahead = match store.get(APPLIED_AHEAD_KEY)? {
        Some(bytes) => decode_metadata(&bytes)?.index,
        None => 0,
    };
    Ok(applied.max(ahead))
}

/// The snapshot whose restore was interrupted, if any.
pub fn interrupted_restore(store: &mut dyn Store) -> Result<Option<SnapshotMetadata>, StoreError> {
    store
        .get(RESTORING_KEY)?
        .map(|bytes| decode_metadata(&bytes))
        .transpose()
}

/// Applies committed entries in order, in one batch together with the new
/// applied index. Entries at or below the applied index are skipped (they
/// were applied before a restart).
pub fn apply(store: &mut dyn Store, entries: &[Entry]) -> Result<Vec<Applied>, StoreError> {
    apply_in(store, entries, Waiting::Allowed)
        .map(|outcomes| outcomes.expect("an apply that may wait always runs"))
}

/// [`apply`], unless it would wait for the storage engine (a read that
/// misses memory while the engine is busy, or a write that must wait for
/// the write-behind to catch up): then `None`, with nothing written, and
/// the caller applies through the store thread instead.
pub fn apply_if_ready(
    store: &mut dyn Store,
    entries: &[Entry],
) -> Option<Result<Vec<Applied>, StoreError>> {
    apply_in(store, entries, Waiting::Refused).transpose()
}

/// Whether an apply may wait for the storage engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Allowed,
    Refused,
}

/// Reads `key`; `Ok(None)` when that would wait and waiting is refused.
fn read_in(
    store: &mut dyn Store,
    key: &[u8],
    waiting: Waiting,
) -> Result<Option<Option<Vec<u8>>>, StoreError> {
    match waiting {
        Waiting::Allowed => store.get(key).map(Some),
        Waiting::Refused => store.get_if_ready(key).transpose(),
    }
}

/// Applies `entries`; `Ok(None)`, with nothing written, when that would
/// wait and waiting is refused.
fn apply_in(
    store: &mut dyn Store,
    entries: &[Entry],
    waiting: Waiting,
) -> Result<Option<Vec<Applied>>, StoreError> {
    let Some(applied_record) = read_in(store, APPLIED_KEY, waiting)? else {
        return Ok(None);
    };
    let mut last = applied_from(applied_record)?;
    let mut batch = WriteBatch::new();
    let mut outcomes = Vec::with_capacity(entries.len());
    // Keys written earlier in this batch, to answer "did it exist" correctly.
    let mut overlay: std::collections::HashMap<Vec<u8>, bool> = std::collections::HashMap::new();
    for entry in entries {
        if entry.index <= last.index {
            continue;
        }
        assert_eq!(
            entry.index,
            last.index + 1,
            "entries must be applied in order without gaps"
        );
        let mut found = true;
        match log_encoding::decode_entry(entry) {
            Some(Command::Put { key, value }) => {
                batch.put(data_key(&key), value);
                overlay.insert(key, true);
            }
            Some(Command::Delete { key }) => {
                found = match overlay.get(&key) {
                    Some(exists) => *exists,
                    None => match read_in(store, &data_key(&key), waiting)? {
                        Some(value) => value.is_some(),
                        None => return Ok(None),
                    },
                };
                batch.delete(data_key(&key));
                overlay.insert(key, false);
            }
            None => {}
        }
        last = SnapshotMetadata {
            index: entry.index,
            term: entry.term,
        };
        outcomes.push(Applied {
            index: entry.index,
            found,
        });
    }
    if !outcomes.is_empty() {
        batch.put(APPLIED_AHEAD_KEY.to_vec(), encode_metadata(last));
        batch.put(APPLIED_KEY.to_vec(), encode_metadata(last));
        if waiting == Waiting::Refused && !store.writes_without_waiting(batch.len()) {
            return Ok(None);
        }
        store.write(batch)?;
    }
    Ok(Some(outcomes))
}

/// Starts replacing the whole state with a snapshot's: marks the restore as
/// in progress and deletes every user key.
pub fn begin_restore(store: &mut dyn Store, snapshot: SnapshotMetadata) -> Result<(), StoreError> {
    let mut mark = WriteBatch::new();
    mark.put(RESTORING_KEY.to_vec(), encode_metadata(snapshot));
    store.write(mark)?;
    let mut start = Vec::new();
    loop {
        let pairs = scan_data_from(store, &start, RESTORE_BATCH_KEYS)?;
        let Some((last_key, _)) = pairs.last() else {
            break;
        };
        start = last_key.clone();
        start.push(0);
        let mut batch = WriteBatch::new();
        for (key, _) in &pairs {
            batch.delete(data_key(key));
        }
        store.write(batch)?;
    }
    Ok(())
}

/// Writes restored pairs (between [`begin_restore`] and [`finish_restore`]).
pub fn restore_pairs(store: &mut dyn Store, pairs: Vec<KeyValue>) -> Result<(), StoreError> {
    let mut batch = WriteBatch::new();
    for (key, value) in pairs {
        batch.put(data_key(&key), value);
    }
    store.write(batch)
}

/// Completes a restore: the state now reflects `snapshot`.
pub fn finish_restore(store: &mut dyn Store, snapshot: SnapshotMetadata) -> Result<(), StoreError> {
    let mut batch = WriteBatch::new();
    batch.put(APPLIED_AHEAD_KEY.to_vec(), encode_metadata(snapshot));
    batch.put(APPLIED_KEY.to_vec(), encode_metadata(snapshot));
    batch.delete(RESTORING_KEY.to_vec());
    store.write(batch)
}

/// Log entries for tests.
#[cfg(test)]
pub(crate) mod test_entries {
    use kvstore_raft::{Entry, EntryKind, Index};

    use super::{log_encoding, Command};

    fn entry(index: Index, command: Command) -> Entry {
        Entry {
            index,
            term: 1,
            kind: EntryKind::Normal,
            data: log_encoding::encode(command, "").into(),
        }
    }

    pub(crate) fn put(index: Index, key: &str, value: &str) -> Entry {
        let (key, value) = (key.into(), value.into());
        entry(index, Command::Put { key, value })
    }

    pub(crate) fn delete(index: Index, key: &str) -> Entry {
        entry(index, Command::Delete { key: key.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStore;
    use bytes::Bytes;
    use kvstore_raft::EntryKind;
    use test_entries::{delete, put};

    #[test]
    fn entries_apply_once_in_order_with_the_applied_index() {
        let mut store = MemoryStore::new();
        let empty = Entry {
            index: 1,
            term: 1,
            kind: EntryKind::Empty,
            data: Bytes::new(),
        };
        let outcomes = apply(
            &mut store,
            &[empty, put(2, "a", "1"), delete(3, "a"), delete(4, "a")],
        )
        .unwrap();
        assert_eq!(
            outcomes
                .iter()
                .map(|outcome| outcome.found)
                .collect::<Vec<_>>(),
            [true, true, true, false]
        );
        assert_eq!(
            applied(&mut store).unwrap(),
            SnapshotMetadata { index: 4, term: 1 }
        );
        // Replaying after a restart skips what was applied.
        let outcomes = apply(&mut store, &[put(3, "a", "replayed"), put(5, "b", "2")]).unwrap();
        assert_eq!(outcomes.len(), 1);
        assert_eq!(
            get(&mut store, b"a").unwrap(),
            None,
            "index 3 must not be re-applied"
        );
        assert_eq!(get(&mut store, b"b").unwrap(), Some(b"2".to_vec()));
    }

    /// A memory store that can be told that reads or writes would wait.
    #[derive(Default)]
    struct Slow {
        store: MemoryStore,
        /// Reads of keys with this prefix would wait.
        reads_wait_under: Option<&'static [u8]>,
        writes_wait: bool,
    }

    impl Store for Slow {
        fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.store.get(key)
        }

        fn get_if_ready(&mut self, key: &[u8]) -> Option<Result<Option<Vec<u8>>, StoreError>> {
            let waits = self
                .reads_wait_under
                .is_some_and(|prefix| key.starts_with(prefix));
            (!waits).then(|| self.store.get(key))
        }

        fn write(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
            self.store.write(batch)
        }

        fn writes_without_waiting(&self, _operations: usize) -> bool {
            !self.writes_wait
        }

        fn scan(&mut self, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
            self.store.scan(range, limit)
        }
    }

    #[test]
    fn an_apply_that_would_wait_writes_nothing() {
        let mut store = Slow::default();
        let outcomes = apply_if_ready(&mut store, &[put(1, "a", "1"), delete(2, "b")]);
        assert_eq!(outcomes.unwrap().unwrap().len(), 2);
        for (reads_wait_under, writes_wait) in [(Some(APPLIED_KEY), false), (None, true)] {
            store.reads_wait_under = reads_wait_under;
            store.writes_wait = writes_wait;
            assert!(apply_if_ready(&mut store, &[put(3, "c", "1")]).is_none());
            assert_eq!(applied(&mut store).unwrap().index, 2);
            assert_eq!(get(&mut store, b"c").unwrap(), None);
        }
        // A delete must read whether its key existed.
        store.reads_wait_under = Some(DATA_PREFIX);
        store.writes_wait = false;
        assert!(apply_if_ready(&mut store, &[put(3, "x", "1"), delete(4, "x")]).is_some());
        assert!(apply_if_ready(&mut store, &[delete(5, "x")]).is_none());
        assert_eq!(applied(&mut store).unwrap().index, 4);
        // The waiting apply goes through.
        assert!(!apply(&mut store, &[delete(5, "x")]).unwrap()[0].found);
        assert_eq!(applied(&mut store).unwrap().index, 5);
    }

    #[test]
    fn the_applied_index_sorts_around_every_data_key() {
        let last_data_key = data_key(&[u8::MAX; 64]);
        assert!(APPLIED_KEY > last_data_key.as_slice());
        assert!(RESTORING_KEY > last_data_key.as_slice());
        assert!(APPLIED_AHEAD_KEY < data_key(b"").as_slice());
    }

    #[test]
    fn a_partly_written_batch_names_the_index_to_apply_again() {
        let mut store = MemoryStore::new();
        apply(&mut store, &[put(1, "a", "1"), put(2, "b", "1")]).unwrap();
        assert_eq!(consistent_at(&mut store).unwrap(), 2);
        // What a crash in the middle of writing the next batch behind, in
        // key order, leaves: the first key and some data, not the last key.
        let mut next = MemoryStore::new();
        apply(
            &mut next,
            &[put(1, "a", "1"), put(2, "b", "1"), put(3, "a", "2")],
        )
        .unwrap();
        let mut written = next.scan(&KeyRange::all(), usize::MAX).unwrap();
        written.retain(|(key, _)| key.as_slice() < &b"d/b"[..]);
        for (key, value) in written {
            store.put(&key, &value).unwrap();
        }
        assert_eq!(get(&mut store, b"a").unwrap(), Some(b"2".to_vec()), "ahead");
        assert_eq!(applied(&mut store).unwrap().index, 2);
        assert_eq!(consistent_at(&mut store).unwrap(), 3);
        // Replaying from the applied index brings both back together.
        apply(&mut store, &[put(3, "a", "2")]).unwrap();
        assert_eq!(consistent_at(&mut store).unwrap(), 3);
        assert_eq!(applied(&mut store).unwrap().index, 3);
    }

    #[test]
    #[should_panic(expected = "without gaps")]
    fn a_gap_in_applied_entries_is_a_bug() {
        let mut store = MemoryStore::new();
        let _ = apply(&mut store, &[put(2, "a", "1")]);
    }

    #[test]
    fn restore_replaces_everything_and_records_the_snapshot() {
        let mut store = MemoryStore::new();
        apply(&mut store, &[put(1, "old", "x"), put(2, "keep", "y")]).unwrap();
        let snapshot = SnapshotMetadata { index: 10, term: 3 };
        begin_restore(&mut store, snapshot).unwrap();
        assert_eq!(interrupted_restore(&mut store).unwrap(), Some(snapshot));
        restore_pairs(&mut store, vec![(b"keep".to_vec(), b"new".to_vec())]).unwrap();
        finish_restore(&mut store, snapshot).unwrap();
        assert_eq!(interrupted_restore(&mut store).unwrap(), None);
        assert_eq!(applied(&mut store).unwrap(), snapshot);
        assert_eq!(get(&mut store, b"old").unwrap(), None);
        assert_eq!(get(&mut store, b"keep").unwrap(), Some(b"new".to_vec()));
        assert_eq!(
            scan_data_from(&mut store, b"", 10).unwrap(),
            vec![(b"keep".to_vec(), b"new".to_vec())]
        );
    }
}
