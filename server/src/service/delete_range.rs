//! `KV.DeleteRange`.

use kvstore_proto::kv::v1::{DeleteRangeRequest, DeleteRangeResponse};
use tonic::Status;

use super::convert;
use super::RequestContext;
use crate::errors::KvError;
use crate::node::Node;
use crate::state_machine::kv_encoding;
use crate::state_machine::mvcc::txn::OpResponse;

/// Serves one range delete (a txn of one op; the node checks its limits).
pub async fn handle(
    node: &Node,
    request: DeleteRangeRequest,
    context: &RequestContext,
) -> Result<DeleteRangeResponse, Status> {
    tracing::debug!(request_id = context.request_id, "received");
    let prev_kv = request.prev_kv;
    let op = kv_encoding::delete_range_from_proto(request).map_err(KvError::from)?;
    let (served_by, response) = node.single_op(op, &context.request_id).await?;
    let deleted = match response {
        OpResponse::DeleteRange { deleted } => deleted,
        other => {
            return Err(Status::internal(format!(
                "a range delete answered {other:?}"
            )))
        }
    };
    Ok(DeleteRangeResponse {
        header: convert::header(served_by),
        deleted: i64::try_from(deleted.len()).unwrap_or(i64::MAX),
        prev_kvs: if prev_kv {
            deleted
                .iter()
                .map(|(key, record)| kv_encoding::key_value_to_proto(key, record))
                .collect()
        } else {
            Vec::new()
        },
    })
}
