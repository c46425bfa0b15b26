//! `KV.Range`.

use kvstore_proto::kv::v1::{RangeRequest, RangeResponse};
use tonic::Status;

use super::convert;
use super::RequestContext;
use crate::errors::KvError;
use crate::node::{Node, RequestLimits};
use crate::state_machine::kv_encoding;

/// Validates and serves one range read.
pub async fn handle(
    node: &Node,
    limits: &RequestLimits,
    request: RangeRequest,
    context: &RequestContext,
) -> Result<RangeResponse, Status> {
    tracing::debug!(request_id = context.request_id, "received");
    limits.check_key(&request.key)?;
    limits.check_range_end(&request.range_end)?;
    let consistency = convert::consistency(request.consistency)?;
    let range = kv_encoding::range_from_proto(request).map_err(KvError::from)?;
    let (served_by, outcome) = node.range(range, consistency, &context.request_id).await?;
    Ok(RangeResponse {
        header: convert::header(served_by),
        ..kv_encoding::range_outcome_to_proto(&outcome)
    })
}
