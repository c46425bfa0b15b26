//! The one boundary between the Raft core's message types and the peer
//! protocol's protobuf types (`kvstore.raft.v1`). Nothing else converts them.

use kvstore_proto::raft::v1 as pb;
use kvstore_raft::{Entry, EntryKind, Message, MessageBody, NodeId, SnapshotMetadata, TERM_MAX};

use crate::state_machine::STORAGE_VERSION_MAX;

/// A protobuf message that does not make a valid Raft message.
#[derive(Debug, thiserror::Error)]
#[error("malformed peer message: {0}")]
pub struct MalformedMessage(pub String);

/// The header of `message`.
pub fn header(cluster_id: &str, message: &Message) -> Option<pb::MessageHeader> {
    Some(pb::MessageHeader {
        cluster_id: cluster_id.to_string(),
        from: message.from,
        to: message.to,
        term: message.term,
        storage_version_max: STORAGE_VERSION_MAX,
    })
}

/// A core entry as protobuf.
pub fn entry_to_proto(entry: &Entry) -> pb::Entry {
    pb::Entry {
        index: entry.index,
        term: entry.term,
        kind: match entry.kind {
            EntryKind::Normal => pb::EntryKind::Normal,
            EntryKind::Empty => pb::EntryKind::Empty,
        } as i32,
        data: entry.data.clone(),
    }
}

/// A protobuf entry as a core entry.
pub fn entry_from_proto(entry: pb::Entry) -> Result<Entry, MalformedMessage> {
    let kind = match pb::EntryKind::try_from(entry.kind) {
        Ok(pb::EntryKind::Normal) => EntryKind::Normal,
        Ok(pb::EntryKind::Empty) => EntryKind::Empty,
        _ => {
            return Err(MalformedMessage(format!(
                "entry {} has kind {}",
                entry.index, entry.kind
            )))
        }
    };
    if entry.index == 0 {
        return Err(MalformedMessage("entry index 0".into()));
    }
    Ok(Entry {
        index: entry.index,
        term: entry.term,
        kind,
        data: entry.data,
    })
}

/// Snapshot metadata as protobuf.
pub fn snapshot_to_proto(snapshot: SnapshotMetadata) -> pb::SnapshotMetadata {
    pb::SnapshotMetadata {
        index: snapshot.index,
        term: snapshot.term,
    }
}

/// A core message as it travels on a `Stream`; `None` for InstallSnapshot,
/// which travels over its own call with the snapshot file
/// (`peers::PeerLink::send_snapshot`).
pub fn to_wire(cluster_id: &str, message: &Message) -> Option<pb::RaftMessage> {
    use pb::raft_message::Message as Wire;
    let header = header(cluster_id, message);
    let wire = match &message.body {
        MessageBody::RequestVote {
            pre_vote,
            last_log_index,
            last_log_term,
            transfer,
        } => Wire::RequestVote(pb::RequestVoteRequest {
            header,
            pre_vote: *pre_vote,
            last_log_index: *last_log_index,
            last_log_term: *last_log_term,
            transfer: *transfer,
        }),
        MessageBody::RequestVoteResponse { pre_vote, granted } => {
            Wire::RequestVoteResponse(pb::RequestVoteResponse {
                header,
                pre_vote: *pre_vote,
                granted: *granted,
            })
        }
        MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
        } => Wire::AppendEntries(pb::AppendEntriesRequest {
            header,
            prev_log_index: *prev_log_index,
            prev_log_term: *prev_log_term,
            entries: entries.iter().map(entry_to_proto).collect(),
            leader_commit: *leader_commit,
            heartbeat: false,
            read_round: 0,
        }),
        MessageBody::AppendEntriesResponse {
            success,
            index,
            reject_hint_index,
            reject_hint_term,
        } => Wire::AppendEntriesResponse(pb::AppendEntriesResponse {
            header,
            success: *success,
            index: *index,
            reject_hint_index: *reject_hint_index,
            reject_hint_term: *reject_hint_term,
            heartbeat: false,
            read_round: 0,
        }),
        MessageBody::Heartbeat {
            leader_commit,
            read_round,
        } => Wire::AppendEntries(pb::AppendEntriesRequest {
            header,
            prev_log_index: 0,
            prev_log_term: 0,
            entries: Vec::new(),
            leader_commit: *leader_commit,
            heartbeat: true,
            read_round: *read_round,
        }),
        MessageBody::HeartbeatResponse {
            read_round,
            log_lost_after,
        } => Wire::AppendEntriesResponse(pb::AppendEntriesResponse {
            header,
            success: log_lost_after.is_none(),
            index: log_lost_after.unwrap_or(0),
            reject_hint_index: 0,
            reject_hint_term: 0,
            heartbeat: true,
            read_round: *read_round,
        }),
        MessageBody::InstallSnapshot { .. } => return None,
        MessageBody::InstallSnapshotResponse { index } => {
            Wire::InstallSnapshotResponse(pb::InstallSnapshotResponse {
                header,
                index: *index,
            })
        }
        MessageBody::TimeoutNow => Wire::TimeoutNow(pb::TimeoutNowRequest { header }),
        MessageBody::TermQuery => Wire::TermQuery(pb::TermQuery { header }),
        MessageBody::TermAnswer => Wire::TermAnswer(pb::TermAnswer { header }),
    };
    Some(pb::RaftMessage {
        message: Some(wire),
    })
}

