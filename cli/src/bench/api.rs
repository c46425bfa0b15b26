//! The server API a bench client drives: kvstore's own, or etcd's v3 gRPC API
//! for comparison runs. Both are reduced to the two calls the workloads make,
//! so the clients, keys, values and histograms are the same whichever is
//! measured.

use std::time::Duration;

use kvstore_proto::kv::v1::kv_client::KvClient;
use kvstore_proto::kv::v1::{GetRequest, PutRequest};
use tonic::Status;

use crate::args::{Consistency, Protocol};
use crate::bench::transport::OneWriteChannel;
use crate::client::{self, Failure};

/// The generated client of the etcd API subset in `cli/proto/etcdserverpb/`.
#[allow(missing_docs, clippy::all)]
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}

/// One gRPC connection, speaking one of the APIs. Cloning shares the
/// connection (HTTP/2 multiplexes the clients' requests over it).
#[derive(Debug, Clone)]
pub enum Connection {
    /// kvstore.v1.KV.
    Kvstore(KvClient<OneWriteChannel>),
    /// etcdserverpb.KV.
    Etcd(etcd::kv_client::KvClient<OneWriteChannel>),
}

impl Connection {
    /// Connects to `endpoint`, which serves `protocol`.
    pub async fn open(
        protocol: Protocol,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<Connection, Failure> {
        let origin: http::Uri = client::endpoint_url(endpoint)
            .parse()
            .ok()
            .filter(|origin: &http::Uri| {
                origin.scheme_str() == Some("http")
                    && origin.path() == "/"
                    && origin.authority().is_some()
            })
            .ok_or_else(|| {
                Failure(format!(
                    "invalid endpoint {endpoint:?}: bench takes HOST:PORT or http://HOST:PORT"
                ))
            })?;
        let authority = origin
            .authority()
            .map_or("", |authority| authority.as_str());
        let channel = OneWriteChannel::connect(authority, timeout).await?;
        Ok(match protocol {
            Protocol::Kvstore => Connection::Kvstore(
                KvClient::with_origin(channel, origin)
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX),
            ),
            Protocol::Etcd => Connection::Etcd(
                etcd::kv_client::KvClient::with_origin(channel, origin)
                    .max_decoding_message_size(usize::MAX),
            ),
        })
    }

    /// Writes `value` at `key`; Ok once the server acknowledged it.
    pub async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), Status> {
        match self {
            Connection::Kvstore(client) => {
                client
                    .put(PutRequest {
                        key,
                        value,
                        ..PutRequest::default()
                    })
                    .await?;
            }
            Connection::Etcd(client) => {
                client.put(etcd::PutRequest { key, value }).await?;
            }
        }
        Ok(())
    }

    /// A compare-and-swap: puts `value` at `key` if the key exists (its mod
    /// revision is above 0), else reads it; Ok(whether it swapped).
    pub async fn cas(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<bool, Status> {
        match self {
            Connection::Kvstore(client) => {
                use kvstore_proto::kv::v1 as pb;
                let request = pb::TxnRequest {
                    compare: vec![pb::Compare {
                        result: pb::CompareResult::Greater as i32,
                        target: pb::CompareTarget::Mod as i32,
                        key: key.clone(),
                        target_union: Some(pb::compare::TargetUnion::ModRevision(0)),
                        range_end: Vec::new(),
                    }],
                    success: vec![pb::RequestOp {
                        request: Some(pb::request_op::Request::RequestPut(PutRequest {
                            key: key.clone(),
                            value,
                            ..PutRequest::default()
                        })),
                    }],
                    failure: vec![pb::RequestOp {
                        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                            key,
                            ..pb::RangeRequest::default()
                        })),
                    }],
                };
                Ok(client.txn(request).await?.get_ref().succeeded)
            }
            Connection::Etcd(client) => {
                let request = etcd::TxnRequest {
                    compare: vec![etcd::Compare {
                        result: etcd::compare::CompareResult::Greater as i32,
                        target: etcd::compare::CompareTarget::Mod as i32,
                        key: key.clone(),
                        target_union: Some(etcd::compare::TargetUnion::ModRevision(0)),
                        range_end: Vec::new(),
                    }],
                    success: vec![etcd::RequestOp {
                        request: Some(etcd::request_op::Request::RequestPut(etcd::PutRequest {
                            key: key.clone(),
                            value,
                        })),
                    }],
                    failure: vec![etcd::RequestOp {
                        request: Some(etcd::request_op::Request::RequestRange(
                            etcd::RangeRequest {
                                key,
                                ..Default::default()
                            },
                        )),
                    }],
                };
                Ok(client.txn(request).await?.get_ref().succeeded)
            }
        }
    }

    /// Reads the keys `[key, range_end)` with `consistency`; Ok(how many).
    pub async fn range(
        &mut self,
        key: Vec<u8>,
        range_end: Vec<u8>,
        consistency: Consistency,
    ) -> Result<usize, Status> {
        match self {
            Connection::Kvstore(client) => {
                let consistency = match consistency {
                    Consistency::Linearizable => kvstore_proto::kv::v1::Consistency::Linearizable,
                    Consistency::Serializable => kvstore_proto::kv::v1::Consistency::Serializable,
                };
                let response = client
                    .range(kvstore_proto::kv::v1::RangeRequest {
                        key,
                        range_end,
                        consistency: consistency as i32,
                        ..Default::default()
                    })
                    .await?;
                Ok(response.get_ref().kvs.len())
            }
            Connection::Etcd(client) => {
                let response = client
                    .range(etcd::RangeRequest {
                        key,
                        range_end,
                        serializable: consistency == Consistency::Serializable,
                        ..Default::default()
                    })
                    .await?;
                Ok(response.get_ref().kvs.len())
            }
        }
    }

    /// Reads `key` with `consistency`; Ok(whether the key was found).
    pub async fn get(&mut self, key: Vec<u8>, consistency: Consistency) -> Result<bool, Status> {
        match self {
            Connection::Kvstore(client) => {
                let consistency = match consistency {
                    Consistency::Linearizable => kvstore_proto::kv::v1::Consistency::Linearizable,
                    Consistency::Serializable => kvstore_proto::kv::v1::Consistency::Serializable,
                };
                let response = client
                    .get(GetRequest {
                        key,
                        consistency: consistency as i32,
                    })
                    .await?;
                Ok(response.get_ref().found)
            }
            Connection::Etcd(client) => {
                let response = client
                    .range(etcd::RangeRequest {
                        key,
                        serializable: consistency == Consistency::Serializable,
                        ..Default::default()
                    })
                    .await?;
                Ok(!response.get_ref().kvs.is_empty())
            }
        }
    }
}
