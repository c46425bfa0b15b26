//! Outbound messages to peers: one queue and one task per peer.
//!
//! Connections are made lazily and re-made after failures with exponential
//! backoff; while a peer is down its messages are dropped (Raft re-sends what
//! matters), so a down or slow peer never blocks messages to the others. Each
//! request message is one RPC; its answer is fed back to the driver.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvstore_proto::raft::v1 as pb;
use kvstore_proto::raft::v1::raft_client::RaftClient;
use kvstore_raft::{Message, NodeId, SnapshotMetadata};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, Semaphore};
use tonic::transport::{Channel, Endpoint};

use super::convert::{self, OutboundRequest};
use crate::snapshot::SnapshotDirectory;

/// Messages queued per peer before new ones are dropped.
pub const PEER_QUEUE_CAPACITY: usize = 4_096;
/// RPCs in flight per peer (AppendEntries pipelining happens within this).
pub const PEER_RPCS_IN_FLIGHT_MAX: usize = 64;
/// Time to establish a connection to a peer.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Deadline of one peer RPC (a streamed snapshot has its own).
pub const PEER_RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of one streamed snapshot.
pub const SNAPSHOT_SEND_TIMEOUT: Duration = Duration::from_secs(600);
/// First wait after a failed RPC before a peer is tried again.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest wait between attempts to reach a down peer.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Size of one streamed snapshot chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Largest peer message, encoded (entries are batched well below this).
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Counters of one peer's link, for status and metrics.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// RPCs that failed (connection refused, timeout, error status).
    pub send_failures: std::sync::atomic::AtomicU64,
    /// Messages dropped because the peer was backing off or its queue was full.
    pub dropped: std::sync::atomic::AtomicU64,
}

/// Where answers from peers go.
pub type AnswerSink = mpsc::Sender<Message>;

#[derive(Debug)]
struct Backoff {
    retry_at: Option<Instant>,
    delay: Duration,
    failing: bool,
}

impl Backoff {
    fn new() -> Self {
        Self {
            retry_at: None,
            delay: RECONNECT_BACKOFF_MIN,
            failing: false,
        }
    }

    fn record_success(&mut self) -> bool {
        let recovered = self.failing;
        self.retry_at = None;
        self.delay = RECONNECT_BACKOFF_MIN;
        self.failing = false;
        recovered
    }

    fn record_failure(&mut self) -> bool {
        let first = !self.failing;
        self.retry_at = Some(Instant::now() + self.delay);
        self.delay = (self.delay * 2).min(RECONNECT_BACKOFF_MAX);
        self.failing = true;
        first
    }

    fn backing_off(&self) -> bool {
        self.retry_at
            .is_some_and(|retry_at| Instant::now() < retry_at)
    }
}

/// One peer: its address, queue and client.
struct Peer {
    queue: mpsc::Sender<Message>,
    client: RaftClient<Channel>,
    counters: Arc<LinkCounters>,
}

/// Every peer of this node.
pub struct PeerSet {
    peers: HashMap<NodeId, Peer>,
}

impl std::fmt::Debug for PeerSet {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PeerSet")
            .field("peers", &self.peers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A lazily connecting client for a peer's raft port.
pub fn lazy_client(address: &str) -> Result<RaftClient<Channel>, String> {
    let channel = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|error| format!("invalid peer address {address:?}: {error}"))?
        .connect_timeout(PEER_CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy();
    Ok(RaftClient::new(channel)
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX))
}

impl PeerSet {
    /// Starts one sender task per peer. Nothing connects until the first
    /// message, so every node can listen before any node dials.
    pub fn start(
        cluster_id: &str,
        peers: &[(NodeId, String)],
        answers: AnswerSink,
        snapshots: SnapshotDirectory,
    ) -> Result<Self, String> {
        let mut set = HashMap::new();
        for (peer_id, address) in peers {
            let client = lazy_client(address)?;
            let (queue, receiver) = mpsc::channel(PEER_QUEUE_CAPACITY);
            let counters = Arc::new(LinkCounters::default());
            let link = PeerLink {
                peer_id: *peer_id,
                address: address.clone(),
                cluster_id: cluster_id.to_string(),
                client: client.clone(),
                answers: answers.clone(),
                snapshots: snapshots.clone(),
                backoff: Arc::new(Mutex::new(Backoff::new())),
                in_flight: Arc::new(Semaphore::new(PEER_RPCS_IN_FLIGHT_MAX)),
                counters: counters.clone(),
            };
            tokio::spawn(link.run(receiver));
            set.insert(
                *peer_id,
                Peer {
                    queue,
                    client,
                    counters,
                },
            );
        }
        Ok(Self { peers: set })
    }

