//! The client tasks: the prefill and the measured run. Every loop ends at a
//! count and at a deadline, and every request at `--timeout`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tonic::{Code, Status};

use crate::args::Workload;
use crate::bench::api::Connection;
use crate::bench::keepalive::KeepAlive;
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
    async fn after(&mut self, failed: Option<Code>, deadline: Instant) {
        match failed {
            Some(Code::Unavailable) => {
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

/// The tallies of every client, merged.
fn merged(tallies: &[Tally]) -> Tally {
    let mut total = Tally::default();
    for tally in tallies {
        total.merge(tally);
    }
    total
}

/// How long a keepalive client may take to connect, grant its lease and
/// open its stream.
const KEEP_ALIVE_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts the answer to a request sent at `started`; returns its error code
/// if it failed.
fn record<T>(tally: &mut Tally, started: Instant, answer: &Result<T, Status>) -> Option<Code> {
    match answer {
        Ok(_) => {
            tally.record_success(started.elapsed());
            None
        }
        Err(status) => {
            tally.record_error(grpc_code_name(status.code()));
            Some(status.code())
        }
    }
}

/// The phase a client task runs: which request each number it takes stands for.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Request `index` writes key number `index`.
    Prefill,
    /// Each request reads or writes a random key of the keyspace.
    Measure,
}

/// One client task: its connection, its random stream and what it counted.
struct Client {
    plan: Arc<Plan>,
    connection: Connection,
    random: StdRng,
    tally: Tally,
    /// keepalive: the client's endpoint, and its lease stream once open.
    endpoint: String,
    keep_alive: Option<KeepAlive>,
}

impl Client {
    /// Takes the next request number until `limit` were handed out (among
    /// all clients) or `deadline` passed; sends the request of `phase`,
    /// counts it, and after `UNAVAILABLE` backs off. Returns the tally.
    async fn run(
        mut self,
        phase: Phase,
        counters: Arc<Counters>,
        limit: u64,
        deadline: Instant,
    ) -> Tally {
        let mut backoff = Backoff::default();
        while Instant::now() < deadline {
            let index = counters.issued.fetch_add(1, Ordering::Relaxed);
            if index >= limit {
                break;
            }
            let failed = match phase {
                Phase::Prefill => self.prefill(index).await,
                Phase::Measure => self.measure().await,
            };
            counters.completed.fetch_add(1, Ordering::Relaxed);
            backoff.after(failed, deadline).await;
        }
        self.tally
    }

    /// Writes key number `index` with a random value.
    async fn prefill(&mut self, index: u64) -> Option<Code> {
        let key = keys::key(index, self.plan.key_size_bytes);
        let value = keys::random_value(&mut self.random, self.plan.value_size_bytes);
        self.put(key, value).await
    }

    /// Reads (with probability `read_ratio`) or writes a random key; or,
    /// for `txn` and `range`, one compare-and-swap or one range.
    async fn measure(&mut self) -> Option<Code> {
        let plan = &self.plan;
        match plan.workload {
            Workload::Txn => {
                let key = keys::key(
                    self.random.random_range(0..plan.keyspace),
                    plan.key_size_bytes,
                );
                let value = keys::random_value(&mut self.random, plan.value_size_bytes);
                let started = Instant::now();
                let answer = self.connection.cas(key, value).await;
                let failed = record(&mut self.tally, started, &answer);
                self.tally.writes += 1;
                return failed;
            }
            Workload::Range => {
                let first = self.random.random_range(0..plan.keyspace - plan.range_keys);
                let key = keys::key(first, plan.key_size_bytes);
                let end = keys::key(first + plan.range_keys, plan.key_size_bytes);
                let started = Instant::now();
                let answer = self.connection.range(key, end, plan.consistency).await;
                let failed = record(&mut self.tally, started, &answer);
                self.tally.reads += 1;
                if let Ok(0) = answer {
                    self.tally.reads_not_found += 1;
                }
                return failed;
            }
            Workload::Keepalive => {
                if self.keep_alive.is_none() {
                    // Its lease and stream, before the first measured renewal.
                    let opened =
                        KeepAlive::open(plan.protocol, &self.endpoint, KEEP_ALIVE_OPEN_TIMEOUT)
                            .await;
                    match opened {
                        Ok(opened) => self.keep_alive = Some(opened),
                        Err(status) => {
                            self.tally.record_error(grpc_code_name(status.code()));
                            return Some(status.code());
                        }
                    }
                }
                let keep_alive = self.keep_alive.as_mut().expect("opened above");
                let started = Instant::now();
                let answer = keep_alive.renew().await;
                if answer.is_err() {
                    // A fresh lease and stream next time.
                    self.keep_alive = None;
                }
                let failed = record(&mut self.tally, started, &answer);
                self.tally.writes += 1;
                return failed;
            }
            Workload::Put | Workload::Get | Workload::Mixed | Workload::Watch => {}
        }
        let key = keys::key(
            self.random.random_range(0..plan.keyspace),
            plan.key_size_bytes,
        );
        let read = plan.read_ratio > 0.0 && self.random.random_bool(plan.read_ratio);
        if read {
            let started = Instant::now();
            let answer = self.connection.get(key, plan.consistency).await;
            let failed = record(&mut self.tally, started, &answer);
            self.tally.reads += 1;
            if let Ok(false) = answer {
                self.tally.reads_not_found += 1;
            }
            failed
        } else {
            let mut value = keys::random_value(&mut self.random, plan.value_size_bytes);
            if plan.workload == Workload::Watch {
                crate::bench::watch::stamp(&mut value);
            }
            self.put(key, value).await
        }
    }

    /// Writes `value` at `key` and counts the write.
    async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Option<Code> {
        let started = Instant::now();
        let answer = self.connection.put(key, value).await;
        let failed = record(&mut self.tally, started, &answer);
        self.tally.writes += 1;
        failed
    }
}

/// Runs `plan.clients` client tasks of `phase` (see [`Client::run`]) and
/// returns their tallies once all have ended.
async fn run_clients(
    plan: &Arc<Plan>,
    connections: &[Connection],
    counters: &Arc<Counters>,
    phase: Phase,
    limit: u64,
    deadline: Instant,
) -> Result<Vec<Tally>, Failure> {
    let mut tasks = JoinSet::new();
    for client in 0..plan.clients {
        let task = Client {
            plan: Arc::clone(plan),
            connection: client_of(plan, connections, client),
            random: client_random(plan.seed, client),
            tally: Tally::default(),
            endpoint: plan.connection_endpoints[client % plan.connection_endpoints.len()].clone(),
            keep_alive: None,
        };
        tasks.spawn(task.run(phase, Arc::clone(counters), limit, deadline));
    }
    join_all(tasks).await
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
    let tallies = run_clients(
        plan,
        connections,
        counters,
        Phase::Prefill,
        plan.keyspace,
        deadline,
    )
    .await?;
    let total = merged(&tallies);
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
    let tallies = run_clients(
        plan,
        connections,
        counters,
        Phase::Measure,
        plan.operations_max,
        deadline,
    )
    .await?;
    let elapsed = started.elapsed();
    let total = merged(&tallies);
    let stop_reason = if total.operations >= plan.operations_max {
        StopReason::OperationsReached
    } else {
        StopReason::DurationReached
    };
    Ok((total, elapsed, stop_reason))
}
