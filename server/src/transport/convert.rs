//! The one boundary between the Raft core's message types and the peer
//! protocol's protobuf types (`kvstore.raft.v1`). Nothing else converts them.

use kvstore_proto::raft::v1 as pb;
use kvstore_raft::{Entry, EntryKind, Message, MessageBody, NodeId, SnapshotMetadata, TERM_MAX};

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

/// A request message, ready to be sent as one RPC.
#[derive(Debug)]
pub enum OutboundRequest {
    /// `Raft.RequestVote`.
    RequestVote(pb::RequestVoteRequest),
    /// `Raft.AppendEntries` (entries or heartbeat).
    AppendEntries(pb::AppendEntriesRequest),
    /// `Raft.InstallSnapshot`: the transport streams the snapshot file.
    InstallSnapshot(pb::MessageHeader, SnapshotMetadata),
    /// `Raft.TimeoutNow`.
    TimeoutNow(pb::TimeoutNowRequest),
}

/// What kind of answer a request waits for. Every request message has one
/// kind; the driver uses it to pair answers with waiting RPCs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyKind {
    /// A vote or pre-vote answer.
    Vote,
    /// An AppendEntries answer.
    Append,
    /// A heartbeat answer.
    Heartbeat,
    /// An InstallSnapshot answer.
    Snapshot,
}

/// For a response message: which request kind it answers. `None` for requests.
pub fn reply_kind_of_response(body: &MessageBody) -> Option<ReplyKind> {
    match body {
        MessageBody::RequestVoteResponse { .. } => Some(ReplyKind::Vote),
        MessageBody::AppendEntriesResponse { .. } => Some(ReplyKind::Append),
        MessageBody::HeartbeatResponse { .. } => Some(ReplyKind::Heartbeat),
        MessageBody::InstallSnapshotResponse { .. } => Some(ReplyKind::Snapshot),
        _ => None,
    }
}

/// Converts a request message for sending. `None` for response messages
/// (those travel as RPC answers).
pub fn outbound_request(cluster_id: &str, message: &Message) -> Option<OutboundRequest> {
    let header = header(cluster_id, message);
    Some(match &message.body {
        MessageBody::RequestVote {
            pre_vote,
            last_log_index,
            last_log_term,
            transfer,
        } => OutboundRequest::RequestVote(pb::RequestVoteRequest {
            header,
            pre_vote: *pre_vote,
            last_log_index: *last_log_index,
            last_log_term: *last_log_term,
            transfer: *transfer,
        }),
        MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
        } => OutboundRequest::AppendEntries(pb::AppendEntriesRequest {
            header,
            prev_log_index: *prev_log_index,
            prev_log_term: *prev_log_term,
            entries: entries.iter().map(entry_to_proto).collect(),
            leader_commit: *leader_commit,
            heartbeat: false,
            read_round: 0,
        }),
        MessageBody::Heartbeat {
            leader_commit,
            read_round,
        } => OutboundRequest::AppendEntries(pb::AppendEntriesRequest {
            header,
            prev_log_index: 0,
            prev_log_term: 0,
            entries: Vec::new(),
            leader_commit: *leader_commit,
            heartbeat: true,
            read_round: *read_round,
        }),
        MessageBody::InstallSnapshot { snapshot } => {
            OutboundRequest::InstallSnapshot(header.expect("header is always set"), *snapshot)
        }
        MessageBody::TimeoutNow => OutboundRequest::TimeoutNow(pb::TimeoutNowRequest { header }),
        _ => return None,
    })
}

/// Header fields every inbound message must carry.
fn message_from(header: &pb::MessageHeader, body: MessageBody) -> Message {
    Message {
        from: header.from,
        to: header.to,
        term: header.term,
        body,
    }
}

fn required_header(
    header: Option<pb::MessageHeader>,
) -> Result<pb::MessageHeader, MalformedMessage> {
    header.ok_or_else(|| MalformedMessage("missing header".into()))
}

/// An inbound RequestVote as a core message.
pub fn request_vote_from_proto(
    request: pb::RequestVoteRequest,
) -> Result<Message, MalformedMessage> {
    let header = required_header(request.header)?;
    Ok(message_from(
        &header,
        MessageBody::RequestVote {
            pre_vote: request.pre_vote,
            last_log_index: request.last_log_index,
            last_log_term: request.last_log_term,
            transfer: request.transfer,
        },
    ))
}

/// An inbound AppendEntries (or heartbeat) as a core message.
pub fn append_entries_from_proto(
    request: pb::AppendEntriesRequest,
) -> Result<Message, MalformedMessage> {
    let header = required_header(request.header)?;
    let body = if request.heartbeat {
        MessageBody::Heartbeat {
            leader_commit: request.leader_commit,
            read_round: request.read_round,
        }
    } else {
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
        MessageBody::AppendEntries {
            prev_log_index: request.prev_log_index,
            prev_log_term: request.prev_log_term,
            entries,
            leader_commit: request.leader_commit,
        }
    };
    Ok(message_from(&header, body))
}

