//! The Raft driver: one tokio task that owns the Raft core.
//!
//! It ticks the core, steps peers' messages into it, proposes
//! client writes and asks for read indexes; then, for each `Ready`, it
//! persists (one WAL append and one fsync for the whole batch), sends,
//! applies and advances — in the order the core's contract demands. The WAL
//! runs on its own thread ([`super::wal_writer`]). A leader does not wait
//! for its own writes: it sends, applies what is durable and goes on while
//! they run, and counts its own copy toward commit as each one completes
//! (the core's background writes). Followers and candidates persist before
//! they send. Requests that arrive while a batch is being fsynced share the
//! next one: that is the group commit.
//!
//! This file owns the loop and the order of work within one `Ready`; the
//! bookkeeping of writes and reads waiting on the core, the hand-off to the
//! store and the snapshot schedule live in the submodules.

mod apply;
pub mod auto_compaction;
mod proposals;
mod reads;
mod snapshots;
mod storage_version;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use kvstore_raft::{Index, Message, NodeId, RaftCore, Ready, Role, SnapshotMetadata, Term};
use kvstore_wal::Wal;
use tokio::sync::{mpsc, oneshot, watch};

use super::wal_writer::{Persisted, WalWriter};
use super::{ServedBy, WriteOutcome};
use crate::config::InjectedFault;
use crate::data_dir::CatchUpMarker;
use crate::errors::KvError;
use crate::fatal::storage_failure;
use crate::metrics::Metrics;
use crate::node::compactor::Compaction;
use crate::snapshot::SnapshotDirectory;
use crate::state_machine::{log_encoding, Command, Query, QueryAnswer};
use crate::status::{FollowerStatus, NodeRole, NodeStatus};
use crate::storage::actor::StoreHandle;
use crate::storage_health::StorageHealth;
use crate::transport::inbound::PeerReleases;
use crate::transport::leader_link::Outbox;
use proposals::{propose_error, Proposals};
use reads::{PendingRead, Reads, UnconfirmedRead};
use snapshots::{InternalEvent, SnapshotSchedule};
use storage_version::StorageVersionGate;

/// Inputs taken from the queues before one `Ready` is processed: bounds the
/// work (and the latency) of one batch.
pub const EVENTS_PER_READY_MAX: usize = 1_024;
/// Capacity of the driver's input queue.
pub const EVENT_QUEUE_CAPACITY: usize = 8_192;
/// Longest a follower in sync goes without hearing that entries it holds
/// are committed (it applies them only then). The leader tells it with the
/// next append, which under a stream of writes comes sooner; when no write
/// follows, an empty append after this delay (hashicorp/raft's
/// `CommitTimeout`, 50 ms by default). Until then a serializable read on
/// that follower does not see the write; a linearizable one gets the
/// commit index with its read round.
pub const COMMIT_NOTICE_DELAY: Duration = Duration::from_millis(10);

/// An input of the driver.
pub enum DriverEvent {
    /// A client write to propose.
    Propose {
        /// The write.
        command: Command,
        /// The client request's id, for the logs.
        request_id: String,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<WriteOutcome, KvError>>,
    },
    /// A linearizable read on the leader: confirm leadership, then read.
    Read {
        /// The read.
        query: Query,
        /// The client request's id, for the logs.
        request_id: String,
        /// Where the value goes.
        reply: oneshot::Sender<ReadResult>,
    },
    /// Only the read index, on the leader, for a follower that serves the
    /// read itself once it has applied that index.
    ReadIndex {
        /// The client request's id, for the logs.
        request_id: String,
        /// Where the confirmed read index goes.
        reply: oneshot::Sender<Result<ServedBy, KvError>>,
    },
    /// Reads once this node has applied `index` (a read index the leader
    /// confirmed): the follower side of a linearizable read.
    ReadAt {
        /// The read.
        query: Query,
        /// The confirmed read index.
        index: Index,
        /// Who confirmed it: the leader and its term.
        leader_id: NodeId,
        /// The leader's term.
        term: Term,
        /// The client request's id, for the logs.
        request_id: String,
        /// Where the value goes.
        reply: oneshot::Sender<ReadResult>,
    },
}

