//! The generated gRPC client, with timeouts, outcome classification and
//! recording of every operation into the history.
//!
//! Classification (the protos' error semantics, read conservatively):
//!
//! | what the client saw | outcome |
//! |---|---|
//! | a response | ok |
//! | a status from the server: UNAVAILABLE, INVALID_ARGUMENT, FAILED_PRECONDITION, NOT_FOUND, ALREADY_EXISTS, OUT_OF_RANGE, UNIMPLEMENTED, PERMISSION_DENIED, UNAUTHENTICATED, RESOURCE_EXHAUSTED | failed (surely not done) |
//! | a status from the server: UNKNOWN, DEADLINE_EXCEEDED, CANCELLED, INTERNAL, ABORTED, DATA_LOSS | unknown |
//! | the connection could not be opened (refused) | failed |
//! | any other transport error (reset, closed mid-request), or the client's own timeout | unknown |
//!
//! A status counts as "from the server" when tonic parsed it from the
//! response (it has no source error); statuses tonic makes up for transport
//! failures carry the failure as their source.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use kvstore_proto::kv::v1 as pb;
use kvstore_proto::kv::v1::kv_client::KvClient;
use kvstore_proto::kv::v1::lease_client::LeaseClient;
use kvstore_proto::kv::v1::watch_client::WatchClient;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::history::{
    Consistency, Event, History, OpKind, OpStatus, Operation, Served, WatchEvent,
};

/// The host address of every node's client port (`None`: not running).
#[derive(Debug, Clone, Default)]
pub struct Endpoints(Arc<RwLock<BTreeMap<u64, Option<SocketAddr>>>>);

impl Endpoints {
    /// Sets node `id`'s address.
    pub fn set(&self, id: u64, address: Option<SocketAddr>) {
        self.0.write().expect("endpoints lock").insert(id, address);
    }
    /// Node `id`'s address.
    pub fn get(&self, id: u64) -> Option<SocketAddr> {
        self.0
            .read()
            .expect("endpoints lock")
            .get(&id)
            .copied()
            .flatten()
    }
}

/// Records operations and events with times relative to the scenario start.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    history: Mutex<History>,
    next_process: AtomicUsize,
}

impl Recorder {
    /// A new recorder; time 0 is now.
    pub fn new(scenario: &str, seed: u64) -> Arc<Recorder> {
        Arc::new(Recorder {
            start: Instant::now(),
            history: Mutex::new(History {
                scenario: scenario.to_string(),
                seed,
                operations: Vec::new(),
                events: Vec::new(),
                watch_events: Vec::new(),
            }),
            next_process: AtomicUsize::new(0),
        })
    }

    /// Microseconds since the start.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// A new timeline row.
    pub fn new_process(&self) -> usize {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }

    /// Records a runner action.
    pub fn event(&self, text: impl Into<String>) {
        let at_us = self.now_us();
        self.history
            .lock()
            .expect("history lock")
            .events
            .push(Event {
                at_us,
                text: text.into(),
            });
    }

    /// Records an operation the runner made itself (a renewal on a
    /// stream); its id is its position.
    pub fn record(&self, mut operation: Operation) -> Operation {
        let mut history = self.history.lock().expect("history lock");
        operation.id = history.operations.len();
        history.operations.push(operation.clone());
        operation
    }

    /// Adds what the background watchers received.
    pub fn add_watch_events(&self, events: impl IntoIterator<Item = WatchEvent>) {
        self.history
            .lock()
            .expect("history lock")
            .watch_events
            .extend(events);
    }

    /// A copy of everything recorded so far, operations in completion order
    /// of recording (ids are positions).
    pub fn snapshot(&self) -> History {
        self.history.lock().expect("history lock").clone()
    }
}

