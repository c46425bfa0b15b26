//! Starts a node: opens its data directory and store, serves its gRPC ports,
//! and shuts down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::ServerConfig;
use crate::data_dir::{DataDir, DataDirError};
use crate::limits;
use crate::node::Node;
use crate::service::{KvService, RequestLimits, KV_SERVICE_NAME};
use crate::storage::leveldb::{Durability, LevelDbStore};
use crate::storage::{actor, StoreError};

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
    /// The gRPC server failed.
    #[error("gRPC server error: {0}")]
    Transport(#[from] tonic::transport::Error),
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

/// Runs the node until `shutdown` completes, then stops gracefully: in-flight
/// requests finish (up to a grace period) and the store is closed cleanly.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate().map_err(ServerError::Config)?;
    let data_dir = DataDir::open(&config.data_dir)?;
    let store = LevelDbStore::open(&data_dir.kv_directory(), Durability::Fsync)?;
    let (store_handle, store_thread) = actor::spawn(store, |store: LevelDbStore| {
        if let Err(error) = store.close() {
            tracing::error!(%error, "closing the store failed");
        }
    });
    let node = Node::new(config.id, store_handle);
    let request_limits = RequestLimits {
        key_bytes_max: config.max_key_bytes,
        value_bytes_max: config.max_value_bytes,
    };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<kvstore_proto::kv::v1::kv_server::KvServer<KvService>>()
        .await;
    let (reflection_v1, reflection_v1alpha) = reflection_services(&[KV_SERVICE_NAME]);

    let (client_listener, client_addr) = bind(config.client_addr).await?;
    tracing::info!(
        node_id = config.id,
        %client_addr,
        data_dir = %data_dir.root().display(),
        version = env!("CARGO_PKG_VERSION"),
        "kvstore-server started; client API listening"
    );

    let (stop_sender, stop_receiver) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_sender.send(true);
    });
    let mut stopped = stop_receiver.clone();
    let mut server = Box::pin(
        tonic::transport::Server::builder()
            .max_concurrent_streams(Some(limits::CONCURRENT_STREAMS_MAX))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(KvService::new(node, request_limits).into_server())
            .serve_with_incoming_shutdown(TcpListenerStream::new(client_listener), async move {
                let _ = stopped.wait_for(|stop| *stop).await;
                tracing::info!("shutting down: no new requests, finishing in-flight ones");
            }),
    );

    let mut stopped = stop_receiver;
    let result = tokio::select! {
        result = &mut server => result,
        _ = async {
            let _ = stopped.wait_for(|stop| *stop).await;
            tokio::time::sleep(Duration::from_millis(limits::SHUTDOWN_GRACE_MS)).await;
        } => {
            tracing::warn!(grace_ms = limits::SHUTDOWN_GRACE_MS, "in-flight requests did not finish in time; stopping anyway");
            Ok(())
        }
    };
    // Dropping the server drops the last store handles; the store thread then closes the database.
    drop(server);
    tokio::task::spawn_blocking(move || store_thread.join())
        .await
        .expect("joining the store thread");
    drop(data_dir);
    tracing::info!("stopped cleanly");
    result.map_err(ServerError::from)
}
