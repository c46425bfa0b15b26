//! The inbound side of the peer protocol: the `kvstore.raft.v1.Raft` gRPC
//! service on the raft port. Every request's header is checked first, so a
//! node of another cluster or a stray client is refused and changes nothing.

use std::time::Duration;

use kvstore_proto::raft::v1 as pb;
use kvstore_proto::raft::v1::raft_server::Raft;
use kvstore_raft::{Message, SnapshotMetadata};
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Mutex};
use tonic::{Request, Response, Status, Streaming};

use super::convert::{self, ResponseProto};
use super::reconnect::ReportSchedule;
use crate::node::{Node, ServedBy};
use crate::snapshot::{self, SnapshotDirectory};
use crate::state_machine::log_encoding;

/// Full name of the peer service, as reflection lists it.
pub const RAFT_SERVICE_NAME: &str = "kvstore.raft.v1.Raft";

/// How long an inbound message may wait for the driver's answer.
pub const INBOUND_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The Raft peer service.
#[derive(Debug)]
pub struct RaftService {
    node: Node,
    snapshots: SnapshotDirectory,
    /// One snapshot is received at a time.
    receiving_snapshot: Mutex<()>,
    /// Turns true when the node stops: inbound streams end then, so that
    /// graceful shutdown does not wait for peers to close them.
    stopping: watch::Receiver<bool>,
    /// Rate-limits the lines about refused streams: a peer with a wrong
    /// `--peers` address retries for as long as it runs.
    refusal_reports: RefusalReports,
}

/// The shared schedule of "peer stream refused" lines.
type RefusalReports = std::sync::Arc<std::sync::Mutex<ReportSchedule>>;

impl RaftService {
    /// The service for `node`, receiving snapshots into `snapshots`; its
    /// inbound streams end when `stopping` turns true.
    pub fn new(node: Node, snapshots: SnapshotDirectory, stopping: watch::Receiver<bool>) -> Self {
        Self {
            node,
            snapshots,
            receiving_snapshot: Mutex::new(()),
            stopping,
            refusal_reports: RefusalReports::default(),
        }
    }

    fn check(&self, header: Option<&pb::MessageHeader>) -> Result<(), Status> {
        let identity = self.node.membership();
        convert::check_header(header, &identity.cluster_id, identity.id, &identity.members)
            .map_err(Status::failed_precondition)
    }

    /// Steps `message` into the driver and waits for its answer.
    async fn exchange(&self, message: Message) -> Result<ResponseProto, Status> {
        let answer = self
            .node
            .deliver(message, true)
            .await
            .map_err(Status::from)?
            .expect("an answer was asked for");
        let answer = tokio::time::timeout(INBOUND_ANSWER_TIMEOUT, answer)
            .await
            .map_err(|_| Status::deadline_exceeded("the node did not answer in time"))?
            .map_err(|_| Status::aborted("message ignored (stale or superseded)"))?;
        convert::response_to_proto(&self.node.membership().cluster_id, &answer)
            .ok_or_else(|| Status::internal("the driver answered with a request message"))
    }
}

fn malformed(error: convert::MalformedMessage) -> Status {
    Status::invalid_argument(error.to_string())
}

type ForwardResult = Result<Response<pb::ForwardResponse>, Status>;

/// What the receiver of a `Stream` sends back: nothing but the final status.
type StreamAcks = tokio_stream::wrappers::ReceiverStream<Result<pb::StreamAck, Status>>;

