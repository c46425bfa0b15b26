//! The inbound side of the peer protocol: the `kvstore.raft.v1.Raft` gRPC
//! service on the raft port. Every request's header is checked first, so a
//! node of another cluster or a stray client is refused and changes nothing.

use kvstore_proto::raft::v1 as pb;
use kvstore_proto::raft::v1::raft_server::{Raft, RaftServer};
use kvstore_raft::SnapshotMetadata;
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Mutex};
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use super::inbound::{PeerInbound, SharedForwardedRequests};
use super::leader_link::LeaderReply;
use super::reconnect::ReportSchedule;
use crate::membership::Membership;
use crate::snapshot::{self, SnapshotDirectory};
use crate::state_machine::{kv_encoding, log_encoding, STORAGE_VERSION_MAX};

/// Full name of the peer service, as reflection lists it.
pub const RAFT_SERVICE_NAME: &str = "kvstore.raft.v1.Raft";

/// The Raft peer service.
pub struct RaftService {
    membership: Membership,
    /// Where inbound Raft messages go: the driver's peer queue.
    inbound: PeerInbound,
    /// Serves followers' forwarded requests (the node).
    forwarded: SharedForwardedRequests,
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

impl std::fmt::Debug for RaftService {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RaftService")
            .field("membership", &self.membership)
            .finish_non_exhaustive()
    }
}

/// The shared schedule of "peer stream refused" lines.
type RefusalReports = std::sync::Arc<std::sync::Mutex<ReportSchedule>>;

impl RaftService {
    /// The peer service of the node of `membership`: Raft messages go to
    /// `inbound`, forwarded requests to `forwarded`, snapshots are received
    /// into `snapshots`; its inbound streams end when `stopping` turns true.
    pub fn new(
        membership: Membership,
        inbound: PeerInbound,
        forwarded: SharedForwardedRequests,
        snapshots: SnapshotDirectory,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self {
            membership,
            inbound,
            forwarded,
            snapshots,
            receiving_snapshot: Mutex::new(()),
            stopping,
            refusal_reports: RefusalReports::default(),
        }
    }