    /// Queues `message` for its recipient; drops it when the queue is full.
    pub fn send(&self, message: Message) {
        let Some(peer) = self.peers.get(&message.to) else {
            tracing::error!(
                to = message.to,
                kind = message.body.kind_name(),
                "message for an unknown peer dropped"
            );
            return;
        };
        if peer.queue.try_send(message).is_err() {
            peer.counters
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A client for the peer's raft port (for forwarding client requests).
    pub fn client(&self, peer_id: NodeId) -> Option<RaftClient<Channel>> {
        self.peers.get(&peer_id).map(|peer| peer.client.clone())
    }

    /// The counters of every peer link.
    pub fn counters(&self) -> Vec<(NodeId, Arc<LinkCounters>)> {
        self.peers
            .iter()
            .map(|(id, peer)| (*id, peer.counters.clone()))
            .collect()
    }
}

/// The sending side of one peer.
struct PeerLink {
    peer_id: NodeId,
    address: String,
    cluster_id: String,
    client: RaftClient<Channel>,
    answers: AnswerSink,
    snapshots: SnapshotDirectory,
    backoff: Arc<Mutex<Backoff>>,
    in_flight: Arc<Semaphore>,
    counters: Arc<LinkCounters>,
}

/// Why one RPC produced no answer.
enum RpcFailure {
    /// The peer could not be reached or failed: back off.
    Unreachable(String),
    /// The peer answered that the message needed no answer.
    Ignored,
}

impl PeerLink {
    async fn run(self, mut receiver: mpsc::Receiver<Message>) {
        let link = Arc::new(self);
        while let Some(message) = receiver.recv().await {
            if link.backoff.lock().expect("backoff lock").backing_off() {
                link.counters
                    .dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            let Some(request) = convert::outbound_request(&link.cluster_id, &message) else {
                tracing::error!(
                    kind = message.body.kind_name(),
                    "a response message reached the peer queue; dropped"
                );
                continue;
            };
            let Ok(permit) = link.in_flight.clone().acquire_owned().await else {
                return;
            };
            let link = link.clone();
            tokio::spawn(async move {
                let result = link.call(request).await;
                drop(permit);
                link.finish(result).await;
            });
        }
    }

    async fn finish(&self, result: Result<Message, RpcFailure>) {
        match result {
            Ok(answer) => {
                if self.backoff.lock().expect("backoff lock").record_success() {
                    tracing::info!(peer = self.peer_id, address = %self.address, "peer reachable again");
                }
                // The driver may be shutting down; then the answer does not matter.
                let _ = self.answers.send(answer).await;
            }
            Err(RpcFailure::Ignored) => {}
            Err(RpcFailure::Unreachable(reason)) => {
                self.counters
                    .send_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if self.backoff.lock().expect("backoff lock").record_failure() {
                    tracing::warn!(peer = self.peer_id, address = %self.address, %reason, "peer unreachable; backing off");
                }
            }
        }
    }

    async fn call(&self, request: OutboundRequest) -> Result<Message, RpcFailure> {
        let mut client = self.client.clone();
        let failure = |status: tonic::Status| {
            if status.code() == tonic::Code::Aborted {
                RpcFailure::Ignored
            } else {
                RpcFailure::Unreachable(format!("{:?}: {}", status.code(), status.message()))
            }
        };
        let malformed =
            |error: convert::MalformedMessage| RpcFailure::Unreachable(error.to_string());
        match request {
            OutboundRequest::RequestVote(request) => {
                let response = client
                    .request_vote(with_timeout(request))
                    .await
                    .map_err(failure)?;
                convert::vote_response_from_proto(response.into_inner()).map_err(malformed)
            }
            OutboundRequest::AppendEntries(request) => {
                let response = client
                    .append_entries(with_timeout(request))
                    .await
                    .map_err(failure)?;
                convert::append_response_from_proto(response.into_inner()).map_err(malformed)
            }
            OutboundRequest::TimeoutNow(request) => {
                client
                    .timeout_now(with_timeout(request))
                    .await
                    .map_err(failure)?;
                Err(RpcFailure::Ignored)
            }
            OutboundRequest::InstallSnapshot(header, snapshot) => {
                let response = self.send_snapshot(client, header, snapshot).await?;
                convert::snapshot_response_from_proto(response).map_err(malformed)
            }
        }
    }

    /// Streams the snapshot file of `snapshot` in chunks.
    async fn send_snapshot(
        &self,
        mut client: RaftClient<Channel>,
        header: pb::MessageHeader,
        snapshot: SnapshotMetadata,
    ) -> Result<pb::InstallSnapshotResponse, RpcFailure> {
        let path = self.snapshots.path_of(snapshot);
        let mut file = tokio::fs::File::open(&path).await.map_err(|error| {
            RpcFailure::Unreachable(format!("snapshot {} unavailable: {error}", path.display()))
        })?;
        let total_bytes = file
            .metadata()
            .await
            .map_err(|error| RpcFailure::Unreachable(error.to_string()))?
            .len();
        tracing::info!(
            peer = self.peer_id,
            index = snapshot.index,
            term = snapshot.term,
            total_bytes,
            "sending snapshot"
        );
        let (chunks, stream) = mpsc::channel::<pb::InstallSnapshotChunk>(2);
        let reader = tokio::spawn(async move {
            let mut offset = 0u64;
            let mut first = true;
            loop {
                let mut data = vec![0u8; SNAPSHOT_CHUNK_BYTES];
                let mut filled = 0;
                while filled < data.len() {
                    match file.read(&mut data[filled..]).await {
                        Ok(0) => break,
                        Ok(read) => filled += read,
                        Err(error) => return Err(error.to_string()),
                    }
                }
                data.truncate(filled);
                let done = offset + filled as u64 >= total_bytes;
                let chunk = pb::InstallSnapshotChunk {
                    header: first.then(|| header.clone()),
                    snapshot: first.then(|| convert::snapshot_to_proto(snapshot)),
                    offset,
                    data,
                    done,
                    total_bytes: if done { total_bytes } else { 0 },
                };
                first = false;
                offset += filled as u64;
                if chunks.send(chunk).await.is_err() || done {
                    return Ok(());
                }
            }
        });
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(stream));
        request.set_timeout(SNAPSHOT_SEND_TIMEOUT);
        let result = client.install_snapshot(request).await;
        let _ = reader.await;
        match result {
            Ok(response) => {
                tracing::info!(peer = self.peer_id, index = snapshot.index, "snapshot sent");
                Ok(response.into_inner())
            }
            Err(status) => Err(RpcFailure::Unreachable(format!(
                "snapshot stream failed: {:?}: {}",
                status.code(),
                status.message()
            ))),
        }
    }
}

fn with_timeout<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(PEER_RPC_TIMEOUT);
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new();
        assert!(!backoff.backing_off());
        assert!(backoff.record_failure(), "the first failure is reported");
        assert!(!backoff.record_failure(), "later ones are not");
        assert!(backoff.backing_off());
        for _ in 0..20 {
            backoff.record_failure();
        }
        assert_eq!(backoff.delay, RECONNECT_BACKOFF_MAX);
        assert!(backoff.record_success(), "recovery is reported");
        assert!(!backoff.backing_off());
        assert_eq!(backoff.delay, RECONNECT_BACKOFF_MIN);
    }
}
