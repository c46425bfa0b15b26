//! The stored form of one write of a key: a live record (its value and
//! etcd's per-key counters) or a tombstone (the key was deleted at that
//! revision). `k/` holds live records only, `h/` both.
//!
//! Layout: one kind byte (`1` live, `2` tombstone), then for a live record
//! `create_revision`, `mod_revision`, `version`, `lease` (u64 big-endian
//! each) and the value; a tombstone carries nothing else (its revision is
//! in its store key).

/// A key as it stands after one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Revision of the write that created the key (its generation).
    pub create_revision: u64,
    /// Revision of the write that set this value.
    pub mod_revision: u64,
    /// Writes since creation: 1 for the creating put.
    pub version: u64,
    /// The lease the key is attached to (0: none).
    pub lease: u64,
    /// The value.
    pub value: Vec<u8>,
}

/// One entry of a key's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryRecord {
    /// The key was written.
    Live(KeyRecord),
    /// The key was deleted.
    Tombstone,
}

const KIND_LIVE: u8 = 1;
const KIND_TOMBSTONE: u8 = 2;
/// Bytes before a live record's value.
const LIVE_HEADER_BYTES: usize = 1 + 4 * 8;

/// Why stored bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt MVCC record: {0}")]
pub struct CorruptRecord(pub String);

impl HistoryRecord {
    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            HistoryRecord::Tombstone => vec![KIND_TOMBSTONE],
            HistoryRecord::Live(record) => {
                let mut bytes = Vec::with_capacity(LIVE_HEADER_BYTES + record.value.len());
                bytes.push(KIND_LIVE);
                for field in [
                    record.create_revision,
                    record.mod_revision,
                    record.version,
                    record.lease,
                ] {
                    bytes.extend_from_slice(&field.to_be_bytes());
                }
                bytes.extend_from_slice(&record.value);
                bytes
            }
        }
    }

    /// The record in `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, CorruptRecord> {
        match bytes.first() {
            Some(&KIND_TOMBSTONE) if bytes.len() == 1 => Ok(HistoryRecord::Tombstone),
            Some(&KIND_LIVE) if bytes.len() >= LIVE_HEADER_BYTES => {
                let field = |index: usize| {
                    let start = 1 + index * 8;
                    u64::from_be_bytes(bytes[start..start + 8].try_into().expect("8 bytes"))
                };
                Ok(HistoryRecord::Live(KeyRecord {
                    create_revision: field(0),
                    mod_revision: field(1),
                    version: field(2),
                    lease: field(3),
                    value: bytes[LIVE_HEADER_BYTES..].to_vec(),
                }))
            }
            _ => Err(CorruptRecord(format!(
                "{} bytes starting with {:?}",
                bytes.len(),
                bytes.first()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn decode_inverts_encode(
            create in any::<u64>(), modified in any::<u64>(), version in any::<u64>(),
            lease in any::<u64>(), value in proptest::collection::vec(any::<u8>(), 0..64)
        ) {
            let record = HistoryRecord::Live(KeyRecord {
                create_revision: create,
                mod_revision: modified,
                version,
                lease,
                value,
            });
            prop_assert_eq!(HistoryRecord::decode(&record.encode()).unwrap(), record);
        }
    }

    #[test]
    fn tombstones_round_trip_and_garbage_is_refused() {
        let tombstone = HistoryRecord::Tombstone;
        assert_eq!(
            HistoryRecord::decode(&tombstone.encode()).unwrap(),
            tombstone
        );
        for garbage in [&[][..], &[9], &[KIND_LIVE, 0, 0], &[KIND_TOMBSTONE, 0]] {
            assert!(HistoryRecord::decode(garbage).is_err(), "{garbage:?}");
        }
    }
}
