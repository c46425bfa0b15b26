//! `KV.Put`.

use kvstore_proto::kv::v1::{PutRequest, PutResponse};
use tonic::Status;

use super::convert;
use super::validate::RequestLimits;
use crate::node::Node;

/// Validates and serves one put.
pub async fn handle(
    node: &Node,
    limits: &RequestLimits,
    request: PutRequest,
) -> Result<PutResponse, Status> {
    limits.check_key(&request.key)?;
    limits.check_value(&request.value)?;
    let served_by = node.put(request.key, request.value).await?;
    Ok(PutResponse {
        header: convert::header(served_by),
    })
}