/// A client operation to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Put `key` = `value`.
    Put {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// Get `key`.
    Get {
        /// Key.
        key: String,
        /// Consistency.
        consistency: Consistency,
    },
    /// Delete `key`.
    Delete {
        /// Key.
        key: String,
    },
    /// Put `value` if `key` holds `expected` (`None`: if it does not exist);
    /// a txn with one compare and one put, reading the key otherwise.
    Cas {
        /// Key.
        key: String,
        /// The value it must hold.
        expected: Option<String>,
        /// The value to store.
        value: String,
    },
    /// Read the integer in `key` (absent: 0), then store it plus one if the
    /// key's mod revision is still the one read.
    Increment {
        /// Key.
        key: String,
    },
    /// Read every account, then move `amount` from `from` to `to` if
    /// neither changed since (nothing when `from` holds less).
    Transfer {
        /// Every account, in order (their prefix is `prefix`).
        prefix: String,
        /// Account taken from.
        from: String,
        /// Account given to.
        to: String,
        /// Amount.
        amount: u64,
    },
    /// Sum every account under `prefix` (a linearizable range).
    Audit {
        /// The accounts' common prefix.
        prefix: String,
    },
    /// Read every key under `prefix` (a linearizable range).
    Range {
        /// The prefix.
        prefix: String,
    },
    /// Put `key` = `value` attached to lease `lease`.
    LeasedPut {
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// The lease.
        lease: i64,
    },
    /// Create `key` = `value` attached to lease `lease` unless it exists
    /// (a txn on `create_revision == 0`, reading the key otherwise): the
    /// lock recipe's first step. Recorded as a compare-and-swap from absent.
    Create {
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// The lease.
        lease: i64,
    },
    /// Store `token` under `key` if the key's value is below it bytewise
    /// (a txn with a VALUE LESS compare), reading the key otherwise.
    Fenced {
        /// The guarded key.
        key: String,
        /// The fencing token, zero padded.
        token: String,
    },
    /// Grant a lease of `ttl_seconds`; `label` names what it is for.
    LeaseGrant {
        /// What it is for (the history's key).
        label: String,
        /// Time to live, in seconds.
        ttl_seconds: i64,
    },
    /// Revoke lease `id`.
    LeaseRevoke {
        /// What it is for (the history's key).
        label: String,
        /// The lease.
        id: i64,
    },
}

/// The range end of every key starting with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A txn op that puts `value` under `key`.
fn put_op(key: &[u8], value: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..pb::PutRequest::default()
        })),
    }
}

/// A compare that `key`'s mod revision is `revision` (0: absent).
fn mod_is(key: &[u8], revision: i64) -> pb::Compare {
    pb::Compare {
        result: pb::CompareResult::Equal as i32,
        target: pb::CompareTarget::Mod as i32,
        key: key.to_vec(),
        target_union: Some(pb::compare::TargetUnion::ModRevision(revision)),
        range_end: Vec::new(),
    }
}

/// Per-request time limits.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// The gRPC deadline sent to the server.
    pub request: Duration,
    /// Extra time the client waits past the deadline before giving up itself.
    pub grace: Duration,
    /// Opening a connection.
    pub connect: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            request: Duration::from_millis(2500),
            grace: Duration::from_millis(500),
            connect: Duration::from_millis(1000),
        }
    }
}

/// A client for every node of a cluster, sharing connections.
#[derive(Debug, Clone)]
pub struct Client {
    endpoints: Endpoints,
    channels: Arc<Mutex<BTreeMap<u64, (SocketAddr, Channel)>>>,
    recorder: Arc<Recorder>,
    timeouts: Timeouts,
}

impl Client {
    /// A client of the nodes in `endpoints`, recording into `recorder`.
    pub fn new(endpoints: Endpoints, recorder: Arc<Recorder>, timeouts: Timeouts) -> Client {
        Client {
            endpoints,
            channels: Arc::default(),
            recorder,
            timeouts,
        }
    }

    /// The recorder.
    pub fn recorder(&self) -> &Arc<Recorder> {
        &self.recorder
    }

