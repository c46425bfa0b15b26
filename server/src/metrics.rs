//! The node's Prometheus metrics.
//!
//! Counters and histograms are updated where the work happens (the client
//! service, the node handle, the Raft driver); gauges that mirror the node's
//! status (term, leader, log positions, follower progress) and the peer
//! links' counters are refreshed from their sources at scrape time, so the
//! driver does no extra work for them. Every label has a bounded set of
//! values: `op` from [`Operation`], `code` from the gRPC codes, `peer` from
//! the configured members, `kind` from [`SnapshotKind`], `state` synced or
//! unsynced.
//!
//! Every metric and its help text is documented in `observability/README.md`;
//! `server/tests/observability.rs` checks that the two agree.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::status::{NodeRole, NodeStatus, PeerLinkStatus};
use crate::storage::overlay::Backlog;
use crate::storage::resident::ResidentSize;

/// Upper bounds (seconds) of the client request latency buckets: from half a
/// millisecond (a local read) to the longest request deadline.
pub const REQUEST_DURATION_BUCKETS_SECONDS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds (seconds) of the WAL append + fdatasync latency buckets.
pub const WAL_FSYNC_BUCKETS_SECONDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A client API operation: the `op` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `KV.Put`.
    Put,
    /// `KV.Get`.
    Get,
    /// `KV.Delete`.
    Delete,
    /// `KV.Status`.
    Status,
    /// `KV.Range`.
    Range,
    /// `KV.DeleteRange`.
    DeleteRange,
    /// `KV.Txn`.
    Txn,
    /// `KV.Compact`.
    Compact,
    /// `Lease.LeaseGrant`.
    LeaseGrant,
    /// `Lease.LeaseRevoke`.
    LeaseRevoke,
}

impl Operation {
    /// Every operation, in label order.
    pub const ALL: [Operation; 10] = [
        Operation::Put,
        Operation::Get,
        Operation::Delete,
        Operation::Status,
        Operation::Range,
        Operation::DeleteRange,
        Operation::Txn,
        Operation::Compact,
        Operation::LeaseGrant,
        Operation::LeaseRevoke,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Put => "put",
            Operation::Get => "get",
            Operation::Delete => "delete",
            Operation::Status => "status",
            Operation::Range => "range",
            Operation::DeleteRange => "delete_range",
            Operation::Txn => "txn",
            Operation::LeaseGrant => "lease_grant",
            Operation::LeaseRevoke => "lease_revoke",
            Operation::Compact => "compact",
        }
    }
}

/// How a snapshot came about: the `kind` label of `kvstore_snapshots_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// Taken from the local state machine (and the log compacted).
    Taken,
    /// Received from the leader and installed.
    Installed,
}

impl SnapshotKind {
    fn as_str(self) -> &'static str {
        match self {
            SnapshotKind::Taken => "taken",
            SnapshotKind::Installed => "installed",
        }
    }
}

/// Every gRPC status code, as the `code` label spells it (the names of the
/// gRPC specification, e.g. `OK`, `UNAVAILABLE`).
pub const GRPC_CODES: [(tonic::Code, &str); 17] = [
    (tonic::Code::Ok, "OK"),
    (tonic::Code::Cancelled, "CANCELLED"),
    (tonic::Code::Unknown, "UNKNOWN"),
    (tonic::Code::InvalidArgument, "INVALID_ARGUMENT"),
    (tonic::Code::DeadlineExceeded, "DEADLINE_EXCEEDED"),
    (tonic::Code::NotFound, "NOT_FOUND"),
    (tonic::Code::AlreadyExists, "ALREADY_EXISTS"),
    (tonic::Code::PermissionDenied, "PERMISSION_DENIED"),
    (tonic::Code::ResourceExhausted, "RESOURCE_EXHAUSTED"),
    (tonic::Code::FailedPrecondition, "FAILED_PRECONDITION"),
    (tonic::Code::Aborted, "ABORTED"),
    (tonic::Code::OutOfRange, "OUT_OF_RANGE"),
    (tonic::Code::Unimplemented, "UNIMPLEMENTED"),
    (tonic::Code::Internal, "INTERNAL"),
    (tonic::Code::Unavailable, "UNAVAILABLE"),
    (tonic::Code::DataLoss, "DATA_LOSS"),
    (tonic::Code::Unauthenticated, "UNAUTHENTICATED"),
];

