//! gRPC services: the client API (`kvstore.v1.KV`) with reflection and health.
//! Protobuf types stop here: handlers convert them to the node's own types.

mod compact;
mod convert;
mod delete;
mod delete_range;
mod get;
pub mod lease;
mod put;
mod range;
pub mod status;
mod txn;
pub mod watch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvstore_proto::kv::v1::kv_server::{Kv, KvServer};
use kvstore_proto::kv::v1::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, DeleteRequest,
    DeleteResponse, GetRequest, GetResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    StatusRequest, StatusResponse, TxnRequest, TxnResponse,
};
use tonic::{Request, Response, Status};

use crate::errors::KvError;
use crate::limits;
use crate::metrics::Operation;
use crate::node::Node;
pub use crate::node::RequestLimits;

/// Full name of the client API service, as reflection lists it.
pub const KV_SERVICE_NAME: &str = "kvstore.v1.KV";

/// Metadata key a client may set to name its request in the servers' logs.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The client API handlers.
#[derive(Debug, Clone)]
pub struct KvService {
    node: Node,
    limits: RequestLimits,
    request_counter: Arc<AtomicU64>,
}

/// Per-request facts the handlers need.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// Names the request in every log line about it, on every node.
    pub request_id: String,
    /// When the request must be answered.
    pub deadline: Duration,
}

/// Parses a `grpc-timeout` header value ("100m", "5S", ...).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = amount.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

impl KvService {
    /// Handlers serving `node` and enforcing `limits`.
    pub fn new(node: Node, limits: RequestLimits) -> Self {
        Self {
            node,
            limits,
            request_counter: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The request id (the client's, or a new one) and deadline of `request`.
    fn context<T>(&self, request: &Request<T>) -> RequestContext {
        self.context_within(
            request,
            Duration::from_millis(limits::REQUEST_TIMEOUT_DEFAULT_MS),
        )
    }

    /// [`KvService::context`], with the client's deadline capped at `cap`
    /// (and `cap` when it names none).
    fn context_within<T>(&self, request: &Request<T>, cap: Duration) -> RequestContext {
        let request_id = request
            .metadata()
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .filter(|value| !value.is_empty() && value.len() <= limits::REQUEST_ID_BYTES_MAX)
            .map(str::to_string)
            .unwrap_or_else(|| {
                let sequence = self.request_counter.fetch_add(1, Ordering::Relaxed);
                format!("{}-{sequence:x}", self.node.id())
            });
        let deadline = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map_or(cap, |deadline| deadline.min(cap));
        RequestContext {
            request_id,
            deadline,
        }
    }

    /// Counts one answered request, by operation and code, and its latency.
    fn observe<T>(&self, operation: Operation, started: Instant, result: &Result<T, Status>) {
        let code = result
            .as_ref()
            .map_or_else(|status| status.code(), |_| tonic::Code::Ok);
        self.node
            .metrics()
            .observe_request(operation, code, started.elapsed());
    }

    /// The tonic server for this service, sized for the limits.
    pub fn into_server(self) -> KvServer<Self> {
        let decoding_max = limits::decoding_message_bytes_max(
            self.limits.key_bytes_max,
            self.limits.value_bytes_max,
        );
        KvServer::new(self)
            .max_decoding_message_size(decoding_max)
            .max_encoding_message_size(decoding_max)
    }
}

/// Runs `handler` within the request's deadline.
async fn with_deadline<T>(
    context: &RequestContext,
    is_write: bool,
    handler: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(context.deadline, handler).await {
        Ok(result) => result,
        Err(_) => {
            let effect = if is_write {
                "; the write may or may not have been applied"
            } else {
                ""
            };
            Err(KvError::DeadlineExceeded(format!(
                "no answer within {:?}{effect}",
                context.deadline
            ))
            .into())
        }
    }
}

/// Logs the outcome of one request.
fn log_outcome<T>(
    operation: &str,
    context: &RequestContext,
    started: Instant,
    result: &Result<T, Status>,
) {
    let elapsed_us = started.elapsed().as_micros() as u64;
    let request_id = context.request_id.as_str();
    match result {
        Ok(_) => tracing::debug!(operation, request_id, elapsed_us, "answered"),
        Err(status) => tracing::info!(
            operation,
            request_id,
            elapsed_us,
            code = ?status.code(),
            message = status.message(),
            "failed"
        ),
    }
}

impl KvService {
    /// Serves one request: its handler within the deadline, then the log
    /// line and the metrics.
    async fn serve<T>(
        &self,
        operation: Operation,
        is_write: bool,
        context: RequestContext,
        handler: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let result = with_deadline(&context, is_write, handler).await;
        log_outcome(operation.as_str(), &context, started, &result);
        self.observe(operation, started, &result);
        result.map(Response::new)
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let context = self.context(&request);
        let handler = put::handle(&self.node, request.into_inner(), &context);
        self.serve(Operation::Put, true, context.clone(), handler)
            .await
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let context = self.context(&request);
        let handler = get::handle(&self.node, &self.limits, request.into_inner(), &context);
        self.serve(Operation::Get, false, context.clone(), handler)
            .await
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let context = self.context(&request);
        let handler = delete::handle(&self.node, request.into_inner(), &context);
        self.serve(Operation::Delete, true, context.clone(), handler)
            .await
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let started = Instant::now();
        let result = Ok(Response::new(status::handle(&self.node)));
        self.observe(Operation::Status, started, &result);
        result
    }

    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let context = self.context(&request);
        let handler = range::handle(&self.node, &self.limits, request.into_inner(), &context);
        self.serve(Operation::Range, false, context.clone(), handler)
            .await
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let context = self.context(&request);
        let handler = delete_range::handle(&self.node, request.into_inner(), &context);
        self.serve(Operation::DeleteRange, true, context.clone(), handler)
            .await
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let context = self.context(&request);
        let handler = txn::handle(&self.node, request.into_inner(), &context);
        self.serve(Operation::Txn, true, context.clone(), handler)
            .await
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        // A physical compaction of millions of revisions takes longer than
        // any other request: it waits as long as its client lets it.
        let context = if request.get_ref().physical {
            self.context_within(
                &request,
                Duration::from_millis(limits::PHYSICAL_COMPACTION_WAIT_MAX_MS),
            )
        } else {
            self.context(&request)
        };
        let handler = compact::handle(&self.node, request.into_inner(), &context);
        self.serve(Operation::Compact, true, context.clone(), handler)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("7x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }
}
