//! Transactions with etcd's semantics (`docs/reference-etcd-kv-semantics.md`,
//! section 5): compares, then the `success` or `failure` list of Range,
//! Put, DeleteRange and nested Txn ops, applied in one [`WriteTxn`] at one
//! revision. Every compare on the path taken, nested ones included, is
//! decided on the state before the txn; the ops of a list see the
//! earlier ops' writes. [`validate`] refuses, before anything runs, a list
//! longer than [`TXN_OPS_MAX`] and a key written twice in one list.

use std::collections::HashSet;

use super::compare::{all_hold, Compare};
use super::range::{RangeOutcome, RangeRequest};
use super::record::KeyRecord;
use super::store::{KeySpan, MvccError, WriteTxn};

/// Most compares, or ops in one list, of a txn (etcd's `--max-txn-ops`
/// default); a nested txn counts against what its parent leaves.
pub const TXN_OPS_MAX: usize = 128;

/// One op of a txn's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Read the live keys of a span: at the current revision as the txn
    /// sees them (with the writes of earlier ops), or at a past revision.
    Range(RangeRequest),
    /// Store a value.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value (ignored with `ignore_value`).
        value: Vec<u8>,
        /// The lease to attach (0: none).
        lease: u64,
        /// Keep the key's current value (the key must exist).
        ignore_value: bool,
        /// Keep the key's current lease (the key must exist; `lease` must
        /// be 0).
        ignore_lease: bool,
    },
    /// Delete the live keys of a span.
    DeleteRange {
        /// The keys.
        span: KeySpan,
    },
    /// A nested transaction.
    Txn(TxnRequest),
}

/// A transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnRequest {
    /// All must hold for `success` to run; else `failure` runs.
    pub compares: Vec<Compare>,
    /// Ops when the compares hold.
    pub success: Vec<TxnOp>,
    /// Ops when they do not.
    pub failure: Vec<TxnOp>,
}

/// What one op did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResponse {
    /// The pairs read, how many matched, whether there were more.
    Range(RangeOutcome),
    /// The key's previous record.
    Put {
        /// `None` when the put created the key.
        previous: Option<KeyRecord>,
    },
    /// The deleted pairs, as they were.
    DeleteRange {
        /// The pairs.
        deleted: Vec<(Vec<u8>, KeyRecord)>,
    },
    /// A nested transaction's outcome.
    Txn(TxnResponse),
}

/// What a transaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the compares held (so `success` ran).
    pub succeeded: bool,
    /// One response per op of the list that ran.
    pub responses: Vec<OpResponse>,
}

/// Why a txn is refused before it runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTxn {
    /// A list is longer than the limit.
    #[error("too many operations in txn request: {ops} in one list, at most {max}")]
    TooManyOps {
        /// Ops in the longest list.
        ops: usize,
        /// What was allowed there.
        max: usize,
    },
    /// One list writes a key twice.
    #[error("duplicate key given in txn request: {key:?}")]
    DuplicateKey {
        /// The key.
        key: Vec<u8>,
    },
    /// A put with `ignore_value` carries a value.
    #[error("a put with ignore_value must not carry a value")]
    ValueWithIgnoreValue,
    /// A put with `ignore_lease` names a lease (etcd's message).
    #[error("etcdserver: lease is provided (a put with ignore_lease must not name a lease)")]
    LeaseWithIgnoreLease,
}

/// What a list writes: the keys it puts and the spans it deletes.
#[derive(Debug, Default)]
struct Writes {
    puts: HashSet<Vec<u8>>,
    deletes: Vec<KeySpan>,
}