/// The header of a message received on a `Stream`.
pub fn wire_header(message: &pb::RaftMessage) -> Option<&pb::MessageHeader> {
    use pb::raft_message::Message as Wire;
    match message.message.as_ref()? {
        Wire::RequestVote(request) => request.header.as_ref(),
        Wire::RequestVoteResponse(response) => response.header.as_ref(),
        Wire::AppendEntries(request) => request.header.as_ref(),
        Wire::AppendEntriesResponse(response) => response.header.as_ref(),
        Wire::TimeoutNow(request) => request.header.as_ref(),
        Wire::InstallSnapshotResponse(response) => response.header.as_ref(),
        Wire::TermQuery(query) => query.header.as_ref(),
        Wire::TermAnswer(answer) => answer.header.as_ref(),
    }
}

/// A message received on a `Stream` as a core message.
pub fn from_wire(message: pb::RaftMessage) -> Result<Message, MalformedMessage> {
    use pb::raft_message::Message as Wire;
    let header = wire_header(&message)
        .cloned()
        .ok_or_else(|| MalformedMessage("missing header".into()))?;
    let body = match message.message {
        Some(Wire::RequestVote(request)) => MessageBody::RequestVote {
            pre_vote: request.pre_vote,
            last_log_index: request.last_log_index,
            last_log_term: request.last_log_term,
            transfer: request.transfer,
        },
        Some(Wire::RequestVoteResponse(response)) => MessageBody::RequestVoteResponse {
            pre_vote: response.pre_vote,
            granted: response.granted,
        },
        Some(Wire::AppendEntries(request)) => append_entries_body(request)?,
        Some(Wire::AppendEntriesResponse(response)) if response.heartbeat => {
            MessageBody::HeartbeatResponse {
                read_round: response.read_round,
                log_lost_after: (!response.success).then_some(response.index),
            }
        }
        Some(Wire::AppendEntriesResponse(response)) => MessageBody::AppendEntriesResponse {
            success: response.success,
            index: response.index,
            reject_hint_index: response.reject_hint_index,
            reject_hint_term: response.reject_hint_term,
        },
        Some(Wire::TimeoutNow(_)) => MessageBody::TimeoutNow,
        Some(Wire::InstallSnapshotResponse(response)) => MessageBody::InstallSnapshotResponse {
            index: response.index,
        },
        Some(Wire::TermQuery(_)) => MessageBody::TermQuery,
        Some(Wire::TermAnswer(_)) => MessageBody::TermAnswer,
        None => return Err(MalformedMessage("empty stream message".into())),
    };
    Ok(message_from(&header, body))
}

