//! The client API's messages (`kvstore.v1`) for the state machine's
//! ranges and transactions, both ways: requests from clients, and from the
//! log (a `Txn` command carries the client's `TxnRequest`), and responses
//! to clients and to forwarding followers. One place for these
//! conversions, so the log, the services and the forwarding path agree.

use kvstore_proto::kv::v1 as pb;

use super::mvcc::compare::{Compare, CompareResult, CompareTarget};
use super::mvcc::range::{RangeOptions, RangeOutcome, RangeRequest, SortOrder, SortTarget};
use super::mvcc::record::KeyRecord;
use super::mvcc::store::KeySpan;
use super::mvcc::txn::{OpResponse, TxnOp, TxnRequest, TxnResponse};

/// Why a request is malformed (gRPC INVALID_ARGUMENT).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

fn bad(message: impl Into<String>) -> BadRequest {
    BadRequest(message.into())
}

/// A revision field of a request: negative means none (0), as etcd.
fn revision(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A revision field of a response.
fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A pair as the client API returns it.
pub fn key_value_to_proto(key: &[u8], record: &KeyRecord) -> pb::KeyValue {
    pb::KeyValue {
        key: key.to_vec(),
        create_revision: signed(record.create_revision),
        mod_revision: signed(record.mod_revision),
        version: signed(record.version),
        value: record.value.clone(),
        lease: signed(record.lease),
    }
}

fn key_value_from_proto(pair: pb::KeyValue) -> (Vec<u8>, KeyRecord) {
    (
        pair.key,
        KeyRecord {
            create_revision: revision(pair.create_revision),
            mod_revision: revision(pair.mod_revision),
            version: revision(pair.version),
            lease: revision(pair.lease),
            value: pair.value,
        },
    )
}

/// A Range request.
pub fn range_from_proto(request: pb::RangeRequest) -> Result<RangeRequest, BadRequest> {
    let sort_order = match pb::SortOrder::try_from(request.sort_order) {
        Ok(pb::SortOrder::Unspecified) => SortOrder::None,
        Ok(pb::SortOrder::Ascend) => SortOrder::Ascend,
        Ok(pb::SortOrder::Descend) => SortOrder::Descend,
        Err(_) => return Err(bad(format!("unknown sort order {}", request.sort_order))),
    };
    let sort_target = match pb::SortTarget::try_from(request.sort_target) {
        Ok(pb::SortTarget::Unspecified | pb::SortTarget::Key) => SortTarget::Key,
        Ok(pb::SortTarget::Version) => SortTarget::Version,
        Ok(pb::SortTarget::Create) => SortTarget::Create,
        Ok(pb::SortTarget::Mod) => SortTarget::Mod,
        Ok(pb::SortTarget::Value) => SortTarget::Value,
        Err(_) => return Err(bad(format!("unknown sort target {}", request.sort_target))),
    };
    // An explicit KEY target sorts (ascending unless asked otherwise).
    let sort_order =
        if request.sort_target == pb::SortTarget::Key as i32 && sort_order == SortOrder::None {
            SortOrder::Ascend
        } else {
            sort_order
        };
    let span = span(request.key, request.range_end)?;
    Ok(RangeRequest {
        span,
        revision: revision(request.revision),
        options: RangeOptions {
            limit: usize::try_from(request.limit.max(0)).unwrap_or(usize::MAX),
            keys_only: request.keys_only,
            count_only: request.count_only,
            sort_order,
            sort_target,
            min_mod_revision: revision(request.min_mod_revision),
            max_mod_revision: revision(request.max_mod_revision),
            min_create_revision: revision(request.min_create_revision),
            max_create_revision: revision(request.max_create_revision),
        },
    })
}

fn range_to_proto(range: &RangeRequest) -> pb::RangeRequest {
    let options = &range.options;
    pb::RangeRequest {
        key: range.span.key.clone(),
        range_end: range.span.range_end.clone(),
        limit: i64::try_from(options.limit).unwrap_or(i64::MAX),
        revision: signed(range.revision),
        sort_order: match options.sort_order {
            SortOrder::None => pb::SortOrder::Unspecified,
            SortOrder::Ascend => pb::SortOrder::Ascend,
            SortOrder::Descend => pb::SortOrder::Descend,
        } as i32,
        sort_target: match options.sort_target {
            SortTarget::Key => pb::SortTarget::Unspecified,
            SortTarget::Version => pb::SortTarget::Version,
            SortTarget::Create => pb::SortTarget::Create,
            SortTarget::Mod => pb::SortTarget::Mod,
            SortTarget::Value => pb::SortTarget::Value,
        } as i32,
        consistency: 0,
        keys_only: options.keys_only,
        count_only: options.count_only,
        min_mod_revision: signed(options.min_mod_revision),
        max_mod_revision: signed(options.max_mod_revision),
        min_create_revision: signed(options.min_create_revision),
        max_create_revision: signed(options.max_create_revision),
    }
}

/// A key span; an empty key is refused (as etcd's "key is not provided").
fn span(key: Vec<u8>, range_end: Vec<u8>) -> Result<KeySpan, BadRequest> {
    if key.is_empty() {
        return Err(bad("key is not provided"));
    }
    let span = KeySpan::range(key, range_end);
    span.check().map_err(|error| bad(error.to_string()))?;
    Ok(span)
}

/// A Put as a txn op.
pub fn put_from_proto(request: pb::PutRequest) -> Result<TxnOp, BadRequest> {
    if request.key.is_empty() {
        return Err(bad("key is not provided"));
    }
    let lease = u64::try_from(request.lease)
        .map_err(|_| bad(format!("lease {} is negative", request.lease)))?;
    if request.ignore_value && !request.value.is_empty() {
        return Err(bad("value is provided with ignore_value"));
    }
    if request.ignore_lease && lease != 0 {
        return Err(bad("etcdserver: lease is provided (with ignore_lease)"));
    }
    Ok(TxnOp::Put {
        key: request.key,
        value: request.value,
        lease,
        ignore_value: request.ignore_value,
        ignore_lease: request.ignore_lease,
    })
}

/// A DeleteRange as a txn op.
pub fn delete_range_from_proto(request: pb::DeleteRangeRequest) -> Result<TxnOp, BadRequest> {
    Ok(TxnOp::DeleteRange {
        span: span(request.key, request.range_end)?,
    })
}

fn op_from_proto(op: pb::RequestOp) -> Result<TxnOp, BadRequest> {
    match op.request {
        Some(pb::request_op::Request::RequestRange(range)) => {
            Ok(TxnOp::Range(range_from_proto(range)?))
        }
        Some(pb::request_op::Request::RequestPut(put)) => put_from_proto(put),
        Some(pb::request_op::Request::RequestDeleteRange(delete)) => {
            delete_range_from_proto(delete)
        }
        Some(pb::request_op::Request::RequestTxn(txn)) => Ok(TxnOp::Txn(txn_from_proto(txn)?)),
        None => Err(bad("a txn op without a request")),
    }
}

fn compare_from_proto(compare: pb::Compare) -> Result<Compare, BadRequest> {
    use pb::compare::TargetUnion;
    let result = match pb::CompareResult::try_from(compare.result) {
        Ok(pb::CompareResult::Equal) => CompareResult::Equal,
        Ok(pb::CompareResult::Greater) => CompareResult::Greater,
        Ok(pb::CompareResult::Less) => CompareResult::Less,
        Ok(pb::CompareResult::NotEqual) => CompareResult::NotEqual,
        _ => {
            return Err(bad(format!(
                "a compare needs a result (got {})",
                compare.result
            )))
        }
    };
    let target = match (
        pb::CompareTarget::try_from(compare.target),
        compare.target_union,
    ) {
        (Ok(pb::CompareTarget::Version), Some(TargetUnion::Version(value))) => {
            CompareTarget::Version(revision(value))
        }
        (Ok(pb::CompareTarget::Create), Some(TargetUnion::CreateRevision(value))) => {
            CompareTarget::Create(revision(value))
        }
        (Ok(pb::CompareTarget::Mod), Some(TargetUnion::ModRevision(value))) => {
            CompareTarget::Mod(revision(value))
        }
        (Ok(pb::CompareTarget::Value), Some(TargetUnion::Value(value))) => {
            CompareTarget::Value(value)
        }
        (Ok(pb::CompareTarget::Lease), Some(TargetUnion::Lease(value))) => {
            CompareTarget::Lease(revision(value))
        }
        // proto3 drops a zero operand's oneof on some encoders: a numeric
        // target without one compares against 0.
        (Ok(pb::CompareTarget::Version), None) => CompareTarget::Version(0),
        (Ok(pb::CompareTarget::Create), None) => CompareTarget::Create(0),
        (Ok(pb::CompareTarget::Mod), None) => CompareTarget::Mod(0),
        (Ok(pb::CompareTarget::Lease), None) => CompareTarget::Lease(0),
        (Ok(pb::CompareTarget::Value), None) => CompareTarget::Value(Vec::new()),
        _ => {
            return Err(bad(format!(
                "a compare's target ({}) must match the operand set",
                compare.target
            )))
        }
    };
    Ok(Compare {
        span: span(compare.key, compare.range_end)?,
        result,
        target,
    })
}

fn compare_to_proto(compare: &Compare) -> pb::Compare {
    use pb::compare::TargetUnion;
    let (target, operand) = match &compare.target {
        CompareTarget::Version(value) => (
            pb::CompareTarget::Version,
            TargetUnion::Version(signed(*value)),
        ),
        CompareTarget::Create(value) => (
            pb::CompareTarget::Create,
            TargetUnion::CreateRevision(signed(*value)),
        ),
        CompareTarget::Mod(value) => (
            pb::CompareTarget::Mod,
            TargetUnion::ModRevision(signed(*value)),
        ),
        CompareTarget::Value(value) => {
            (pb::CompareTarget::Value, TargetUnion::Value(value.clone()))
        }
        CompareTarget::Lease(value) => {
            (pb::CompareTarget::Lease, TargetUnion::Lease(signed(*value)))
        }
    };
    pb::Compare {
        result: match compare.result {
            CompareResult::Equal => pb::CompareResult::Equal,
            CompareResult::Greater => pb::CompareResult::Greater,
            CompareResult::Less => pb::CompareResult::Less,
            CompareResult::NotEqual => pb::CompareResult::NotEqual,
        } as i32,
        target: target as i32,
        key: compare.span.key.clone(),
        range_end: compare.span.range_end.clone(),
        target_union: Some(operand),
    }
}

/// A Txn request.
pub fn txn_from_proto(request: pb::TxnRequest) -> Result<TxnRequest, BadRequest> {
    Ok(TxnRequest {
        compares: request
            .compare
            .into_iter()
            .map(compare_from_proto)
            .collect::<Result<_, _>>()?,
        success: request
            .success
            .into_iter()
            .map(op_from_proto)
            .collect::<Result<_, _>>()?,
        failure: request
            .failure
            .into_iter()
            .map(op_from_proto)
            .collect::<Result<_, _>>()?,
    })
}

fn op_to_proto(op: &TxnOp, prev_kv: bool) -> pb::RequestOp {
    use pb::request_op::Request;
    let request = match op {
        TxnOp::Range(range) => Request::RequestRange(range_to_proto(range)),
        TxnOp::Put {
            key,
            value,
            lease,
            ignore_value,
            ignore_lease,
        } => Request::RequestPut(pb::PutRequest {
            key: key.clone(),
            value: value.clone(),
            lease: signed(*lease),
            prev_kv,
            ignore_value: *ignore_value,
            ignore_lease: *ignore_lease,
        }),
        TxnOp::DeleteRange { span } => Request::RequestDeleteRange(pb::DeleteRangeRequest {
            key: span.key.clone(),
            range_end: span.range_end.clone(),
            prev_kv,
        }),
        TxnOp::Txn(nested) => Request::RequestTxn(txn_to_proto(nested)),
    };
    pb::RequestOp {
        request: Some(request),
    }
}

/// A txn as the client API (and the log) carries it.
pub fn txn_to_proto(request: &TxnRequest) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: request.compares.iter().map(compare_to_proto).collect(),
        success: request
            .success
            .iter()
            .map(|op| op_to_proto(op, false))
            .collect(),
        failure: request
            .failure
            .iter()
            .map(|op| op_to_proto(op, false))
            .collect(),
    }
}