/// Steps every message of an inbound `Stream` into the driver, in order,
/// until the sender closes it; ends it with an error status at the first
/// message that is refused.
async fn receive_stream(
    node: Node,
    mut inbound: Streaming<pb::MessageBatch>,
    outcome: tokio::sync::mpsc::Sender<Result<pb::StreamAck, Status>>,
    mut stopping: watch::Receiver<bool>,
    refusal_reports: RefusalReports,
) {
    let identity = node.membership().clone();
    let mut peer = None;
    let refusal = loop {
        let received = tokio::select! {
            received = inbound.message() => received,
            () = async { let _ = stopping.wait_for(|stopping| *stopping).await; } => {
                let _ = outcome.send(Err(Status::unavailable("the node is shutting down"))).await;
                return;
            }
        };
        let batch = match received {
            Ok(Some(batch)) => batch,
            // Closed by the sender, or the connection broke: nothing to tell.
            Ok(None) | Err(_) => return,
        };
        let mut refusal = None;
        for wire in batch.messages {
            let header = convert::stream_message_header(&wire);
            if let Err(reason) =
                convert::check_header(header, &identity.cluster_id, identity.id, &identity.members)
            {
                refusal = Some(Status::failed_precondition(reason));
                break;
            }
            let from = header.map(|header| header.from);
            if peer.is_some_and(|peer| Some(peer) != from) {
                refusal = Some(Status::failed_precondition(
                    "one stream carries the messages of one sender",
                ));
                break;
            }
            peer = from;
            let message = match convert::stream_message_from_proto(wire) {
                Ok(message) => message,
                Err(error) => {
                    refusal = Some(malformed(error));
                    break;
                }
            };
            if let Err(error) = node.deliver(message, false).await {
                refusal = Some(Status::from(error));
                break;
            }
        }
        if let Some(refusal) = refusal {
            break refusal;
        }
    };
    let refused = refusal_reports
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .record(std::time::Instant::now());
    if let Some(refused) = refused {
        // `refused`: streams refused since the last line, this one included.
        tracing::warn!(peer, code = ?refusal.code(), reason = refusal.message(), refused, "peer stream refused");
    }
    let _ = outcome.send(Err(refusal)).await;
}

/// Result batches a forward stream may queue for sending; past it, serving
/// waits (the follower is not reading its answers).
pub const FORWARD_RESULT_BATCHES_QUEUED: usize = 64;
/// Results in one batch at most.
pub const FORWARD_RESULTS_PER_BATCH_MAX: usize = 256;
/// Encoded result bytes in one batch: it is closed once it reaches this
/// (a forwarded read's result carries a value of up to 1 MiB by default).
pub const FORWARD_RESULTS_BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;

/// What the leader sends back on a `ForwardStream`.
type ForwardResults =
    tokio_stream::wrappers::ReceiverStream<Result<pb::ForwardResultBatch, Status>>;

/// Serves one forwarded request as the leader (after its header was checked).
async fn serve_forwarded(
    node: &Node,
    request: pb::ForwardRequest,
) -> Result<pb::ForwardResponse, Status> {
    let from = request
        .header
        .as_ref()
        .map(|header| header.from)
        .unwrap_or_default();
    let (served_by, found, value): (ServedBy, bool, Vec<u8>) = match request.request {
        Some(pb::forward_request::Request::Write(command)) => {
            let (command, _) = log_encoding::from_proto(command)
                .map_err(|error| Status::invalid_argument(format!("forwarded write: {error}")))?;
            let (served_by, found) = node
                .write_as_leader(command, &request.request_id, from)
                .await
                .map_err(Status::from)?;
            (served_by, found, Vec::new())
        }
        Some(pb::forward_request::Request::ReadKey(key)) => {
            let (served_by, value) = node
                .read_as_leader(key, &request.request_id, from)
                .await
                .map_err(Status::from)?;
            (served_by, value.is_some(), value.unwrap_or_default())
        }
        Some(pb::forward_request::Request::ReadIndex(_)) => {
            let served_by = node
                .read_index_as_leader(&request.request_id, from)
                .await
                .map_err(Status::from)?;
            (served_by, false, Vec::new())
        }
        None => return Err(Status::invalid_argument("forwarded request is empty")),
    };
    Ok(pb::ForwardResponse {
        header: Some(pb::MessageHeader {
            cluster_id: node.membership().cluster_id.clone(),
            from: served_by.node_id,
            to: from,
            term: served_by.term,
        }),
        index: served_by.index,
        found,
        value,
    })
}