/// An inbound TimeoutNow as a core message.
pub fn timeout_now_from_proto(request: pb::TimeoutNowRequest) -> Result<Message, MalformedMessage> {
    let header = required_header(request.header)?;
    Ok(message_from(&header, MessageBody::TimeoutNow))
}

/// The core message for a completely received snapshot.
pub fn install_snapshot_message(header: &pb::MessageHeader, snapshot: SnapshotMetadata) -> Message {
    message_from(header, MessageBody::InstallSnapshot { snapshot })
}

/// A RequestVote answer as a core message.
pub fn vote_response_from_proto(
    response: pb::RequestVoteResponse,
) -> Result<Message, MalformedMessage> {
    let header = required_header(response.header)?;
    Ok(message_from(
        &header,
        MessageBody::RequestVoteResponse {
            pre_vote: response.pre_vote,
            granted: response.granted,
        },
    ))
}

/// An AppendEntries answer as a core message.
pub fn append_response_from_proto(
    response: pb::AppendEntriesResponse,
) -> Result<Message, MalformedMessage> {
    let header = required_header(response.header)?;
    let body = if response.heartbeat {
        MessageBody::HeartbeatResponse {
            read_round: response.read_round,
            log_lost_after: (!response.success).then_some(response.index),
        }
    } else {
        MessageBody::AppendEntriesResponse {
            success: response.success,
            index: response.index,
            reject_hint_index: response.reject_hint_index,
            reject_hint_term: response.reject_hint_term,
        }
    };
    Ok(message_from(&header, body))
}

/// An InstallSnapshot answer as a core message.
pub fn snapshot_response_from_proto(
    response: pb::InstallSnapshotResponse,
) -> Result<Message, MalformedMessage> {
    let header = required_header(response.header)?;
    Ok(message_from(
        &header,
        MessageBody::InstallSnapshotResponse {
            index: response.index,
        },
    ))
}

/// A response message from the core, as the RPC answer it travels in.
#[derive(Debug)]
pub enum ResponseProto {
    /// Answer to RequestVote.
    Vote(pb::RequestVoteResponse),
    /// Answer to AppendEntries (entries or heartbeat).
    Append(pb::AppendEntriesResponse),
    /// Answer to InstallSnapshot.
    Snapshot(pb::InstallSnapshotResponse),
}

/// Converts a core response message to its protobuf answer; `None` for a
/// message that is not a response.
pub fn response_to_proto(cluster_id: &str, message: &Message) -> Option<ResponseProto> {
    let header = header(cluster_id, message);
    Some(match &message.body {
        MessageBody::RequestVoteResponse { pre_vote, granted } => {
            ResponseProto::Vote(pb::RequestVoteResponse {
                header,
                pre_vote: *pre_vote,
                granted: *granted,
            })
        }
        MessageBody::AppendEntriesResponse {
            success,
            index,
            reject_hint_index,
            reject_hint_term,
        } => ResponseProto::Append(pb::AppendEntriesResponse {
            header,
            success: *success,
            index: *index,
            reject_hint_index: *reject_hint_index,
            reject_hint_term: *reject_hint_term,
            heartbeat: false,
            read_round: 0,
        }),
        MessageBody::HeartbeatResponse {
            read_round,
            log_lost_after,
        } => ResponseProto::Append(pb::AppendEntriesResponse {
            header,
            success: log_lost_after.is_none(),
            index: log_lost_after.unwrap_or(0),
            reject_hint_index: 0,
            reject_hint_term: 0,
            heartbeat: true,
            read_round: *read_round,
        }),
        MessageBody::InstallSnapshotResponse { index } => {
            ResponseProto::Snapshot(pb::InstallSnapshotResponse {
                header,
                index: *index,
            })
        }
        _ => return None,
    })
}

/// A core message as it travels on a `Stream`; `None` for InstallSnapshot
/// requests, which travel over their own RPC with the snapshot file.
pub fn stream_message(cluster_id: &str, message: &Message) -> Option<pb::RaftMessage> {
    use pb::raft_message::Message as Wire;
    let wire = match &message.body {
        MessageBody::TermQuery => Wire::TermQuery(pb::TermQuery {
            header: header(cluster_id, message),
        }),
        MessageBody::TermAnswer => Wire::TermAnswer(pb::TermAnswer {
            header: header(cluster_id, message),
        }),
        _ => stream_message_rpc_shaped(cluster_id, message)?,
    };
    Some(pb::RaftMessage {
        message: Some(wire),
    })
}

/// The stream form of a message that also has an RPC of its own.
fn stream_message_rpc_shaped(
    cluster_id: &str,
    message: &Message,
) -> Option<pb::raft_message::Message> {
    use pb::raft_message::Message as Wire;
    Some(match outbound_request(cluster_id, message) {
        Some(OutboundRequest::RequestVote(request)) => Wire::RequestVote(request),
        Some(OutboundRequest::AppendEntries(request)) => Wire::AppendEntries(request),
        Some(OutboundRequest::TimeoutNow(request)) => Wire::TimeoutNow(request),
        Some(OutboundRequest::InstallSnapshot(..)) => return None,
        None => match response_to_proto(cluster_id, message)? {
            ResponseProto::Vote(response) => Wire::RequestVoteResponse(response),
            ResponseProto::Append(response) => Wire::AppendEntriesResponse(response),
            ResponseProto::Snapshot(response) => Wire::InstallSnapshotResponse(response),
        },
    })
}

