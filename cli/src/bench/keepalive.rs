//! `bench keepalive`: each client holds one lease and renews it on its own
//! keep-alive stream, one renewal after another (an ordinary generated
//! tonic client over its own connection, against kvstore or etcd). A
//! renewal's latency is from sending it to its answer.

use std::time::Duration;

use kvstore_proto::kv::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::args::Protocol;
use crate::bench::api::etcd;
use crate::client;

/// The TTL of a bench client's lease: far longer than any run's pause.
const LEASE_TTL_SECONDS: i64 = 60;
/// Longest wait for a renewal's answer.
const RENEW_TIMEOUT: Duration = Duration::from_secs(5);

/// One client's lease and its keep-alive stream.
pub enum KeepAlive {
    /// kvstore.v1.Lease.
    Kvstore {
        id: i64,
        requests: mpsc::Sender<pb::LeaseKeepAliveRequest>,
        answers: Streaming<pb::LeaseKeepAliveResponse>,
    },
    /// etcdserverpb.Lease.
    Etcd {
        id: i64,
        requests: mpsc::Sender<etcd::LeaseKeepAliveRequest>,
        answers: Streaming<etcd::LeaseKeepAliveResponse>,
    },
}

fn unavailable(error: impl std::fmt::Display) -> Status {
    Status::unavailable(error.to_string())
}

impl KeepAlive {
    /// Connects to `endpoint`, grants a lease and opens its stream.
    pub async fn open(
        protocol: Protocol,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<Self, Status> {
        let channel = client::connect_for_streams(endpoint, timeout)
            .await
            .map_err(unavailable)?;
        Ok(match protocol {
            Protocol::Kvstore => {
                let mut leases = pb::lease_client::LeaseClient::new(channel);
                let id = leases
                    .lease_grant(pb::LeaseGrantRequest {
                        ttl: LEASE_TTL_SECONDS,
                        id: 0,
                    })
                    .await?
                    .into_inner()
                    .id;
                // A first renewal before the call: a grpc-go server (etcd)
                // sends no response headers before its first answer.
                let (requests, outgoing) = mpsc::channel(1);
                let _ = requests.try_send(pb::LeaseKeepAliveRequest { id });
                let mut answers = leases
                    .lease_keep_alive(ReceiverStream::new(outgoing))
                    .await?
                    .into_inner();
                answers.message().await?;
                KeepAlive::Kvstore {
                    id,
                    requests,
                    answers,
                }
            }
            Protocol::Etcd => {
                let mut leases = etcd::lease_client::LeaseClient::new(channel);
                let id = leases
                    .lease_grant(etcd::LeaseGrantRequest {
                        ttl: LEASE_TTL_SECONDS,
                        id: 0,
                    })
                    .await?
                    .into_inner()
                    .id;
                // A first renewal before the call: a grpc-go server (etcd)
                // sends no response headers before its first answer.
                let (requests, outgoing) = mpsc::channel(1);
                let _ = requests.try_send(etcd::LeaseKeepAliveRequest { id });
                let mut answers = leases
                    .lease_keep_alive(ReceiverStream::new(outgoing))
                    .await?
                    .into_inner();
                answers.message().await?;
                KeepAlive::Etcd {
                    id,
                    requests,
                    answers,
                }
            }
        })
    }

    /// One renewal, answered (DEADLINE_EXCEEDED after [`RENEW_TIMEOUT`]).
    pub async fn renew(&mut self) -> Result<(), Status> {
        tokio::time::timeout(RENEW_TIMEOUT, self.renew_once())
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer to the renewal")))
    }

    async fn renew_once(&mut self) -> Result<(), Status> {
        let ttl = match self {
            KeepAlive::Kvstore {
                id,
                requests,
                answers,
            } => {
                requests
                    .send(pb::LeaseKeepAliveRequest { id: *id })
                    .await
                    .map_err(unavailable)?;
                answers.message().await?.map(|answer| answer.ttl)
            }
            KeepAlive::Etcd {
                id,
                requests,
                answers,
            } => {
                requests
                    .send(etcd::LeaseKeepAliveRequest { id: *id })
                    .await
                    .map_err(unavailable)?;
                answers.message().await?.map(|answer| answer.ttl)
            }
        };
        match ttl {
            Some(ttl) if ttl > 0 => Ok(()),
            Some(_) => Err(Status::not_found("the lease is gone")),
            None => Err(Status::unavailable("the keep-alive stream ended")),
        }
    }
}
