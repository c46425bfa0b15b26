//! The lease table (`l/<id>`) and the attachment index (`a/<id><key>`):
//! what a lease is in the store, and the reads over them. Applying the
//! lease commands is in `state_machine/mod.rs`; expiry is the leader's
//! business (`node::lessor`), committed through Raft as a revoke.

use super::mvcc::keys;
use super::mvcc::record::CorruptRecord;
use crate::storage::{KeyRange, Store, StoreError, WriteBatch};

/// Bytes of an encoded [`LeaseRecord`].
const LEASE_RECORD_BYTES: usize = 16;
/// Lease records read per scan call.
const LEASE_SCAN_CHUNK: usize = 1_024;

/// One lease as the store holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The time to live it was granted, in seconds.
    pub ttl_seconds: u64,
    /// The remaining time to live at the last checkpoint, in seconds (0:
    /// never checkpointed).
    pub remaining_seconds: u64,
}

impl LeaseRecord {
    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(LEASE_RECORD_BYTES);
        bytes.extend_from_slice(&self.ttl_seconds.to_be_bytes());
        bytes.extend_from_slice(&self.remaining_seconds.to_be_bytes());
        bytes
    }

    /// Reads what [`LeaseRecord::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self, CorruptRecord> {
        if bytes.len() != LEASE_RECORD_BYTES {
            return Err(CorruptRecord(format!(
                "a lease record of {} bytes, expected {LEASE_RECORD_BYTES}",
                bytes.len()
            )));
        }
        let field = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Ok(Self {
            ttl_seconds: field(0),
            remaining_seconds: field(8),
        })
    }
}

fn corrupt(error: CorruptRecord) -> StoreError {
    StoreError::Engine(error.to_string())
}

/// Lease `id`, if it exists.
pub fn get(store: &mut dyn Store, id: u64) -> Result<Option<LeaseRecord>, StoreError> {
    store
        .get(&keys::lease_key(id))?
        .map(|bytes| LeaseRecord::decode(&bytes).map_err(corrupt))
        .transpose()
}

/// Writes lease `id` into `batch`.
pub fn put(batch: &mut WriteBatch, id: u64, record: LeaseRecord) {
    batch.put(keys::lease_key(id), record.encode());
}

/// Calls `visit` with every pair under `prefix`, in key order, reading
/// the store in chunks.
fn scan_prefix(
    store: &mut dyn Store,
    prefix: &[u8],
    mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut range = KeyRange::prefix(prefix.to_vec());
    loop {
        let chunk = store.scan(&range, LEASE_SCAN_CHUNK)?;
        for (stored, value) in &chunk {
            visit(stored, value)?;
        }
        match chunk.last() {
            Some((last, _)) if chunk.len() == LEASE_SCAN_CHUNK => {
                range.start = last.clone();
                range.start.push(0);
            }
            _ => return Ok(()),
        }
    }
}

/// Every lease, in id order.
pub fn all(store: &mut dyn Store) -> Result<Vec<(u64, LeaseRecord)>, StoreError> {
    let mut leases = Vec::new();
    scan_prefix(store, keys::LEASE_PREFIX, |stored, value| {
        let id = keys::parse_lease_key(stored)
            .ok_or_else(|| corrupt(CorruptRecord("a malformed lease key".into())))?;
        leases.push((id, LeaseRecord::decode(value).map_err(corrupt)?));
        Ok(())
    })?;
    Ok(leases)
}

/// The keys attached to lease `id`, in key order.
pub fn attached_keys(store: &mut dyn Store, id: u64) -> Result<Vec<Vec<u8>>, StoreError> {
    let prefix = keys::attached_prefix(id);
    let mut found = Vec::new();
    scan_prefix(store, &prefix, |stored, _| {
        found.push(stored[prefix.len()..].to_vec());
        Ok(())
    })?;
    Ok(found)
}

/// The id a grant without one gets: derived from its entry's index, so
/// every replica picks the same; the next candidate up when a client took
/// that id already (an id is a positive int64 in the client API).
pub fn pick_id(store: &mut dyn Store, index: u64) -> Result<u64, StoreError> {
    const STEP: u64 = 1 << 40;
    let mut id = index.max(1) & (i64::MAX as u64);
    while get(store, id)?.is_some() {
        id = (id.wrapping_add(STEP) & (i64::MAX as u64)).max(1);
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStore;

    #[test]
    fn records_round_trip_and_bad_bytes_are_refused() {
        let record = LeaseRecord {
            ttl_seconds: 60,
            remaining_seconds: 17,
        };
        assert_eq!(LeaseRecord::decode(&record.encode()).unwrap(), record);
        assert!(LeaseRecord::decode(&[0; 3]).is_err());
    }

    #[test]
    fn ids_follow_the_index_and_skip_ids_in_use() {
        let mut store = MemoryStore::default();
        assert_eq!(pick_id(&mut store, 42).unwrap(), 42);
        let mut batch = WriteBatch::new();
        put(
            &mut batch,
            42,
            LeaseRecord {
                ttl_seconds: 5,
                remaining_seconds: 0,
            },
        );
        store.write(batch).unwrap();
        let next = pick_id(&mut store, 42).unwrap();
        assert_ne!(next, 42);
        assert!(next > 0 && next <= i64::MAX as u64);
        assert_eq!(all(&mut store).unwrap().len(), 1);
    }
}
