//! Start-up, part 2: the node's parts, wired. The driver's queues, the
//! status channel, the peer links, metrics, the `Node` handle and the
//! driver's parts; nothing runs yet.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use kvstore_raft::RaftCore;
use tokio::sync::{mpsc, watch};

use super::recovery::{RecoveredLog, StateMachine};
use super::ServerError;
use crate::config::ServerConfig;
use crate::limits;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::node::compactor::Compaction;
use crate::node::driver::{self, DriverParts, DriverSettings};
use crate::node::lessor::Lessor;
use crate::node::watchers::WatchHub;
use crate::node::{Node, NodeParts, RequestLimits, Timings};
use crate::snapshot::SnapshotDirectory;
use crate::status::{NodeRole, NodeStatus};
use crate::storage_health::StorageHealth;
use crate::transport::inbound::{PeerInbound, PeerReleases};
use crate::transport::peers::PeerSet;

/// The wired node, ready to serve.
pub(super) struct Assembled {
    /// This node's id, cluster and members.
    pub membership: Membership,
    /// The handle the services hold.
    pub node: Node,
    /// Outbound peer links.
    pub peers: Arc<PeerSet>,
    /// The driver's peer queue, for the peer service.
    pub inbound: PeerInbound,
    /// Key and value limits of client requests.
    pub request_limits: RequestLimits,
    /// Where snapshots from the leader are received.
    pub snapshots: SnapshotDirectory,
}

/// Wires the node over its recovered log, state machine and core; with
/// what the driver is made of (it is built and started once the ports
/// listen).
pub(super) fn assemble(
    config: &ServerConfig,
    log: RecoveredLog,
    state_machine: &StateMachine,
    core: RaftCore,
    storage_health: watch::Receiver<StorageHealth>,
) -> Result<(Assembled, DriverParts), ServerError> {
    let (events_sender, events) = mpsc::channel(driver::EVENT_QUEUE_CAPACITY);
    let (peer_sender, peer_messages) = mpsc::channel(driver::EVENT_QUEUE_CAPACITY);
    let peer_releases = Arc::new(PeerReleases::default());
    let compaction = Compaction::new(state_machine.reclaimer.clone());
    let inbound = PeerInbound::new(peer_sender, peer_releases.clone());
    let (storage_version, storage_version_receiver) = watch::channel(state_machine.storage_version);
    let applied = state_machine.applied;
    let (status_sender, status_receiver) = watch::channel(NodeStatus {
        id: config.id,
        role: NodeRole::Follower,
        term: log.hard_state.term,
        leader_id: 0,
        commit_index: log.hard_state.commit,
        applied_index: applied.index,
        last_log_index: core.last_index(),
        snapshot_index: log.snapshot.map(|snapshot| snapshot.index).unwrap_or(0),
        followers: Vec::new(),
        cluster_id: config.cluster_id.clone(),
        catching_up: log.catch_up_before_voting,
        storage_error: storage_health.borrow().clone(),
    });
    let peer_addresses: Vec<(u64, String)> = config
        .peers
        .iter()
        .map(|peer| (peer.id, peer.raft_addr.clone()))
        .collect();
    let membership = Membership {
        id: config.id,
        cluster_id: config.cluster_id.clone(),
        members: config.members(),
    };
    let peers = Arc::new(
        PeerSet::start(
            membership.clone(),
            &peer_addresses,
            inbound.clone(),
            log.snapshots.clone(),
        )
        .map_err(ServerError::Config)?,
    );
    let applied_index = Arc::new(AtomicU64::new(applied.index));
    let timings = Timings {
        leader_wait: Duration::from_millis(
            config.election_timeout_ms * u64::from(limits::LEADER_WAIT_ELECTION_TIMEOUTS),
        ),
        injected_fault: config.inject_fault,
    };
    if let Some(fault) = config.inject_fault {
        tracing::warn!(?fault, "DELIBERATE FAULT INJECTED: this node breaks its guarantees on purpose (--inject-fault)");
    }
    let metrics = Arc::new(Metrics::new(
        config.id,
        &config.cluster_id,
        &config.peers.iter().map(|peer| peer.id).collect::<Vec<_>>(),
    ));
    metrics.watch_backend_backlog(state_machine.backlog.clone());
    metrics.watch_latest_table(state_machine.latest_table.clone());
    let request_limits = RequestLimits {
        key_bytes_max: config.key_bytes_max,
        value_bytes_max: config.value_bytes_max,
    };
    let watch_hub = WatchHub::new(
        state_machine.revision,
        config.watchers_max,
        config.inject_fault == Some(crate::config::InjectedFault::WatchResumeLate),
    );
    metrics.watch_watch_hub(watch_hub.clone());
    // Two election timeouts: a deposed leader may answer keep-alives until
    // its quorum check fails (up to two election timeouts without a
    // majority), and its successor is elected after one.
    let mut lessor = Lessor::new(
        state_machine.leases.clone(),
        Duration::from_millis(2 * config.election_timeout_ms),
    );
    if config.inject_fault == Some(crate::config::InjectedFault::LeaseEarlyExpiry) {
        lessor.inject_early_expiry();
    }
    let lessor = Arc::new(std::sync::Mutex::new(lessor));
    let node = Node::new(NodeParts {
        membership: membership.clone(),
        events: events_sender,
        status: status_receiver,
        applied_index: applied_index.clone(),
        store: state_machine.handle.clone(),
        leader_link: peers.clone(),
        timings,
        request_limits,
        metrics: metrics.clone(),
        consistent_at: state_machine.consistent_at,
        storage_version: storage_version_receiver,
        compaction: compaction.clone(),
        watch_hub: watch_hub.clone(),
        lessor: lessor.clone(),
        lease_ttl_min_seconds: lease_ttl_min_seconds(config.election_timeout_ms),
    });
    let driver = DriverParts {
        core,
        cluster_id: config.cluster_id.clone(),
        wal: log.wal,
        store: state_machine.handle.clone(),
        snapshots: log.snapshots.clone(),
        peers: peers.clone(),
        events,
        peer_messages,
        status: status_sender,
        applied_index,
        storage_health,
        catch_up_marker: log.catch_up_marker,
        settings: DriverSettings {
            tick: Duration::from_millis(config.heartbeat_interval_ms),
            snapshot_entries: config.snapshot_entries,
            snapshot_log_bytes: config.snapshot_log_bytes,
            injected_fault: config.inject_fault,
            retention: config.retention(),
        },
        storage_version: Arc::new(storage_version),
        peer_releases,
        compaction,
        applied,
        metrics,
        watch_hub,
        lessor,
    };
    let assembled = Assembled {
        membership,
        node,
        peers,
        inbound,
        request_limits,
        snapshots: log.snapshots,
    };
    Ok((assembled, driver))
}

/// The shortest lease TTL granted, in seconds: one and a half election
/// timeouts, rounded up (etcd's minimum), so that a lease outlives a
/// leader change; a shorter TTL asked for is raised to it, as etcd does.
fn lease_ttl_min_seconds(election_timeout_ms: u64) -> u64 {
    (election_timeout_ms * 3 / 2).div_ceil(1_000).max(1)
}
