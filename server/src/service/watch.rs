//! `Watch.Watch`: one bidirectional stream per call. Requests go to the
//! node's watch hub (`node::watchers`); what the hub sends the stream is
//! turned into `WatchResponse`s here.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kvstore_proto::kv::v1::watch_request::RequestUnion;
use kvstore_proto::kv::v1::watch_server::{Watch, WatchServer};
use kvstore_proto::kv::v1::{
    Event, EventType, KeyValue, ResponseHeader, WatchCreateRequest, WatchFilterType, WatchRequest,
    WatchResponse,
};
use tonic::{Request, Response, Status, Streaming};

use crate::limits;
use crate::node::watchers::{StreamId, WatchHub, WatchNews, WatchSpec};
use crate::node::{Node, RequestLimits};
use crate::state_machine::kv_encoding::key_value_to_proto;
use crate::state_machine::mvcc::store::{Change, KeySpan};

/// Full name of the watch service, as reflection lists it.
pub const WATCH_SERVICE_NAME: &str = "kvstore.v1.Watch";

/// The watch handlers.
#[derive(Debug, Clone)]
pub struct WatchService {
    node: Node,
    limits: RequestLimits,
}

impl WatchService {
    /// Handlers serving `node`'s watches, checking keys against `limits`.
    pub fn new(node: Node, limits: RequestLimits) -> Self {
        Self { node, limits }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> WatchServer<Self> {
        let decoding_max = limits::decoding_message_bytes_max(
            self.limits.key_bytes_max,
            self.limits.value_bytes_max,
        );
        WatchServer::new(self).max_decoding_message_size(decoding_max)
    }
}

/// Ends the hub's stream when the response stream is dropped (the client
/// went away).
struct StreamGuard {
    hub: Arc<WatchHub>,
    stream: StreamId,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.hub.close_stream(self.stream);
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ResponseStream;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let hub = self.node.watch_hub().clone();
        let (stream, news) = hub
            .open_stream()
            .map_err(|closed| Status::unavailable(closed.to_string()))?;
        let mut requests = request.into_inner();
        let node = self.node.clone();
        let limits = self.limits;
        let requests_hub = hub.clone();
        tokio::spawn(async move {
            // As etcd: a client that closes its sending side (grpcurl with
            // one create request) keeps its watches until it goes away; a
            // failed request stream ends them.
            loop {
                match requests.message().await {
                    Ok(Some(request)) => {
                        serve_request(&node, &limits, &requests_hub, stream, request).await
                    }
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            requests_hub.close_stream(stream);
        });
        let guard = StreamGuard { hub, stream };
        let node_id = self.node.id();
        let responses = Coalesced::new(news).map(move |news| {
            let _alive = &guard;
            to_response(node_id, news)
        });
        Ok(Response::new(Box::pin(responses)))
    }
}

/// Most news taken from a stream's channel at once to be coalesced.
const COALESCE_NEWS_MAX: usize = 4_096;
/// Most key and value bytes in one coalesced response (clients refuse
/// messages above 4 MiB by default).
const COALESCE_BYTES_MAX: usize = 1024 * 1024;

/// A stream's news, with the events of one watch that are ready together
/// merged into one response: a client that fell behind (its channel holds
/// many revisions) then gets one response per watch rather than one per
/// watch and revision, which is what the per-message costs (headers,
/// gRPC and HTTP/2 frames, the client's decoding) scale with. Events stay
/// in revision order within each watch; nothing waits for more to come;
/// anything but events (created, cancelled, progress) is a barrier no
/// event is moved across.
struct Coalesced {
    receiver: tokio::sync::mpsc::Receiver<WatchNews>,
    ready: std::collections::VecDeque<WatchNews>,
}

impl Coalesced {
    fn new(receiver: tokio::sync::mpsc::Receiver<WatchNews>) -> Self {
        Self {
            receiver,
            ready: std::collections::VecDeque::new(),
        }
    }