/// Serves every call of an inbound `ForwardStream` concurrently and sends
/// the results back in batches, until the follower closes the stream or the
/// node stops. Calls in flight when it ends are still served (a write may
/// already be proposed); only their answers are lost, as with a broken call.
async fn serve_forward_stream(
    node: Node,
    mut inbound: Streaming<pb::ForwardBatch>,
    results: tokio::sync::mpsc::Sender<Result<pb::ForwardResultBatch, Status>>,
    mut stopping: watch::Receiver<bool>,
) {
    let (served, mut served_receiver) = tokio::sync::mpsc::unbounded_channel();
    let identity = node.membership().clone();
    let mut inbound_open = true;
    let mut in_flight = 0usize;
    loop {
        tokio::select! {
            received = inbound.message(), if inbound_open => {
                let batch = match received {
                    Ok(Some(batch)) => batch,
                    Ok(None) | Err(_) => {
                        inbound_open = false;
                        continue;
                    }
                };
                for call in batch.calls {
                    in_flight += 1;
                    let node = node.clone();
                    let served = served.clone();
                    let checked = match call.request {
                        Some(request) => convert::check_header(
                            request.header.as_ref(),
                            &identity.cluster_id,
                            identity.id,
                            &identity.members,
                        )
                        .map(|()| request),
                        None => Err("forwarded call without a request".to_string()),
                    };
                    tokio::spawn(async move {
                        let outcome = match checked {
                            Ok(request) => serve_forwarded(&node, request).await,
                            Err(reason) => Err(Status::failed_precondition(reason)),
                        };
                        let _ = served.send(forward_result(call.id, outcome));
                    });
                }
            }
            Some(first) = served_receiver.recv() => {
                let mut batch_bytes = prost::Message::encoded_len(&first);
                let mut batch = vec![first];
                while batch.len() < FORWARD_RESULTS_PER_BATCH_MAX
                    && batch_bytes < FORWARD_RESULTS_BATCH_BYTES_MAX
                {
                    match served_receiver.try_recv() {
                        Ok(result) => {
                            batch_bytes += prost::Message::encoded_len(&result);
                            batch.push(result);
                        }
                        Err(_) => break,
                    }
                }
                in_flight -= batch.len();
                if results.send(Ok(pb::ForwardResultBatch { results: batch })).await.is_err() {
                    return;
                }
            }
            () = async { let _ = stopping.wait_for(|stopping| *stopping).await; } => {
                let _ = results.send(Err(Status::unavailable("the node is shutting down"))).await;
                return;
            }
        }
        if !inbound_open && in_flight == 0 {
            return;
        }
    }
}

fn forward_result(id: u64, outcome: Result<pb::ForwardResponse, Status>) -> pb::ForwardResult {
    pb::ForwardResult {
        id,
        outcome: Some(match outcome {
            Ok(response) => pb::forward_result::Outcome::Response(response),
            Err(status) => pb::forward_result::Outcome::Error(pb::ForwardError {
                code: status.code() as i32,
                message: status.message().to_string(),
            }),
        }),
    }
}

#[tonic::async_trait]
impl Raft for RaftService {
    type StreamStream = StreamAcks;

