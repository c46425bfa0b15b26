//! `KV.Delete`.

use kvstore_proto::kv::v1::{DeleteRequest, DeleteResponse};
use tonic::Status;

use super::convert;
use super::RequestContext;
use crate::node::Node;

/// Serves one delete; the node checks it against the request limits.
pub async fn handle(
    node: &Node,
    request: DeleteRequest,
    context: &RequestContext,
) -> Result<DeleteResponse, Status> {
    tracing::debug!(request_id = context.request_id, "received");
    let (served_by, deleted) = node.delete(request.key, &context.request_id).await?;
    Ok(DeleteResponse {
        header: convert::header(served_by),
        deleted,
    })
}