    /// Merges `taken` into `self.ready`.
    fn coalesce(&mut self, taken: Vec<WatchNews>) {
        // Where each watch's open response is in `ready`, and its bytes.
        let mut open: std::collections::HashMap<i64, (usize, usize)> =
            std::collections::HashMap::new();
        for news in taken {
            match news {
                WatchNews::Events {
                    watch_id,
                    revision,
                    events,
                    prev_kv,
                } => {
                    let bytes: usize = events.iter().map(|change| change_bytes(change)).sum();
                    if let Some((at, size)) = open.get_mut(&watch_id) {
                        if *size + bytes <= COALESCE_BYTES_MAX {
                            if let Some(WatchNews::Events {
                                revision: merged_revision,
                                events: merged,
                                ..
                            }) = self.ready.get_mut(*at)
                            {
                                merged.extend(events);
                                *merged_revision = revision;
                                *size += bytes;
                                continue;
                            }
                        }
                    }
                    open.insert(watch_id, (self.ready.len(), bytes));
                    self.ready.push_back(WatchNews::Events {
                        watch_id,
                        revision,
                        events,
                        prev_kv,
                    });
                }
                other => {
                    open.clear();
                    self.ready.push_back(other);
                }
            }
        }
    }
}

/// Key and value bytes of a change, as a response carries them.
fn change_bytes(change: &Change) -> usize {
    let record = change
        .record
        .as_ref()
        .map_or(0, |record| record.value.len());
    let previous = change
        .previous
        .as_ref()
        .map_or(0, |record| record.value.len());
    2 * change.key.len() + record + previous
}

impl Stream for Coalesced {
    type Item = WatchNews;