impl Writes {
    /// Adds `other`'s writes; a key put by both, or put by one and deleted
    /// by the other, is a duplicate.
    fn merge(&mut self, other: Writes) -> Result<(), InvalidTxn> {
        for key in &other.puts {
            if self.puts.contains(key) || self.deletes.iter().any(|span| span.contains(key)) {
                return Err(InvalidTxn::DuplicateKey { key: key.clone() });
            }
        }
        for span in &other.deletes {
            if let Some(key) = self.puts.iter().find(|key| span.contains(key)) {
                return Err(InvalidTxn::DuplicateKey { key: key.clone() });
            }
        }
        self.puts.extend(other.puts);
        self.deletes.extend(other.deletes);
        Ok(())
    }
}

/// Checks `request` before it runs: sizes against [`TXN_OPS_MAX`], and
/// that no list writes a key twice (a nested txn's two lists count as
/// writes of the list holding it, but not against each other).
pub fn validate(request: &TxnRequest) -> Result<(), InvalidTxn> {
    validate_within(request, TXN_OPS_MAX).map(|_| ())
}

fn validate_within(request: &TxnRequest, max: usize) -> Result<Writes, InvalidTxn> {
    let ops = request
        .compares
        .len()
        .max(request.success.len())
        .max(request.failure.len());
    if ops > max {
        return Err(InvalidTxn::TooManyOps { ops, max });
    }
    let mut both = validate_list(&request.success, max - ops)?;
    let failure = validate_list(&request.failure, max - ops)?;
    // The two lists never both run: they may write the same keys.
    both.puts.extend(failure.puts);
    both.deletes.extend(failure.deletes);
    Ok(both)
}

fn validate_list(ops: &[TxnOp], nested_max: usize) -> Result<Writes, InvalidTxn> {
    let mut writes = Writes::default();
    for op in ops {
        let mut single = Writes::default();
        match op {
            TxnOp::Range { .. } => continue,
            TxnOp::Put {
                key,
                value,
                ignore_value,
                lease,
                ignore_lease,
            } => {
                if *ignore_value && !value.is_empty() {
                    return Err(InvalidTxn::ValueWithIgnoreValue);
                }
                if *ignore_lease && *lease != 0 {
                    return Err(InvalidTxn::LeaseWithIgnoreLease);
                }
                single.puts.insert(key.clone());
            }
            TxnOp::DeleteRange { span } => single.deletes.push(span.clone()),
            TxnOp::Txn(nested) => single = validate_within(nested, nested_max)?,
        }
        writes.merge(single)?;
    }
    Ok(writes)
}

/// Which list runs at each txn of the path taken: decided before any op
/// runs, so that nested compares see the state before the txn.
#[derive(Debug)]
struct Path {
    succeeded: bool,
    /// One entry per nested txn of the list that runs, in order.
    nested: Vec<Path>,
}

fn decide(txn: &mut WriteTxn<'_>, request: &TxnRequest) -> Result<Path, MvccError> {
    let succeeded = all_hold(txn, &request.compares)?;
    let list = if succeeded {
        &request.success
    } else {
        &request.failure
    };
    let mut nested = Vec::new();
    for op in list {
        if let TxnOp::Txn(inner) = op {
            nested.push(decide(txn, inner)?);
        }
    }
    Ok(Path { succeeded, nested })
}

/// Runs a validated `request` in `txn` (which must not have written yet:
/// the compares read through it).
pub fn apply(txn: &mut WriteTxn<'_>, request: &TxnRequest) -> Result<TxnResponse, MvccError> {
    let path = decide(txn, request)?;
    run(txn, request, path)
}

