//! Starts a node: opens its data directory and store, serves its gRPC ports,
//! and shuts down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvstore_raft::{RaftCore, SnapshotMetadata};
use kvstore_wal::{Wal, WalError, WalOptions};
use tokio::sync::{mpsc, watch};

use tokio::net::TcpListener;

use crate::config::{InitialClusterState, ServerConfig};
use crate::connections::{self, CappedListener, FileDescriptorBudget, Http2Settings, PortLimits};
use crate::data_dir::{DataDir, DataDirError, Identity as DataDirIdentity};
use crate::http::{self, HttpState};
use crate::limits;
use crate::logging;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::node::driver::{self, Driver, DriverParts, DriverSettings};
use crate::node::{persist, Node, NodeParts, RequestLimits, Timings};
use crate::service::{KvService, KV_SERVICE_NAME};
use crate::snapshot::{self, SnapshotDirectory, SnapshotError};
use crate::state_machine;
use crate::status::{NodeRole, NodeStatus};
use crate::storage::actor::{self, StoreHandle};
use crate::storage::leveldb::LevelDbStore;
use crate::storage::overlay::{OverlayLimits, OverlayStore};
use crate::storage::{recovery, StoreError};
use crate::storage_health;
use crate::transport::inbound::PeerInbound;
use crate::transport::peers::PeerSet;
use crate::transport::service::{RaftService, RAFT_SERVICE_NAME};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The data directory could not be opened.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A port could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The write-ahead log could not be opened or recovered.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The snapshot directory failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The durable state is inconsistent.
    #[error("cannot recover the node's state: {0}")]
    Recovery(String),
}

/// Names of the reflection services, listed on every port.
const REFLECTION_SERVICE_NAMES: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];
/// Name of the standard health service.
const HEALTH_SERVICE_NAME: &str = "grpc.health.v1.Health";

/// Builds the reflection services (v1 and v1alpha) of one port, listing
/// exactly the services that port serves.
fn reflection_services(
    service_names: &[&str],
) -> (
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
) {
    let builder = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(kvstore_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            );
        for name in service_names
            .iter()
            .chain(&REFLECTION_SERVICE_NAMES)
            .chain([&HEALTH_SERVICE_NAME])
        {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    let v1 = builder()
        .build_v1()
        .expect("the embedded descriptor sets are valid");
    let v1alpha = builder()
        .build_v1alpha()
        .expect("the embedded descriptor sets are valid");
    (v1, v1alpha)
}

/// Binds `address`, reporting the address actually bound (port 0 picks one).
async fn bind(address: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| ServerError::Bind { address, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { address, source })?;
    Ok((listener, bound))
}

/// Seed for the Raft core's election jitter: the core is deterministic for a
/// given seed; a running server draws a fresh one.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Whether this node starts without the state the cluster knows it had
/// (`--initial-cluster-state existing` on an empty data directory), so it
/// must catch up before it votes. Logs what was decided.
fn rejoins_without_state(config: &ServerConfig, holds_state: bool, identity_stored: bool) -> bool {
    match (config.initial_cluster_state, holds_state) {
        (InitialClusterState::Existing, false) => {
            tracing::warn!(
                "--initial-cluster-state existing on an empty data directory: this node lost its state; \
                 it catches up from the leader and neither votes nor campaigns until then"
            );
            true
        }
        (InitialClusterState::Existing, true) => {
            tracing::info!(
                "--initial-cluster-state existing is ignored: the data directory holds state"
            );
            false
        }
        (InitialClusterState::New, true) if identity_stored => {
            tracing::info!(
                "recorded the identity of a data directory written by an earlier release"
            );
            false
        }
        (InitialClusterState::New, _) => false,
    }
}

/// Runs `task` on the blocking pool.
async fn blocking<T: Send + 'static>(task: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(task)
        .await
        .expect("a start-up task panicked")
}

/// Brings the state machine to a consistent starting point: when a restore
/// was interrupted, or the store is behind the WAL's snapshot, it is restored
/// from the snapshot file. Returns the applied position.
async fn recover_state_machine(
    store: &StoreHandle,
    snapshots: &SnapshotDirectory,
    snapshot: Option<SnapshotMetadata>,
) -> Result<SnapshotMetadata, ServerError> {
    let (applied, interrupted) = store
        .with(|store| {
            Ok((
                state_machine::applied(store)?,
                state_machine::interrupted_restore(store)?,
            ))
        })
        .await?;
    let Some(snapshot) = snapshot else {
        if let Some(interrupted) = interrupted {
            return Err(ServerError::Recovery(format!(
                "a restore of snapshot {interrupted:?} was interrupted, but the WAL names no snapshot"
            )));
        }
        return Ok(applied);
    };
    if interrupted.is_none() && applied.index >= snapshot.index {
        return Ok(applied);
    }
    let path = snapshots.path_of(snapshot);
    tracing::info!(
        applied_index = applied.index,
        snapshot_index = snapshot.index,
        interrupted = interrupted.is_some(),
        "restoring the state machine from the snapshot"
    );
    let (restored, pairs) = store
        .with(move |store| {
            snapshot::restore_into_store(store, &path)
                .map_err(|error| StoreError::Engine(error.to_string()))
        })
        .await?;
    tracing::info!(index = restored.index, pairs, "state machine restored");
    Ok(restored)
}