/// What a linearizable read returns.
pub type ReadResult = Result<(ServedBy, QueryAnswer), KvError>;

/// Settings of the driver.
#[derive(Debug, Clone, Copy)]
pub struct DriverSettings {
    /// Wall-clock length of one core tick.
    pub tick: Duration,
    /// Applied entries after which a snapshot is taken and the log compacted.
    pub snapshot_entries: u64,
    /// Bytes of applied entry payloads after which a snapshot is taken, if
    /// that comes before `snapshot_entries`.
    pub snapshot_log_bytes: u64,
    /// A deliberate bug to switch on (conformance suite self-test only).
    pub injected_fault: Option<InjectedFault>,
    /// What automatic compaction keeps.
    pub retention: auto_compaction::Retention,
}

/// Everything the driver owns.
pub struct Driver {
    core: RaftCore,
    cluster_id: String,
    wal: WalWriter,
    /// Completions of the leader's background WAL writes.
    persisted: mpsc::UnboundedReceiver<Persisted>,
    store: StoreHandle,
    snapshots: SnapshotDirectory,
    peers: Arc<dyn Outbox>,
    events: mpsc::Receiver<DriverEvent>,
    peer_messages: mpsc::Receiver<Message>,
    internal_sender: mpsc::UnboundedSender<InternalEvent>,
    internal: mpsc::UnboundedReceiver<InternalEvent>,
    status: watch::Sender<NodeStatus>,
    applied_index: Arc<AtomicU64>,
    storage_health: watch::Receiver<StorageHealth>,
    catch_up_marker: CatchUpMarker,
    /// What the marker says, to touch it only when that changes.
    catching_up_recorded: bool,
    settings: DriverSettings,
    proposals: Proposals,
    reads: Reads,
    /// The last entry handed to the store.
    applied_submitted: SnapshotMetadata,
    snapshot_schedule: SnapshotSchedule,
    metrics: Arc<Metrics>,
    /// Term and vote last handed to the WAL.
    persisted_term_vote: (Term, Option<NodeId>),
    /// When to propose a higher storage version.
    storage_gate: StorageVersionGate,
    /// The storage version applied (set as entries apply).
    storage_version: Arc<watch::Sender<u32>>,
    /// Physical compaction.
    compaction: Arc<Compaction>,
    /// When the leader compacts on its own.
    auto_compaction: auto_compaction::AutoCompaction,
    /// The store revision after the last applied entry.
    revision: Arc<AtomicU64>,
    /// Told of every applied write.
    watch_hub: Arc<crate::node::watchers::WatchHub>,
    /// The leases.
    lessor: Arc<std::sync::Mutex<crate::node::lessor::Lessor>>,
    /// The term and first index this leader committed in it: its lessor
    /// takes over once that index is applied.
    lease_takeover_at: Option<(Term, Index)>,
}

