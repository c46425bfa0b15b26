//! Starts a node and stops it gracefully. [`run`] is the whole sequence,
//! one named step per line; each step lives in its module:
//! [`recovery`] (data directory, WAL, state machine, Raft core),
//! [`wiring`] (the node's parts), [`ports`] (bind and serve), and
//! [`shutdown`] (the stop, in order).

mod ports;
mod recovery;
mod shutdown;
mod wiring;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Instant;

use kvstore_wal::WalError;
use tokio::sync::watch;

use crate::config::ServerConfig;
use crate::data_dir::DataDirError;
use crate::logging;
use crate::node::driver::{Driver, DriverParts};
use crate::snapshot::SnapshotError;
use crate::storage::StoreError;
use crate::storage_health;

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

/// Runs the node until `shutdown` completes, then stops gracefully: in-flight
/// requests finish (up to a grace period), the Raft driver stops, and the
/// store is closed cleanly.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate().map_err(ServerError::Config)?;
    logging::set_node_id(config.id);
    let file_limit = ports::reserve_file_descriptors(&config)?;
    let started = Instant::now();
    let (data_dir, identity_stored) = recovery::open_data_dir(&config)?;
    let mut log = recovery::recover_log(&config, &data_dir, identity_stored).await?;
    let state_machine = recovery::open_state_machine(&config, &data_dir, &log).await?;
    let core = recovery::build_core(&config, &mut log, state_machine.applied, started)?;
    let storage_health =
        storage_health::watch(data_dir.root().to_path_buf(), config.min_free_bytes);
    let (assembled, driver_parts) =
        wiring::assemble(&config, log, &state_machine, core, storage_health)?;
    // The services hold the store through the node from here on: the store
    // thread stops once they and the driver are gone.
    let store_thread = state_machine.into_thread();
    let listeners = ports::bind_all(&config).await?;
    ports::log_started(&config, &listeners, &data_dir, file_limit);
    let (driver_stop, driver_task) = spawn_driver(driver_parts);
    let (server_stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = server_stop.send(true);
    });
    let serving = ports::serve(&config, listeners, assembled, stopped.clone()).await;
    let running = shutdown::Running {
        serving,
        driver_stop,
        driver_task,
        store_thread,
    };
    shutdown::stop_in_order(running, stopped).await;
    drop(data_dir);
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Starts the driver once every port listens. A panic in it is a broken
/// invariant: the process stops (as etcd does) rather than serve on
/// without Raft progress.
fn spawn_driver(parts: DriverParts) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (driver_stop, driver_stopped) = watch::channel(false);
    let driver = Driver::new(parts);
    let task = tokio::spawn(async move {
        use futures::FutureExt;
        if std::panic::AssertUnwindSafe(driver.run(driver_stopped))
            .catch_unwind()
            .await
            .is_err()
        {
            crate::fatal::stop("the raft driver panicked", "see the panic above");
        }
    });
    (driver_stop, task)
}

/// Runs `task` on the blocking pool.
async fn blocking<T: Send + 'static>(task: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(task)
        .await
        .expect("a start-up task panicked")
}
