//! `KV.Put`.

use kvstore_proto::kv::v1::{PutRequest, PutResponse};
use tonic::Status;

use super::convert;
use super::validate::RequestLimits;
use super::RequestContext;
use crate::node::Node;

/// Validates and serves one put.
pub async fn handle(
    node: &Node,
    limits: &RequestLimits,
    request: PutRequest,
    context: &RequestContext,
) -> Result<PutResponse, Status> {
    tracing::debug!(request_id = context.request_id, "received");
    limits.check_key(&request.key)?;
    limits.check_value(&request.value)?;
    let served_by = node
        .put(request.key, request.value, &context.request_id)
        .await?;
    Ok(PutResponse {
        header: convert::header(served_by),
    })
}