/// What the driver needs to start.
pub struct DriverParts {
    /// The core, rebuilt from the WAL.
    pub core: RaftCore,
    /// The cluster id, for status.
    pub cluster_id: String,
    /// The opened WAL.
    pub wal: Wal,
    /// The state machine's store.
    pub store: StoreHandle,
    /// Snapshot files.
    pub snapshots: SnapshotDirectory,
    /// Where Raft messages to peers go.
    pub peers: Arc<dyn Outbox>,
    /// Client requests.
    pub events: mpsc::Receiver<DriverEvent>,
    /// Peers' Raft messages, requests and answers alike
    /// (`transport::inbound::PeerInbound`).
    pub peer_messages: mpsc::Receiver<Message>,
    /// Where status is published.
    pub status: watch::Sender<NodeStatus>,
    /// The state machine's applied index, shared with status readers.
    pub applied_index: Arc<AtomicU64>,
    /// Whether the data directory can take writes (see `storage_health`).
    pub storage_health: watch::Receiver<StorageHealth>,
    /// Kept in step with the core's catching-up state, durably.
    pub catch_up_marker: CatchUpMarker,
    /// Settings.
    pub settings: DriverSettings,
    /// The state machine's applied position at start.
    pub applied: SnapshotMetadata,
    /// Where counters and histograms are recorded.
    pub metrics: Arc<Metrics>,
    /// The storage version applied, published to the node's services.
    pub storage_version: Arc<watch::Sender<u32>>,
    /// What peers report of their releases.
    pub peer_releases: Arc<PeerReleases>,
    /// Physical compaction (woken when a compaction is applied).
    pub compaction: Arc<Compaction>,
    /// Told of every applied write (watchers).
    pub watch_hub: Arc<crate::node::watchers::WatchHub>,
    /// The leases: told of applied lease commands; on the leader, asked
    /// which to revoke and checkpoint.
    pub lessor: Arc<std::sync::Mutex<crate::node::lessor::Lessor>>,
}

impl Driver {
    /// Assembles the driver.
    pub fn new(parts: DriverParts) -> Self {
        let (internal_sender, internal) = mpsc::unbounded_channel();
        let (persisted_sender, persisted) = mpsc::unbounded_channel();
        let hard_state = parts.core.hard_state();
        let snapshot = parts.core.snapshot_metadata();
        let snapshot_index = snapshot.map(|snapshot| snapshot.index).unwrap_or(0);
        let mut snapshot_schedule = SnapshotSchedule::new(
            snapshot_index,
            parts.settings.snapshot_entries,
            parts.settings.snapshot_log_bytes,
        );
        if let Some(snapshot) = snapshot {
            snapshot_schedule.set_snapshot_bytes(parts.snapshots.bytes_of(snapshot));
        }
        Self {
            core: parts.core,
            cluster_id: parts.cluster_id,
            wal: WalWriter::start(parts.wal, persisted_sender, Some(parts.metrics.clone())),
            persisted,
            store: parts.store,
            snapshots: parts.snapshots,
            peers: parts.peers,
            events: parts.events,
            peer_messages: parts.peer_messages,
            internal_sender,
            internal,
            status: parts.status,
            applied_index: parts.applied_index,
            storage_health: parts.storage_health,
            catching_up_recorded: parts.catch_up_marker.is_set(),
            catch_up_marker: parts.catch_up_marker,
            settings: parts.settings,
            proposals: Proposals::default(),
            reads: Reads::default(),
            applied_submitted: parts.applied,
            snapshot_schedule,
            metrics: parts.metrics,
            persisted_term_vote: (hard_state.term, hard_state.vote),
            storage_gate: StorageVersionGate::new(
                parts.storage_version.clone(),
                parts.peer_releases,
            ),
            storage_version: parts.storage_version,
            compaction: parts.compaction,
            auto_compaction: auto_compaction::AutoCompaction::new(parts.settings.retention),
            revision: Arc::new(AtomicU64::new(0)),
            watch_hub: parts.watch_hub,
            lessor: parts.lessor,
            lease_takeover_at: None,
        }
    }

