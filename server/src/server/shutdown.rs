//! The last step: a graceful stop, in order. In-flight requests finish (up
//! to a grace period) and the ports close, dropping every `Node` handle;
//! then the driver stops (its WAL writer last), then the store thread
//! closes LevelDB once the last store handle is gone.

use std::time::Duration;

use tokio::sync::watch;

use super::ports::Serving;
use crate::limits;
use crate::storage::actor::StoreThread;

/// The running parts, in the order they stop.
pub(super) struct Running {
    /// The ports.
    pub serving: Serving,
    /// Turns true to stop the driver.
    pub driver_stop: watch::Sender<bool>,
    /// The driver's task.
    pub driver_task: tokio::task::JoinHandle<()>,
    /// The store thread.
    pub store_thread: StoreThread,
}

/// Waits for the ports to stop once `stopped` turned true (cutting them
/// off after the grace period), then stops the driver and the store.
pub(super) async fn stop_in_order(running: Running, mut stopped: watch::Receiver<bool>) {
    let Running {
        serving,
        driver_stop,
        driver_task,
        store_thread,
    } = running;
    let mut grpc = serving.grpc;
    tokio::select! {
        () = &mut grpc => {}
        _ = async {
            let _ = stopped.wait_for(|stop| *stop).await;
            tokio::time::sleep(Duration::from_millis(limits::SHUTDOWN_GRACE_MS)).await;
        } => {
            tracing::warn!(grace_ms = limits::SHUTDOWN_GRACE_MS, "in-flight requests did not finish in time; stopping anyway");
        }
    }
    // The servers are done (their services and node handles dropped); now the
    // driver, then the store thread closes the database once the last handle
    // is gone.
    drop(grpc);
    // The HTTP server holds a node handle too; it finishes its open requests
    // (they are quick) or is cut off after the grace period.
    let http_task = serving.http;
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
}
