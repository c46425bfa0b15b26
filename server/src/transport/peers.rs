//! Outbound messages to peers.
//!
//! Connections are made lazily and re-made after failures with exponential
//! backoff; while a peer is down its messages are dropped (Raft re-sends what
//! matters), so a down or slow peer never blocks messages to the others.
//! Messages travel in batches over two long-lived `Stream` calls per peer,
//! one for AppendEntries carrying entries and one for everything else
//! (requests and answers alike; the peer's answers come back on its own
//! streams to us); snapshots over their own `InstallSnapshot` call (the
//! follower's Raft answer comes back on its stream too). The driver converts each message and
//! queues it on its stream itself ([`outbound`]): no task sits between the
//! driver and the call's HTTP/2 body.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvstore_proto::raft::v1 as pb;
use kvstore_proto::raft::v1::raft_client::RaftClient;
use kvstore_raft::{Message, MessageBody, NodeId, SnapshotMetadata};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, Semaphore};
use tonic::transport::{Channel, Endpoint};

use super::convert;
use super::forwarder::Forwarder;
use super::inbound::PeerInbound;
use super::outbound::{self, OutboundLimits, OutboundSender, PushError};
use super::reconnect::{Reconnect, Report};
use crate::membership::Membership;
use crate::snapshot::SnapshotDirectory;
use crate::status::PeerLinkStatus;

/// Messages waiting for one of a peer's streams before new ones are dropped
/// (the peer is slow, stopped or unreachable; Raft re-sends what matters).
pub const STREAM_PENDING_MESSAGES_MAX: usize = 4_096;
/// Messages (requests and answers) in one item of a peer's stream at most.
pub const STREAM_BATCH_MESSAGES_MAX: usize = 256;
/// Encoded bytes in one item of a peer's stream: a batch is closed once it
/// reaches this, well below the peer message limit (one AppendEntries is at
/// most about 1 MiB plus one entry).
pub const STREAM_BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;
const STREAM_LIMITS: OutboundLimits = OutboundLimits {
    pending_messages_max: STREAM_PENDING_MESSAGES_MAX,
    batch_messages_max: STREAM_BATCH_MESSAGES_MAX,
    batch_bytes_max: STREAM_BATCH_BYTES_MAX,
};
/// Time to establish a connection to a peer.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Deadline of one streamed snapshot.
pub const SNAPSHOT_SEND_TIMEOUT: Duration = Duration::from_secs(600);
/// Size of one streamed snapshot chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// Counters of one peer's link, for status and metrics.
#[derive(Debug, Default)]
struct LinkCounters {
    /// RPCs that failed (connection refused, timeout, error status).
    send_failures: AtomicU64,
    /// Messages dropped because the peer was backing off or its queue was full.
    dropped: AtomicU64,
}

/// One peer: its link, open streams and forwarder.
struct Peer {
    link: Arc<PeerLink>,
    /// The open stream of each lane. Only the driver sends, so the lock is
    /// never contended; it makes `send` callable through `&self`.
    streams: Mutex<[Option<OpenStream>; LANES]>,
    forwarder: Forwarder,
}

/// Every peer of this node.
pub struct PeerSet {
    membership: Membership,
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
        .max_decoding_message_size(crate::limits::RAFT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(crate::limits::RAFT_MESSAGE_BYTES_MAX))
}

impl PeerSet {
    /// Sets up the link to every peer of `membership` at its raft address in
    /// `peers`. Nothing connects until the first message, so every node can
    /// listen before any node dials. `inbound` takes the Raft answers that
    /// come back as a snapshot call's reply (from followers of release
    /// 4232c83 or earlier).
    pub fn start(
        membership: Membership,
        peers: &[(NodeId, String)],
        inbound: PeerInbound,
        snapshots: SnapshotDirectory,
    ) -> Result<Self, String> {
        let mut set = HashMap::new();
        for (peer_id, address) in peers {
            let client = lazy_client(address)?;
            let link = PeerLink {
                peer_id: *peer_id,
                address: address.clone(),
                cluster_id: membership.cluster_id.clone(),
                client: client.clone(),
                inbound: inbound.clone(),
                snapshots: snapshots.clone(),
                reconnect: Arc::new(Mutex::new(Reconnect::new())),
                snapshot_sending: Arc::new(Semaphore::new(1)),
                counters: Arc::new(LinkCounters::default()),
            };
            set.insert(
                *peer_id,
                Peer {
                    link: Arc::new(link),
                    streams: Mutex::new([None, None]),
                    forwarder: Forwarder::start(client),
                },
            );
        }
        Ok(Self {
            membership,
            peers: set,
        })
    }

