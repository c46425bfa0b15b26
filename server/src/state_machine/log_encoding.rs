//! How a [`Command`] is written into a log entry's data, and read back.
//!
//! The encoding is the peer protocol's `kvstore.raft.v1.Command` message
//! (protobuf: versioned, evolvable, and the same bytes a leader sends its
//! followers), so it is durable: the WAL, snapshots' source entries and
//! every replica hold it. Apart from `transport/`, this is the only module
//! that names `kvstore_proto::raft::v1` types. A release must read every
//! log an earlier one wrote (`server/tests/log_compatibility.rs`).
//!
//! An entry whose data does not decode, or decodes to no operation (a
//! command added by a later release), is logged and applied as a no-op,
//! the same way on every replica, so they stay identical. A release that
//! adds a command must therefore make sure no older replica applies it.

use kvstore_proto::raft::v1 as pb;
use kvstore_raft::{Entry, EntryKind};
use prost::Message;

use super::command::Command;
use super::kv_encoding;

/// Why entry data is not a command.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a `kvstore.raft.v1.Command`.
    #[error("not a command: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// A command without an operation this release knows.
    #[error("the command carries no operation this release knows")]
    NoOperation,
    /// A txn that is not a valid request.
    #[error("a malformed txn: {0}")]
    MalformedTxn(#[from] kv_encoding::BadRequest),
}

/// `command` as the wire message, with the id of the request that proposed
/// it (for tracing one write across nodes).
pub fn to_proto(command: Command, request_id: &str) -> pb::Command {
    let operation = match command {
        Command::Put { key, value } => pb::command::Operation::Put(pb::PutOperation { key, value }),
        Command::Delete { key } => pb::command::Operation::Delete(pb::DeleteOperation { key }),
        Command::Txn(txn) => pb::command::Operation::Txn(kv_encoding::txn_to_proto(&txn)),
        Command::Compact { revision } => pb::command::Operation::Compact(pb::CompactOperation {
            revision: i64::try_from(revision).unwrap_or(i64::MAX),
        }),
        Command::SetStorageVersion { version } => {
            pb::command::Operation::StorageVersion(pb::StorageVersionOperation { version })
        }
        Command::LeaseGrant { id, ttl_seconds } => {
            pb::command::Operation::LeaseGrant(pb::LeaseGrantOperation { id, ttl_seconds })
        }
        Command::LeaseRevoke { id } => {
            pb::command::Operation::LeaseRevoke(pb::LeaseRevokeOperation { id })
        }
        Command::LeaseCheckpoint { checkpoints } => {
            pb::command::Operation::LeaseCheckpoint(pb::LeaseCheckpointOperation {
                checkpoints: checkpoints
                    .into_iter()
                    .map(|(id, remaining_seconds)| pb::LeaseCheckpoint {
                        id,
                        remaining_seconds,
                    })
                    .collect(),
            })
        }
    };
    pb::Command {
        operation: Some(operation),
        request_id: request_id.to_string(),
    }
}

/// The command a wire message carries, and its request id.
pub fn from_proto(command: pb::Command) -> Result<(Command, String), DecodeError> {
    let decoded = match command.operation.ok_or(DecodeError::NoOperation)? {
        pb::command::Operation::Put(put) => Command::Put {
            key: put.key,
            value: put.value,
        },
        pb::command::Operation::Delete(delete) => Command::Delete { key: delete.key },
        pb::command::Operation::Txn(txn) => Command::Txn(kv_encoding::txn_from_proto(txn)?),
        pb::command::Operation::Compact(compact) => Command::Compact {
            revision: u64::try_from(compact.revision).unwrap_or(0),
        },
        pb::command::Operation::StorageVersion(set) => Command::SetStorageVersion {
            version: set.version,
        },
        pb::command::Operation::LeaseGrant(grant) => Command::LeaseGrant {
            id: grant.id,
            ttl_seconds: grant.ttl_seconds,
        },
        pb::command::Operation::LeaseRevoke(revoke) => Command::LeaseRevoke { id: revoke.id },
        pb::command::Operation::LeaseCheckpoint(checkpoint) => Command::LeaseCheckpoint {
            checkpoints: checkpoint
                .checkpoints
                .into_iter()
                .map(|checkpoint| (checkpoint.id, checkpoint.remaining_seconds))
                .collect(),
        },
    };
    Ok((decoded, command.request_id))
}