    fn channel(&self, node: u64) -> Option<Channel> {
        let address = self.endpoints.get(node)?;
        let mut channels = self.channels.lock().expect("channels lock");
        if let Some((known, channel)) = channels.get(&node) {
            if *known == address {
                return Some(channel.clone());
            }
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .expect("a socket address is a valid URI")
            .connect_timeout(self.timeouts.connect)
            .tcp_nodelay(true);
        let channel = endpoint.connect_lazy();
        channels.insert(node, (address, channel.clone()));
        Some(channel)
    }

    /// Forgets node `id`'s connection (after a restart, say).
    pub fn forget(&self, node: u64) {
        self.channels.lock().expect("channels lock").remove(&node);
    }

    /// Runs `request` at `node` as client `client` (timeline row `process`)
    /// and records it.
    pub async fn execute(
        &self,
        client: &str,
        process: usize,
        node: u64,
        request: &Request,
    ) -> Operation {
        self.execute_full(client, process, node, request).await.0
    }

    /// [`Client::execute`], also returning the pairs a range read (or a
    /// create found instead).
    pub async fn execute_full(
        &self,
        client: &str,
        process: usize,
        node: u64,
        request: &Request,
    ) -> (Operation, Vec<pb::KeyValue>) {
        let mut expected = None;
        let (kind, key, value, consistency) = match request {
            Request::Put { key, value } => (OpKind::Put, key, Some(value.clone()), None),
            Request::Get { key, consistency } => (OpKind::Get, key, None, Some(*consistency)),
            Request::Delete { key } => (OpKind::Delete, key, None, None),
            Request::Cas {
                key,
                expected: wanted,
                value,
            } => {
                expected = Some(wanted.clone());
                (OpKind::Cas, key, Some(value.clone()), None)
            }
            Request::Increment { key } => (OpKind::Increment, key, None, None),
            Request::Transfer {
                prefix,
                from,
                to,
                amount,
            } => (
                OpKind::Transfer,
                prefix,
                Some(format!("{amount} {from}->{to}")),
                None,
            ),
            Request::Audit { prefix } => (OpKind::Audit, prefix, None, None),
            Request::Range { prefix } => (OpKind::Range, prefix, None, None),
            Request::LeasedPut { key, value, .. } => (OpKind::Put, key, Some(value.clone()), None),
            Request::Create { key, value, .. } => {
                expected = Some(None);
                (OpKind::Cas, key, Some(value.clone()), None)
            }
            Request::Fenced { key, token } => (OpKind::Fenced, key, Some(token.clone()), None),
            Request::LeaseGrant { label, ttl_seconds } => (
                OpKind::LeaseGrant,
                label,
                Some(format!("ttl {ttl_seconds}s")),
                None,
            ),
            Request::LeaseRevoke { label, id } => {
                (OpKind::LeaseRevoke, label, Some(format!("{id:x}")), None)
            }
        };
        let mut operation = Operation {
            id: 0,
            client: client.to_string(),
            process,
            node,
            kind,
            key: key.clone(),
            value,
            consistency,
            invoke_us: self.recorder.now_us(),
            complete_us: 0,
            status: OpStatus::Failed,
            read: None,
            deleted: None,
            expected,
            swapped: None,
            served: None,
            error: None,
        };
        let result = match self.channel(node) {
            None => Err((OpStatus::Failed, format!("node {node} is not running"))),
            Some(channel) => {
                let limit = self.timeouts.request + self.timeouts.grace;
                match tokio::time::timeout(limit, self.call(channel, request)).await {
                    Ok(result) => result,
                    Err(_) => Err((OpStatus::Unknown, format!("client timeout after {limit:?}"))),
                }
            }
        };
        operation.complete_us = self.recorder.now_us();
        let mut pairs = Vec::new();
        match result {
            Ok(reply) => {
                pairs = reply.pairs;
                operation.status = OpStatus::Ok;
                operation.served = Some(reply.served);
                operation.read = reply.read;
                operation.deleted = reply.deleted;
                operation.swapped = reply.swapped;
                if let Some(value) = reply.wrote {
                    operation.value = Some(value);
                }
            }
            Err((status, error)) => {
                operation.status = status;
                operation.error = Some(error);
            }
        }
        (self.recorder.record(operation), pairs)
    }

    async fn call(&self, channel: Channel, request: &Request) -> Result<Reply, (OpStatus, String)> {
        let mut client = KvClient::new(channel.clone());
        let deadline = self.timeouts.request;
        match request {
            Request::Put { key, value } => put(&mut client, (key, value, 0), deadline).await,
            Request::Get { key, consistency } => {
                let consistency = match consistency {
                    Consistency::Linearizable => pb::Consistency::Linearizable,
                    Consistency::Serializable => pb::Consistency::Serializable,
                };
                let response = client
                    .get(with_timeout(
                        pb::GetRequest {
                            key: key.as_bytes().to_vec(),
                            consistency: consistency as i32,
                        },
                        deadline,
                    ))
                    .await
                    .map_err(|status| classify(&status))?
                    .into_inner();
                let value = response
                    .found
                    .then(|| String::from_utf8_lossy(&response.value).into_owned());
                Ok(Reply {
                    served: served(response.header),
                    read: Some(value),
                    ..Reply::default()
                })
            }
            Request::Delete { key } => {
                let response = client
                    .delete(with_timeout(
                        pb::DeleteRequest {
                            key: key.as_bytes().to_vec(),
                        },
                        deadline,
                    ))
                    .await
                    .map_err(|status| classify(&status))?
                    .into_inner();
                Ok(Reply {
                    served: served(response.header),
                    deleted: Some(response.deleted),
                    ..Reply::default()
                })
            }
            Request::Cas {
                key,
                expected,
                value,
            } => {
                let key = key.as_bytes();
                let compare = match expected {
                    Some(expected) => pb::Compare {
                        result: pb::CompareResult::Equal as i32,
                        target: pb::CompareTarget::Value as i32,
                        key: key.to_vec(),
                        target_union: Some(pb::compare::TargetUnion::Value(
                            expected.as_bytes().to_vec(),
                        )),
                        range_end: Vec::new(),
                    },
                    None => pb::Compare {
                        result: pb::CompareResult::Equal as i32,
                        target: pb::CompareTarget::Create as i32,
                        key: key.to_vec(),
                        target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
                        range_end: Vec::new(),
                    },
                };
                let read = pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                        key: key.to_vec(),
                        ..pb::RangeRequest::default()
                    })),
                };
                let txn = pb::TxnRequest {
                    compare: vec![compare],
                    success: vec![put_op(key, value.as_bytes())],
                    failure: vec![read],
                };
                let response = client
                    .txn(with_timeout(txn, deadline))
                    .await
                    .map_err(|status| classify(&status))?
                    .into_inner();
                let read = if response.succeeded {
                    None
                } else {
                    let pairs = match response
                        .responses
                        .first()
                        .and_then(|op| op.response.as_ref())
                    {
                        Some(pb::response_op::Response::ResponseRange(range)) => &range.kvs,
                        _ => {
                            return Err((
                                OpStatus::Unknown,
                                "a txn answered without its range".into(),
                            ))
                        }
                    };
                    Some(
                        pairs
                            .first()
                            .map(|pair| String::from_utf8_lossy(&pair.value).into_owned()),
                    )
                };
                Ok(Reply {
                    served: served(response.header),
                    read,
                    swapped: Some(response.succeeded),
                    ..Reply::default()
                })
            }
            Request::Increment { key } => {
                let key = key.as_bytes();
                let read = client
                    .range(with_timeout(
                        pb::RangeRequest {
                            key: key.to_vec(),
                            ..pb::RangeRequest::default()
                        },
                        deadline,
                    ))
                    .await
                    // Nothing was written yet: a failed read is a failed increment.
                    .map_err(|status| (OpStatus::Failed, classify(&status).1))?
                    .into_inner();
                let (value, revision) = match read.kvs.first() {
                    Some(pair) => (
                        String::from_utf8_lossy(&pair.value)
                            .parse::<u64>()
                            .map_err(|_| (OpStatus::Failed, format!("{key:?} is not a counter")))?,
                        pair.mod_revision,
                    ),
                    None => (0, 0),
                };
                let next = (value + 1).to_string();
                let txn = pb::TxnRequest {
                    compare: vec![mod_is(key, revision)],
                    success: vec![put_op(key, next.as_bytes())],
                    failure: Vec::new(),
                };
                let response = client
                    .txn(with_timeout(txn, deadline))
                    .await
                    .map_err(|status| classify(&status))?
                    .into_inner();
                Ok(Reply {
                    served: served(response.header),
                    swapped: Some(response.succeeded),
                    wrote: Some(next),
                    ..Reply::default()
                })
            }
            Request::Transfer {
                prefix,
                from,
                to,
                amount,
            } => {
                let balances = self::balances(&mut client, prefix, deadline)
                    .await
                    .map_err(|status| (OpStatus::Failed, classify(&status).1))?;
                let balance = |account: &str| {
                    balances
                        .iter()
                        .find(|(key, _, _)| key == account)
                        .map(|(_, balance, revision)| (*balance, *revision))
                        .ok_or_else(|| (OpStatus::Failed, format!("no account {account}")))
                };
                let ((from_balance, from_revision), (to_balance, to_revision)) =
                    (balance(from)?, balance(to)?);
                if from_balance < *amount {
                    return Err((
                        OpStatus::Failed,
                        format!("{from} holds only {from_balance}"),
                    ));
                }
                let txn = pb::TxnRequest {
                    compare: vec![
                        mod_is(from.as_bytes(), from_revision),
                        mod_is(to.as_bytes(), to_revision),
                    ],
                    success: vec![
                        put_op(
                            from.as_bytes(),
                            (from_balance - amount).to_string().as_bytes(),
                        ),
                        put_op(to.as_bytes(), (to_balance + amount).to_string().as_bytes()),
                    ],
                    failure: Vec::new(),
                };
                let response = client
                    .txn(with_timeout(txn, deadline))
                    .await
                    .map_err(|status| classify(&status))?
                    .into_inner();
                Ok(Reply {
                    served: served(response.header),
                    swapped: Some(response.succeeded),
                    ..Reply::default()
                })
            }
            Request::Audit { prefix } => {
                let balances = self::balances(&mut client, prefix, deadline)
                    .await
                    .map_err(|status| classify(&status))?;
                let sum: u64 = balances.iter().map(|(_, balance, _)| balance).sum();
                Ok(Reply {
                    read: Some(Some(sum.to_string())),
                    ..Reply::default()
                })
            }
            Request::Range { prefix } => {
                let response = client
                    .range(with_timeout(
                        pb::RangeRequest {
                            key: prefix.as_bytes().to_vec(),
                            range_end: prefix_end(prefix),
                            ..pb::RangeRequest::default()
                        },
                        deadline,
                    ))
                    .await
                    .map_err(|status| classify(&status))?
                    .into_inner();
                let listed: Vec<String> = response
                    .kvs
                    .iter()
                    .map(|pair| {
                        format!(
                            "{}={}",
                            String::from_utf8_lossy(&pair.key),
                            String::from_utf8_lossy(&pair.value)
                        )
                    })
                    .collect();
                Ok(Reply {
                    served: served(response.header),
                    read: Some(Some(listed.join(" "))),
                    pairs: response.kvs,
                    ..Reply::default()
                })
            }
            Request::LeasedPut { key, value, lease } => {
                put(&mut client, (key, value, *lease), deadline).await
            }
            Request::Create { key, value, lease } => {
                let key = key.as_bytes();
                let txn = pb::TxnRequest {
                    compare: vec![pb::Compare {
                        result: pb::CompareResult::Equal as i32,
                        target: pb::CompareTarget::Create as i32,
                        key: key.to_vec(),
                        target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
                        range_end: Vec::new(),
                    }],
                    success: vec![pb::RequestOp {
                        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                            key: key.to_vec(),
                            value: value.as_bytes().to_vec(),
                            lease: *lease,
                            ..pb::PutRequest::default()
                        })),
                    }],
                    failure: vec![range_op(key)],
                };
                swap(&mut client, txn, deadline).await
            }
            Request::Fenced { key, token } => {
                let key = key.as_bytes();
                let txn = pb::TxnRequest {
                    compare: vec![pb::Compare {
                        result: pb::CompareResult::Less as i32,
                        target: pb::CompareTarget::Value as i32,
                        key: key.to_vec(),
                        target_union: Some(pb::compare::TargetUnion::Value(
                            token.as_bytes().to_vec(),
                        )),
                        range_end: Vec::new(),
                    }],
                    success: vec![put_op(key, token.as_bytes())],
                    failure: vec![range_op(key)],
                };
                swap(&mut client, txn, deadline).await
            }
            Request::LeaseGrant { ttl_seconds, .. } => {
                let response = LeaseClient::new(channel.clone())
                    .lease_grant(with_timeout(
                        pb::LeaseGrantRequest {
                            ttl: *ttl_seconds,
                            id: 0,
                        },
                        deadline,
                    ))
                    .await
                    .map_err(|status| classify(&status))?
                    .into_inner();
                Ok(Reply {
                    served: served(response.header),
                    wrote: Some(format!("{:x}", response.id)),
                    read: Some(Some(response.ttl.to_string())),
                    ..Reply::default()
                })
            }
            Request::LeaseRevoke { id, .. } => {
                let response = LeaseClient::new(channel.clone())
                    .lease_revoke(with_timeout(pb::LeaseRevokeRequest { id: *id }, deadline))
                    .await
                    .map_err(|status| classify(&status))?
                    .into_inner();
                Ok(Reply {
                    served: served(response.header),
                    ..Reply::default()
                })
            }
        }
    }

    /// Opens a `Lease/LeaseKeepAlive` stream at `node` on a connection of
    /// its own (with HTTP/2 keepalive, as [`Client::open_watch`]).
    pub async fn open_keep_alive(&self, node: u64) -> Result<KeepAliveStream, tonic::Status> {
        let limit = self.timeouts.request + self.timeouts.grace;
        let opening = async {
            let channel = self.stream_channel(node).await?;
            let (requests, outgoing) = futures::channel::mpsc::unbounded();
            let responses = LeaseClient::new(channel)
                .lease_keep_alive(outgoing)
                .await?
                .into_inner();
            Ok(KeepAliveStream {
                requests,
                responses,
            })
        };
        tokio::time::timeout(limit, opening)
            .await
            .unwrap_or_else(|_| {
                Err(tonic::Status::deadline_exceeded(format!(
                    "no keep-alive stream from node {node} within {limit:?}"
                )))
            })
    }

    /// One renewal of lease `id` on `stream` (opened at `node`), recorded
    /// as client `client` (row `process`) with `label` as its key: ok with
    /// the TTL answered (`0`: the lease is gone), or unknown when no answer
    /// came within the request timeout (the stream is then of no more use).
    pub async fn keep_alive(
        &self,
        stream: &mut KeepAliveStream,
        (client, process): (&str, usize),
        node: u64,
        label: &str,
        id: i64,
    ) -> Operation {
        let mut operation = Operation {
            id: 0,
            client: client.to_string(),
            process,
            node,
            kind: OpKind::LeaseKeepAlive,
            key: label.to_string(),
            value: Some(format!("{id:x}")),
            consistency: None,
            invoke_us: self.recorder.now_us(),
            complete_us: 0,
            status: OpStatus::Unknown,
            read: None,
            deleted: None,
            expected: None,
            swapped: None,
            served: None,
            error: None,
        };
        let answer = match stream
            .requests
            .unbounded_send(pb::LeaseKeepAliveRequest { id })
        {
            Err(error) => Err((OpStatus::Failed, format!("the stream closed: {error}"))),
            Ok(()) => match tokio::time::timeout(self.timeouts.request, stream.responses.message())
                .await
            {
                Err(_) => Err((
                    OpStatus::Unknown,
                    format!("no answer within {:?}", self.timeouts.request),
                )),
                Ok(Ok(Some(answer))) => Ok(answer),
                Ok(Ok(None)) => Err((OpStatus::Unknown, "the stream ended".into())),
                Ok(Err(status)) => Err(classify(&status)),
            },
        };
        operation.complete_us = self.recorder.now_us();
        match answer {
            Ok(answer) => {
                operation.status = OpStatus::Ok;
                operation.served = Some(served(answer.header));
                operation.read = Some(Some(answer.ttl.max(0).to_string()));
                if !answer.error.is_empty() {
                    operation.error = Some(answer.error);
                }
            }
            Err((status, error)) => {
                operation.status = status;
                operation.error = Some(error);
            }
        }
        self.recorder.record(operation)
    }

    /// A connection of its own to `node`, with HTTP/2 keepalive, so that a
    /// node that dies without closing it (SIGKILL behind a published port)
    /// still ends its streams.
    async fn stream_channel(&self, node: u64) -> Result<Channel, tonic::Status> {
        let address = self
            .endpoints
            .get(node)
            .ok_or_else(|| tonic::Status::unavailable(format!("node {node} is not running")))?;
        Endpoint::from_shared(format!("http://{address}"))
            .expect("a socket address is a valid URI")
            .connect_timeout(self.timeouts.connect)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(WATCH_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(WATCH_KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .connect()
            .await
            .map_err(|error| {
                tonic::Status::unavailable(format!("cannot connect to node {node}: {error}"))
            })
    }

    /// `KV/Range` at `node`, not recorded (for checks that compare nodes).
    pub async fn range(
        &self,
        node: u64,
        request: pb::RangeRequest,
    ) -> Result<pb::RangeResponse, tonic::Status> {
        let channel = self
            .channel(node)
            .ok_or_else(|| tonic::Status::unavailable(format!("node {node} is not running")))?;
        KvClient::new(channel)
            .range(with_timeout(request, self.timeouts.request))
            .await
            .map(tonic::Response::into_inner)
    }

    /// `KV/Compact` at `node`, waiting for the physical compaction there.
    pub async fn compact(&self, node: u64, revision: i64) -> Result<(), tonic::Status> {
        let channel = self
            .channel(node)
            .ok_or_else(|| tonic::Status::unavailable(format!("node {node} is not running")))?;
        KvClient::new(channel)
            .compact(with_timeout(
                pb::CompactionRequest {
                    revision,
                    physical: true,
                },
                self.timeouts.request,
            ))
            .await
            .map(|_| ())
    }

    /// Opens a `Watch/Watch` stream at `node` on a connection of its own,
    /// with HTTP/2 keepalive, so that a node that dies without closing the
    /// connection (SIGKILL behind a published port) still ends the stream.
    pub async fn open_watch(&self, node: u64) -> Result<WatchStream, tonic::Status> {
        let opening = async {
            let channel = self.stream_channel(node).await?;
            let (requests, outgoing) = futures::channel::mpsc::unbounded();
            let responses = WatchClient::new(channel)
                .watch(outgoing)
                .await?
                .into_inner();
            Ok(WatchStream {
                requests,
                responses,
            })
        };
        let limit = self.timeouts.request + self.timeouts.grace;
        tokio::time::timeout(limit, opening)
            .await
            .unwrap_or_else(|_| {
                Err(tonic::Status::deadline_exceeded(format!(
                    "no watch stream from node {node} within {limit:?}"
                )))
            })
    }

    /// `KV/Status` of `node`, within `timeout`.
    pub async fn status(&self, node: u64, timeout: Duration) -> Result<pb::StatusResponse, String> {
        let channel = self
            .channel(node)
            .ok_or_else(|| format!("node {node} is not running"))?;
        let mut client = KvClient::new(channel);
        let mut request = tonic::Request::new(pb::StatusRequest {});
        request.set_timeout(timeout);
        match tokio::time::timeout(timeout + Duration::from_millis(200), client.status(request))
            .await
        {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
            Err(_) => Err("timeout".into()),
        }
    }
}

/// How often a watch connection is pinged, and how long a ping may go
/// unanswered before the connection counts as dead.
const WATCH_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const WATCH_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// One open keep-alive stream: renewals go in, answers come out.
#[derive(Debug)]
pub struct KeepAliveStream {
    /// Renewals.
    pub requests: futures::channel::mpsc::UnboundedSender<pb::LeaseKeepAliveRequest>,
    /// The server's answers, one per renewal.
    pub responses: tonic::Streaming<pb::LeaseKeepAliveResponse>,
}

/// A txn op that reads `key`.
fn range_op(key: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
            key: key.to_vec(),
            ..pb::RangeRequest::default()
        })),
    }
}