    async fn stream(
        &self,
        request: Request<Streaming<pb::MessageBatch>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        // Capacity 1: the only item ever sent is the refusal that ends it.
        let (outcome, acks) = tokio::sync::mpsc::channel(1);
        tokio::spawn(receive_stream(
            self.node.clone(),
            request.into_inner(),
            outcome,
            self.stopping.clone(),
            self.refusal_reports.clone(),
        ));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            acks,
        )))
    }

    async fn request_vote(
        &self,
        request: Request<pb::RequestVoteRequest>,
    ) -> Result<Response<pb::RequestVoteResponse>, Status> {
        let request = request.into_inner();
        self.check(request.header.as_ref())?;
        let message = convert::request_vote_from_proto(request).map_err(malformed)?;
        match self.exchange(message).await? {
            ResponseProto::Vote(response) => Ok(Response::new(response)),
            other => Err(Status::internal(format!("unexpected answer {other:?}"))),
        }
    }

    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let request = request.into_inner();
        self.check(request.header.as_ref())?;
        let message = convert::append_entries_from_proto(request).map_err(malformed)?;
        match self.exchange(message).await? {
            ResponseProto::Append(response) => Ok(Response::new(response)),
            other => Err(Status::internal(format!("unexpected answer {other:?}"))),
        }
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::InstallSnapshotChunk>>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        self.check(first.header.as_ref())?;
        let header = first.header.clone().expect("checked above");
        let snapshot = first
            .snapshot
            .map(|snapshot| SnapshotMetadata {
                index: snapshot.index,
                term: snapshot.term,
            })
            .ok_or_else(|| Status::invalid_argument("the first chunk must name the snapshot"))?;
        let _receiving = self.receiving_snapshot.lock().await;
        let path = self.snapshots.temporary_path_of(snapshot);
        let io =
            |error: std::io::Error| Status::internal(format!("cannot store the snapshot: {error}"));
        let mut file = tokio::fs::File::create(&path).await.map_err(io)?;
        let mut expected_offset = 0u64;
        let mut chunk = Some(first);
        let total_bytes = loop {
            let Some(current) = chunk.take() else {
                return Err(Status::invalid_argument(
                    "snapshot stream ended before its last chunk",
                ));
            };
            if current.offset != expected_offset {
                return Err(Status::invalid_argument(format!(
                    "snapshot chunk at offset {}, expected {expected_offset}",
                    current.offset
                )));
            }
            file.write_all(&current.data).await.map_err(io)?;
            expected_offset += current.data.len() as u64;
            if current.done {
                break current.total_bytes;
            }
            chunk = stream.message().await?;
        };
        if total_bytes != expected_offset {
            return Err(Status::invalid_argument(format!(
                "snapshot of {expected_offset} bytes received, {total_bytes} announced"
            )));
        }
        file.sync_all().await.map_err(io)?;
        drop(file);
        let check_path = path.clone();
        let verified = tokio::task::spawn_blocking(move || {
            snapshot::verify_checksum(&check_path)?;
            snapshot::peek_metadata(&check_path)
        })
        .await
        .map_err(|error| Status::internal(error.to_string()))?;
        match verified {
            Ok(in_file) if in_file == snapshot => {}
            Ok(in_file) => {
                return Err(Status::invalid_argument(format!(
                    "snapshot file is {in_file:?}, announced {snapshot:?}"
                )))
            }
            Err(error) => return Err(Status::data_loss(error.to_string())),
        }
        self.snapshots
            .install(snapshot)
            .map_err(|error| Status::internal(error.to_string()))?;
        tracing::info!(
            from = header.from,
            index = snapshot.index,
            term = snapshot.term,
            bytes = total_bytes,
            "snapshot received and stored"
        );
        match self
            .exchange(convert::install_snapshot_message(&header, snapshot))
            .await?
        {
            ResponseProto::Snapshot(response) => Ok(Response::new(response)),
            other => Err(Status::internal(format!("unexpected answer {other:?}"))),
        }
    }

    async fn timeout_now(
        &self,
        request: Request<pb::TimeoutNowRequest>,
    ) -> Result<Response<pb::TimeoutNowResponse>, Status> {
        let request = request.into_inner();
        self.check(request.header.as_ref())?;
        let message = convert::timeout_now_from_proto(request).map_err(malformed)?;
        let header = convert::header(
            &self.node.membership().cluster_id,
            &Message {
                from: message.to,
                to: message.from,
                term: message.term,
                body: message.body.clone(),
            },
        );
        self.node
            .deliver(message, false)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::TimeoutNowResponse { header }))
    }

    async fn forward(&self, request: Request<pb::ForwardRequest>) -> ForwardResult {
        let request = request.into_inner();
        self.check(request.header.as_ref())?;
        serve_forwarded(&self.node, request)
            .await
            .map(Response::new)
    }

    type ForwardStreamStream = ForwardResults;

    async fn forward_stream(
        &self,
        request: Request<Streaming<pb::ForwardBatch>>,
    ) -> Result<Response<Self::ForwardStreamStream>, Status> {
        let (results, receiver) = tokio::sync::mpsc::channel(FORWARD_RESULT_BATCHES_QUEUED);
        tokio::spawn(serve_forward_stream(
            self.node.clone(),
            request.into_inner(),
            results,
            self.stopping.clone(),
        ));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        )))
    }
}