/// An entry's data for `command`. Takes it by value: key and value move
/// into the message and are copied once, into the encoded bytes.
pub fn encode(command: Command, request_id: &str) -> Vec<u8> {
    to_proto(command, request_id).encode_to_vec()
}

/// The command in an entry's data.
pub fn decode(data: &[u8]) -> Result<Command, DecodeError> {
    let (command, _) = from_proto(pb::Command::decode(data)?)?;
    Ok(command)
}

/// The command a log entry carries; `None` for an entry with nothing to
/// apply: an Empty entry, or one whose data is not a command (logged; see
/// the module documentation).
pub fn decode_entry(entry: &Entry) -> Option<Command> {
    if entry.kind != EntryKind::Normal {
        return None;
    }
    match decode(&entry.data) {
        Ok(command) => Some(command),
        Err(error) => {
            tracing::error!(
                index = entry.index,
                %error,
                "undecodable command in the log; applied as a no-op"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    fn put(key: &str, value: &str) -> Command {
        Command::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    /// Bytes the release at 4232c83 wrote for these commands (its
    /// `state_machine::encode_command`, prost's encoding of `pb::Command`).
    #[test]
    fn encoding_is_byte_identical_to_release_4232c83() {
        assert_eq!(hex(&encode(put("k", "v"), "r")), "0a060a016b1201761a0172");
        assert_eq!(
            hex(&encode(Command::Delete { key: "k".into() }, "")),
            "12030a016b"
        );
        // An empty value is not written at all (proto3 default).
        assert_eq!(hex(&encode(put("k", ""), "")), "0a030a016b");
    }

    #[test]
    fn undecodable_or_empty_data_is_a_logged_no_op() {
        let entry = |kind, data: &[u8]| Entry {
            index: 7,
            term: 1,
            kind,
            data: data.to_vec().into(),
        };
        assert_eq!(decode_entry(&entry(EntryKind::Normal, &[0xff, 0xff])), None);
        // A command with no operation (an operation a later release added).
        assert!(matches!(decode(&[]), Err(DecodeError::NoOperation)));
        assert_eq!(decode_entry(&entry(EntryKind::Normal, &[])), None);
        assert_eq!(decode_entry(&entry(EntryKind::Empty, &[])), None);
        let data = encode(put("k", "v"), "r");
        assert_eq!(
            decode_entry(&entry(EntryKind::Normal, &data)),
            Some(put("k", "v"))
        );
    }

    fn command() -> impl Strategy<Value = Command> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..64);
        prop_oneof![
            (bytes(), bytes()).prop_map(|(key, value)| Command::Put { key, value }),
            bytes().prop_map(|key| Command::Delete { key }),
            any::<u64>().prop_map(|revision| Command::Compact {
                revision: revision >> 1
            }),
            any::<u32>().prop_map(|version| Command::SetStorageVersion { version }),
            (bytes(), bytes()).prop_filter_map("a txn key is non-empty", |(key, value)| {
                (!key.is_empty()).then(|| {
                    Command::Txn(crate::state_machine::mvcc::txn::TxnRequest {
                        compares: Vec::new(),
                        success: vec![crate::state_machine::mvcc::txn::TxnOp::Put {
                            key,
                            value,
                            lease: 0,
                            ignore_value: false,
                            ignore_lease: false,
                        }],
                        failure: Vec::new(),
                    })
                })
            }),
        ]
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(command in command(), request_id in "[a-z0-9-]{0,16}") {
            let data = encode(command.clone(), &request_id);
            prop_assert_eq!(decode(&data).unwrap(), command.clone());
            let (again, id) = from_proto(to_proto(command.clone(), &request_id)).unwrap();
            prop_assert_eq!(again, command);
            prop_assert_eq!(id, request_id);
        }
    }
}
