//! The node: what the client service and the peer service call.
//!
//! [`Node`] is a cheap handle. Writes and linearizable reads go to the Raft
//! driver when this node leads, and are forwarded to the leader over the raft
//! port otherwise; serializable reads are served from the local store.
//! [`driver`] owns the Raft core.

pub mod compactor;
pub mod driver;
mod forwarded;
pub mod lessor;
pub mod persist;
mod read_batch;
mod validate;
pub mod wal_writer;
pub mod watchers;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvstore_raft::{Index, NodeId};
use tokio::sync::{mpsc, oneshot, watch};

pub use validate::RequestLimits;

use crate::config::InjectedFault;
use crate::errors::KvError;
use crate::membership::Membership;
use crate::metrics::{Metrics, Operation};
use crate::state_machine::lease::LeaseRecord;
use crate::state_machine::mvcc::range::{RangeOutcome, RangeRequest};
use crate::state_machine::mvcc::txn::{TxnOp, TxnRequest, TxnResponse};
use crate::state_machine::{self, Command, Outcome, Query, QueryAnswer};
use crate::status::NodeStatus;
use crate::storage::actor::StoreHandle;
use crate::transport::leader_link::{LeaderLink, LeaseReply};
use driver::DriverEvent;
use read_batch::{BatchResult, ConfirmedIndex, ReadBatches, RestartOnPanic};

/// Who served a request, and where in the log (the client API's header).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServedBy {
    /// Node that answered.
    pub node_id: u64,
    /// Leader when the request was served (0 when unknown).
    pub leader_id: u64,
    /// Raft term.
    pub term: u64,
    /// Log index of the write, or the read index.
    pub index: u64,
    /// Node that forwarded the request (0 when not forwarded).
    pub forwarded_by: u64,
    /// The store revision after the write, or of the state read (0 before
    /// storage version 2).
    pub revision: u64,
}

impl ServedBy {
    /// This, with the revision `answer` was read at.
    pub fn with_revision_of(self, answer: &QueryAnswer) -> Self {
        let revision = match answer {
            QueryAnswer::Value(read) => read.revision,
            QueryAnswer::Range { revision, .. } => *revision,
            QueryAnswer::Leases(_) | QueryAnswer::LeaseKeys { .. } => self.revision,
        };
        Self { revision, ..self }
    }
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Reflects every write acknowledged before the read started.
    Linearizable,
    /// Served from local state; may be stale.
    Serializable,
}

/// How long requests may wait, and deliberate bugs.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// Longest wait for a leader to be known before a request fails with
    /// UNAVAILABLE.
    pub leader_wait: Duration,
    /// A deliberate bug to switch on (conformance suite self-test only).
    pub injected_fault: Option<InjectedFault>,
}

/// What a [`Node`] handle is made of.
pub struct NodeParts {
    /// This node's id, cluster and members.
    pub membership: Membership,
    /// The driver's input queue.
    pub events: mpsc::Sender<DriverEvent>,
    /// The status the driver publishes.
    pub status: watch::Receiver<NodeStatus>,
    /// The state machine's applied index.
    pub applied_index: Arc<AtomicU64>,
    /// The state machine's store (serializable reads).
    pub store: StoreHandle,
    /// The way to the leader (forwarding writes, asking read indexes).
    pub leader_link: Arc<dyn LeaderLink>,
    /// Waits and deliberate bugs.
    pub timings: Timings,
    /// Key and value limits every write is checked against before it is
    /// proposed.
    pub request_limits: RequestLimits,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The applied index from which the local state is a state of the log
    /// (after a crash in the middle of a write-behind, the stored data mixes
    /// two indexes until the replay passes this one): serializable reads wait
    /// for it.
    pub consistent_at: Index,
    /// The storage version this node has applied.
    pub storage_version: watch::Receiver<u32>,
    /// Physical compaction's progress.
    pub compaction: Arc<compactor::Compaction>,
    /// The watchers of this node's applied writes.
    pub watch_hub: Arc<watchers::WatchHub>,
    /// The leases (deadlines on the leader).
    pub lessor: Arc<std::sync::Mutex<lessor::Lessor>>,
    /// The shortest lease TTL granted (shorter ones are raised to it).
    pub lease_ttl_min_seconds: u64,
}