/// Puts `key` = `value`, attached to `lease` (0: none).
async fn put(
    client: &mut KvClient<Channel>,
    (key, value, lease): (&str, &str, i64),
    deadline: Duration,
) -> Result<Reply, (OpStatus, String)> {
    let response = client
        .put(with_timeout(
            pb::PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                lease,
                ..pb::PutRequest::default()
            },
            deadline,
        ))
        .await
        .map_err(|status| classify(&status))?
        .into_inner();
    Ok(Reply {
        served: served(response.header),
        ..Reply::default()
    })
}

/// Runs a txn with one compare on one key, one write on success and a
/// range of the key on failure: swapped, or the value found (and its pair).
async fn swap(
    client: &mut KvClient<Channel>,
    txn: pb::TxnRequest,
    deadline: Duration,
) -> Result<Reply, (OpStatus, String)> {
    let response = client
        .txn(with_timeout(txn, deadline))
        .await
        .map_err(|status| classify(&status))?
        .into_inner();
    let found = txn_range(&response)?;
    Ok(Reply {
        served: served(response.header),
        read: (!response.succeeded).then(|| {
            found
                .first()
                .map(|pair| String::from_utf8_lossy(&pair.value).into_owned())
        }),
        swapped: Some(response.succeeded),
        pairs: found,
        ..Reply::default()
    })
}