/// The `code` label of a gRPC status code.
pub fn code_label(code: tonic::Code) -> &'static str {
    GRPC_CODES
        .iter()
        .find(|(known, _)| *known == code)
        .map_or("UNKNOWN", |(_, name)| name)
}

/// Codes whose request series exist from the start (at zero), so that rates
/// and dashboards have data before the first failure.
const PREINITIALIZED_CODES: [tonic::Code; 5] = [
    tonic::Code::Ok,
    tonic::Code::InvalidArgument,
    tonic::Code::Unavailable,
    tonic::Code::DeadlineExceeded,
    tonic::Code::Unknown,
];

/// What the driver saw last, to count transitions.
#[derive(Debug, Default)]
struct Observed {
    /// (leader, term) last seen.
    leader: Option<(u64, u64)>,
    /// Highest term in which this node campaigned (or led).
    campaign_term: u64,
}

/// The metrics of one node.
pub struct Metrics {
    registry: Registry,
    node_id: u64,
    raft_term: IntGauge,
    raft_is_leader: IntGauge,
    raft_leader_id: IntGauge,
    raft_commit_index: IntGauge,
    raft_applied_index: IntGauge,
    raft_last_log_index: IntGauge,
    raft_snapshot_index: IntGauge,
    raft_follower_match_index: IntGaugeVec,
    raft_follower_lag_entries: IntGaugeVec,
    raft_leader_changes_total: IntCounter,
    raft_elections_started_total: IntCounter,
    raft_proposals_committed_total: IntCounter,
    raft_proposals_failed_total: IntCounter,
    raft_proposals_pending: IntGauge,
    backend_unflushed_keys: IntGauge,
    /// Where `backend_unflushed_keys` is read from when metrics are encoded.
    backend_backlog: OnceLock<Backlog>,
    mvcc_keys: IntGauge,
    mvcc_latest_table_bytes: IntGauge,
    /// Where the two above are read from when metrics are encoded.
    latest_table: OnceLock<ResidentSize>,
    watch_streams: IntGauge,
    watchers: IntGaugeVec,
    watch_events_sent_total: IntCounter,
    watch_slow_watchers_total: IntCounter,
    watch_compacted_cancels_total: IntCounter,
    watch_catchup_reads_total: IntCounter,
    /// Where the six above are read from when metrics are encoded.
    watch_hub: OnceLock<Arc<dyn WatchStats>>,
    requests_total: IntCounterVec,
    request_duration_seconds: HistogramVec,
    forwarded_requests_total: IntCounterVec,
    wal_fsync_duration_seconds: Histogram,
    snapshots_total: IntCounterVec,
    peer_send_failures_total: IntCounterVec,
    peer_messages_dropped_total: IntCounterVec,
    ready: IntGauge,
    observed: Mutex<Observed>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Metrics")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// Registers `collector` and returns it.
fn register<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: T,
) -> T {
    registry
        .register(Box::new(collector.clone()))
        .expect("metric names are unique and valid");
    collector
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("a valid gauge"))
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(
        registry,
        IntCounter::new(name, help).expect("a valid counter"),
    )
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid gauge vector"),
    )
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("a valid counter vector"),
    )
}