/// The body of an AppendEntries (or heartbeat); its entries must follow
/// `prev_log_index` without a gap.
fn append_entries_body(request: pb::AppendEntriesRequest) -> Result<MessageBody, MalformedMessage> {
    if request.heartbeat {
        return Ok(MessageBody::Heartbeat {
            leader_commit: request.leader_commit,
            read_round: request.read_round,
        });
    }
    let entries = request
        .entries
        .into_iter()
        .map(entry_from_proto)
        .collect::<Result<Vec<_>, _>>()?;
    for (offset, entry) in entries.iter().enumerate() {
        if entry.index != request.prev_log_index + 1 + offset as u64 {
            return Err(MalformedMessage(format!(
                "entries are not contiguous after index {}",
                request.prev_log_index
            )));
        }
    }
    Ok(MessageBody::AppendEntries {
        prev_log_index: request.prev_log_index,
        prev_log_term: request.prev_log_term,
        entries,
        leader_commit: request.leader_commit,
    })
}

fn message_from(header: &pb::MessageHeader, body: MessageBody) -> Message {
    Message {
        from: header.from,
        to: header.to,
        term: header.term,
        body,
    }
}

/// The core message for a completely received snapshot.
pub fn install_snapshot_message(header: &pb::MessageHeader, snapshot: SnapshotMetadata) -> Message {
    message_from(header, MessageBody::InstallSnapshot { snapshot })
}

/// The reply to an InstallSnapshot call as a core message, when it carries
/// the follower's Raft answer (`index` > 0: a follower of release 4232c83
/// or earlier); `None` for a plain receipt (`index` 0), the answer then
/// travels on the follower's `Stream`.
pub fn snapshot_reply_answer(
    reply: pb::InstallSnapshotResponse,
) -> Result<Option<Message>, MalformedMessage> {
    if reply.index == 0 {
        return Ok(None);
    }
    let header = reply
        .header
        .ok_or_else(|| MalformedMessage("missing header".into()))?;
    Ok(Some(message_from(
        &header,
        MessageBody::InstallSnapshotResponse { index: reply.index },
    )))
}

