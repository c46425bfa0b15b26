//! The HTTP observability port (`--metrics-addr`):
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | every metric, Prometheus text format 0.0.4 |
//! | `/healthz` | 200 while the process serves |
//! | `/readyz` | 200 when the node knows a leader and has applied everything it knows committed; else 503 and the reason |
//! | `/status` | the Status RPC's facts as JSON, plus readiness, request counts and the members' HTTP addresses |
//! | `/` | the cluster status page: one self-contained HTML file that polls every member's `/status` |
//!
//! Every answer carries `Access-Control-Allow-Origin: *`, so the page served
//! by one node can poll the others. Everything here is read-only.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::config::MemberAddress;
use crate::connections::CappedListener;
use crate::metrics;
use crate::node::Node;
use crate::transport::peers::PeerSet;

/// The status page: HTML, CSS and script in one file, no external assets.
pub const STATUS_PAGE: &str = include_str!("status.html");
/// Requests served at once; more are answered 503 at once (a scrape or a
/// status page needs one or two).
pub const HTTP_REQUESTS_IN_FLIGHT_MAX: usize = 64;

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    inner: Arc<Inner>,
}

struct Inner {
    node: Node,
    links: Arc<PeerSet>,
    peer_addresses: Vec<MemberAddress>,
    started: Instant,
    in_flight: Semaphore,
    /// Serializes scrapes: each refreshes the gauges, then encodes them.
    scrape: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("HttpState")
            .field("node", &self.inner.node.id())
            .finish_non_exhaustive()
    }
}

impl HttpState {
    /// Serves `node`, whose outbound peer links are `links` (for their
    /// counters); `peer_addresses` are the other members' HTTP addresses as
    /// a browser reaches them (for the status page).
    pub fn new(node: Node, links: Arc<PeerSet>, peer_addresses: Vec<MemberAddress>) -> Self {
        Self {
            inner: Arc::new(Inner {
                node,
                links,
                peer_addresses,
                started: Instant::now(),
                in_flight: Semaphore::new(HTTP_REQUESTS_IN_FLIGHT_MAX),
                scrape: tokio::sync::Mutex::new(()),
            }),
        }
    }
}

/// The routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .layer(axum::middleware::map_response(common_headers))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit_in_flight,
        ))
        .with_state(state)
}

/// Serves the routes on `listener` (which caps and times out its
/// connections) until `shutdown` completes, then stops accepting and lets
/// open requests finish.
pub async fn serve(
    listener: CappedListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn limit_in_flight(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    match state.inner.in_flight.try_acquire() {
        Ok(_permit) => next.run(request).await,
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "busy: too many requests in flight\n",
        )
            .into_response(),
    }
}

async fn common_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        STATUS_PAGE,
    )
}

async fn metrics_text(State(state): State<HttpState>) -> impl IntoResponse {
    let node = &state.inner.node;
    let metrics = node.metrics();
    let text = {
        let _scrape = state.inner.scrape.lock().await;
        metrics.refresh(&node.status(), &state.inner.links.link_statuses());
        metrics.encode()
    };
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text)
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    match state.inner.node.status().readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

async fn status(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        status_document(&state).to_string(),
    )
}

/// The `/status` document: the Status RPC's facts
/// (`kvstore_proto::status::status_json`, the shape `kvstore-cli status -w
/// json` prints), plus readiness, request counts, uptime and the members'
/// HTTP addresses.
fn status_document(state: &HttpState) -> serde_json::Value {
    let node = &state.inner.node;
    let answer = crate::service::status::handle(node);
    let (counts, failed) = node.metrics().request_counts();
    let requests: serde_json::Map<String, serde_json::Value> = counts
        .iter()
        .map(|(operation, count)| (operation.as_str().to_string(), (*count).into()))
        .collect();
    let members: Vec<serde_json::Value> = node
        .membership()
        .members
        .iter()
        .map(|id| {
            let http_addr = state
                .inner
                .peer_addresses
                .iter()
                .find(|peer| peer.id == *id)
                .map(|peer| peer.address.clone());
            json!({ "id": id, "self": *id == answer.id, "http_addr": http_addr })
        })
        .collect();
    let mut document = kvstore_proto::status::status_json(&answer);
    let not_ready_reason = (!answer.not_ready_reason.is_empty()).then_some(answer.not_ready_reason);
    document.extend([
        ("ready".to_string(), not_ready_reason.is_none().into()),
        ("not_ready_reason".to_string(), not_ready_reason.into()),
        ("requests_total".to_string(), requests.into()),
        ("requests_failed_total".to_string(), failed.into()),
        (
            "uptime_seconds".to_string(),
            state.inner.started.elapsed().as_secs_f64().into(),
        ),
        ("members".to_string(), members.into()),
    ]);
    serde_json::Value::Object(document)
}