    /// The service as tonic serves it, with the peer message size limit.
    pub fn into_server(self) -> RaftServer<Self> {
        RaftServer::new(self)
            .max_decoding_message_size(crate::limits::RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(crate::limits::RAFT_MESSAGE_BYTES_MAX)
    }

    /// Writes the snapshot stream to a temporary file, checks it (offsets,
    /// size, checksum, the snapshot it names) and installs it durably.
    async fn store_snapshot(
        &self,
        header: &pb::MessageHeader,
        snapshot: SnapshotMetadata,
        first: pb::InstallSnapshotChunk,
        stream: &mut Streaming<pb::InstallSnapshotChunk>,
    ) -> Result<(), Status> {
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
        Ok(())
    }

    fn check(&self, header: Option<&pb::MessageHeader>) -> Result<(), Status> {
        check_header(&self.membership, header).map_err(Status::failed_precondition)
    }
}

/// Checks an inbound header against this node's membership.
fn check_header(membership: &Membership, header: Option<&pb::MessageHeader>) -> Result<(), String> {
    convert::check_header(
        header,
        &membership.cluster_id,
        membership.id,
        &membership.members,
    )
}

/// Reads a snapshot stream to its last chunk without storing it.
async fn drain_snapshot_chunks(
    first: pb::InstallSnapshotChunk,
    stream: &mut Streaming<pb::InstallSnapshotChunk>,
) -> Result<(), Status> {
    let mut done = first.done;
    while !done {
        match stream.message().await? {
            Some(chunk) => done = chunk.done,
            None => {
                return Err(Status::invalid_argument(
                    "snapshot stream ended before its last chunk",
                ))
            }
        }
    }
    Ok(())
}

fn malformed(error: convert::MalformedMessage) -> Status {
    Status::invalid_argument(error.to_string())
}

/// What the receiver of a `Stream` sends back: nothing but the final status.
type StreamAcks = tokio_stream::wrappers::ReceiverStream<Result<pb::StreamAck, Status>>;

/// Steps every message of an inbound `Stream` into the driver, in order,
/// until the sender closes it; ends it with an error status at the first
/// message that is refused.
async fn receive_stream(
    membership: Membership,
    to_driver: PeerInbound,
    mut inbound: Streaming<pb::MessageBatch>,
    outcome: tokio::sync::mpsc::Sender<Result<pb::StreamAck, Status>>,
    mut stopping: watch::Receiver<bool>,
    refusal_reports: RefusalReports,
) {
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
            let header = convert::wire_header(&wire);
            if let Err(reason) = check_header(&membership, header) {
                refusal = Some(Status::failed_precondition(reason));
                break;
            }
            let from = header.map(|header| header.from);
            if let Some(header) = header {
                to_driver.record_release(header.from, header.storage_version_max);
            }
            if peer.is_some_and(|peer| Some(peer) != from) {
                refusal = Some(Status::failed_precondition(
                    "one stream carries the messages of one sender",
                ));
                break;
            }
            peer = from;
            let message = match convert::from_wire(wire) {
                Ok(message) => message,
                Err(error) => {
                    refusal = Some(malformed(error));
                    break;
                }
            };
            if let Err(error) = to_driver.deliver(message).await {
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
    membership: &Membership,
    forwarded: &SharedForwardedRequests,
    request: pb::ForwardRequest,
) -> Result<pb::ForwardResponse, Status> {
    let from = request
        .header
        .as_ref()
        .map(|header| header.from)
        .unwrap_or_default();
    let reply: LeaderReply = match request.request {
        Some(pb::forward_request::Request::Write(command)) => {
            let (command, _) = log_encoding::from_proto(command)
                .map_err(|error| Status::invalid_argument(format!("forwarded write: {error}")))?;
            forwarded.write(command, request.request_id, from).await?
        }
        Some(pb::forward_request::Request::ReadIndex(_)) => {
            forwarded.read_index(request.request_id, from).await?
        }
        Some(pb::forward_request::Request::Lease(query)) => {
            forwarded
                .lease(query.id, query.keep_alive, request.request_id)
                .await?
        }
        None => return Err(Status::invalid_argument("forwarded request is empty")),
    };
    Ok(pb::ForwardResponse {
        header: Some(pb::MessageHeader {
            cluster_id: membership.cluster_id.clone(),
            from: reply.leader_id,
            to: from,
            term: reply.term,
            storage_version_max: STORAGE_VERSION_MAX,
        }),
        index: reply.index,
        found: reply.found,
        revision: i64::try_from(reply.revision).unwrap_or(i64::MAX),
        // Every previous pair: the follower cuts them to its client's flags.
        txn: reply
            .txn
            .as_ref()
            .map(|txn| kv_encoding::txn_response_to_proto(txn, &kv_encoding::all_prev_kvs(txn))),
        lease: reply.lease.map(|lease| lease.to_proto()),
    })
}

/// Serves every call of an inbound `ForwardStream` concurrently and sends
/// the results back in batches, until the follower closes the stream or the
/// node stops. Calls in flight when it ends are still served (a write may
/// already be proposed); only their answers are lost, as with a broken call.
async fn serve_forward_stream(
    membership: Membership,
    forwarded: SharedForwardedRequests,
    mut inbound: Streaming<pb::ForwardBatch>,
    results: tokio::sync::mpsc::Sender<Result<pb::ForwardResultBatch, Status>>,
    mut stopping: watch::Receiver<bool>,
) {
    let (served, mut served_receiver) = tokio::sync::mpsc::unbounded_channel();
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
                    let membership = membership.clone();
                    let forwarded = forwarded.clone();
                    let served = served.clone();
                    let checked = match call.request {
                        Some(request) => check_header(&membership, request.header.as_ref())
                            .map(|()| request),
                        None => Err("forwarded call without a request".to_string()),
                    };
                    tokio::spawn(async move {
                        let outcome = match checked {
                            Ok(request) => serve_forwarded(&membership, &forwarded, request).await,
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
            self.membership.clone(),
            self.inbound.clone(),
            request.into_inner(),
            outcome,
            self.stopping.clone(),
            self.refusal_reports.clone(),
        ));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            acks,
        )))
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
        if self.snapshots.path_of(snapshot).exists() {
            // Sent again: the leader retried while this node was still
            // restoring it. The file is stored and checked already.
            drain_snapshot_chunks(first, &mut stream).await?;
            tracing::info!(
                from = header.from,
                index = snapshot.index,
                term = snapshot.term,
                "snapshot received again; it is stored already"
            );
        } else {
            self.store_snapshot(&header, snapshot, first, &mut stream)
                .await?;
        }
        // The Raft answer travels on this node's stream once the driver has
        // installed the snapshot; the reply only says it was received.
        self.inbound
            .deliver(convert::install_snapshot_message(&header, snapshot))
            .await?;
        Ok(Response::new(pb::InstallSnapshotResponse {
            header: Some(pb::MessageHeader {
                cluster_id: self.membership.cluster_id.clone(),
                from: self.membership.id,
                to: header.from,
                term: header.term,
                storage_version_max: STORAGE_VERSION_MAX,
            }),
            index: 0,
        }))
    }

    type ForwardStreamStream = ForwardResults;

    async fn forward_stream(
        &self,
        request: Request<Streaming<pb::ForwardBatch>>,
    ) -> Result<Response<Self::ForwardStreamStream>, Status> {
        let (results, receiver) = tokio::sync::mpsc::channel(FORWARD_RESULT_BATCHES_QUEUED);
        tokio::spawn(serve_forward_stream(
            self.membership.clone(),
            self.forwarded.clone(),
            request.into_inner(),
            results,
            self.stopping.clone(),
        ));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        )))
    }
}
