//! gRPC services: the client API (`kvstore.v1.KV`) with reflection and health.
//! Protobuf types stop here: handlers convert them to the node's own types.

mod convert;
mod delete;
mod get;
mod put;
mod status;
mod validate;

use std::time::Instant;

use kvstore_proto::kv::v1::kv_server::{Kv, KvServer};
use kvstore_proto::kv::v1::{
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, PutRequest, PutResponse, StatusRequest,
    StatusResponse,
};
use tonic::{Request, Response, Status};

use crate::limits;
use crate::node::Node;
pub use validate::RequestLimits;

/// Full name of the client API service, as reflection lists it.
pub const KV_SERVICE_NAME: &str = "kvstore.v1.KV";

/// The client API handlers.
#[derive(Debug, Clone)]
pub struct KvService {
    node: Node,
    limits: RequestLimits,
}

impl KvService {
    /// Handlers serving `node` and enforcing `limits`.
    pub fn new(node: Node, limits: RequestLimits) -> Self {
        Self { node, limits }
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

/// Logs the outcome of one request.
fn log_outcome<T>(operation: &str, started: Instant, result: &Result<T, Status>) {
    let elapsed_us = started.elapsed().as_micros() as u64;
    match result {
        Ok(_) => tracing::debug!(operation, elapsed_us, "answered"),
        Err(status) => {
            tracing::info!(operation, elapsed_us, code = ?status.code(), message = status.message(), "failed")
        }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let started = Instant::now();
        let result = put::handle(&self.node, &self.limits, request.into_inner()).await;
        log_outcome("put", started, &result);
        result.map(Response::new)
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let started = Instant::now();
        let result = get::handle(&self.node, &self.limits, request.into_inner()).await;
        log_outcome("get", started, &result);
        result.map(Response::new)
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let started = Instant::now();
        let result = delete::handle(&self.node, &self.limits, request.into_inner()).await;
        log_outcome("delete", started, &result);
        result.map(Response::new)
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(status::handle(&self.node)))
    }
}