    /// The lessor follows this node's leadership; as leader, proposes the
    /// revokes of expired leases and the checkpoints that are due.
    fn drive_leases(&mut self) {
        let leads = self.core.role() == Role::Leader;
        let now = std::time::Instant::now();
        let ready_to_take_over = leads && self.applied_this_terms_start();
        let (expired, checkpoints) = {
            let mut lessor = self.lessor.lock().unwrap_or_else(PoisonError::into_inner);
            if ready_to_take_over && !lessor.is_primary() {
                lessor.promote(now);
                tracing::info!(leases = lessor.len(), "took over the leases' deadlines");
            } else if !leads && lessor.is_primary() {
                lessor.demote();
            }
            let mut checkpoints = lessor.checkpoints_due(now);
            checkpoints.extend(lessor.stale_checkpoints(now));
            (lessor.expired(now), checkpoints)
        };
        for id in expired {
            let command = Command::LeaseRevoke { id };
            match self
                .core
                .propose(log_encoding::encode(command, "lease-expiry"))
            {
                Ok((index, _)) => {
                    tracing::info!(lease = id, index, "lease expired: revoke proposed")
                }
                Err(error) => tracing::debug!(?error, lease = id, "lease revoke not proposed"),
            }
        }
        if !checkpoints.is_empty() {
            let count = checkpoints.len();
            let command = Command::LeaseCheckpoint { checkpoints };
            match self
                .core
                .propose(log_encoding::encode(command, "lease-checkpoint"))
            {
                Ok((index, _)) => tracing::debug!(count, index, "lease checkpoints proposed"),
                Err(error) => tracing::debug!(?error, "lease checkpoints not proposed"),
            }
        }
    }

    /// Whether this leader has applied every entry up to the first it
    /// committed in its term, so that its lease mirror holds every grant,
    /// revoke and checkpoint the previous leaders committed (etcd promotes
    /// its lessor at the same point). Until then it serves no keep-alive.
    fn applied_this_terms_start(&mut self) -> bool {
        let term = self.core.term();
        let commit = self.core.commit_index();
        if self.core.term_at(commit) != Some(term) {
            return false;
        }
        let start = match self.lease_takeover_at {
            Some((taken_term, index)) if taken_term == term => index,
            _ => {
                self.lease_takeover_at = Some((term, commit));
                commit
            }
        };
        self.applied_index.load(Ordering::Acquire) >= start
    }

    /// Proposes a compaction when automatic compaction is due (leader only).
    fn propose_auto_compaction(&mut self) {
        let leads = self.core.role() == Role::Leader;
        let revision = self.revision.load(Ordering::Acquire);
        let Some(target) = self
            .auto_compaction
            .due(std::time::Instant::now(), leads, revision)
        else {
            return;
        };
        let command = Command::Compact { revision: target };
        match self
            .core
            .propose(log_encoding::encode(command, "auto-compaction"))
        {
            Ok((index, _)) => tracing::info!(
                index,
                revision = target,
                current = revision,
                "automatic compaction proposed"
            ),
            Err(error) => tracing::debug!(?error, "automatic compaction not proposed"),
        }
    }

    /// Proposes raising the storage version when it is due (see
    /// [`storage_version`]).
    fn propose_storage_version(&mut self) {
        let id = self.core.id();
        let others: Vec<NodeId> = self
            .core
            .voters()
            .iter()
            .copied()
            .filter(|voter| *voter != id)
            .collect();
        let leads = self.core.role() == Role::Leader;
        let Some(version) = self.storage_gate.due(leads, self.core.term(), &others) else {
            return;
        };
        let command = Command::SetStorageVersion { version };
        match self
            .core
            .propose(log_encoding::encode(command, "storage-version"))
        {
            Ok((index, term)) => {
                tracing::info!(
                    index,
                    term,
                    version,
                    "every member supports storage version {version}: proposed"
                );
            }
            Err(error) => tracing::debug!(?error, "storage version not proposed"),
        }
    }