    fn poll_next(
        mut self: Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<WatchNews>> {
        if let Some(news) = self.ready.pop_front() {
            return std::task::Poll::Ready(Some(news));
        }
        let mut taken = Vec::new();
        match self.receiver.poll_recv(context) {
            std::task::Poll::Ready(Some(news)) => taken.push(news),
            std::task::Poll::Ready(None) => return std::task::Poll::Ready(None),
            std::task::Poll::Pending => return std::task::Poll::Pending,
        }
        while taken.len() < COALESCE_NEWS_MAX {
            match self.receiver.try_recv() {
                Ok(news) => taken.push(news),
                Err(_) => break,
            }
        }
        self.coalesce(taken);
        std::task::Poll::Ready(self.ready.pop_front())
    }
}

/// One request of a stream.
async fn serve_request(
    node: &Node,
    limits: &RequestLimits,
    hub: &WatchHub,
    stream: StreamId,
    request: WatchRequest,
) {
    match request.request_union {
        Some(RequestUnion::CreateRequest(create)) => {
            let spec = match spec_from(node, limits, create).await {
                Ok(spec) => spec,
                Err(reason) => {
                    hub.refuse(stream, reason).await;
                    return;
                }
            };
            hub.create(stream, spec).await;
        }
        Some(RequestUnion::CancelRequest(cancel)) => hub.cancel(stream, cancel.watch_id).await,
        Some(RequestUnion::ProgressRequest(_)) => hub.request_progress(stream),
        None => {}
    }
}

/// The watch a create request asks for, or why it is refused.
async fn spec_from(
    node: &Node,
    limits: &RequestLimits,
    create: WatchCreateRequest,
) -> Result<WatchSpec, String> {
    node.require_revisions()
        .await
        .map_err(|error| error.to_string())?;
    if create.key.is_empty() && create.range_end.is_empty() {
        return Err("key must not be empty (a range may start at the empty key)".into());
    }
    if !create.key.is_empty() {
        limits
            .check_key(&create.key)
            .map_err(|error| error.to_string())?;
    }
    limits
        .check_range_end(&create.range_end)
        .map_err(|error| error.to_string())?;
    let start_revision = u64::try_from(create.start_revision)
        .map_err(|_| format!("start_revision {} is negative", create.start_revision))?;
    let filter = |wanted: WatchFilterType| create.filters.contains(&(wanted as i32));
    Ok(WatchSpec {
        no_put: filter(WatchFilterType::Noput),
        no_delete: filter(WatchFilterType::Nodelete),
        span: KeySpan::range(create.key, create.range_end),
        start_revision,
        prev_kv: create.prev_kv,
        progress_notify: create.progress_notify,
        watch_id: create.watch_id,
    })
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// What the hub sent, as the client API says it.
fn to_response(node_id: u64, news: WatchNews) -> Result<WatchResponse, Status> {
    let header = |revision: u64| {
        Some(ResponseHeader {
            node_id,
            revision: signed(revision),
            ..ResponseHeader::default()
        })
    };
    Ok(match news {
        WatchNews::Created { watch_id, revision } => WatchResponse {
            header: header(revision),
            watch_id,
            created: true,
            ..WatchResponse::default()
        },
        WatchNews::Refused { reason, revision } => WatchResponse {
            header: header(revision),
            watch_id: crate::node::watchers::STREAM_WIDE_ID,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..WatchResponse::default()
        },
        WatchNews::Events {
            watch_id,
            revision,
            events,
            prev_kv,
        } => WatchResponse {
            header: header(revision),
            watch_id,
            events: events
                .iter()
                .map(|change| to_event(change, prev_kv))
                .collect(),
            ..WatchResponse::default()
        },
        WatchNews::Progress { watch_id, revision } => WatchResponse {
            header: header(revision),
            watch_id,
            ..WatchResponse::default()
        },
        WatchNews::Canceled {
            watch_id,
            revision,
            compact_revision,
            reason,
        } => WatchResponse {
            header: header(revision),
            watch_id,
            canceled: true,
            compact_revision: signed(compact_revision),
            cancel_reason: reason,
            ..WatchResponse::default()
        },
        WatchNews::Closing => return Err(Status::unavailable(
            "the node is shutting down: resume the watches on another node from the next revision",
        )),
    })
}

/// One change as an event: a put carries the key's record, a delete the
/// key and the delete's revision (etcd's tombstone).
fn to_event(change: &Change, prev_kv: bool) -> Event {
    let (kind, kv) = match &change.record {
        Some(record) => (EventType::Put, key_value_to_proto(&change.key, record)),
        None => (
            EventType::Delete,
            KeyValue {
                key: change.key.clone(),
                mod_revision: signed(change.revision.main),
                ..KeyValue::default()
            },
        ),
    };
    Event {
        r#type: kind as i32,
        kv: Some(kv),
        prev_kv: prev_kv
            .then(|| {
                change
                    .previous
                    .as_ref()
                    .map(|previous| key_value_to_proto(&change.key, previous))
            })
            .flatten(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::state_machine::mvcc::record::KeyRecord;
    use crate::state_machine::mvcc::Revision;

    fn events(watch_id: i64, revision: u64, value_bytes: usize) -> WatchNews {
        WatchNews::Events {
            watch_id,
            revision,
            events: vec![Arc::new(Change {
                key: b"k".to_vec(),
                revision: Revision::new(revision),
                record: Some(KeyRecord {
                    create_revision: revision,
                    mod_revision: revision,
                    version: 1,
                    lease: 0,
                    value: vec![0; value_bytes],
                }),
                previous: None,
            })],
            prev_kv: false,
        }
    }

    /// (watch id, revisions) of each response, or the kind of the others.
    fn shape(news: &std::collections::VecDeque<WatchNews>) -> Vec<(i64, Vec<u64>)> {
        news.iter()
            .map(|news| match news {
                WatchNews::Events {
                    watch_id, events, ..
                } => (
                    *watch_id,
                    events.iter().map(|change| change.revision.main).collect(),
                ),
                WatchNews::Progress { .. } => (-1, Vec::new()),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn ready_events_of_a_watch_merge_in_order_and_never_across_a_barrier() {
        let (_, receiver) = tokio::sync::mpsc::channel(1);
        let mut coalesced = Coalesced::new(receiver);
        coalesced.coalesce(vec![
            events(1, 5, 1),
            events(2, 5, 1),
            events(1, 6, 1),
            events(2, 6, 1),
            WatchNews::Progress {
                watch_id: -1,
                revision: 6,
            },
            events(1, 7, 1),
            // Over the byte bound: a response of its own.
            events(1, 8, COALESCE_BYTES_MAX),
        ]);
        assert_eq!(
            shape(&coalesced.ready),
            vec![
                (1, vec![5, 6]),
                (2, vec![5, 6]),
                (-1, vec![]),
                (1, vec![7]),
                (1, vec![8]),
            ]
        );
        match &coalesced.ready[0] {
            WatchNews::Events { revision, .. } => assert_eq!(*revision, 6),
            other => panic!("unexpected {other:?}"),
        }
    }
}
