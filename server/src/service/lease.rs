//! `kvstore.v1.Lease`: grant, revoke, keep-alive (a stream), time to live
//! and list, as etcd v3's Lease service. Expiry is the leader's
//! (`node::lessor`).

use std::pin::Pin;

use futures::Stream;
use kvstore_proto::kv::v1::lease_server::{Lease, LeaseServer};
use kvstore_proto::kv::v1::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{convert, KvService};
use crate::errors::KvError;
use crate::metrics::Operation;
use crate::node::ServedBy;

/// Full name of the lease service, as reflection lists it.
pub const LEASE_SERVICE_NAME: &str = "kvstore.v1.Lease";
/// Keep-alive answers a stream holds for a client that does not read them.
const KEEP_ALIVE_BUFFER: usize = 16;

/// The lease handlers (sharing the KV service's request ids, deadlines,
/// logs and metrics).
#[derive(Debug, Clone)]
pub struct LeaseService {
    kv: KvService,
    /// Turns true when the node stops: keep-alive streams end then (the
    /// servers' graceful shutdown would wait for them forever).
    stopped: tokio::sync::watch::Receiver<bool>,
}

impl LeaseService {
    /// Handlers over the same node as `kv`, until `stopped` turns true.
    pub fn new(kv: KvService, stopped: tokio::sync::watch::Receiver<bool>) -> Self {
        Self { kv, stopped }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> LeaseServer<Self> {
        LeaseServer::new(self)
    }
}

/// A lease id from the client API: positive.
fn lease_id(id: i64) -> Result<u64, KvError> {
    u64::try_from(id)
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| KvError::InvalidArgument(format!("lease id must be positive (got {id})")))
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn not_found(id: u64) -> String {
    format!(
        "etcdserver: requested lease not found (lease {id:x}: expired, revoked or never granted)"
    )
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let context = self.kv.context(&request);
        let request = request.into_inner();
        let node = &self.kv.node;
        let handler = async {
            let ttl = u64::try_from(request.ttl).map_err(|_| {
                KvError::InvalidArgument(format!(
                    "lease TTL must be positive (got {})",
                    request.ttl
                ))
            })?;
            let id = match request.id {
                0 => 0,
                id => lease_id(id)?,
            };
            let (served_by, id, ttl) = node.lease_grant(id, ttl, &context.request_id).await?;
            Ok(LeaseGrantResponse {
                header: convert::header(served_by),
                id: signed(id),
                ttl: signed(ttl),
                error: String::new(),
            })
        };
        self.kv
            .serve(Operation::LeaseGrant, true, context.clone(), handler)
            .await
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let context = self.kv.context(&request);
        let request = request.into_inner();
        let node = &self.kv.node;
        let handler = async {
            let id = lease_id(request.id)?;
            let served_by = node.lease_revoke(id, &context.request_id).await?;
            Ok(LeaseRevokeResponse {
                header: convert::header(served_by),
            })
        };
        self.kv
            .serve(Operation::LeaseRevoke, true, context.clone(), handler)
            .await
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let context = self.kv.context(&request);
        let mut requests = request.into_inner();
        let node = self.kv.node.clone();
        let (answers, stream) = mpsc::channel(KEEP_ALIVE_BUFFER);
        let mut stopped = self.stopped.clone();
        tokio::spawn(async move {
            // One renewal at a time, answered in order; a leader that cannot
            // be reached ends the stream (the client reconnects, as etcd's),
            // and so does this node stopping.
            loop {
                let request = tokio::select! {
                    request = requests.message() => request,
                    _ = async { let _ = stopped.wait_for(|stop| *stop).await; } => {
                        let _ = answers
                            .send(Err(Status::unavailable(
                                "the node is shutting down: keep the lease alive through another node",
                            )))
                            .await;
                        return;
                    }
                };
                let Ok(Some(request)) = request else { return };
                let answer = keep_alive(&node, request.id, &context.request_id).await;
                let failed = answer.is_err();
                if answers.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let context = self.kv.context(&request);
        let request = request.into_inner();
        let node = &self.kv.node;
        let id = lease_id(request.id)?;
        let result = async {
            let (served_by, lease) = node.lease_query(id, false, &context.request_id).await?;
            if !lease.found {
                return Ok(LeaseTimeToLiveResponse {
                    header: convert::header(served_by),
                    id: signed(id),
                    ttl: -1,
                    granted_ttl: 0,
                    keys: Vec::new(),
                });
            }
            let keys = if request.keys {
                node.lease_keys(id, &context.request_id).await?.2
            } else {
                Vec::new()
            };
            Ok::<_, KvError>(LeaseTimeToLiveResponse {
                header: convert::header(served_by),
                id: signed(id),
                ttl: signed(lease.remaining_seconds),
                granted_ttl: signed(lease.ttl_seconds),
                keys,
            })
        }
        .await;
        result.map(Response::new).map_err(Status::from)
    }

    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let context = self.kv.context(&request);
        let (served_by, leases) = self.kv.node.lease_list(&context.request_id).await?;
        Ok(Response::new(LeaseLeasesResponse {
            header: convert::header(served_by),
            leases: leases
                .into_iter()
                .map(|(id, _)| LeaseStatus { id: signed(id) })
                .collect(),
        }))
    }
}

/// One renewal: the TTL, or (for a lease that is gone) TTL 0 and the
/// reason; an error status when the leader cannot answer.
async fn keep_alive(
    node: &crate::node::Node,
    id: i64,
    request_id: &str,
) -> Result<LeaseKeepAliveResponse, Status> {
    let refused = |served_by: ServedBy, error: String| LeaseKeepAliveResponse {
        header: convert::header(served_by),
        id,
        ttl: 0,
        error,
    };
    let lease = match lease_id(id) {
        Ok(lease) => lease,
        Err(error) => return Ok(refused(ServedBy::default(), error.to_string())),
    };
    let (served_by, reply) = node.lease_query(lease, true, request_id).await?;
    if !reply.found {
        return Ok(refused(served_by, not_found(lease)));
    }
    Ok(LeaseKeepAliveResponse {
        header: convert::header(served_by),
        id,
        ttl: signed(reply.ttl_seconds),
        error: String::new(),
    })
}