/// Checks that an inbound header belongs to this cluster and node, from a
/// known member. Returns a human-readable refusal otherwise.
pub fn check_header(
    header: Option<&pb::MessageHeader>,
    cluster_id: &str,
    local_id: NodeId,
    members: &[NodeId],
) -> Result<(), String> {
    let Some(header) = header else {
        return Err("missing message header: is this a kvstore peer?".into());
    };
    if header.cluster_id != cluster_id {
        return Err(format!(
            "cluster id mismatch: this node belongs to cluster {cluster_id:?}, the sender to {:?}",
            header.cluster_id
        ));
    }
    if header.to != local_id {
        return Err(format!(
            "message for node {} reached node {local_id}: check the --peers addresses",
            header.to
        ));
    }
    if header.from == local_id || !members.contains(&header.from) {
        return Err(format!(
            "node {} is not a member of this cluster (members: {members:?})",
            header.from
        ));
    }
    if header.term > TERM_MAX {
        return Err(format!(
            "term {} is above the limit {TERM_MAX}: a corrupt or forged message",
            header.term
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    /// Through a `Stream`, with its header visible before decoding.
    fn round_trip(message: Message) {
        let Some(wire) = to_wire("c", &message) else {
            assert!(matches!(message.body, MessageBody::InstallSnapshot { .. }));
            return;
        };
        let header = wire_header(&wire).expect("a header").clone();
        assert_eq!((header.from, header.to, header.term), (1, 2, 7));
        assert_eq!(from_wire(wire).unwrap(), message);
    }

    fn message(body: MessageBody) -> Message {
        Message {
            from: 1,
            to: 2,
            term: 7,
            body,
        }
    }

    #[test]
    fn entry_payloads_are_shared_not_copied() {
        let entry = Entry {
            index: 3,
            term: 2,
            kind: EntryKind::Normal,
            data: Bytes::from(vec![7u8; 1024]),
        };
        let wire = entry_to_proto(&entry);
        assert_eq!(wire.data.as_ptr(), entry.data.as_ptr());
        let back = entry_from_proto(wire).unwrap();
        assert_eq!(back.data.as_ptr(), entry.data.as_ptr());
    }

    #[test]
    fn every_message_survives_the_protobuf_round_trip() {
        let entry = |index, kind| Entry {
            index,
            term: 6,
            kind,
            data: if kind == EntryKind::Normal {
                Bytes::from_static(&[0, 1, 255])
            } else {
                Bytes::new()
            },
        };
        round_trip(message(MessageBody::RequestVote {
            pre_vote: true,
            last_log_index: 9,
            last_log_term: 5,
            transfer: false,
        }));
        round_trip(message(MessageBody::RequestVote {
            pre_vote: false,
            last_log_index: 9,
            last_log_term: 5,
            transfer: true,
        }));
        round_trip(message(MessageBody::AppendEntries {
            prev_log_index: 3,
            prev_log_term: 2,
            entries: vec![entry(4, EntryKind::Empty), entry(5, EntryKind::Normal)],
            leader_commit: 3,
        }));
        round_trip(message(MessageBody::AppendEntries {
            prev_log_index: 3,
            prev_log_term: 2,
            entries: Vec::new(),
            leader_commit: 3,
        }));
        round_trip(message(MessageBody::Heartbeat {
            leader_commit: 4,
            read_round: 12,
        }));
        round_trip(message(MessageBody::TimeoutNow));
        round_trip(message(MessageBody::InstallSnapshot {
            snapshot: SnapshotMetadata {
                index: 100,
                term: 4,
            },
        }));
        round_trip(message(MessageBody::RequestVoteResponse {
            pre_vote: true,
            granted: false,
        }));
        round_trip(message(MessageBody::AppendEntriesResponse {
            success: false,
            index: 8,
            reject_hint_index: 6,
            reject_hint_term: 3,
        }));
        round_trip(message(MessageBody::HeartbeatResponse {
            read_round: 12,
            log_lost_after: None,
        }));
        round_trip(message(MessageBody::HeartbeatResponse {
            read_round: 12,
            log_lost_after: Some(0),
        }));
        round_trip(message(MessageBody::InstallSnapshotResponse { index: 100 }));
        round_trip(message(MessageBody::TermQuery));
        round_trip(message(MessageBody::TermAnswer));
    }

    #[test]
    fn malformed_entries_are_refused() {
        let append = |request| pb::RaftMessage {
            message: Some(pb::raft_message::Message::AppendEntries(request)),
        };
        let request = pb::AppendEntriesRequest {
            header: Some(pb::MessageHeader::default()),
            prev_log_index: 3,
            entries: vec![pb::Entry {
                index: 5,
                term: 1,
                kind: pb::EntryKind::Normal as i32,
                data: Bytes::new(),
            }],
            ..Default::default()
        };
        assert!(
            from_wire(append(request)).is_err(),
            "a gap after prev_log_index"
        );
        let request = pb::AppendEntriesRequest {
            header: Some(pb::MessageHeader::default()),
            prev_log_index: 3,
            entries: vec![pb::Entry {
                index: 4,
                term: 1,
                kind: 0,
                data: Bytes::new(),
            }],
            ..Default::default()
        };
        assert!(from_wire(append(request)).is_err(), "unspecified kind");
        let vote = pb::RaftMessage {
            message: Some(pb::raft_message::Message::RequestVote(
                pb::RequestVoteRequest::default(),
            )),
        };
        assert!(from_wire(vote).is_err(), "no header");
        assert!(from_wire(pb::RaftMessage::default()).is_err(), "no message");
    }

    #[test]
    fn headers_from_other_clusters_nodes_or_strangers_are_refused() {
        let header = |cluster: &str, from, to| pb::MessageHeader {
            cluster_id: cluster.into(),
            from,
            to,
            term: 1,
            storage_version_max: 0,
        };
        let members = [1, 2, 3];
        assert!(check_header(Some(&header("c", 2, 1)), "c", 1, &members).is_ok());
        let error = check_header(Some(&header("other", 2, 1)), "c", 1, &members).unwrap_err();
        assert!(error.contains("cluster id mismatch"), "{error}");
        assert!(check_header(Some(&header("c", 2, 3)), "c", 1, &members).is_err());
        assert!(check_header(Some(&header("c", 9, 1)), "c", 1, &members).is_err());
        assert!(check_header(Some(&header("c", 1, 1)), "c", 1, &members).is_err());
        assert!(check_header(None, "c", 1, &members).is_err());
        let mut huge_term = header("c", 2, 1);
        huge_term.term = u64::MAX;
        let error = check_header(Some(&huge_term), "c", 1, &members).unwrap_err();
        assert!(error.contains("above the limit"), "{error}");
        huge_term.term = TERM_MAX;
        assert!(check_header(Some(&huge_term), "c", 1, &members).is_ok());
    }
}