/// The pairs of a txn's failure-branch range (none when it succeeded).
fn txn_range(response: &pb::TxnResponse) -> Result<Vec<pb::KeyValue>, (OpStatus, String)> {
    if response.succeeded {
        return Ok(Vec::new());
    }
    match response
        .responses
        .first()
        .and_then(|op| op.response.as_ref())
    {
        Some(pb::response_op::Response::ResponseRange(range)) => Ok(range.kvs.clone()),
        _ => Err((OpStatus::Unknown, "a txn answered without its range".into())),
    }
}

/// One open watch stream: requests go in, responses come out.
#[derive(Debug)]
pub struct WatchStream {
    /// Create, cancel and progress requests.
    pub requests: futures::channel::mpsc::UnboundedSender<pb::WatchRequest>,
    /// The server's responses.
    pub responses: tonic::Streaming<pb::WatchResponse>,
}

fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

#[derive(Default)]
struct Reply {
    /// The pairs a range read, or a create found instead.
    pairs: Vec<pb::KeyValue>,
    served: Served,
    read: Option<Option<String>>,
    deleted: Option<bool>,
    swapped: Option<bool>,
    /// The value a read-modify-write stored (known only once it read).
    wrote: Option<String>,
}

/// Every account under `prefix`: key, balance, mod revision (linearizable).
async fn balances(
    client: &mut KvClient<Channel>,
    prefix: &str,
    deadline: Duration,
) -> Result<Vec<(String, u64, i64)>, tonic::Status> {
    let response = client
        .range(with_timeout(
            pb::RangeRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_end(prefix),
                ..pb::RangeRequest::default()
            },
            deadline,
        ))
        .await?
        .into_inner();
    response
        .kvs
        .iter()
        .map(|pair| {
            let balance = String::from_utf8_lossy(&pair.value)
                .parse::<u64>()
                .map_err(|_| {
                    tonic::Status::data_loss(format!("{:?} is not a balance", pair.value))
                })?;
            Ok((
                String::from_utf8_lossy(&pair.key).into_owned(),
                balance,
                pair.mod_revision,
            ))
        })
        .collect()
}