/// The pairs a Range returns.
pub fn range_outcome_to_proto(outcome: &RangeOutcome) -> pb::RangeResponse {
    pb::RangeResponse {
        header: None,
        kvs: outcome
            .kvs
            .iter()
            .map(|(key, record)| key_value_to_proto(key, record))
            .collect(),
        more: outcome.more,
        count: signed(outcome.count),
    }
}

/// Which ops of a client's txn asked for previous pairs (the log does not
/// carry the flag: the pairs are computed anyway, and returned as asked).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrevKvFlags {
    /// One flag per op of the success list, then of the failure list;
    /// nested txns carry their own.
    pub success: Vec<OpFlags>,
    /// As `success`, for the failure list.
    pub failure: Vec<OpFlags>,
}

/// The prev_kv flag of one op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpFlags {
    /// A put or delete: whether it asked for previous pairs, and a put's
    /// key (the previous pair carries it).
    Write {
        /// Return the previous pairs.
        prev_kv: bool,
        /// The put's key (empty for a delete).
        key: Vec<u8>,
    },
    /// A nested txn's flags.
    Nested(PrevKvFlags),
    /// A range.
    Read,
}

/// The prev_kv flags of a client's txn request.
pub fn prev_kv_flags(request: &pb::TxnRequest) -> PrevKvFlags {
    fn list(ops: &[pb::RequestOp]) -> Vec<OpFlags> {
        ops.iter()
            .map(|op| match &op.request {
                Some(pb::request_op::Request::RequestPut(put)) => OpFlags::Write {
                    prev_kv: put.prev_kv,
                    key: put.key.clone(),
                },
                Some(pb::request_op::Request::RequestDeleteRange(delete)) => OpFlags::Write {
                    prev_kv: delete.prev_kv,
                    key: Vec::new(),
                },
                Some(pb::request_op::Request::RequestTxn(nested)) => {
                    OpFlags::Nested(prev_kv_flags(nested))
                }
                _ => OpFlags::Read,
            })
            .collect()
    }
    PrevKvFlags {
        success: list(&request.success),
        failure: list(&request.failure),
    }
}