    /// Runs until `shutdown` turns true. A single-member cluster campaigns at once.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.apply_storage_health();
        tokio::spawn(
            self.compaction
                .clone()
                .run(self.store.clone(), shutdown.clone()),
        );
        if self.core.voters() == [self.core.id()] {
            self.core.campaign();
        }
        let mut ticker = tokio::time::interval(self.settings.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Armed while a follower has not been told of a commit.
        let commit_notice = tokio::time::sleep(COMMIT_NOTICE_DELAY);
        tokio::pin!(commit_notice);
        let mut commit_notice_armed = false;
        loop {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                _ = ticker.tick() => {
                    if self.storage_health.has_changed().unwrap_or(false) {
                        self.apply_storage_health();
                    }
                    self.core.tick();
                    self.propose_storage_version();
                    self.propose_auto_compaction();
                    self.drive_leases();
                }
                () = &mut commit_notice, if commit_notice_armed => {
                    commit_notice_armed = false;
                    self.core.send_commit();
                }
                Some(message) = self.peer_messages.recv() => self.core.step(message),
                Some(done) = self.persisted.recv() => self.on_persisted(done),
                Some(event) = self.events.recv() => self.handle_event(event),
                Some(event) = self.internal.recv() => self.handle_internal(event).await,
            }
            self.drain_inputs();
            self.start_reads();
            self.process_readies().await;
            if !commit_notice_armed && self.core.has_unsent_commit() {
                commit_notice
                    .as_mut()
                    .reset(tokio::time::Instant::now() + COMMIT_NOTICE_DELAY);
                commit_notice_armed = true;
            }
            self.publish_status();
        }
        self.fail_pending("the node is shutting down");
        self.wal.shut_down().await;
        tracing::info!("raft driver stopped");
    }

    /// A node whose storage cannot take writes may not lead: it would fail
    /// every write and stop (a failed write is fatal).
    fn apply_storage_health(&mut self) {
        let healthy = self.storage_health.borrow_and_update().is_none();
        self.core.set_may_lead(healthy);
    }

    /// A background write is durable: the core may count it toward commit.
    fn on_persisted(&mut self, done: Persisted) {
        self.observe_wal_write(&done);
        if let Some((index, term)) = done.last_entry {
            self.core.on_persisted(index, term);
        }
    }

    fn observe_wal_write(&self, done: &Persisted) {
        tracing::trace!(
            entry_count = done.entry_count,
            write_entry_count = done.write_entry_count,
            inline = done.inline,
            elapsed_us = done.elapsed.as_micros() as u64,
            "WAL batch synced"
        );
    }

    /// Takes whatever else is already queued, up to a bound, so that one
    /// `Ready` (one fsync, one send round) serves all of it.
    fn drain_inputs(&mut self) {
        while let Ok(done) = self.persisted.try_recv() {
            self.on_persisted(done);
        }
        for _ in 0..EVENTS_PER_READY_MAX {
            if let Ok(message) = self.peer_messages.try_recv() {
                self.core.step(message);
                continue;
            }
            match self.events.try_recv() {
                Ok(event) => self.handle_event(event),
                Err(_) => break,
            }
        }
    }

    fn handle_event(&mut self, event: DriverEvent) {
        match event {
            DriverEvent::Propose {
                command,
                request_id,
                reply,
            } => match self
                .core
                .propose(log_encoding::encode(command, &request_id))
            {
                // Deliberate bug (--inject-fault early-ack): acknowledge before commit.
                Ok((index, term))
                    if self.settings.injected_fault == Some(InjectedFault::EarlyAck) =>
                {
                    let served_by = ServedBy {
                        node_id: self.core.id(),
                        leader_id: self.core.id(),
                        term,
                        index,
                        forwarded_by: 0,
                        revision: 0,
                    };
                    let _ = reply.send(Ok(WriteOutcome {
                        served_by,
                        found: true,
                        outcome: None,
                    }));
                }
                Ok((index, term)) => {
                    tracing::debug!(
                        request_id,
                        index,
                        term,
                        "proposed: appended to the leader's log"
                    );
                    self.proposals.insert(index, term, request_id, reply);
                }
                Err(error) => {
                    self.metrics.proposals_failed(1);
                    let _ = reply.send(Err(propose_error(error)));
                }
            },
            DriverEvent::Read {
                query,
                request_id,
                reply,
            } => {
                self.reads.request(UnconfirmedRead::Value(PendingRead {
                    query,
                    request_id,
                    reply,
                    confirmed_by: None,
                }));
            }
            DriverEvent::ReadIndex { request_id, reply } => {
                self.reads
                    .request(UnconfirmedRead::IndexOnly { request_id, reply });
            }
            DriverEvent::ReadAt {
                query,
                index,
                leader_id,
                term,
                request_id,
                reply,
            } => {
                let read = PendingRead {
                    query,
                    request_id,
                    reply,
                    confirmed_by: Some((leader_id, term)),
                };
                self.read_when_applied(read, index);
            }
        }
    }

    /// Asks the core for one read index for every read taken since the last
    /// call: one heartbeat round confirms them all.
    fn start_reads(&mut self) {
        let contexts = self.reads.take_to_start();
        if contexts.is_empty() {
            return;
        }
        if let Err(error) = self.core.read_index_batch(&contexts) {
            self.reads.fail_started(&contexts, error);
        }
    }

    async fn process_readies(&mut self) {
        while self.core.has_ready() {
            let ready = self.core.ready();
            if self.process_ready(ready).await {
                self.core.advance();
            } else {
                self.core.advance_unpersisted();
            }
        }
    }

    /// Handles one `Ready`; returns whether everything handed out so far is
    /// durable (else a background write is still running, or was running
    /// when this `Ready` was taken).
    async fn process_ready(&mut self, ready: Ready) -> bool {
        if let Some(soft_state) = &ready.soft_state {
            self.metrics.observe_soft_state(
                NodeRole::from(soft_state.role),
                soft_state.term,
                soft_state.leader_id,
            );
            // Before anything of this Ready is sent: a restart while
            // catching up must not find a node that votes.
            if soft_state.catching_up != self.catching_up_recorded {
                let marked = if soft_state.catching_up {
                    self.catch_up_marker.set()
                } else {
                    self.catch_up_marker.clear()
                };
                if let Err(error) = marked {
                    storage_failure("recording the catching-up state failed", error);
                }
                self.catching_up_recorded = soft_state.catching_up;
            }
            if soft_state.catching_up {
                tracing::warn!(
                    role = %soft_state.role,
                    term = soft_state.term,
                    leader_id = soft_state.leader_id.unwrap_or(0),
                    reason = soft_state.reason,
                    "this node lost log entries it had acknowledged (wiped data directory or \
                     cut WAL): it is catching up from the leader and neither votes nor \
                     campaigns until then"
                );
            } else {
                tracing::info!(
                    role = %soft_state.role,
                    term = soft_state.term,
                    leader_id = soft_state.leader_id.unwrap_or(0),
                    reason = soft_state.reason,
                    "raft role or leader changed"
                );
            }
            if soft_state.role != Role::Leader {
                self.fail_pending("leadership was lost");
            }
        }
        // 1. Persist, and 2. send.
        let mut all_durable = false;
        if let Some(snapshot) = ready.snapshot {
            // After every earlier write (the WAL thread keeps the order).
            self.install_received_snapshot(snapshot).await;
            all_durable = true;
        }
        let needs_append =
            !ready.entries.is_empty() || (ready.must_sync && ready.hard_state.is_some());
        // In the background on a leader, else before anything is sent: see
        // `append_mode`.
        let term_or_vote_changes = ready.hard_state.is_some_and(|hard_state| {
            (hard_state.term, hard_state.vote) != self.persisted_term_vote
        });
        if let Some(hard_state) = ready.hard_state {
            self.persisted_term_vote = (hard_state.term, hard_state.vote);
        }
        let mode = append_mode(
            self.core.role(),
            term_or_vote_changes,
            ready.snapshot.is_some(),
        );
        if needs_append {
            match mode {
                AppendMode::Background => {
                    self.wal
                        .append_in_background(ready.hard_state, ready.entries);
                }
                AppendMode::Awaited => {
                    let done = self.wal.append(ready.hard_state, ready.entries).await;
                    self.observe_wal_write(&done);
                    all_durable = true;
                }
            }
        }
        for message in ready.messages {
            self.peers.send(message);
        }
        // 3. Apply.
        if !ready.committed_entries.is_empty() {
            self.submit_apply(ready.committed_entries);
        }
        // 4. Reads.
        for read_state in ready.read_states {
            if let Some(read) = self
                .reads
                .confirm(&read_state, self.core.id(), self.core.term())
            {
                self.read_when_applied(read, read_state.index);
            }
        }
        self.maybe_snapshot();
        all_durable
    }

    /// Fails what waits on this node's leadership: proposals (their outcome
    /// is unknown) and reads not confirmed yet. Confirmed reads stay (see
    /// `Reads::fail_unconfirmed`).
    fn fail_pending(&mut self, reason: &str) {
        self.metrics.proposals_failed(self.proposals.len());
        self.proposals.fail_all(reason);
        self.reads.fail_unconfirmed(reason);
    }

    fn publish_status(&self) {
        self.metrics.set_proposals_pending(self.proposals.len());
        let core = &self.core;
        let followers = if core.role() == Role::Leader {
            core.follower_progress()
                .into_iter()
                .map(|progress| FollowerStatus {
                    id: progress.id,
                    match_index: progress.match_index,
                    next_index: progress.next_index,
                })
                .collect()
        } else {
            Vec::new()
        };
        let status = NodeStatus {
            catching_up: core.lacks_committed_entries(),
            storage_error: self.storage_health.borrow().clone(),
            id: core.id(),
            role: NodeRole::from(core.role()),
            term: core.term(),
            leader_id: core.leader_id().unwrap_or(0),
            commit_index: core.commit_index(),
            applied_index: self.applied_index.load(Ordering::Acquire),
            last_log_index: core.last_index(),
            snapshot_index: self.snapshot_schedule.snapshot_index(),
            followers,
            cluster_id: self.cluster_id.clone(),
        };
        self.status.send_if_modified(|current| {
            if *current == status {
                false
            } else {
                *current = status;
                true
            }
        });
    }
}

