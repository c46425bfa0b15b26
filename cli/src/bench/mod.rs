//! `kvstore-cli bench put|get|mixed`: concurrent clients over a few gRPC
//! connections, latency in an HDR histogram, a short table or JSON at the end.
//!
//! A benchmark, not a test: nothing here asserts a speed.

pub mod api;
pub mod keepalive;
pub mod keys;
pub mod plan;
pub mod progress;
pub mod runner;
pub mod summary;
pub mod transport;
pub mod watch;
pub mod watch_decode;

use std::sync::Arc;

use crate::args::{BenchArgs, Cli, OutputFormat, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::client::Failure;
use api::Connection;
use plan::{Bound, Plan, PREFILL_DURATION_MAX};
use progress::{Progress, Scale};
use runner::Counters;
use summary::Summary;

/// Runs `bench` and prints its summary; the exit code is 3 when no request
/// succeeded.
pub async fn run(cli: &Cli, arguments: &BenchArgs) -> Result<u8, Failure> {
    let plan = match Plan::new(arguments, &cli.endpoints) {
        Ok(plan) => Arc::new(plan),
        Err(error) => {
            eprintln!("kvstore-cli: bench: {error}");
            return Ok(EXIT_USAGE);
        }
    };
    for warning in &plan.warnings {
        eprintln!("kvstore-cli: bench: warning: {warning}");
    }

    let mut connections = Vec::with_capacity(plan.connections);
    for endpoint in &plan.connection_endpoints {
        connections.push(Connection::open(plan.protocol, endpoint, cli.timeout).await?);
    }
    if cli.verbose {
        eprintln!(
            "bench {}: {} clients over {} connections to {}",
            plan.workload.name(),
            plan.clients,
            plan.connections,
            plan.endpoints_used().join(",")
        );
    }

    if plan.prefill {
        let counters = Arc::new(Counters::default());
        let progress = Progress::start(
            "prefill",
            Scale::Operations(plan.keyspace),
            Arc::clone(&counters.completed),
            plan.progress_hidden,
        );
        let (tally, cut_short) =
            runner::prefill(&plan, &connections, &counters, PREFILL_DURATION_MAX).await?;
        drop(progress);
        if cut_short {
            return Err(Failure(format!(
                "bench: the prefill wrote {} of {} keys within {} s; use a smaller --keyspace or --no-prefill",
                tally.operations,
                plan.keyspace,
                PREFILL_DURATION_MAX.as_secs()
            )));
        }
        if tally.succeeded() == 0 {
            return Err(Failure(format!(
                "bench: every prefill write failed: {:?}",
                tally.errors_by_code
            )));
        }
        if tally.errors() > 0 {
            eprintln!(
                "kvstore-cli: bench: warning: {} of {} prefill writes failed: {:?}",
                tally.errors(),
                plan.keyspace,
                tally.errors_by_code
            );
        }
        if cli.verbose {
            eprintln!("bench prefill: wrote {} keys", tally.succeeded());
        }
    }

    let watchers = match plan.watch {
        Some(watch) if !watch.history => {
            Some(watch::Watchers::start(&plan, watch, cli.timeout).await?)
        }
        _ => None,
    };
    let writes_started = std::time::Instant::now();
    let counters = Arc::new(Counters::default());
    let scale = match plan.bound {
        Bound::Operations => Scale::Operations(plan.operations_max),
        Bound::Time => Scale::Time(plan.duration_max),
    };
    let progress = Progress::start(
        plan.workload.name(),
        scale,
        Arc::clone(&counters.completed),
        plan.progress_hidden,
    );
    let (tally, elapsed, stop_reason) = runner::measure(&plan, &connections, &counters).await?;
    drop(progress);

    let watched = match (watchers, plan.watch) {
        (Some(watchers), _) => Some(
            watchers
                .finish(tally.succeeded(), plan.keyspace, writes_started)
                .await,
        ),
        // From the history: the watches start once the writes are done.
        (None, Some(watch)) => {
            let created = std::time::Instant::now();
            let watchers = watch::Watchers::start(&plan, watch, cli.timeout).await?;
            Some(
                watchers
                    .finish(tally.succeeded(), plan.keyspace, created)
                    .await,
            )
        }
        (None, None) => None,
    };
    let summary = Summary {
        plan: Plan::clone(&plan),
        tally,
        elapsed,
        stop_reason,
    };
    match cli.write_out {
        OutputFormat::Json => {
            let mut json = summary.json();
            if let Some(watched) = &watched {
                json["watch"] = watched.json();
            }
            crate::print_json(&json)?
        }
        OutputFormat::Text | OutputFormat::Table => {
            let mut text = summary.text();
            if let Some(watched) = &watched {
                text += &watched.text();
            }
            crate::write_stdout(text.as_bytes())?
        }
    }
    if watched
        .as_ref()
        .is_some_and(watch::WatchSummary::lost_events)
    {
        eprintln!("kvstore-cli: bench: some events never arrived (see the events line)");
        return Ok(EXIT_FAILED);
    }
    if summary.every_request_failed() {
        eprintln!(
            "kvstore-cli: bench: every one of the {} requests failed",
            summary.tally.operations
        );
        return Ok(EXIT_FAILED);
    }
    Ok(EXIT_OK)
}
