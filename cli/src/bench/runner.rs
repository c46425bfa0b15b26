//! The client tasks: the prefill and the measured run. Every loop ends at a
//! count and at a deadline, and every request at `--timeout`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;

use crate::bench::api::Connection;
use crate::bench::keys;
use crate::bench::plan::Plan;
use crate::bench::summary::{StopReason, Tally};
use crate::client::{grpc_code_name, Failure};

/// How long a client waits after an `UNAVAILABLE` answer (the node is down
/// or cannot serve yet) before its next request, the first time; each
/// further one in a row doubles it, up to [`UNAVAILABLE_BACKOFF_MAX`]. A
/// node that went down is then not sent tens of thousands of requests a
/// second by every client, and the count of requests is not used up on it.
pub const UNAVAILABLE_BACKOFF_FIRST: Duration = Duration::from_millis(1);
/// The longest wait after an `UNAVAILABLE` answer.
pub const UNAVAILABLE_BACKOFF_MAX: Duration = Duration::from_millis(100);

/// One client's wait after `UNAVAILABLE` answers.
#[derive(Debug, Default)]
struct Backoff {
    /// The wait after the last answer (zero after a success or another error).
    last: Duration,
}

impl Backoff {
    /// Records how a request ended (`failed`: its error code, if any);
    /// after `UNAVAILABLE`, waits (never past `deadline`).
    async fn after(&mut self, failed: Option<tonic::Code>, deadline: Instant) {
        match failed {
            Some(tonic::Code::Unavailable) => {
                self.last = if self.last.is_zero() {
                    UNAVAILABLE_BACKOFF_FIRST
                } else {
                    (self.last * 2).min(UNAVAILABLE_BACKOFF_MAX)
                };
                tokio::time::sleep_until((Instant::now() + self.last).min(deadline).into()).await;
            }
            _ => self.last = Duration::ZERO,
        }
    }
}

/// Counters the clients share.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests (or prefill keys) handed out; a client takes the next with
    /// `fetch_add` and stops past the limit.
    issued: AtomicU64,
    /// Requests answered (with success or an error), for the progress bar.
    pub completed: Arc<AtomicU64>,
}

/// The RNG of client `client`: a distinct stream per client from one seed.
fn client_random(seed: u64, client: usize) -> StdRng {
    StdRng::seed_from_u64(
        seed.wrapping_add(client as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15),
    )
}

/// Waits for every client task; a panicked task is a bug and fails the run.
async fn join_all<T: 'static>(mut tasks: JoinSet<T>) -> Result<Vec<T>, Failure> {
    let mut results = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        results.push(joined.map_err(|error| Failure(format!("a bench client failed: {error}")))?);
    }
    Ok(results)
}

/// The client that client task `client` uses.
fn client_of(plan: &Plan, connections: &[Connection], client: usize) -> Connection {
    connections[plan.connection_of_client(client)].clone()
}

/// Writes every key of the keyspace once, shared among the clients. Returns
/// the tally (latencies are not reported) and whether the deadline cut it short.
pub async fn prefill(
    plan: &Arc<Plan>,
    connections: &[Connection],
    counters: &Arc<Counters>,
    duration_max: Duration,
) -> Result<(Tally, bool), Failure> {
    let deadline = Instant::now() + duration_max;
    let mut tasks = JoinSet::new();
    for client in 0..plan.clients {
        let mut connection = client_of(plan, connections, client);
        let plan = Arc::clone(plan);
        let counters = Arc::clone(counters);
        let mut random = client_random(plan.seed, client);
        tasks.spawn(async move {
            let mut tally = Tally::default();
            let mut backoff = Backoff::default();
            while Instant::now() < deadline {
                let index = counters.issued.fetch_add(1, Ordering::Relaxed);
                if index >= plan.keyspace {
                    break;
                }
                let key = keys::key(index, plan.key_size_bytes);
                let value = keys::random_value(&mut random, plan.value_size_bytes);
                let started = Instant::now();
                let answer = connection.put(key, value).await;
                match &answer {
                    Ok(_) => tally.record_success(started.elapsed()),
                    Err(status) => tally.record_error(grpc_code_name(status.code())),
                }
                tally.writes += 1;
                counters.completed.fetch_add(1, Ordering::Relaxed);
                backoff
                    .after(answer.err().map(|status| status.code()), deadline)
                    .await;
            }
            tally
        });
    }
    let mut total = Tally::default();
    for tally in join_all(tasks).await? {
        total.merge(&tally);
    }
    let cut_short = total.operations < plan.keyspace;
    Ok((total, cut_short))
}

/// The measured run: each client sends requests one after another until
/// `plan.operations_max` were handed out or `plan.duration_max` passed.
/// Returns the merged tally, the elapsed time and why it stopped.
pub async fn measure(
    plan: &Arc<Plan>,
    connections: &[Connection],
    counters: &Arc<Counters>,
) -> Result<(Tally, Duration, StopReason), Failure> {
    let started = Instant::now();
    let deadline = started + plan.duration_max;
    let mut tasks = JoinSet::new();
    for client in 0..plan.clients {
        let mut connection = client_of(plan, connections, client);
        let plan = Arc::clone(plan);
        let counters = Arc::clone(counters);
        let mut random = client_random(plan.seed, client);
        tasks.spawn(async move {
            let mut tally = Tally::default();
            let mut backoff = Backoff::default();
            while Instant::now() < deadline {
                if counters.issued.fetch_add(1, Ordering::Relaxed) >= plan.operations_max {
                    break;
                }
                let key = keys::key(random.random_range(0..plan.keyspace), plan.key_size_bytes);
                let read = plan.read_ratio > 0.0 && random.random_bool(plan.read_ratio);
                let failed = if read {
                    let request_started = Instant::now();
                    let answer = connection.get(key, plan.consistency).await;
                    let latency = request_started.elapsed();
                    match &answer {
                        Ok(found) => {
                            tally.record_success(latency);
                            if !found {
                                tally.reads_not_found += 1;
                            }
                        }
                        Err(status) => tally.record_error(grpc_code_name(status.code())),
                    }
                    tally.reads += 1;
                    answer.err().map(|status| status.code())
                } else {
                    let value = keys::random_value(&mut random, plan.value_size_bytes);
                    let request_started = Instant::now();
                    let answer = connection.put(key, value).await;
                    let latency = request_started.elapsed();
                    match &answer {
                        Ok(_) => tally.record_success(latency),
                        Err(status) => tally.record_error(grpc_code_name(status.code())),
                    }
                    tally.writes += 1;
                    answer.err().map(|status| status.code())
                };
                counters.completed.fetch_add(1, Ordering::Relaxed);
                backoff.after(failed, deadline).await;
            }
            tally
        });
    }
    let tallies = join_all(tasks).await?;
    let elapsed = started.elapsed();
    let mut total = Tally::default();
    for tally in &tallies {
        total.merge(tally);
    }
    let stop_reason = if total.operations >= plan.operations_max {
        StopReason::OperationsReached
    } else {
        StopReason::DurationReached
    };
    Ok((total, elapsed, stop_reason))
}
