//! `KV.Delete`.

use kvstore_proto::kv::v1::{DeleteRequest, DeleteResponse};
use tonic::Status;

use super::convert;
use super::validate::RequestLimits;
use super::RequestContext;
use crate::node::Node;

/// Validates and serves one delete.
pub async fn handle(
    node: &Node,
    limits: &RequestLimits,
    request: DeleteRequest,
    context: &RequestContext,
) -> Result<DeleteResponse, Status> {
    tracing::debug!(request_id = context.request_id, "received");
    limits.check_key(&request.key)?;
    let (served_by, deleted) = node.delete(request.key, &context.request_id).await?;
    Ok(DeleteResponse {
        header: convert::header(served_by),
        deleted,
    })
}
