//! Txn compares with etcd's semantics
//! (`docs/reference-etcd-kv-semantics.md`, section 5): a compare holds when
//! every existing key of its span satisfies it; with no key in the span a
//! VALUE compare fails whatever its operator, and the other targets
//! compare against zero (`create == 0` is the "does not exist" test). All
//! of a txn's compares are evaluated against the state before the txn.

use std::cmp::Ordering;

use super::record::KeyRecord;
use super::store::{KeySpan, MvccError, WriteTxn};

/// What a compare looks at, and the operand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// Writes since creation.
    Version(u64),
    /// Revision of the creating write.
    Create(u64),
    /// Revision of the last write.
    Mod(u64),
    /// The value (bytewise).
    Value(Vec<u8>),
    /// The attached lease (0: none).
    Lease(u64),
}

/// How the key's field must relate to the operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareResult {
    /// Equal.
    Equal,
    /// Greater than the operand.
    Greater,
    /// Less than the operand.
    Less,
    /// Not equal.
    NotEqual,
}

impl CompareResult {
    fn holds(self, ordering: Ordering) -> bool {
        match self {
            CompareResult::Equal => ordering == Ordering::Equal,
            CompareResult::Greater => ordering == Ordering::Greater,
            CompareResult::Less => ordering == Ordering::Less,
            CompareResult::NotEqual => ordering != Ordering::Equal,
        }
    }
}

/// One compare of a txn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key or keys it looks at.
    pub span: KeySpan,
    /// The relation that must hold.
    pub result: CompareResult,
    /// The field and the operand.
    pub target: CompareTarget,
}

impl Compare {
    /// Whether `record` (`None`: no key) satisfies the compare.
    fn holds_for(&self, record: Option<&KeyRecord>) -> bool {
        let field = |pick: fn(&KeyRecord) -> u64| record.map_or(0, pick);
        let ordering = match &self.target {
            CompareTarget::Version(operand) => field(|record| record.version).cmp(operand),
            CompareTarget::Create(operand) => field(|record| record.create_revision).cmp(operand),
            CompareTarget::Mod(operand) => field(|record| record.mod_revision).cmp(operand),
            CompareTarget::Lease(operand) => field(|record| record.lease).cmp(operand),
            // etcd: a missing value cannot be represented, so it fails.
            CompareTarget::Value(operand) => match record {
                None => return false,
                Some(record) => record.value.as_slice().cmp(operand.as_slice()),
            },
        };
        self.result.holds(ordering)
    }
}

/// Whether every compare holds, read through `txn` (call it before the
/// txn writes anything: compares see the state before the txn).
pub fn all_hold(txn: &mut WriteTxn<'_>, compares: &[Compare]) -> Result<bool, MvccError> {
    for compare in compares {
        let records = txn.range(&compare.span)?;
        let holds = if records.is_empty() {
            compare.holds_for(None)
        } else {
            records
                .iter()
                .all(|(_, record)| compare.holds_for(Some(record)))
        };
        if !holds {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStore;
    use crate::storage::Store;

    fn compare(span: KeySpan, result: CompareResult, target: CompareTarget) -> Compare {
        Compare {
            span,
            result,
            target,
        }
    }

    /// A store holding a = "1" (created at revision 2, written again at
    /// 4) and b = "x" (revision 3).
    fn store() -> MemoryStore {
        let mut store = MemoryStore::new();
        for (key, value) in [("a", "0"), ("b", "x"), ("a", "1")] {
            let mut txn = WriteTxn::begin(&mut store).unwrap();
            txn.put(key.as_bytes(), value.as_bytes().to_vec(), 0)
                .unwrap();
            let (batch, _) = txn.finish();
            store.write(batch).unwrap();
        }
        store
    }

    fn holds(store: &mut MemoryStore, compares: &[Compare]) -> bool {
        let mut txn = WriteTxn::begin(store).unwrap();
        all_hold(&mut txn, compares).unwrap()
    }

    #[test]
    fn a_missing_key_compares_as_zero_except_its_value() {
        use CompareResult::*;
        let mut store = store();
        let missing = || KeySpan::single("zz");
        assert!(holds(
            &mut store,
            &[compare(missing(), Equal, CompareTarget::Create(0))]
        ));
        assert!(holds(
            &mut store,
            &[compare(missing(), Less, CompareTarget::Version(1))]
        ));
        for result in [Equal, NotEqual, Greater, Less] {
            let value = compare(missing(), result, CompareTarget::Value(Vec::new()));
            assert!(!holds(&mut store, &[value]), "{result:?}");
        }
    }

    #[test]
    fn compares_read_the_counters_and_the_value() {
        use CompareResult::*;
        let mut store = store();
        let a = || KeySpan::single("a");
        assert!(holds(
            &mut store,
            &[
                compare(a(), Equal, CompareTarget::Version(2)),
                compare(a(), Equal, CompareTarget::Create(2)),
                compare(a(), Equal, CompareTarget::Mod(4)),
                compare(a(), Greater, CompareTarget::Value(b"0".to_vec())),
                compare(a(), NotEqual, CompareTarget::Lease(7)),
            ]
        ));
        // Compares are AND-ed.
        assert!(!holds(
            &mut store,
            &[
                compare(a(), Equal, CompareTarget::Version(2)),
                compare(a(), Less, CompareTarget::Mod(4)),
            ]
        ));
    }

    #[test]
    fn a_range_compare_holds_when_every_existing_key_satisfies_it() {
        use CompareResult::*;
        let mut store = store();
        let all = || KeySpan::range("a", [0]);
        assert!(holds(
            &mut store,
            &[compare(all(), Greater, CompareTarget::Create(1))]
        ));
        assert!(!holds(
            &mut store,
            &[compare(all(), Equal, CompareTarget::Version(1))]
        ));
        // Keys absent from the span are not checked.
        let span = KeySpan::range("b", "zz");
        assert!(holds(
            &mut store,
            &[compare(span, Equal, CompareTarget::Value(b"x".to_vec()))]
        ));
    }
}