/// Runs the node until `shutdown` completes, then stops gracefully: in-flight
/// requests finish (up to a grace period), the Raft driver stops, and the
/// store is closed cleanly.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate().map_err(ServerError::Config)?;
    logging::set_node_id(config.id);
    // Before any file is opened: connections must never take the file
    // descriptors storage needs (a failed LevelDB open stops the node).
    let file_limit = connections::reserve_file_descriptors(FileDescriptorBudget {
        client_connections: config.connections_max as u64,
        raft_connections: limits::RAFT_CONNECTIONS_MAX as u64,
        http_connections: config.http_connections_max as u64,
        peers: config.peers.len() as u64,
    })
    .map_err(ServerError::Config)?;
    let started = Instant::now();
    let data_dir = DataDir::open(&config.data_dir)?;
    let identity_stored = data_dir.check_identity(&DataDirIdentity::new(
        &config.cluster_id,
        config.id,
        &config.members(),
    ))?;

    // Durable Raft state first: the WAL and the snapshot it names.
    let wal_directory = data_dir.wal_directory();
    let wal_options = WalOptions {
        preallocate_bytes: config.wal_preallocate_bytes,
        ..WalOptions::default()
    };
    let (wal, recovered) = blocking(move || Wal::open(&wal_directory, wal_options)).await?;
    if recovered.truncated_tail_bytes > 0 {
        tracing::warn!(
            bytes = recovered.truncated_tail_bytes,
            "the WAL ended in a torn record (a crash mid-write); it was cut back to the last whole record"
        );
    }
    let snapshots = SnapshotDirectory::open(&data_dir.snapshot_directory())?;
    let snapshot = recovered.snapshot.map(persist::marker_from_wal);
    if let Some(snapshot) = snapshot {
        let path = snapshots.path_of(snapshot);
        if !path.exists() {
            return Err(ServerError::Recovery(format!(
                "the WAL starts after snapshot {snapshot:?}, but {} is missing",
                path.display()
            )));
        }
    }
    let entries = recovered
        .entries
        .into_iter()
        .map(persist::entry_from_wal)
        .collect::<Result<Vec<_>, _>>()
        .map_err(ServerError::Recovery)?;
    let hard_state = persist::hard_state_from_wal(&recovered.hard_state);
    logging::set_term(hard_state.term);
    let holds_state = hard_state.term > 0 || snapshot.is_some() || !entries.is_empty();
    let catch_up_marker = data_dir.catch_up_marker();
    let catch_up_before_voting = if catch_up_marker.is_set() {
        tracing::warn!("this node was catching up after it lost its state when it stopped: it goes on catching up before it votes");
        true
    } else {
        rejoins_without_state(&config, holds_state, identity_stored)
    };
    if catch_up_before_voting {
        catch_up_marker.set().map_err(|source| DataDirError::Io {
            path: data_dir.root().to_path_buf(),
            source,
        })?;
    }

    // The applied state, brought in line with the snapshot.
    let kv_directory = data_dir.kv_directory();
    // Checked, else set aside and rebuilt; a table failing later stops the
    // process (see `storage::recovery`).
    let store = blocking(move || {
        recovery::open_state_store(&kv_directory, |error| {
            crate::fatal::storage_failure("a LevelDB table is corrupt", error)
        })
    })
    .await?;
    // Committed entries are applied into memory and written behind into
    // LevelDB, so that no answer waits for LevelDB's inserts and compactions.
    let overlay_limits = OverlayLimits {
        freeze_ops: config.backend_batch_limit,
        freeze_age: Duration::from_millis(config.backend_batch_interval_ms),
        ..OverlayLimits::default()
    };
    let store = OverlayStore::new(store, overlay_limits);
    store.on_failure(|reason| {
        crate::fatal::storage_failure("writing behind into LevelDB failed", reason)
    });
    let backend_backlog = store.backlog();
    let (store_handle, store_thread) = actor::spawn(store, |store: OverlayStore<LevelDbStore>| {
        if let Err(error) = store.into_engine().and_then(LevelDbStore::close) {
            tracing::error!(%error, "closing the store failed");
        }
    });
    let applied = recover_state_machine(&store_handle, &snapshots, snapshot).await?;
    let consistent_at = store_handle.with(state_machine::consistent_at).await?;
    if consistent_at > applied.index {
        tracing::warn!(
            applied_index = applied.index,
            consistent_at,
            "LevelDB holds part of a write-behind from before a crash; serializable reads wait until the log is applied up to consistent_at again"
        );
    }

    let mut core_config = kvstore_raft::Config::new(config.id, config.members());
    core_config.election_tick = config.election_ticks();
    core_config.heartbeat_tick = 1;
    core_config.seed = random_seed();
    core_config.catch_up_before_voting = catch_up_before_voting;
    let entry_count = entries.len();
    let core = RaftCore::new(core_config, hard_state, snapshot, entries)
        .map_err(|error| ServerError::Recovery(error.to_string()))?;
    tracing::info!(
        node_id = config.id,
        term = hard_state.term,
        commit_index = hard_state.commit,
        applied_index = applied.index,
        snapshot_index = snapshot.map(|snapshot| snapshot.index).unwrap_or(0),
        log_entries = entry_count,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovered durable state"
    );

    let storage_health =
        storage_health::watch(data_dir.root().to_path_buf(), config.min_free_bytes);
    let (events_sender, events) = mpsc::channel(driver::EVENT_QUEUE_CAPACITY);
    let (peer_sender, peer_messages) = mpsc::channel(driver::EVENT_QUEUE_CAPACITY);
    let inbound = PeerInbound::new(peer_sender);
    let (status_sender, status_receiver) = watch::channel(NodeStatus {
        id: config.id,
        role: NodeRole::Follower,
        term: hard_state.term,
        leader_id: 0,
        commit_index: hard_state.commit,
        applied_index: applied.index,
        last_log_index: core.last_index(),
        snapshot_index: snapshot.map(|snapshot| snapshot.index).unwrap_or(0),
        followers: Vec::new(),
        cluster_id: config.cluster_id.clone(),
        catching_up: catch_up_before_voting,
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
            snapshots.clone(),
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
    metrics.watch_backend_backlog(backend_backlog);
    let request_limits = RequestLimits {
        key_bytes_max: config.key_bytes_max,
        value_bytes_max: config.value_bytes_max,
    };
    let node = Node::new(NodeParts {
        membership: membership.clone(),
        events: events_sender,
        status: status_receiver,
        applied_index: applied_index.clone(),
        store: store_handle.clone(),
        leader_link: peers.clone(),
        timings,
        request_limits,
        metrics: metrics.clone(),
        consistent_at,
    });

    // Listen on every port before the driver contacts any peer.
    let (client_listener, client_addr) = bind(config.client_addr).await?;
    let (raft_listener, raft_addr) = bind(config.raft_addr).await?;
    let (metrics_listener, metrics_addr) = bind(config.metrics_addr).await?;
    tracing::info!(
        node_id = config.id,
        %client_addr,
        %raft_addr,
        %metrics_addr,
        cluster_id = config.cluster_id,
        peers = ?config.peers.iter().map(|peer| format!("{}={}", peer.id, peer.raft_addr)).collect::<Vec<_>>(),
        data_dir = %data_dir.root().display(),
        worker_threads = config.worker_threads(),
        open_file_limit = file_limit,
        connections_max = config.connections_max,
        version = env!("CARGO_PKG_VERSION"),
        "kvstore-server started; client, raft and metrics ports listening"
    );

    let (driver_stop, driver_stopped) = watch::channel(false);
    let driver = Driver::new(DriverParts {
        core,
        cluster_id: config.cluster_id.clone(),
        wal,
        store: store_handle.clone(),
        snapshots: snapshots.clone(),
        peers: peers.clone(),
        events,
        peer_messages,
        status: status_sender,
        applied_index,
        storage_health,
        catch_up_marker,
        settings: DriverSettings {
            tick: Duration::from_millis(config.heartbeat_interval_ms),
            snapshot_entries: config.snapshot_entries,
            snapshot_log_bytes: config.snapshot_log_bytes,
            injected_fault: config.inject_fault,
        },
        applied,
        metrics,
    });
    // A panic in the driver is a broken invariant: stop the process (as
    // etcd does) rather than serve on without Raft progress.
    let driver_task = tokio::spawn(async move {
        use futures::FutureExt;
        if std::panic::AssertUnwindSafe(driver.run(driver_stopped))
            .catch_unwind()
            .await
            .is_err()
        {
            crate::fatal::storage_failure("the raft driver panicked", "see the panic above");
        }
    });
    drop(store_handle);

    let (server_stop, server_stopped) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = server_stop.send(true);
    });
    let stop_signal = |mut stopped: watch::Receiver<bool>, port: &'static str| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
        tracing::info!(
            port,
            "shutting down: no new requests, finishing in-flight ones"
        );
    };

    let port_limits = |port, connections_max| PortLimits {
        port,
        connections_max,
        handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
        idle_timeout: Duration::from_millis(config.idle_timeout_ms),
    };
    let http2 = Http2Settings {
        concurrent_streams_max: limits::CONCURRENT_STREAMS_MAX,
    };

    let http_state = HttpState::new(
        node.clone(),
        peers.clone(),
        config.peer_metrics_addrs.clone(),
    );
    let http_task = tokio::spawn(http::serve(
        CappedListener::http(
            metrics_listener,
            port_limits("metrics", config.http_connections_max),
        ),
        http_state,
        stop_signal(server_stopped.clone(), "metrics"),
    ));

    let (client_health_reporter, client_health) = tonic_health::server::health_reporter();
    client_health_reporter
        .set_serving::<kvstore_proto::kv::v1::kv_server::KvServer<KvService>>()
        .await;
    let (client_reflection_v1, client_reflection_v1alpha) = reflection_services(&[KV_SERVICE_NAME]);
    let client_routes = tonic::service::Routes::new(client_health)
        .add_service(client_reflection_v1)
        .add_service(client_reflection_v1alpha)
        .add_service(KvService::new(node.clone(), request_limits).into_server());
    let client_server = connections::serve_grpc(
        CappedListener::grpc(
            client_listener,
            port_limits("client", config.connections_max),
        ),
        client_routes,
        http2,
        stop_signal(server_stopped.clone(), "client"),
    );

    let (raft_health_reporter, raft_health) = tonic_health::server::health_reporter();
    raft_health_reporter
        .set_service_status(RAFT_SERVICE_NAME, tonic_health::ServingStatus::Serving)
        .await;
    let (raft_reflection_v1, raft_reflection_v1alpha) = reflection_services(&[RAFT_SERVICE_NAME]);
    let raft_routes = tonic::service::Routes::new(raft_health)
        .add_service(raft_reflection_v1)
        .add_service(raft_reflection_v1alpha)
        .add_service(
            RaftService::new(
                membership,
                inbound,
                Arc::new(node),
                snapshots,
                server_stopped.clone(),
            )
            .into_server(),
        );
    let raft_server = connections::serve_grpc(
        CappedListener::grpc(
            raft_listener,
            port_limits("raft", limits::RAFT_CONNECTIONS_MAX),
        ),
        raft_routes,
        http2,
        stop_signal(server_stopped.clone(), "raft"),
    );

    let servers = async {
        tokio::join!(client_server, raft_server);
        Ok::<(), ServerError>(())
    };
    let mut servers = Box::pin(servers);
    let mut stopped = server_stopped;
    let result = tokio::select! {
        result = &mut servers => result,
        _ = async {
            let _ = stopped.wait_for(|stop| *stop).await;
            tokio::time::sleep(Duration::from_millis(limits::SHUTDOWN_GRACE_MS)).await;
        } => {
            tracing::warn!(grace_ms = limits::SHUTDOWN_GRACE_MS, "in-flight requests did not finish in time; stopping anyway");
            Ok(())
        }
    };
    // The servers are done (their services and node handles dropped); now the
    // driver, then the store thread closes the database once the last handle
    // is gone.
    drop(servers);
    // The HTTP server holds a node handle too; it finishes its open requests
    // (they are quick) or is cut off after the grace period.
    let http_abort = http_task.abort_handle();
    match tokio::time::timeout(Duration::from_millis(limits::SHUTDOWN_GRACE_MS), http_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::error!(%error, "the metrics HTTP server failed"),
        Ok(Err(error)) if error.is_cancelled() => {}
        Ok(Err(error)) => tracing::error!(%error, "the metrics HTTP server panicked"),
        Err(_) => {
            tracing::warn!("the metrics HTTP server did not stop in time; closing it");
            http_abort.abort();
        }
    }
    let _ = driver_stop.send(true);
    if let Err(error) = driver_task.await {
        tracing::error!(%error, "the raft driver panicked");
    }
    tokio::task::spawn_blocking(move || store_thread.join())
        .await
        .expect("joining the store thread");
    drop(data_dir);
    tracing::info!("stopped cleanly");
    result
}
