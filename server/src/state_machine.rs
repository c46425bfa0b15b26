//! The key-value state machine on top of a [`Store`]: user keys live under a
//! data prefix so that metadata (such as the last applied log index) shares
//! the same database and the same atomic write batches.

use crate::storage::{KeyRange, KeyValue, Store, StoreError, WriteBatch};

/// Prefix of every user key in the store.
const DATA_PREFIX: &[u8] = b"d/";

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

/// Every user key and value, in key order, up to `limit` pairs.
pub fn scan_data(store: &mut dyn Store, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
    let pairs = store.scan(&KeyRange::prefix(DATA_PREFIX.to_vec()), limit)?;
    Ok(pairs
        .into_iter()
        .filter_map(|(key, value)| user_key(&key).map(|key| (key.to_vec(), value)))
        .collect())
}

/// Adds a put of a user key to `batch`.
pub fn put_into(batch: &mut WriteBatch, key: &[u8], value: &[u8]) {
    batch.put(data_key(key), value.to_vec());
}

/// Adds a delete of a user key to `batch`.
pub fn delete_into(batch: &mut WriteBatch, key: &[u8]) {
    batch.delete(data_key(key));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStore;

    #[test]
    fn user_keys_are_isolated_from_metadata() {
        let mut store = MemoryStore::new();
        let mut batch = WriteBatch::new();
        put_into(&mut batch, b"k", b"v");
        batch.put(b"m/applied".to_vec(), b"7".to_vec());
        store.write(batch).unwrap();
        assert_eq!(get(&mut store, b"k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(get(&mut store, b"m/applied").unwrap(), None);
        assert_eq!(
            scan_data(&mut store, 10).unwrap(),
            vec![(b"k".to_vec(), b"v".to_vec())]
        );
    }
}
