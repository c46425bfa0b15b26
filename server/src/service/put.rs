//! `KV.Put`.

use kvstore_proto::kv::v1::{PutRequest, PutResponse};
use tonic::Status;

use super::convert;
use super::RequestContext;
use crate::node::Node;
use crate::state_machine::kv_encoding;
use crate::state_machine::mvcc::txn::OpResponse;

/// Serves one put; the node checks it against the request limits. A plain
/// put is the single-key write every storage version has; one with options
/// (`prev_kv`, `ignore_value`, a lease) is a txn of one op.
pub async fn handle(
    node: &Node,
    request: PutRequest,
    context: &RequestContext,
) -> Result<PutResponse, Status> {
    tracing::debug!(request_id = context.request_id, "received");
    let plain =
        !request.prev_kv && !request.ignore_value && !request.ignore_lease && request.lease == 0;
    if plain {
        let served_by = node
            .put(request.key, request.value, &context.request_id)
            .await?;
        return Ok(PutResponse {
            header: convert::header(served_by),
            prev_kv: None,
        });
    }
    let (prev_kv, key) = (request.prev_kv, request.key.clone());
    let op = kv_encoding::put_from_proto(request).map_err(crate::errors::KvError::from)?;
    let (served_by, response) = node.single_op(op, &context.request_id).await?;
    let previous = match response {
        OpResponse::Put { previous } => previous,
        other => return Err(Status::internal(format!("a put answered {other:?}"))),
    };
    Ok(PutResponse {
        header: convert::header(served_by),
        prev_kv: previous
            .filter(|_| prev_kv)
            .map(|record| kv_encoding::key_value_to_proto(&key, &record)),
    })
}