fn run(txn: &mut WriteTxn<'_>, request: &TxnRequest, path: Path) -> Result<TxnResponse, MvccError> {
    let list = if path.succeeded {
        &request.success
    } else {
        &request.failure
    };
    let mut nested = path.nested.into_iter();
    let mut responses = Vec::with_capacity(list.len());
    for op in list {
        responses.push(match op {
            TxnOp::Range(range) => {
                let options = &range.options;
                if range.revision == 0 {
                    let kvs = txn.range(&range.span)?;
                    let count = kvs.len() as u64;
                    OpResponse::Range(options.select(kvs, count, false))
                } else {
                    let read =
                        txn.range_past(&range.span, range.revision, options.store_limit())?;
                    OpResponse::Range(options.select(read.kvs, read.count, read.more))
                }
            }
            TxnOp::Put {
                key,
                value,
                lease,
                ignore_value,
                ignore_lease,
            } => {
                let current = if *ignore_value || *ignore_lease {
                    match txn.latest(key)? {
                        Some(record) => Some(record),
                        None => return Err(MvccError::KeyNotFound { key: key.clone() }),
                    }
                } else {
                    None
                };
                let (value, lease) = match current {
                    Some(record) => (
                        if *ignore_value {
                            record.value
                        } else {
                            value.clone()
                        },
                        if *ignore_lease { record.lease } else { *lease },
                    ),
                    None => (value.clone(), *lease),
                };
                OpResponse::Put {
                    previous: txn.put(key, value, lease)?,
                }
            }
            TxnOp::DeleteRange { span } => OpResponse::DeleteRange {
                deleted: txn.delete_range(span)?,
            },
            TxnOp::Txn(inner) => {
                let inner_path = nested.next().expect("decided for every nested txn");
                OpResponse::Txn(run(txn, inner, inner_path)?)
            }
        });
    }
    Ok(TxnResponse {
        succeeded: path.succeeded,
        responses,
    })
}

#[cfg(test)]
mod tests {
    use super::super::compare::{CompareResult, CompareTarget};
    use super::super::store::{meta, range_at};
    use super::*;
    use crate::storage::memory::MemoryStore;
    use crate::storage::{Store, WriteBatch};

