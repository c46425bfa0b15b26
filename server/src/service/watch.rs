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
use tokio_stream::wrappers::ReceiverStream;
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
        let responses = ReceiverStream::new(news).map(move |news| {
            let _alive = &guard;
            to_response(node_id, news)
        });
        Ok(Response::new(Box::pin(responses)))
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
