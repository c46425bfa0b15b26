//! `KV.Txn`.

use kvstore_proto::kv::v1::{TxnRequest, TxnResponse};
use tonic::Status;

use super::convert;
use super::RequestContext;
use crate::errors::KvError;
use crate::node::Node;
use crate::state_machine::kv_encoding;

/// Serves one txn (the node checks its limits and op counts).
pub async fn handle(
    node: &Node,
    request: TxnRequest,
    context: &RequestContext,
) -> Result<TxnResponse, Status> {
    tracing::debug!(request_id = context.request_id, "received");
    let flags = kv_encoding::prev_kv_flags(&request);
    let txn = kv_encoding::txn_from_proto(request).map_err(KvError::from)?;
    let (served_by, response) = node.txn(txn, &context.request_id).await?;
    Ok(TxnResponse {
        header: convert::header(served_by),
        ..kv_encoding::txn_response_to_proto(&response, &flags)
    })
}
