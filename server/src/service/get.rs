//! `KV.Get`.

use kvstore_proto::kv::v1::{GetRequest, GetResponse};
use tonic::Status;

use super::convert;
use super::RequestContext;
use crate::node::Node;
use crate::node::RequestLimits;

/// Validates and serves one get.
pub async fn handle(
    node: &Node,
    limits: &RequestLimits,
    request: GetRequest,
    context: &RequestContext,
) -> Result<GetResponse, Status> {
    tracing::debug!(request_id = context.request_id, "received");
    limits.check_key(&request.key)?;
    let consistency = convert::consistency(request.consistency)?;
    let (served_by, value) = node
        .get(request.key, consistency, &context.request_id)
        .await?;
    Ok(GetResponse {
        header: convert::header(served_by),
        found: value.is_some(),
        value: value.unwrap_or_default(),
    })
}
