//! The `kvstore-server` binary: flags, logging, signals; the work is in the library.

use clap::Parser;
use kvstore_server::config::ServerConfig;

/// mimalloc instead of glibc malloc: under load malloc/free took a large
/// share of the leader's CPU (gRPC buffers, protobuf messages, log entries).
/// Built with `no_thp`: mimalloc does not ask for transparent huge pages,
/// whose faults zeroed 2 MiB at a time under mimalloc's free-list refills
/// (measurements: docs/benchmarks.md, "The server's allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = interrupt => tracing::info!(signal = "SIGINT", "signal received"),
            _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

fn main() -> std::process::ExitCode {
    let mut config = ServerConfig::parse();
    if let Err(message) = kvstore_server::logging::init(config.log_format, &config.log_level) {
        eprintln!("kvstore-server: {message}");
        return std::process::ExitCode::from(2);
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // One worker fewer than the cores (see `--worker-threads`): with a
    // worker on every core, each task woken by another task also woke an
    // idle worker, which took the task to the other core or went back to
    // sleep, while the WAL and store threads waited for a core: a put cost
    // the leader's workers many more context switches (measurements:
    // docs/benchmarks.md, "One worker thread per server").
    // Resolved once: the start line logs the count the runtime got.
    let worker_threads = config.worker_threads();
    config.worker_threads = Some(worker_threads as u64);
    builder.worker_threads(worker_threads);
    builder.enable_all();
    // Without the LIFO slot, a task woken by the running task waits its turn
    // instead of running right after it. Each gRPC call is a task of its
    // own that wakes its connection's task to send the answer: with the
    // slot, the connection ran after every call and wrote every answer with
    // a syscall of its own; without it, the answers of one applied batch
    // leave together, in fewer writes per put (measurements:
    // docs/benchmarks.md, "The runtime without tokio's LIFO slot"). The
    // method is behind tokio's `tokio_unstable` cfg, which
    // .cargo/config.toml sets; a build with its own RUSTFLAGS keeps the
    // slot and works the same, a little slower.
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kvstore-server: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(kvstore_server::server::run(config, shutdown_signal())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kvstore-server: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