/// A handle on the running node.
#[derive(Clone)]
pub struct Node {
    shared: Arc<NodeParts>,
    /// Linearizable reads at this follower waiting to share a ReadIndex
    /// request to the leader.
    read_batches: Arc<ReadBatches>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Node")
            .field("id", &self.shared.membership.id)
            .finish()
    }
}

/// Attempts to reach the leader before a request gives up.
const LEADER_ATTEMPTS_MAX: usize = 3;
/// Pause between looks at whether a newly elected leader took over the
/// leases (it does once it has applied its predecessors' entries).
const LESSOR_TAKEOVER_WAIT: Duration = Duration::from_millis(50);

/// The result of a write served by the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Where it landed.
    pub served_by: ServedBy,
    /// For a delete, whether the key existed.
    pub found: bool,
    /// For a txn or a compaction: what it did (never a refusal: that is
    /// the write's error).
    pub outcome: Option<Box<Outcome>>,
}

impl Node {
    /// A handle over a started driver.
    pub(crate) fn new(parts: NodeParts) -> Self {
        Self {
            shared: Arc::new(parts),
            read_batches: Arc::default(),
        }
    }

    /// This node's id, cluster and members.
    pub fn membership(&self) -> &Membership {
        &self.shared.membership
    }

    /// The state machine's store.
    pub fn store(&self) -> &StoreHandle {
        &self.shared.store
    }

    /// The watchers of this node's applied writes.
    pub fn watch_hub(&self) -> &Arc<watchers::WatchHub> {
        &self.shared.watch_hub
    }