    fn put(key: &str, value: &str) -> TxnOp {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
            ignore_value: false,
            ignore_lease: false,
        }
    }

    fn read(key: &str) -> TxnOp {
        TxnOp::Range(RangeRequest {
            span: KeySpan::single(key),
            revision: 0,
            options: Default::default(),
        })
    }

    fn delete(key: &str, end: &str) -> TxnOp {
        TxnOp::DeleteRange {
            span: KeySpan::range(key, end),
        }
    }

    fn run_txn(store: &mut MemoryStore, request: &TxnRequest) -> Result<TxnResponse, MvccError> {
        validate(request).expect("a valid txn");
        let mut txn = WriteTxn::begin(store)?;
        let response = apply(&mut txn, request)?;
        let (batch, _) = txn.finish();
        store.write(batch)?;
        Ok(response)
    }

    fn create_is(key: &str, revision: u64) -> Compare {
        Compare {
            span: KeySpan::single(key),
            result: CompareResult::Equal,
            target: CompareTarget::Create(revision),
        }
    }

    #[test]
    fn compare_and_swap_takes_one_branch_at_one_revision() {
        let mut store = MemoryStore::new();
        // Create "lock" only if it does not exist: twice.
        let request = TxnRequest {
            compares: vec![create_is("lock", 0)],
            success: vec![put("lock", "me"), put("owner", "me")],
            failure: vec![read("lock")],
        };
        let first = run_txn(&mut store, &request).unwrap();
        assert!(first.succeeded);
        assert_eq!(
            meta(&mut store).unwrap().revision,
            2,
            "one revision for both puts"
        );
        let second = run_txn(&mut store, &request).unwrap();
        assert!(!second.succeeded);
        match &second.responses[..] {
            [OpResponse::Range(RangeOutcome { kvs, count: 1, .. })] => {
                assert_eq!(kvs[0].1.value, b"me")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            meta(&mut store).unwrap().revision,
            2,
            "a read-only branch writes nothing"
        );
    }

    #[test]
    fn ops_see_earlier_writes_but_nested_compares_see_the_state_before() {
        let mut store = MemoryStore::new();
        let request = TxnRequest {
            compares: Vec::new(),
            success: vec![
                put("a", "1"),
                read("a"),
                TxnOp::Txn(TxnRequest {
                    // "a" did not exist before the txn: this holds.
                    compares: vec![create_is("a", 0)],
                    success: vec![put("b", "nested")],
                    failure: Vec::new(),
                }),
            ],
            failure: Vec::new(),
        };
        let response = run_txn(&mut store, &request).unwrap();
        assert!(matches!(
            &response.responses[1],
            OpResponse::Range(RangeOutcome { count: 1, .. })
        ));
        match &response.responses[2] {
            OpResponse::Txn(nested) => assert!(nested.succeeded),
            other => panic!("{other:?}"),
        }
        let all = range_at(&mut store, &KeySpan::range("a", [0]), 0, 0).unwrap();
        assert_eq!(all.count, 2);
        assert!(all.kvs.iter().all(|(_, record)| record.mod_revision == 2));
    }

    #[test]
    fn a_key_written_twice_in_one_list_or_too_many_ops_is_refused_before_anything_runs() {
        let duplicate = |success| TxnRequest {
            compares: Vec::new(),
            success,
            failure: Vec::new(),
        };
        for success in [
            vec![put("a", "1"), put("a", "2")],
            vec![put("b", "1"), delete("a", "c")],
            vec![delete("a", "c"), put("b", "1")],
            vec![
                put("a", "1"),
                TxnOp::Txn(TxnRequest {
                    success: vec![put("a", "2")],
                    ..TxnRequest::default()
                }),
            ],
        ] {
            assert!(
                matches!(
                    validate(&duplicate(success.clone())),
                    Err(InvalidTxn::DuplicateKey { .. })
                ),
                "{success:?}"
            );
        }
        // Allowed: overlapping deletes, both branches of one nested txn,
        // the same key in success and failure.
        let allowed = TxnRequest {
            compares: Vec::new(),
            success: vec![
                delete("a", "c"),
                delete("b", "d"),
                TxnOp::Txn(TxnRequest {
                    compares: Vec::new(),
                    success: vec![put("x", "1")],
                    failure: vec![put("x", "2")],
                }),
            ],
            failure: vec![put("x", "3")],
        };
        assert_eq!(validate(&allowed), Ok(()));
        let long = duplicate(
            (0..=TXN_OPS_MAX)
                .map(|index| put(&format!("k{index}"), "v"))
                .collect(),
        );
        assert!(matches!(
            validate(&long),
            Err(InvalidTxn::TooManyOps { ops: 129, max: 128 })
        ));
    }

    #[test]
    fn ignore_value_keeps_the_value_and_needs_the_key() {
        let mut store = MemoryStore::new();
        run_txn(
            &mut store,
            &TxnRequest {
                success: vec![put("a", "kept")],
                ..TxnRequest::default()
            },
        )
        .unwrap();
        let touch = |key: &str| TxnRequest {
            success: vec![TxnOp::Put {
                key: key.into(),
                value: Vec::new(),
                lease: 5,
                ignore_value: true,
                ignore_lease: false,
            }],
            ..TxnRequest::default()
        };
        // Lease 5 must exist to attach a key to it.
        let mut grant = WriteBatch::new();
        crate::state_machine::lease::put(
            &mut grant,
            5,
            crate::state_machine::lease::LeaseRecord {
                ttl_seconds: 10,
                remaining_seconds: 0,
            },
        );
        store.write(grant).unwrap();
        run_txn(&mut store, &touch("a")).unwrap();
        let now = range_at(&mut store, &KeySpan::single("a"), 0, 0).unwrap();
        assert_eq!(
            (now.kvs[0].1.value.as_slice(), now.kvs[0].1.lease),
            (&b"kept"[..], 5)
        );
        assert!(matches!(
            run_txn(&mut store, &touch("missing")),
            Err(MvccError::KeyNotFound { .. })
        ));
        assert_eq!(
            meta(&mut store).unwrap().revision,
            3,
            "the failed txn wrote nothing"
        );
    }
}