/// A txn's outcome as the client API returns it (header left to the
/// caller), with previous pairs where `flags` asked for them.
pub fn txn_response_to_proto(response: &TxnResponse, flags: &PrevKvFlags) -> pb::TxnResponse {
    use pb::response_op::Response;
    let flags = if response.succeeded {
        &flags.success
    } else {
        &flags.failure
    };
    let wants = |position: usize| {
        matches!(
            flags.get(position),
            Some(OpFlags::Write { prev_kv: true, .. })
        )
    };
    let key = |position: usize| match flags.get(position) {
        Some(OpFlags::Write { key, .. }) => key.as_slice(),
        _ => &[],
    };
    let responses = response
        .responses
        .iter()
        .enumerate()
        .map(|(position, op)| {
            let response = match op {
                OpResponse::Range(outcome) => {
                    Response::ResponseRange(range_outcome_to_proto(outcome))
                }
                OpResponse::Put { previous } => Response::ResponsePut(pb::PutResponse {
                    header: None,
                    prev_kv: previous
                        .as_ref()
                        .filter(|_| wants(position))
                        .map(|record| key_value_to_proto(key(position), record)),
                }),
                OpResponse::DeleteRange { deleted } => {
                    Response::ResponseDeleteRange(pb::DeleteRangeResponse {
                        header: None,
                        deleted: signed(deleted.len() as u64),
                        prev_kvs: if wants(position) {
                            deleted
                                .iter()
                                .map(|(key, record)| key_value_to_proto(key, record))
                                .collect()
                        } else {
                            Vec::new()
                        },
                    })
                }
                OpResponse::Txn(nested) => {
                    let nested_flags = match flags.get(position) {
                        Some(OpFlags::Nested(nested_flags)) => nested_flags.clone(),
                        _ => PrevKvFlags::default(),
                    };
                    Response::ResponseTxn(txn_response_to_proto(nested, &nested_flags))
                }
            };
            pb::ResponseOp {
                response: Some(response),
            }
        })
        .collect();
    pb::TxnResponse {
        header: None,
        succeeded: response.succeeded,
        responses,
    }
}