    /// This node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.shared.membership.id
    }

    /// What the Status RPC reports.
    pub fn status(&self) -> NodeStatus {
        let mut status = self.shared.status.borrow().clone();
        status.applied_index = self.shared.applied_index.load(Ordering::Acquire);
        status
    }

    /// A status receiver that changes whenever the role, term, leader or log
    /// positions change.
    pub fn watch_status(&self) -> watch::Receiver<NodeStatus> {
        self.shared.status.clone()
    }

    async fn send_event(&self, event: DriverEvent) -> Result<(), KvError> {
        self.shared
            .events
            .send(event)
            .await
            .map_err(|_| KvError::Unavailable("the node is shutting down".into()))
    }

    /// Stores `value` under `key` through the leader.
    pub async fn put(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        request_id: &str,
    ) -> Result<ServedBy, KvError> {
        let command = Command::Put { key, value };
        Ok(self.write(command, request_id).await?.served_by)
    }

    /// Removes `key` through the leader; tells whether it existed.
    pub async fn delete(
        &self,
        key: Vec<u8>,
        request_id: &str,
    ) -> Result<(ServedBy, bool), KvError> {
        let command = Command::Delete { key };
        let outcome = self.write(command, request_id).await?;
        Ok((outcome.served_by, outcome.found))
    }

    /// Waits (up to the leader wait) until this node has applied the
    /// storage version with revisions: right after a cluster first starts,
    /// the leader raises it within a heartbeat or two. Refused with
    /// FAILED_PRECONDITION when it does not come (a member runs an older
    /// release).
    pub async fn require_revisions(&self) -> Result<(), KvError> {
        self.require_storage_version(state_machine::STORAGE_VERSION_MVCC)
            .await
    }

    /// [`Node::require_revisions`] for leases (storage version 3).
    pub async fn require_leases(&self) -> Result<(), KvError> {
        self.require_storage_version(state_machine::STORAGE_VERSION_LEASES)
            .await
    }

    async fn require_storage_version(&self, needed: u32) -> Result<(), KvError> {
        let mut version = self.shared.storage_version.clone();
        let reached = |version: &u32| *version >= needed;
        if reached(&version.borrow()) {
            return Ok(());
        }
        let waited =
            tokio::time::timeout(self.shared.timings.leader_wait, version.wait_for(reached))
                .await
                .is_ok_and(|reached| reached.is_ok());
        if waited {
            return Ok(());
        }
        let current = *version.borrow();
        Err(state_machine::Refusal::StorageVersion { current, needed }.into())
    }

    /// Runs a txn through the leader (a put with options and a range
    /// delete are txns of one op).
    pub async fn txn(
        &self,
        request: TxnRequest,
        request_id: &str,
    ) -> Result<(ServedBy, TxnResponse), KvError> {
        self.require_revisions().await?;
        if self.shared.timings.injected_fault == Some(InjectedFault::StaleCompare) {
            return self.txn_decided_locally(request, request_id).await;
        }
        let outcome = self.write(Command::Txn(request), request_id).await?;
        txn_outcome(outcome)
    }

    /// Deliberate bug (--inject-fault stale-compare): decides the compares
    /// on this node's local state, then proposes the branch taken without
    /// them.
    async fn txn_decided_locally(
        &self,
        request: TxnRequest,
        request_id: &str,
    ) -> Result<(ServedBy, TxnResponse), KvError> {
        let compares = request.compares.clone();
        let succeeded = self
            .shared
            .store
            .with(move |store| state_machine::compares_hold(store, &compares))
            .await?;
        let branch = TxnRequest {
            compares: Vec::new(),
            success: if succeeded {
                request.success
            } else {
                request.failure
            },
            failure: Vec::new(),
        };
        let outcome = self.write(Command::Txn(branch), request_id).await?;
        let (served_by, response) = txn_outcome(outcome)?;
        Ok((
            served_by,
            TxnResponse {
                succeeded,
                ..response
            },
        ))
    }

    /// One op as a txn of its own; its response.
    pub async fn single_op(
        &self,
        op: TxnOp,
        request_id: &str,
    ) -> Result<(ServedBy, state_machine::mvcc::txn::OpResponse), KvError> {
        let request = TxnRequest {
            compares: Vec::new(),
            success: vec![op],
            failure: Vec::new(),
        };
        let (served_by, mut response) = self.txn(request, request_id).await?;
        match response.responses.pop() {
            Some(op) if response.responses.is_empty() => Ok((served_by, op)),
            _ => Err(KvError::Storage(crate::storage::StoreError::Engine(
                "a one-op txn answered with other than one op".into(),
            ))),
        }
    }

    /// Drops history below `revision` through the leader.
    pub async fn compact(&self, revision: u64, request_id: &str) -> Result<ServedBy, KvError> {
        self.require_revisions().await?;
        let outcome = self
            .write(Command::Compact { revision }, request_id)
            .await?;
        Ok(outcome.served_by)
    }

    /// Waits until this node's store has dropped the history below
    /// `revision` (the caller's deadline bounds the wait).
    pub async fn wait_compacted(&self, revision: u64) -> Result<(), KvError> {
        let mut done = self.shared.compaction.done();
        done.wait_for(|done| *done >= revision)
            .await
            .map(|_| ())
            .map_err(|_| KvError::Unavailable("the node is shutting down".into()))
    }

    /// Reads a range.
    pub async fn range(
        &self,
        request: RangeRequest,
        consistency: ReadConsistency,
        request_id: &str,
    ) -> Result<(ServedBy, RangeOutcome), KvError> {
        self.require_revisions().await?;
        let (served_by, answer) = self
            .read(Query::Range(request), consistency, request_id)
            .await?;
        match answer {
            QueryAnswer::Range { outcome, .. } => Ok((served_by, outcome?)),
            _ => unreachable!("a range query answers a range"),
        }
    }

    /// Reads `key`.
    pub async fn get(
        &self,
        key: Vec<u8>,
        consistency: ReadConsistency,
        request_id: &str,
    ) -> Result<(ServedBy, Option<Vec<u8>>), KvError> {
        let (served_by, answer) = self.read(Query::Get(key), consistency, request_id).await?;
        match answer {
            QueryAnswer::Value(read) => Ok((served_by, read.value)),
            _ => unreachable!("a get answers a value"),
        }
    }

    /// Runs a read with the consistency asked.
    async fn read(
        &self,
        query: Query,
        consistency: ReadConsistency,
        request_id: &str,
    ) -> Result<(ServedBy, QueryAnswer), KvError> {
        let stale_reads = self.shared.timings.injected_fault == Some(InjectedFault::StaleReads);
        if consistency == ReadConsistency::Serializable || stale_reads {
            let applied = self.shared.applied_index.load(Ordering::Acquire);
            if applied < self.shared.consistent_at {
                return Err(KvError::Unavailable(format!(
                    "this node is replaying its log after a crash; its local state is whole again at index {} (applied: {applied}); retry, or read linearizably",
                    self.shared.consistent_at
                )));
            }
            let status = self.status();
            if status.catching_up {
                return Err(KvError::Unavailable(
                    "this node lost its state and is catching up from the leader; its local state lacks committed writes: retry on another node, or read linearizably".into(),
                ));
            }
            let store = &self.shared.store;
            let inline = store.try_read(|store| state_machine::query_if_ready(store, &query));
            let answer = match inline.flatten() {
                Some(answer) => answer?,
                None => {
                    store
                        .with(move |store| state_machine::query(store, &query))
                        .await?
                }
            };
            let served_by = ServedBy {
                node_id: self.id(),
                leader_id: status.leader_id,
                term: status.term,
                index: status.applied_index,
                forwarded_by: 0,
                revision: 0,
            };
            return Ok((served_by.with_revision_of(&answer), answer));
        }
        for _ in 0..LEADER_ATTEMPTS_MAX {
            let leader_id = self.known_leader().await?;
            if leader_id == self.id() {
                match self.read_as_leader(query.clone(), request_id).await {
                    Err(KvError::NotLeader(_)) => continue,
                    result => return result,
                }
            }
            // Raft thesis §6.4: the leader confirms a read index, and this
            // node serves the read itself once it has applied that index.
            match self.confirmed_read_index(leader_id, request_id).await {
                Err(KvError::NotLeader(_)) => self.wait_for_leader_change(leader_id).await,
                Err(error) => return Err(error),
                Ok(confirmed) => {
                    return self
                        .read_at(
                            query,
                            confirmed.index,
                            confirmed.leader_id,
                            confirmed.term,
                            request_id,
                        )
                        .await;
                }
            }
        }
        Err(KvError::NoLeader(
            "leadership kept changing while the read was retried".into(),
        ))
    }

    /// A read index confirmed by `leader_id` in a request sent after this
    /// call: concurrent reads share one request ([`read_batch`]).
    async fn confirmed_read_index(&self, leader_id: NodeId, request_id: &str) -> BatchResult {
        // Counted per read, as a forwarded request: it is served at an index
        // the leader confirmed, whichever request carried it.
        self.shared.metrics.observe_forward(Operation::Get);
        let (answer, start) = self.read_batches.join(leader_id, request_id);
        if start {
            let node = self.clone();
            tokio::spawn(async move { node.send_read_index_requests(leader_id).await });
        }
        answer.await.map_err(|_| {
            KvError::Unavailable("the node stopped before the read index was confirmed".into())
        })?
    }

    /// Sends `leader_id` one ReadIndex request per batch of waiting reads,
    /// until none wait. Each request is bounded by the longest deadline a
    /// request may have, so a request lost with its leader holds up later
    /// reads of that leader no longer than their own deadlines would.
    async fn send_read_index_requests(&self, leader_id: NodeId) {
        let timeout = Duration::from_millis(crate::limits::REQUEST_TIMEOUT_DEFAULT_MS);
        let _restart = RestartOnPanic::new(&self.read_batches, leader_id);
        while let Some(batch) = self.read_batches.next_batch(leader_id) {
            let request_id = &batch[0].request_id;
            tracing::debug!(
                request_id,
                leader_id,
                reads = batch.len(),
                "read index asked of the leader"
            );
            let term = self.shared.status.borrow().term;
            let forwarded = self
                .shared
                .leader_link
                .read_index(leader_id, term, request_id);
            let result = match tokio::time::timeout(timeout, forwarded).await {
                Err(_) => Err(KvError::DeadlineExceeded(format!(
                    "leader {leader_id} confirmed no read index within {timeout:?}"
                ))),
                Ok(Err(error)) => Err(error),
                Ok(Ok(reply)) => Ok(ConfirmedIndex {
                    leader_id,
                    index: reply.index,
                    term: reply.term,
                }),
            };
            read_batch::answer_all(batch, &result);
        }
    }

    async fn write(&self, command: Command, request_id: &str) -> Result<WriteOutcome, KvError> {
        // Checked before it travels: a follower does not forward a write the
        // leader would refuse (the leader checks it again, see
        // `write_as_leader`).
        self.shared.request_limits.check_command(&command)?;
        for _ in 0..LEADER_ATTEMPTS_MAX {
            let leader_id = self.known_leader().await?;
            if leader_id == self.id() {
                match self.write_as_leader(command.clone(), request_id, 0).await {
                    Err(KvError::NotLeader(_)) => continue,
                    Ok(outcome) => return Ok(outcome),
                    Err(error) => return Err(error),
                }
            }
            tracing::debug!(request_id, leader_id, "write forwarded to the leader");
            self.shared
                .metrics
                .observe_forward(forwarded_operation(&command));
            let term = self.shared.status.borrow().term;
            let forwarded =
                self.shared
                    .leader_link
                    .write(leader_id, term, command.clone(), request_id);
            match forwarded.await {
                Err(KvError::NotLeader(_)) => self.wait_for_leader_change(leader_id).await,
                Err(error) => return Err(error),
                Ok(reply) => {
                    return Ok(WriteOutcome {
                        served_by: ServedBy {
                            node_id: reply.leader_id,
                            leader_id: reply.leader_id,
                            term: reply.term,
                            index: reply.index,
                            forwarded_by: self.id(),
                            revision: reply.revision,
                        },
                        found: reply.found,
                        outcome: match (reply.txn, reply.lease) {
                            (Some(txn), _) => Some(Box::new(Outcome::Txn(txn))),
                            (None, Some(lease)) => Some(Box::new(Outcome::LeaseGranted {
                                id: lease.id,
                                ttl_seconds: lease.ttl_seconds,
                            })),
                            (None, None) => None,
                        },
                    })
                }
            }
        }
        Err(KvError::NoLeader(
            "leadership kept changing while the write was retried".into(),
        ))
    }

    /// Grants a lease of `ttl_seconds` (raised to the shortest TTL the
    /// cluster grants); `id` 0 lets the cluster pick one. Returns the
    /// lease's id and TTL.
    pub async fn lease_grant(
        &self,
        id: u64,
        ttl_seconds: u64,
        request_id: &str,
    ) -> Result<(ServedBy, u64, u64), KvError> {
        validate::check_lease_ttl(ttl_seconds)?;
        self.require_leases().await?;
        let ttl_seconds = ttl_seconds.max(self.shared.lease_ttl_min_seconds);
        let outcome = self
            .write(Command::LeaseGrant { id, ttl_seconds }, request_id)
            .await?;
        match outcome.outcome.as_deref() {
            Some(Outcome::LeaseGranted { id, ttl_seconds }) => {
                Ok((outcome.served_by, *id, *ttl_seconds))
            }
            other => Err(KvError::Storage(crate::storage::StoreError::Engine(
                format!("a grant applied without a grant outcome: {other:?}"),
            ))),
        }
    }

    /// Revokes a lease: its keys are deleted at one revision.
    pub async fn lease_revoke(&self, id: u64, request_id: &str) -> Result<ServedBy, KvError> {
        self.require_leases().await?;
        let outcome = self.write(Command::LeaseRevoke { id }, request_id).await?;
        Ok(outcome.served_by)
    }

    /// What the leader knows of lease `id` (asked of the leader when this
    /// node does not lead), renewed first when `keep_alive` is set: a
    /// keep-alive. `found` is false for a lease that expired, was revoked
    /// or never existed.
    pub async fn lease_query(
        &self,
        id: u64,
        keep_alive: bool,
        request_id: &str,
    ) -> Result<(ServedBy, LeaseReply), KvError> {
        self.require_leases().await?;
        // A new leader serves leases once it has applied its predecessors'
        // entries; waiting for that does not count as an attempt.
        let takeover_deadline = Instant::now() + self.shared.timings.leader_wait;
        let mut attempts = 0;
        while attempts < LEADER_ATTEMPTS_MAX {
            attempts += 1;
            let leader_id = self.known_leader().await?;
            let term = self.shared.status.borrow().term;
            if leader_id == self.id() {
                let answer = {
                    let mut lessor = self
                        .shared
                        .lessor
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let now = Instant::now();
                    if keep_alive {
                        lessor.keep_alive(id, now).map(|ttl| LeaseReply {
                            id,
                            found: true,
                            ttl_seconds: ttl,
                            remaining_seconds: ttl,
                        })
                    } else {
                        lessor.time_to_live(id, now).map(|ttl| LeaseReply {
                            id,
                            found: true,
                            ttl_seconds: ttl.granted_seconds,
                            remaining_seconds: ttl.remaining_seconds,
                        })
                    }
                };
                let served_by = ServedBy {
                    node_id: self.id(),
                    leader_id,
                    term,
                    ..ServedBy::default()
                };
                match answer {
                    Ok(reply) => return Ok((served_by, reply)),
                    Err(lessor::LeaseRefusal::NotFound) => {
                        return Ok((
                            served_by,
                            LeaseReply {
                                id,
                                found: false,
                                ttl_seconds: 0,
                                remaining_seconds: 0,
                            },
                        ))
                    }
                    // Elected, deadlines not taken over yet.
                    Err(lessor::LeaseRefusal::NotPrimary) if Instant::now() < takeover_deadline => {
                        attempts -= 1;
                        tokio::time::sleep(LESSOR_TAKEOVER_WAIT).await;
                        continue;
                    }
                    Err(lessor::LeaseRefusal::NotPrimary) => {
                        return Err(KvError::Unavailable(
                            "this node was elected leader but has not applied its predecessors' entries yet: retry".into(),
                        ))
                    }
                }
            }
            let forwarded = self
                .shared
                .leader_link
                .lease(leader_id, term, id, keep_alive, request_id);
            match forwarded.await {
                Err(KvError::NotLeader(_)) => self.wait_for_leader_change(leader_id).await,
                Err(error) => return Err(error),
                Ok(reply) => {
                    let served_by = ServedBy {
                        node_id: reply.leader_id,
                        leader_id: reply.leader_id,
                        term: reply.term,
                        forwarded_by: self.id(),
                        ..ServedBy::default()
                    };
                    let lease = reply.lease.ok_or_else(|| {
                        KvError::Unavailable(format!(
                            "leader {leader_id} answered a lease query without the lease"
                        ))
                    })?;
                    return Ok((served_by, lease));
                }
            }
        }
        Err(KvError::NoLeader(
            "leadership kept changing while the lease request was retried".into(),
        ))
    }

    /// Every lease, read linearizably.
    pub async fn lease_list(
        &self,
        request_id: &str,
    ) -> Result<(ServedBy, Vec<(u64, LeaseRecord)>), KvError> {
        self.require_leases().await?;
        let (served_by, answer) = self
            .read(Query::Leases, ReadConsistency::Linearizable, request_id)
            .await?;
        match answer {
            QueryAnswer::Leases(leases) => Ok((served_by, leases)),
            _ => unreachable!("a lease list answers leases"),
        }
    }

    /// Lease `id` and its keys, read linearizably (`None`: no such lease).
    pub async fn lease_keys(
        &self,
        id: u64,
        request_id: &str,
    ) -> Result<(ServedBy, Option<LeaseRecord>, Vec<Vec<u8>>), KvError> {
        self.require_leases().await?;
        let (served_by, answer) = self
            .read(
                Query::LeaseKeys(id),
                ReadConsistency::Linearizable,
                request_id,
            )
            .await?;
        match answer {
            QueryAnswer::LeaseKeys { record, keys } => Ok((served_by, record, keys)),
            _ => unreachable!("a lease-keys query answers keys"),
        }
    }

    /// Waits (up to a share of the leader wait) until this node knows a leader
    /// other than `previous`: after a forward found `previous` gone or deposed.
    async fn wait_for_leader_change(&self, previous: NodeId) {
        let mut status = self.shared.status.clone();
        let wait = self.shared.timings.leader_wait / LEADER_ATTEMPTS_MAX as u32;
        let _ = tokio::time::timeout(
            wait,
            status.wait_for(|status| status.leader_id != 0 && status.leader_id != previous),
        )
        .await;
    }

    /// The current leader, waiting up to the leader wait for one to appear.
    async fn known_leader(&self) -> Result<NodeId, KvError> {
        let mut status = self.shared.status.clone();
        let deadline = Instant::now() + self.shared.timings.leader_wait;
        loop {
            let leader_id = status.borrow_and_update().leader_id;
            if leader_id != 0 {
                return Ok(leader_id);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(KvError::NoLeader(format!(
                    "node {} has known no leader for {:?}; is a majority of the cluster up and connected?",
                    self.id(),
                    self.shared.timings.leader_wait
                )));
            }
            if tokio::time::timeout(remaining, status.changed())
                .await
                .is_ok_and(|changed| changed.is_err())
            {
                return Err(KvError::Unavailable("the node is shutting down".into()));
            }
        }
    }

    /// Proposes `command` on this node, which must lead; answers once it is
    /// committed and applied. The one place a write is proposed: it is
    /// checked against the request limits here, whichever route brought it
    /// (the client API, a forward over the raft port).
    pub async fn write_as_leader(
        &self,
        command: Command,
        request_id: &str,
        forwarded_by: NodeId,
    ) -> Result<WriteOutcome, KvError> {
        self.shared.request_limits.check_command(&command)?;
        let request_id = request_id.to_string();
        let outcome = self
            .ask_driver(
                |reply| DriverEvent::Propose {
                    command,
                    request_id,
                    reply,
                },
                || KvError::OutcomeUnknown("the node stopped before the write was applied".into()),
            )
            .await??;
        Ok(WriteOutcome {
            served_by: ServedBy {
                forwarded_by,
                ..outcome.served_by
            },
            ..outcome
        })
    }

    /// The read index for a follower, confirmed by this node, which must lead.
    pub async fn read_index_as_leader(
        &self,
        request_id: &str,
        forwarded_by: NodeId,
    ) -> Result<ServedBy, KvError> {
        let request_id = request_id.to_string();
        let served_by = self
            .ask_driver(
                |reply| DriverEvent::ReadIndex { request_id, reply },
                || {
                    KvError::Unavailable(
                        "the node stopped before the read index was confirmed".into(),
                    )
                },
            )
            .await??;
        Ok(ServedBy {
            forwarded_by,
            ..served_by
        })
    }

    /// Reads `key` here once this node has applied `index`, a read index
    /// `leader_id` confirmed in `term`.
    async fn read_at(
        &self,
        query: Query,
        index: u64,
        leader_id: NodeId,
        term: u64,
        request_id: &str,
    ) -> Result<(ServedBy, QueryAnswer), KvError> {
        // Applied already and the store idle: read here, skipping the
        // driver and the store thread.
        if self.shared.applied_index.load(Ordering::Acquire) >= index {
            let read = self
                .shared
                .store
                .try_read(|store| state_machine::query_if_ready(store, &query));
            if let Some(answer) = read.flatten() {
                tracing::debug!(
                    request_id,
                    read_index = index,
                    "read served at the read index"
                );
                let served_by = ServedBy {
                    node_id: self.id(),
                    leader_id,
                    term,
                    index,
                    forwarded_by: 0,
                    revision: 0,
                };
                let answer = answer?;
                return Ok((served_by.with_revision_of(&answer), answer));
            }
        }
        let request_id = request_id.to_string();
        self.ask_driver(
            |reply| DriverEvent::ReadAt {
                query,
                index,
                leader_id,
                term,
                request_id,
                reply,
            },
            read_gone,
        )
        .await?
    }

    /// Reads `key` linearizably on this node, which must lead (ReadIndex).
    async fn read_as_leader(
        &self,
        query: Query,
        request_id: &str,
    ) -> Result<(ServedBy, QueryAnswer), KvError> {
        let request_id = request_id.to_string();
        self.ask_driver(
            |reply| DriverEvent::Read {
                query,
                request_id,
                reply,
            },
            read_gone,
        )
        .await?
    }

    /// Sends the driver the event `event` makes around a reply channel and
    /// waits for the reply; `gone` is the error when the driver drops it
    /// unanswered (it stopped).
    async fn ask_driver<T>(
        &self,
        event: impl FnOnce(oneshot::Sender<T>) -> DriverEvent,
        gone: impl FnOnce() -> KvError,
    ) -> Result<T, KvError> {
        let (reply, answer) = oneshot::channel();
        self.send_event(event(reply)).await?;
        answer.await.map_err(|_| gone())
    }
}

/// What an applied txn returned.
fn txn_outcome(outcome: WriteOutcome) -> Result<(ServedBy, TxnResponse), KvError> {
    match outcome.outcome.map(|outcome| *outcome) {
        Some(Outcome::Txn(response)) => Ok((outcome.served_by, response)),
        other => Err(KvError::Storage(crate::storage::StoreError::Engine(
            format!("a txn applied without a txn outcome: {other:?}"),
        ))),
    }
}

fn read_gone() -> KvError {
    KvError::Unavailable("the node stopped before the read was served".into())
}

/// The `op` label of a forwarded write.
fn forwarded_operation(command: &Command) -> Operation {
    match command {
        Command::Put { .. } => Operation::Put,
        Command::Delete { .. } => Operation::Delete,
        Command::LeaseGrant { .. } => Operation::LeaseGrant,
        Command::LeaseRevoke { .. } => Operation::LeaseRevoke,
        // The leader's own (never forwarded).
        Command::Txn(_)
        | Command::Compact { .. }
        | Command::SetStorageVersion { .. }
        | Command::LeaseCheckpoint { .. } => Operation::Txn,
    }
}