/// A `u64` position as a gauge value (saturating; log indexes never get near).
fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Metrics {
    /// The metrics of node `node_id` of cluster `cluster_id`, whose other
    /// members are `peers`. Every label set known up front is created at zero.
    pub fn new(node_id: u64, cluster_id: &str, peers: &[u64]) -> Self {
        let registry = Registry::new();
        let info = gauge_vec(
            &registry,
            "kvstore_node_info",
            "Always 1; labels: this node's id, its cluster and the server version.",
            &["node_id", "cluster_id", "version"],
        );
        info.with_label_values(&[
            node_id.to_string().as_str(),
            cluster_id,
            env!("CARGO_PKG_VERSION"),
        ])
        .set(1);
        let metrics = Self {
            node_id,
            raft_term: gauge(&registry, "kvstore_raft_term", "Current Raft term of this node."),
            raft_is_leader: gauge(
                &registry,
                "kvstore_raft_is_leader",
                "1 if this node is the leader, else 0.",
            ),
            raft_leader_id: gauge(
                &registry,
                "kvstore_raft_leader_id",
                "Id of the leader this node knows in its current term; 0 when it knows none.",
            ),
            raft_commit_index: gauge(
                &registry,
                "kvstore_raft_commit_index",
                "Highest log index this node knows to be committed.",
            ),
            raft_applied_index: gauge(
                &registry,
                "kvstore_raft_applied_index",
                "Highest log index applied to this node's state machine.",
            ),
            raft_last_log_index: gauge(
                &registry,
                "kvstore_raft_last_log_index",
                "Index of the last entry in this node's log.",
            ),
            raft_snapshot_index: gauge(
                &registry,
                "kvstore_raft_snapshot_index",
                "Log index of this node's latest snapshot (the log before it is compacted); 0 when none.",
            ),
            raft_follower_match_index: gauge_vec(
                &registry,
                "kvstore_raft_follower_match_index",
                "On the leader only: highest log index known replicated on each follower.",
                &["peer"],
            ),
            raft_follower_lag_entries: gauge_vec(
                &registry,
                "kvstore_raft_follower_lag_entries",
                "On the leader only: entries each follower is behind the leader's last log index.",
                &["peer"],
            ),
            raft_leader_changes_total: counter(
                &registry,
                "kvstore_raft_leader_changes_total",
                "Times this node saw a new leader (another leader, or the same in a new term); the first leader it learns of counts.",
            ),
            raft_elections_started_total: counter(
                &registry,
                "kvstore_raft_elections_started_total",
                "Elections this node started: terms in which it became a candidate (pre-vote rounds that did not lead to one are not counted).",
            ),
            raft_proposals_committed_total: counter(
                &registry,
                "kvstore_raft_proposals_committed_total",
                "Client writes proposed by this node (as leader) that were committed.",
            ),
            raft_proposals_failed_total: counter(
                &registry,
                "kvstore_raft_proposals_failed_total",
                "Client writes this node could not propose or whose outcome became unknown or failed (refused, leadership lost, replaced by a new leader, shutdown).",
            ),
            raft_proposals_pending: gauge(
                &registry,
                "kvstore_raft_proposals_pending",
                "Client writes proposed by this node and not yet committed.",
            ),
            backend_unflushed_keys: gauge(
                &registry,
                "kvstore_backend_unflushed_keys",
                "Applied keys held in memory that LevelDB does not hold yet (written behind in batches of --backend-batch-limit keys or every --backend-batch-interval-ms).",
            ),
            backend_backlog: OnceLock::new(),
            mvcc_keys: gauge(
                &registry,
                "kvstore_mvcc_keys",
                "Live keys in the store (at the current revision).",
            ),
            mvcc_latest_table_bytes: gauge(
                &registry,
                "kvstore_mvcc_latest_table_bytes",
                "Bytes of keys and latest records held in memory: every live key with its value and revisions (the history stays in LevelDB).",
            ),
            latest_table: OnceLock::new(),
            watch_streams: gauge(
                &registry,
                "kvstore_watch_streams",
                "Watch streams open on this node.",
            ),
            watchers: gauge_vec(
                &registry,
                "kvstore_watchers",
                "Watches this node serves: synced ones get live events, unsynced ones are caught up from the history (they asked for history, or their client did not keep up).",
                &["state"],
            ),
            watch_events_sent_total: counter(
                &registry,
                "kvstore_watch_events_sent_total",
                "Events this node queued for its watch streams.",
            ),
            watch_slow_watchers_total: counter(
                &registry,
                "kvstore_watch_slow_watchers_total",
                "Times a synced watch's stream buffer was full, so that the watch left the live path to be caught up from the history.",
            ),
            watch_compacted_cancels_total: counter(
                &registry,
                "kvstore_watch_compacted_cancels_total",
                "Watches cancelled because the revisions they needed were compacted.",
            ),
            watch_catchup_reads_total: counter(
                &registry,
                "kvstore_watch_catchup_reads_total",
                "History reads that caught unsynced watches up.",
            ),
            watch_hub: OnceLock::new(),
            requests_total: counter_vec(
                &registry,
                "kvstore_requests_total",
                "Client API requests received by this node (forwarded ones included), by operation and gRPC status code.",
                &["op", "code"],
            ),
            request_duration_seconds: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "kvstore_request_duration_seconds",
                        "Time from receiving a client API request to answering it, on the node that received it, by operation.",
                    )
                    .buckets(REQUEST_DURATION_BUCKETS_SECONDS.to_vec()),
                    &["op"],
                )
                .expect("a valid histogram"),
            ),
            forwarded_requests_total: counter_vec(
                &registry,
                "kvstore_forwarded_requests_total",
                "Client requests this node forwarded to the leader, by operation (every attempt counts).",
                &["op"],
            ),
            wal_fsync_duration_seconds: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "kvstore_wal_fsync_duration_seconds",
                        "Time to append one batch to the write-ahead log and fdatasync it.",
                    )
                    .buckets(WAL_FSYNC_BUCKETS_SECONDS.to_vec()),
                )
                .expect("a valid histogram"),
            ),
            snapshots_total: counter_vec(
                &registry,
                "kvstore_snapshots_total",
                "Snapshots taken locally (kind=\"taken\") or received from the leader and installed (kind=\"installed\").",
                &["kind"],
            ),
            peer_send_failures_total: counter_vec(
                &registry,
                "kvstore_peer_send_failures_total",
                "RPCs to a peer that failed (connection refused, timeout, error status), by peer id.",
                &["peer"],
            ),
            peer_messages_dropped_total: counter_vec(
                &registry,
                "kvstore_peer_messages_dropped_total",
                "Messages to a peer dropped unsent because its link was backing off after failures or its queue was full, by peer id.",
                &["peer"],
            ),
            ready: gauge(
                &registry,
                "kvstore_ready",
                "1 when this node knows a leader and has applied everything it knows committed (what /readyz reports), else 0.",
            ),
            observed: Mutex::new(Observed::default()),
            registry,
        };
        for operation in Operation::ALL {
            for code in PREINITIALIZED_CODES {
                metrics
                    .requests_total
                    .with_label_values(&[operation.as_str(), code_label(code)]);
            }
            metrics
                .request_duration_seconds
                .with_label_values(&[operation.as_str()]);
        }
        for operation in [Operation::Put, Operation::Get, Operation::Delete] {
            metrics
                .forwarded_requests_total
                .with_label_values(&[operation.as_str()]);
        }
        for kind in [SnapshotKind::Taken, SnapshotKind::Installed] {
            metrics.snapshots_total.with_label_values(&[kind.as_str()]);
        }
        for peer in peers {
            let peer = peer.to_string();
            metrics
                .peer_send_failures_total
                .with_label_values(&[peer.as_str()]);
            metrics
                .peer_messages_dropped_total
                .with_label_values(&[peer.as_str()]);
        }
        metrics
    }

    /// Counts one answered client request and its latency.
    pub fn observe_request(&self, operation: Operation, code: tonic::Code, elapsed: Duration) {
        self.requests_total
            .with_label_values(&[operation.as_str(), code_label(code)])
            .inc();
        self.request_duration_seconds
            .with_label_values(&[operation.as_str()])
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one request forwarded to the leader.
    pub fn observe_forward(&self, operation: Operation) {
        self.forwarded_requests_total
            .with_label_values(&[operation.as_str()])
            .inc();
    }

    /// Requests received so far, per operation (every code), in
    /// [`Operation::ALL`] order; and how many of them failed.
    pub fn request_counts(&self) -> ([(Operation, u64); Operation::ALL.len()], u64) {
        let mut failed = 0;
        let counts = Operation::ALL.map(|operation| {
            let mut total = 0;
            for (code, name) in GRPC_CODES {
                if let Ok(counter) = self
                    .requests_total
                    .get_metric_with_label_values(&[operation.as_str(), name])
                {
                    total += counter.get();
                    if code != tonic::Code::Ok {
                        failed += counter.get();
                    }
                }
            }
            (operation, total)
        });
        (counts, failed)
    }

    /// Records a change of role, term or leader (the core's soft state):
    /// counts elections this node started and leaders it saw.
    pub fn observe_soft_state(&self, role: NodeRole, term: u64, leader_id: Option<u64>) {
        crate::logging::set_term(term);
        let mut observed = self.observed.lock().expect("metrics lock");
        // A leader was a candidate in its term, even when the election was
        // won before the driver saw the candidate state (a single node).
        if matches!(role, NodeRole::Candidate | NodeRole::Leader) && term > observed.campaign_term {
            observed.campaign_term = term;
            self.raft_elections_started_total.inc();
        }
        if let Some(leader) = leader_id.filter(|leader| *leader != 0) {
            if observed.leader != Some((leader, term)) {
                observed.leader = Some((leader, term));
                self.raft_leader_changes_total.inc();
            }
        }
    }

    /// Counts a proposal that was committed.
    pub fn proposal_committed(&self) {
        self.raft_proposals_committed_total.inc();
    }

    /// Counts `count` proposals that failed.
    pub fn proposals_failed(&self, count: usize) {
        self.raft_proposals_failed_total.inc_by(count as u64);
    }

    /// Reports the size of the in-memory latest-record table from now on.
    pub fn watch_latest_table(&self, size: ResidentSize) {
        let _ = self.latest_table.set(size);
    }

    /// Reports the watch hub's watchers and counts from now on.
    pub fn watch_watch_hub(&self, hub: Arc<dyn WatchStats>) {
        let _ = self.watch_hub.set(hub);
    }

    /// Reports the write-behind backlog of the state store from now on.
    pub fn watch_backend_backlog(&self, backlog: Backlog) {
        let _ = self.backend_backlog.set(backlog);
    }

    /// Sets the number of proposals awaiting commit.
    pub fn set_proposals_pending(&self, count: usize) {
        self.raft_proposals_pending.set(count as i64);
    }

    /// Records one WAL append + fdatasync.
    pub fn observe_wal_sync(&self, elapsed: Duration) {
        self.wal_fsync_duration_seconds
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a snapshot.
    pub fn snapshot(&self, kind: SnapshotKind) {
        self.snapshots_total
            .with_label_values(&[kind.as_str()])
            .inc();
    }

    /// Refreshes the gauges that mirror `status` and the counters that mirror
    /// the peer links.
    pub fn refresh(&self, status: &NodeStatus, links: &[PeerLinkStatus]) {
        let is_leader = status.role == NodeRole::Leader;
        self.raft_term.set(gauge_value(status.term));
        self.raft_is_leader.set(i64::from(is_leader));
        self.raft_leader_id.set(gauge_value(status.leader_id));
        self.raft_commit_index.set(gauge_value(status.commit_index));
        self.raft_applied_index
            .set(gauge_value(status.applied_index));
        self.raft_last_log_index
            .set(gauge_value(status.last_log_index));
        self.raft_snapshot_index
            .set(gauge_value(status.snapshot_index));
        self.ready.set(i64::from(status.readiness().is_ok()));
        // Follower progress exists only on the leader: other nodes expose no
        // series, so a query over the cluster sees the leader's view only.
        self.raft_follower_match_index.reset();
        self.raft_follower_lag_entries.reset();
        if is_leader {
            for follower in &status.followers {
                let peer = follower.id.to_string();
                self.raft_follower_match_index
                    .with_label_values(&[peer.as_str()])
                    .set(gauge_value(follower.match_index));
                self.raft_follower_lag_entries
                    .with_label_values(&[peer.as_str()])
                    .set(gauge_value(
                        status.last_log_index.saturating_sub(follower.match_index),
                    ));
            }
        }
        for link in links {
            let peer = link.id.to_string();
            catch_up(
                &self
                    .peer_send_failures_total
                    .with_label_values(&[peer.as_str()]),
                link.send_failures,
            );
            catch_up(
                &self
                    .peer_messages_dropped_total
                    .with_label_values(&[peer.as_str()]),
                link.dropped,
            );
        }
    }

    /// Every metric in the Prometheus text exposition format (0.0.4).
    pub fn encode(&self) -> String {
        if let Some(backlog) = self.backend_backlog.get() {
            self.backend_unflushed_keys.set(backlog.keys() as i64);
        }
        if let Some(size) = self.latest_table.get() {
            self.mvcc_keys.set(size.keys() as i64);
            self.mvcc_latest_table_bytes.set(size.bytes() as i64);
        }
        if let Some(hub) = self.watch_hub.get() {
            let stats = hub.watch_stats();
            self.watch_streams.set(stats.streams as i64);
            self.watchers
                .with_label_values(&["synced"])
                .set(stats.synced as i64);
            self.watchers
                .with_label_values(&["unsynced"])
                .set(stats.unsynced as i64);
            for (counter, total) in [
                (&self.watch_events_sent_total, stats.events_sent),
                (&self.watch_slow_watchers_total, stats.slow_watchers),
                (&self.watch_compacted_cancels_total, stats.compacted_cancels),
                (&self.watch_catchup_reads_total, stats.catchup_reads),
            ] {
                catch_up(counter, total);
            }
        }
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("encoding metrics into memory cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

/// What the watch hub reports, read at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchStatsSnapshot {
    /// Open watch streams.
    pub streams: usize,
    /// Watchers getting live events.
    pub synced: usize,
    /// Watchers being caught up from history.
    pub unsynced: usize,
    /// Events queued for streams.
    pub events_sent: u64,
    /// Times a synced watcher's buffer was full.
    pub slow_watchers: u64,
    /// Watchers cancelled because compaction passed them.
    pub compacted_cancels: u64,
    /// History reads of the catch-up task.
    pub catchup_reads: u64,
}

/// A source of [`WatchStatsSnapshot`]s (the node's watch hub).
pub trait WatchStats: Send + Sync {
    /// The figures now.
    fn watch_stats(&self) -> WatchStatsSnapshot;
}

/// The content type of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Raises `counter` to `total` (a monotonic count kept elsewhere).
fn catch_up(counter: &IntCounter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::status_for_tests;
    use crate::status::FollowerStatus;

    #[test]
    fn elections_and_leader_changes_are_counted_once_per_term() {
        let metrics = Metrics::new(1, "test", &[2, 3]);
        metrics.observe_soft_state(NodeRole::PreCandidate, 1, None);
        assert_eq!(metrics.raft_elections_started_total.get(), 0);
        metrics.observe_soft_state(NodeRole::Candidate, 2, None);
        metrics.observe_soft_state(NodeRole::Leader, 2, Some(1));
        assert_eq!(metrics.raft_elections_started_total.get(), 1);
        assert_eq!(metrics.raft_leader_changes_total.get(), 1);
        metrics.observe_soft_state(NodeRole::Follower, 3, None);
        metrics.observe_soft_state(NodeRole::Follower, 3, Some(2));
        metrics.observe_soft_state(NodeRole::Follower, 3, Some(2));
        assert_eq!(metrics.raft_leader_changes_total.get(), 2);
        // A single node wins before the driver sees it as a candidate.
        metrics.observe_soft_state(NodeRole::Leader, 4, Some(1));
        assert_eq!(metrics.raft_elections_started_total.get(), 2);
        assert_eq!(metrics.raft_leader_changes_total.get(), 3);
    }

    #[test]
    fn follower_gauges_exist_only_on_the_leader_and_links_catch_up() {
        let metrics = Metrics::new(1, "test", &[2, 3]);
        let mut status = status_for_tests(1);
        status.role = NodeRole::Leader;
        status.leader_id = 1;
        status.last_log_index = 10;
        status.followers = vec![FollowerStatus {
            id: 2,
            match_index: 7,
            next_index: 8,
        }];
        let mut link = PeerLinkStatus {
            id: 2,
            send_failures: 5,
            dropped: 0,
        };
        metrics.refresh(&status, &[link]);
        let text = metrics.encode();
        assert!(
            text.contains("kvstore_raft_follower_lag_entries{peer=\"2\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("kvstore_peer_send_failures_total{peer=\"2\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("kvstore_peer_send_failures_total{peer=\"3\"} 0"),
            "{text}"
        );
        status.role = NodeRole::Follower;
        link.send_failures = 6;
        metrics.refresh(&status, &[link]);
        let text = metrics.encode();
        assert!(
            !text.contains("kvstore_raft_follower_lag_entries{"),
            "{text}"
        );
        assert!(
            text.contains("kvstore_peer_send_failures_total{peer=\"2\"} 6"),
            "{text}"
        );
    }

    #[test]
    fn every_code_has_a_label_and_requests_are_counted() {
        assert_eq!(code_label(tonic::Code::Unavailable), "UNAVAILABLE");
        let metrics = Metrics::new(1, "test", &[]);
        metrics.observe_request(Operation::Put, tonic::Code::Ok, Duration::from_millis(2));
        metrics.observe_request(
            Operation::Put,
            tonic::Code::FailedPrecondition,
            Duration::from_millis(2),
        );
        let (counts, failed) = metrics.request_counts();
        assert_eq!(counts[0], (Operation::Put, 2));
        assert_eq!(failed, 1);
    }
}
