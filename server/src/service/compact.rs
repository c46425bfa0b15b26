//! `KV.Compact`.

use kvstore_proto::kv::v1::{CompactionRequest, CompactionResponse};
use tonic::Status;

use super::convert;
use super::RequestContext;
use crate::errors::KvError;
use crate::node::Node;

/// Serves one compaction.
pub async fn handle(
    node: &Node,
    request: CompactionRequest,
    context: &RequestContext,
) -> Result<CompactionResponse, Status> {
    tracing::debug!(request_id = context.request_id, "received");
    let revision = u64::try_from(request.revision)
        .ok()
        .filter(|revision| *revision > 0)
        .ok_or_else(|| {
            KvError::InvalidArgument(format!(
                "compaction revision must be positive (got {})",
                request.revision
            ))
        })?;
    let served_by = node.compact(revision, &context.request_id).await?;
    if request.physical {
        node.wait_compacted(revision).await?;
    }
    Ok(CompactionResponse {
        header: convert::header(served_by),
    })
}
