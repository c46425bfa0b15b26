//! Start-up, part 3: the ports. Every port is bound before the driver
//! contacts any peer ([`bind_all`]); then the client and raft gRPC ports
//! and the HTTP port serve until shutdown ([`serve`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::wiring::Assembled;
use super::ServerError;
use crate::config::ServerConfig;
use crate::connections::{self, CappedListener, FileDescriptorBudget, Http2Settings, PortLimits};
use crate::data_dir::DataDir;
use crate::http::{self, HttpState};
use crate::limits;
use crate::node::watchers::catchup;
use crate::node::Node;
use crate::service::lease::{LeaseService, LEASE_SERVICE_NAME};
use crate::service::watch::{WatchService, WATCH_SERVICE_NAME};
use crate::service::{KvService, KV_SERVICE_NAME};
use crate::transport::service::{RaftService, RAFT_SERVICE_NAME};

/// Reserves the file descriptors the ports may use, before any file is
/// opened: connections must never take the ones storage needs (a failed
/// LevelDB open stops the node). Returns the process's open-file limit
/// (`None` when unlimited).
pub(super) fn reserve_file_descriptors(config: &ServerConfig) -> Result<Option<u64>, ServerError> {
    connections::reserve_file_descriptors(FileDescriptorBudget {
        client_connections: config.connections_max as u64,
        raft_connections: limits::RAFT_CONNECTIONS_MAX as u64,
        http_connections: config.http_connections_max as u64,
        peers: config.peers.len() as u64,
    })
    .map_err(ServerError::Config)
}

/// The three bound ports.
pub(super) struct Listeners {
    client: (TcpListener, SocketAddr),
    raft: (TcpListener, SocketAddr),
    metrics: (TcpListener, SocketAddr),
}

/// Binds the client, raft and HTTP ports.
pub(super) async fn bind_all(config: &ServerConfig) -> Result<Listeners, ServerError> {
    Ok(Listeners {
        client: bind(config.client_addr).await?,
        raft: bind(config.raft_addr).await?,
        metrics: bind(config.metrics_addr).await?,
    })
}

/// The line that says the node is up, with where it listens.
pub(super) fn log_started(
    config: &ServerConfig,
    listeners: &Listeners,
    data_dir: &DataDir,
    file_limit: Option<u64>,
) {
    tracing::info!(
        node_id = config.id,
        client_addr = %listeners.client.1,
        raft_addr = %listeners.raft.1,
        metrics_addr = %listeners.metrics.1,
        cluster_id = config.cluster_id,
        peers = ?config.peers.iter().map(|peer| format!("{}={}", peer.id, peer.raft_addr)).collect::<Vec<_>>(),
        data_dir = %data_dir.root().display(),
        worker_threads = config.worker_threads(),
        open_file_limit = file_limit,
        connections_max = config.connections_max,
        version = env!("CARGO_PKG_VERSION"),
        "kvstore-server started; client, raft and metrics ports listening"
    );
}

/// The ports being served.
pub(super) struct Serving {
    /// The client and raft gRPC ports; completes once both stopped.
    pub grpc: std::pin::Pin<Box<dyn Future<Output = ()>>>,
    /// The HTTP port's task.
    pub http: JoinHandle<Result<(), std::io::Error>>,
}

/// Serves the client, raft and HTTP ports of `node` until `stopped` turns
/// true, then finishes in-flight requests. Takes the node's parts the
/// services hold, so that they are dropped when the services are.
pub(super) async fn serve(
    config: &ServerConfig,
    listeners: Listeners,
    assembled: Assembled,
    stopped: watch::Receiver<bool>,
) -> Serving {
    let port_limits = |port, connections_max| PortLimits {
        port,
        connections_max,
        handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
        idle_timeout: Duration::from_millis(config.idle_timeout_ms),
    };
    let http2 = Http2Settings {
        concurrent_streams_max: limits::CONCURRENT_STREAMS_MAX,
    };
    let Assembled {
        membership,
        node,
        peers,
        inbound,
        request_limits,
        snapshots,
    } = assembled;

    let http_state = HttpState::new(node.clone(), peers, config.peer_metrics_addrs.clone());
    let http = tokio::spawn(http::serve(
        CappedListener::http(
            listeners.metrics.0,
            port_limits("metrics", config.http_connections_max),
        ),
        http_state,
        stop_signal(stopped.clone(), "metrics"),
    ));

    start_watch_tasks(config, &node, stopped.clone());
    let kv_service = KvService::new(node.clone(), request_limits);
    let client_routes = routes_listing(&[KV_SERVICE_NAME, WATCH_SERVICE_NAME, LEASE_SERVICE_NAME])
        .await
        .add_service(kv_service.clone().into_server())
        .add_service(LeaseService::new(kv_service, stopped.clone()).into_server())
        .add_service(WatchService::new(node.clone(), request_limits).into_server());
    let client_server = connections::serve_grpc(
        CappedListener::grpc(
            listeners.client.0,
            port_limits("client", config.connections_max),
        ),
        client_routes,
        http2,
        stop_signal(stopped.clone(), "client"),
    );

    // The last node handle moves into the raft service: once the servers
    // are dropped, no handle keeps the store thread alive.
    let raft_routes = routes_listing(&[RAFT_SERVICE_NAME]).await.add_service(
        RaftService::new(
            membership,
            inbound,
            Arc::new(node),
            snapshots,
            stopped.clone(),
        )
        .into_server(),
    );
    let raft_server = connections::serve_grpc(
        CappedListener::grpc(
            listeners.raft.0,
            port_limits("raft", limits::RAFT_CONNECTIONS_MAX),
        ),
        raft_routes,
        http2,
        stop_signal(stopped, "raft"),
    );
    Serving {
        grpc: Box::pin(async move {
            tokio::join!(client_server, raft_server);
        }),
        http,
    }
}

/// The watch hub's tasks: catch-up from the history and progress
/// notifications; once the node stops, every watch stream ends (so the
/// servers' graceful shutdown does not wait for them).
fn start_watch_tasks(config: &ServerConfig, node: &Node, stopped: watch::Receiver<bool>) {
    let hub = node.watch_hub().clone();
    tokio::spawn(catchup::run_catchup(
        hub.clone(),
        node.store().clone(),
        stopped.clone(),
    ));
    tokio::spawn(catchup::run_progress(
        hub.clone(),
        Duration::from_millis(config.watch_progress_notify_interval_ms),
        stopped.clone(),
    ));
    let mut stopped = stopped;
    tokio::spawn(async move {
        let _ = stopped.wait_for(|stop| *stop).await;
        hub.close();
    });
}

/// The routes of a gRPC port serving `service_names` (added by the
/// caller): the health service, reporting them serving, and reflection
/// listing exactly what the port serves.
async fn routes_listing(service_names: &[&'static str]) -> tonic::service::Routes {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    for service_name in service_names {
        health_reporter
            .set_service_status(*service_name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let (reflection_v1, reflection_v1alpha) = reflection_services(service_names);
    tonic::service::Routes::new(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
}

/// Completes when `stopped` turns true, saying so for `port`.
async fn stop_signal(mut stopped: watch::Receiver<bool>, port: &'static str) {
    let _ = stopped.wait_for(|stop| *stop).await;
    tracing::info!(
        port,
        "shutting down: no new requests, finishing in-flight ones"
    );
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