/// A txn's outcome as a forwarding leader sent it (every previous pair
/// included: [`all_prev_kvs`]).
pub fn txn_response_from_proto(response: pb::TxnResponse) -> TxnResponse {
    use pb::response_op::Response;
    TxnResponse {
        succeeded: response.succeeded,
        responses: response
            .responses
            .into_iter()
            .filter_map(|op| op.response)
            .map(|op| match op {
                Response::ResponseRange(range) => OpResponse::Range(RangeOutcome {
                    kvs: range.kvs.into_iter().map(key_value_from_proto).collect(),
                    count: revision(range.count),
                    more: range.more,
                }),
                Response::ResponsePut(put) => OpResponse::Put {
                    previous: put.prev_kv.map(|pair| key_value_from_proto(pair).1),
                },
                Response::ResponseDeleteRange(delete) => OpResponse::DeleteRange {
                    deleted: delete
                        .prev_kvs
                        .into_iter()
                        .map(key_value_from_proto)
                        .collect(),
                },
                Response::ResponseTxn(nested) => OpResponse::Txn(txn_response_from_proto(nested)),
            })
            .collect(),
    }
}

/// Flags asking for every previous pair of `response` (what a leader
/// sends a forwarding follower, which then applies its client's flags).
pub fn all_prev_kvs(response: &TxnResponse) -> PrevKvFlags {
    let list = response
        .responses
        .iter()
        .map(|op| match op {
            OpResponse::Txn(nested) => OpFlags::Nested(all_prev_kvs(nested)),
            OpResponse::Range(_) => OpFlags::Read,
            OpResponse::Put { .. } | OpResponse::DeleteRange { .. } => OpFlags::Write {
                prev_kv: true,
                key: Vec::new(),
            },
        })
        .collect::<Vec<_>>();
    PrevKvFlags {
        success: list.clone(),
        failure: list,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn op_strategy() -> impl Strategy<Value = TxnOp> {
        let key = proptest::collection::vec(any::<u8>(), 1..4);
        let leaf = prop_oneof![
            (
                key.clone(),
                proptest::collection::vec(any::<u8>(), 0..4),
                any::<bool>()
            )
                .prop_map(|(key, value, ignore_value)| TxnOp::Put {
                    key,
                    value: if ignore_value { Vec::new() } else { value },
                    lease: 0,
                    ignore_value,
                    ignore_lease: false,
                }),
            (key.clone(), 0usize..3, 0u64..5, any::<bool>()).prop_map(
                |(key, limit, revision, keys_only)| TxnOp::Range(RangeRequest {
                    span: KeySpan::range(key, vec![0]),
                    revision,
                    options: RangeOptions {
                        limit,
                        keys_only,
                        ..RangeOptions::default()
                    },
                })
            ),
            key.prop_map(|key| TxnOp::DeleteRange {
                span: KeySpan::single(key)
            }),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            proptest::collection::vec(inner, 0..3).prop_map(|success| {
                TxnOp::Txn(TxnRequest {
                    compares: vec![Compare {
                        span: KeySpan::single(b"k".to_vec()),
                        result: CompareResult::Greater,
                        target: CompareTarget::Mod(3),
                    }],
                    success,
                    failure: Vec::new(),
                })
            })
        })
    }

    proptest! {
        #[test]
        fn a_txn_survives_the_wire(ops in proptest::collection::vec(op_strategy(), 0..4)) {
            let request = TxnRequest {
                compares: vec![Compare {
                    span: KeySpan::range(b"a".to_vec(), b"b".to_vec()),
                    result: CompareResult::NotEqual,
                    target: CompareTarget::Value(b"v".to_vec()),
                }],
                success: ops.clone(),
                failure: ops,
            };
            prop_assert_eq!(txn_from_proto(txn_to_proto(&request)).unwrap(), request);
        }
    }

    #[test]
    fn previous_pairs_are_returned_only_when_asked() {
        let record = KeyRecord {
            create_revision: 2,
            mod_revision: 3,
            version: 2,
            lease: 0,
            value: b"old".to_vec(),
        };
        let response = TxnResponse {
            succeeded: true,
            responses: vec![
                OpResponse::Put {
                    previous: Some(record.clone()),
                },
                OpResponse::DeleteRange {
                    deleted: vec![(b"x".to_vec(), record.clone())],
                },
            ],
        };
        let flags = PrevKvFlags {
            success: vec![
                OpFlags::Write {
                    prev_kv: false,
                    key: b"p".to_vec(),
                },
                OpFlags::Write {
                    prev_kv: true,
                    key: Vec::new(),
                },
            ],
            failure: Vec::new(),
        };
        let wire = txn_response_to_proto(&response, &flags);
        let Some(pb::response_op::Response::ResponsePut(put)) = &wire.responses[0].response else {
            panic!("{wire:?}");
        };
        assert_eq!(put.prev_kv, None);
        let Some(pb::response_op::Response::ResponseDeleteRange(delete)) =
            &wire.responses[1].response
        else {
            panic!("{wire:?}");
        };
        assert_eq!((delete.deleted, delete.prev_kvs.len()), (1, 1));
        // Forwarded whole, then cut to the client's flags.
        let forwarded =
            txn_response_from_proto(txn_response_to_proto(&response, &all_prev_kvs(&response)));
        assert_eq!(forwarded, response);
    }

    #[test]
    fn malformed_requests_are_refused() {
        let empty_key = pb::PutRequest::default();
        assert!(put_from_proto(empty_key).is_err());
        let backwards = pb::RangeRequest {
            key: b"b".to_vec(),
            range_end: b"a".to_vec(),
            ..Default::default()
        };
        assert!(range_from_proto(backwards).is_err());
        let no_result = pb::TxnRequest {
            compare: vec![pb::Compare {
                key: b"a".to_vec(),
                target: pb::CompareTarget::Version as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(txn_from_proto(no_result).is_err());
    }
}