fn served(header: Option<pb::ResponseHeader>) -> Served {
    let header = header.unwrap_or_default();
    Served {
        node_id: header.node_id,
        leader_id: header.leader_id,
        term: header.term,
        index: header.index,
        forwarded_by: header.forwarded_by,
        revision: header.revision,
    }
}

/// Classifies an error status (see the module docs).
pub fn classify(status: &tonic::Status) -> (OpStatus, String) {
    let message = format!("{:?}: {}", status.code(), status.message());
    match status.source() {
        None => (classify_server_code(status.code()), message),
        Some(source) => {
            let mut chain = Vec::new();
            let mut error: Option<&(dyn std::error::Error + 'static)> = Some(source);
            let mut refused = false;
            while let Some(current) = error {
                let text = current.to_string();
                if let Some(io) = current.downcast_ref::<std::io::Error>() {
                    refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
                }
                refused |=
                    text.contains("tcp connect error") || text.contains("Connection refused");
                chain.push(text);
                error = current.source();
            }
            let message = format!("{message} ({})", chain.join(": "));
            if refused {
                (OpStatus::Failed, message)
            } else {
                (OpStatus::Unknown, message)
            }
        }
    }
}

/// Outcome of a status code sent by the server.
pub fn classify_server_code(code: Code) -> OpStatus {
    match code {
        Code::Ok => OpStatus::Ok,
        Code::Unavailable
        | Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::NotFound
        | Code::AlreadyExists
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::ResourceExhausted => OpStatus::Failed,
        Code::Unknown
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Internal
        | Code::Aborted
        | Code::DataLoss => OpStatus::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_codes() {
        assert_eq!(
            classify(&tonic::Status::unavailable("no leader")).0,
            OpStatus::Failed
        );
        assert_eq!(
            classify(&tonic::Status::invalid_argument("empty key")).0,
            OpStatus::Failed
        );
        assert_eq!(
            classify(&tonic::Status::unknown("leader lost")).0,
            OpStatus::Unknown
        );
        assert_eq!(
            classify(&tonic::Status::deadline_exceeded("late")).0,
            OpStatus::Unknown
        );
    }

    #[test]
    fn transport_errors() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let status = tonic::Status::from_error(Box::new(refused));
        assert_eq!(classify(&status).0, OpStatus::Failed);
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let status = tonic::Status::from_error(Box::new(reset));
        assert_eq!(classify(&status).0, OpStatus::Unknown);
    }

    #[tokio::test]
    async fn an_unreachable_node_fails_and_is_recorded() {
        // A port nobody listens on: bind, learn the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let endpoints = Endpoints::default();
        endpoints.set(1, Some(SocketAddr::from(([127, 0, 0, 1], port))));
        endpoints.set(2, None);
        let recorder = Recorder::new("test", 1);
        let client = Client::new(endpoints, recorder.clone(), Timeouts::default());
        let put = Request::Put {
            key: "a".into(),
            value: "1".into(),
        };
        let operation = client.execute("c", 0, 1, &put).await;
        assert_eq!(operation.status, OpStatus::Failed, "{:?}", operation.error);
        let operation = client.execute("c", 0, 2, &put).await;
        assert_eq!(operation.status, OpStatus::Failed);
        let history = recorder.snapshot();
        assert_eq!(history.operations.len(), 2);
        assert_eq!(history.operations[1].id, 1);
    }
}