/// The header of a message received on a `Stream`.
pub fn stream_message_header(message: &pb::RaftMessage) -> Option<&pb::MessageHeader> {
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
pub fn stream_message_from_proto(message: pb::RaftMessage) -> Result<Message, MalformedMessage> {
    use pb::raft_message::Message as Wire;
    match message.message {
        Some(Wire::RequestVote(request)) => request_vote_from_proto(request),
        Some(Wire::RequestVoteResponse(response)) => vote_response_from_proto(response),
        Some(Wire::AppendEntries(request)) => append_entries_from_proto(request),
        Some(Wire::AppendEntriesResponse(response)) => append_response_from_proto(response),
        Some(Wire::TimeoutNow(request)) => timeout_now_from_proto(request),
        Some(Wire::InstallSnapshotResponse(response)) => snapshot_response_from_proto(response),
        Some(Wire::TermQuery(query)) => Ok(message_from(
            &required_header(query.header)?,
            MessageBody::TermQuery,
        )),
        Some(Wire::TermAnswer(answer)) => Ok(message_from(
            &required_header(answer.header)?,
            MessageBody::TermAnswer,
        )),
        None => Err(MalformedMessage("empty stream message".into())),
    }
}

/// The reply kind an inbound request expects, `None` when it gets none
/// (TimeoutNow is acknowledged at once).
pub fn expected_reply(body: &MessageBody) -> Option<ReplyKind> {
    match body {
        MessageBody::RequestVote { .. } => Some(ReplyKind::Vote),
        MessageBody::AppendEntries { .. } => Some(ReplyKind::Append),
        MessageBody::Heartbeat { .. } => Some(ReplyKind::Heartbeat),
        MessageBody::InstallSnapshot { .. } => Some(ReplyKind::Snapshot),
        _ => None,
    }
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

    /// Through a `Stream` too, with its header visible before decoding.
    fn stream_round_trip(message: &Message) {
        let Some(wire) = stream_message("c", message) else {
            assert!(matches!(message.body, MessageBody::InstallSnapshot { .. }));
            return;
        };
        let header = stream_message_header(&wire).expect("a header").clone();
        assert_eq!((header.from, header.to, header.term), (1, 2, 7));
        assert_eq!(stream_message_from_proto(wire).unwrap(), *message);
    }

    fn round_trip(message: Message) {
        stream_round_trip(&message);
        let request = outbound_request("c", &message).expect("a request");
        let back = match request {
            OutboundRequest::RequestVote(request) => request_vote_from_proto(request).unwrap(),
            OutboundRequest::AppendEntries(request) => append_entries_from_proto(request).unwrap(),
            OutboundRequest::TimeoutNow(request) => timeout_now_from_proto(request).unwrap(),
            OutboundRequest::InstallSnapshot(header, snapshot) => {
                install_snapshot_message(&header, snapshot)
            }
        };
        assert_eq!(back, message);
    }

    fn response_round_trip(message: Message) {
        stream_round_trip(&message);
        let back = match response_to_proto("c", &message).expect("a response") {
            ResponseProto::Vote(response) => vote_response_from_proto(response).unwrap(),
            ResponseProto::Append(response) => append_response_from_proto(response).unwrap(),
            ResponseProto::Snapshot(response) => snapshot_response_from_proto(response).unwrap(),
        };
        assert_eq!(back, message);
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
        response_round_trip(message(MessageBody::RequestVoteResponse {
            pre_vote: true,
            granted: false,
        }));
        response_round_trip(message(MessageBody::AppendEntriesResponse {
            success: false,
            index: 8,
            reject_hint_index: 6,
            reject_hint_term: 3,
        }));
        response_round_trip(message(MessageBody::HeartbeatResponse {
            read_round: 12,
            log_lost_after: None,
        }));
        response_round_trip(message(MessageBody::HeartbeatResponse {
            read_round: 12,
            log_lost_after: Some(0),
        }));
        response_round_trip(message(MessageBody::InstallSnapshotResponse { index: 100 }));
        stream_round_trip(&message(MessageBody::TermQuery));
        stream_round_trip(&message(MessageBody::TermAnswer));
    }

    #[test]
    fn malformed_entries_are_refused() {
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
            append_entries_from_proto(request).is_err(),
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
        assert!(
            append_entries_from_proto(request).is_err(),
            "unspecified kind"
        );
        assert!(
            request_vote_from_proto(pb::RequestVoteRequest::default()).is_err(),
            "no header"
        );
    }

    #[test]
    fn headers_from_other_clusters_nodes_or_strangers_are_refused() {
        let header = |cluster: &str, from, to| pb::MessageHeader {
            cluster_id: cluster.into(),
            from,
            to,
            term: 1,
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