/// How one `Ready`'s append is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AppendMode {
    /// Handed to the WAL thread; the `Ready`'s messages leave at once and
    /// the core counts the entries as durable when the write reports back.
    Background,
    /// Waited for before anything of the `Ready` is sent (on the WAL thread,
    /// or on the driver's own when that is idle: see `wal_writer`).
    Awaited,
}

/// A leader writes in the background (etcd-raft allows it): it sends its
/// appends at once and counts itself toward commit only once its write is
/// durable. Anyone else persists first, since its messages (votes,
/// acknowledgements) vouch for what it stores; so does a leader whose term
/// or vote is changing in this batch, or that installs a snapshot.
fn append_mode(role: Role, term_or_vote_changes: bool, has_snapshot: bool) -> AppendMode {
    if role == Role::Leader && !term_or_vote_changes && !has_snapshot {
        AppendMode::Background
    } else {
        AppendMode::Awaited
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_leader_keeping_its_term_and_vote_without_a_snapshot_appends_in_the_background() {
        assert_eq!(
            append_mode(Role::Leader, false, false),
            AppendMode::Background
        );
        let roles = [
            Role::Follower,
            Role::PreCandidate,
            Role::Candidate,
            Role::Leader,
        ];
        for role in roles {
            for term_or_vote_changes in [false, true] {
                for has_snapshot in [false, true] {
                    if (role, term_or_vote_changes, has_snapshot) == (Role::Leader, false, false) {
                        continue;
                    }
                    assert_eq!(
                        append_mode(role, term_or_vote_changes, has_snapshot),
                        AppendMode::Awaited,
                        "{role:?}, term or vote changes: {term_or_vote_changes}, \
                         snapshot: {has_snapshot}"
                    );
                }
            }
        }
    }
}