    /// Queues `message` on its recipient's stream; drops it when the peer is
    /// backing off or its stream's queue is full.
    pub fn send(&self, message: Message) {
        let Some(peer) = self.peers.get(&message.to) else {
            tracing::error!(
                to = message.to,
                kind = message.body.kind_name(),
                "message for an unknown peer dropped"
            );
            return;
        };
        let Some((lane, wire, bytes)) = peer.link.prepare(message) else {
            return;
        };
        let mut streams = peer.streams.lock().expect("stream lock");
        peer.link.send_on(&mut streams[lane], wire, bytes);
    }

    /// This node's id, cluster and members.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Where client requests for the peer go (when it leads).
    pub fn forwarder(&self, peer_id: NodeId) -> Option<&Forwarder> {
        self.peers.get(&peer_id).map(|peer| &peer.forwarder)
    }

    /// The counters of every peer link.
    pub fn link_statuses(&self) -> Vec<PeerLinkStatus> {
        self.peers
            .iter()
            .map(|(id, peer)| PeerLinkStatus {
                id: *id,
                send_failures: peer.link.counters.send_failures.load(Ordering::Relaxed),
                dropped: peer.link.counters.dropped.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// The sending side of one peer.
struct PeerLink {
    peer_id: NodeId,
    address: String,
    cluster_id: String,
    client: RaftClient<Channel>,
    inbound: PeerInbound,
    snapshots: SnapshotDirectory,
    /// When to try again after failures, and what to log about them.
    reconnect: Arc<Mutex<Reconnect>>,
    /// One snapshot is sent at a time.
    snapshot_sending: Arc<Semaphore>,
    counters: Arc<LinkCounters>,
}

/// Lanes: each is its own `Stream` call to the peer (HTTP/2 interleaves
/// their frames on the one connection), so that heartbeats, votes and
/// answers never wait behind megabytes of entries (as etcd's separate
/// message and append streams). Raft's safety does not need the two in
/// order, but every AppendEntries, empty or not, takes the entries lane:
/// an empty one (a commit update or a probe) that overtook entries still in
/// flight would name a `prev_log_index` the follower has not received yet,
/// be rejected, and send the leader back to probing from the follower's
/// last index, which resends everything in flight: with large values the
/// leader sent each entry several times over (measurements:
/// docs/benchmarks.md, "Every AppendEntries in the entries lane").
const LANES: usize = 2;
/// Heartbeats, votes, answers, TimeoutNow.
const CONTROL_LANE: usize = 0;
/// Every AppendEntries.
const ENTRIES_LANE: usize = 1;

/// The lane a message travels in.
fn lane_of(body: &MessageBody) -> usize {
    match body {
        MessageBody::AppendEntries { .. } => ENTRIES_LANE,
        _ => CONTROL_LANE,
    }
}

/// The open `Stream` call to a peer.
struct OpenStream {
    messages: OutboundSender,
    /// Set when the call ended (the peer refused it, or the connection broke).
    ended: Arc<AtomicBool>,
}

impl PeerLink {
    fn count_dropped(&self, count: usize) {
        self.counters
            .dropped
            .fetch_add(count as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// The lane, wire form and encoded size of `message`; `None` when it is
    /// dropped or travels otherwise (a snapshot transfer is started here).
    fn prepare(self: &Arc<Self>, message: Message) -> Option<(usize, pb::RaftMessage, usize)> {
        if self
            .reconnect
            .lock()
            .expect("reconnect lock")
            .backing_off(Instant::now())
        {
            self.count_dropped(1);
            return None;
        }
        if let MessageBody::InstallSnapshot { snapshot } = message.body {
            let Ok(permit) = self.snapshot_sending.clone().try_acquire_owned() else {
                // One is on its way; the leader asks again if it fails.
                self.count_dropped(1);
                return None;
            };
            let header = convert::header(&self.cluster_id, &message).expect("always set");
            let link = self.clone();
            tokio::spawn(async move {
                let result = link.send_snapshot(header, snapshot).await;
                drop(permit);
                link.finish_snapshot(result).await;
            });
            return None;
        }
        let lane = lane_of(&message.body);
        match convert::to_wire(&self.cluster_id, &message) {
            Some(wire) => {
                let bytes = prost::Message::encoded_len(&wire);
                Some((lane, wire, bytes))
            }
            None => {
                tracing::error!(
                    kind = message.body.kind_name(),
                    "a message that cannot travel on a stream was dropped"
                );
                None
            }
        }
    }

    /// Queues one message on the lane's open stream, opening one first if
    /// needed. A full queue (the peer is slow or stopped) drops the message.
    fn send_on(
        self: &Arc<Self>,
        stream: &mut Option<OpenStream>,
        message: pb::RaftMessage,
        bytes: usize,
    ) {
        if stream
            .as_ref()
            .is_none_or(|open| open.ended.load(Ordering::Acquire) || open.messages.is_closed())
        {
            *stream = Some(self.open_stream());
        } else {
            // Sending on a stream that is still open: it may end an outage.
            let report = self
                .reconnect
                .lock()
                .expect("reconnect lock")
                .confirm(Instant::now());
            self.log(report, "");
        }
        let open = stream.as_ref().expect("opened above");
        if let Err(error) = open.messages.push(message, bytes) {
            self.count_dropped(1);
            if error == PushError::Closed {
                *stream = None;
            }
        }
    }

    /// Starts the `Stream` call; a task watches it and backs off when it ends.
    fn open_stream(self: &Arc<Self>) -> OpenStream {
        let (messages, request) = outbound::channel(STREAM_LIMITS);
        let ended = Arc::new(AtomicBool::new(false));
        let link = self.clone();
        let watcher_ended = ended.clone();
        tokio::spawn(async move {
            let mut client = link.client.clone();
            let reason = match client.stream(request).await {
                Ok(response) => {
                    link.reconnect
                        .lock()
                        .expect("reconnect lock")
                        .record_opened(Instant::now());
                    // The receiver sends nothing until it ends the call.
                    match response.into_inner().message().await {
                        Ok(_) => "the peer closed the stream".to_string(),
                        Err(status) => format!("{:?}: {}", status.code(), status.message()),
                    }
                }
                Err(status) => format!("{:?}: {}", status.code(), status.message()),
            };
            watcher_ended.store(true, Ordering::Release);
            link.record_failure(&reason);
        });
        OpenStream { messages, ended }
    }

    fn record_failure(&self, reason: &str) {
        self.counters
            .send_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = Instant::now();
        let (recovered, report) = {
            let mut reconnect = self.reconnect.lock().expect("reconnect lock");
            // A stream that stayed open long enough ended an outage first.
            (reconnect.confirm(now), reconnect.record_failure(now))
        };
        self.log(recovered, reason);
        self.log(report, reason);
    }

    /// Writes the line `report` asks for (rate-limited by [`Reconnect`]).
    fn log(&self, report: Option<Report>, reason: &str) {
        match report {
            None => {}
            Some(Report::Unreachable { failures, retry_in }) => tracing::warn!(
                peer = self.peer_id,
                address = %self.address,
                %reason,
                failures,
                retry_in_ms = retry_in.as_millis() as u64,
                "peer unreachable; backing off"
            ),
            Some(Report::Reachable {
                failures,
                unreachable_for,
            }) => tracing::info!(
                peer = self.peer_id,
                address = %self.address,
                failures,
                unreachable_ms = unreachable_for.as_millis() as u64,
                "peer reachable again"
            ),
        }
    }

    /// The follower's Raft answer travels on its stream; only a follower of
    /// release 4232c83 or earlier answers in the reply instead (compat:
    /// remove once no such peer runs).
    async fn finish_snapshot(&self, result: Result<pb::InstallSnapshotResponse, String>) {
        let answer = result.and_then(|reply| {
            convert::snapshot_reply_answer(reply).map_err(|error| error.to_string())
        });
        match answer {
            Ok(Some(answer)) => {
                // The driver may be shutting down; then the answer does not matter.
                let _ = self.inbound.deliver(answer).await;
            }
            Ok(None) => {}
            Err(reason) => self.record_failure(&reason),
        }
    }

    /// Streams the snapshot file of `snapshot` in chunks.
    async fn send_snapshot(
        &self,
        header: pb::MessageHeader,
        snapshot: SnapshotMetadata,
    ) -> Result<pb::InstallSnapshotResponse, String> {
        let mut client = self.client.clone();
        let path = self.snapshots.path_of(snapshot);
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|error| format!("snapshot {} unavailable: {error}", path.display()))?;
        let total_bytes = file
            .metadata()
            .await
            .map_err(|error| error.to_string())?
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
            Err(status) => Err(format!(
                "snapshot stream failed: {:?}: {}",
                status.code(),
                status.message()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use kvstore_raft::{Entry, EntryKind};

    use super::*;

    #[test]
    fn every_append_keeps_its_order_in_the_entries_lane() {
        let append = |entries: Vec<Entry>| MessageBody::AppendEntries {
            prev_log_index: 4,
            prev_log_term: 1,
            entries,
            leader_commit: 4,
        };
        let entry = Entry {
            index: 5,
            term: 1,
            kind: EntryKind::Normal,
            data: vec![1].into(),
        };
        assert_eq!(lane_of(&append(vec![entry])), ENTRIES_LANE);
        assert_eq!(
            lane_of(&append(Vec::new())),
            ENTRIES_LANE,
            "an empty append must not overtake entries in flight"
        );
        let heartbeat = MessageBody::Heartbeat {
            leader_commit: 4,
            read_round: 1,
        };
        assert_eq!(lane_of(&heartbeat), CONTROL_LANE);
        assert_eq!(lane_of(&MessageBody::TimeoutNow), CONTROL_LANE);
    }
}
