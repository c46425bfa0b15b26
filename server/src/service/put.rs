//! `KV.Put`.

use kvstore_proto::kv::v1::{PutRequest, PutResponse};
use tonic::Status;

use super::convert;
use super::RequestContext;
use crate::node::Node;

/// Serves one put; the node checks it against the request limits.
pub async fn handle(
    node: &Node,
    request: PutRequest,
    context: &RequestContext,
) -> Result<PutResponse, Status> {
    tracing::debug!(request_id = context.request_id, "received");
    let served_by = node
        .put(request.key, request.value, &context.request_id)
        .await?;
    Ok(PutResponse {
        header: convert::header(served_by),
    })
}
