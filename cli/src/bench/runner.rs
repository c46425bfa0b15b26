//! The client tasks: the prefill and the measured run. Every loop ends at a
//! count and at a deadline, and every request at `--timeout`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvstore_proto::kv::v1::kv_client::KvClient;
use kvstore_proto::kv::v1::{Consistency, GetRequest, PutRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::args;
use crate::bench::keys;
use crate::bench::plan::Plan;
use crate::bench::summary::{StopReason, Tally};
use crate::client::{grpc_code_name, Failure};

/// Counters the clients share.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests (or prefill keys) handed out; a client takes the next with
    /// `fetch_add` and stops past the limit.
    issued: AtomicU64,
    /// Requests answered (with success or an error), for the progress bar.
    pub completed: Arc<AtomicU64>,
}

fn wire_consistency(consistency: args::Consistency) -> Consistency {
    match consistency {
        args::Consistency::Linearizable => Consistency::Linearizable,
        args::Consistency::Serializable => Consistency::Serializable,
    }
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
fn client_of(plan: &Plan, connections: &[KvClient<Channel>], client: usize) -> KvClient<Channel> {
    connections[plan.connection_of_client(client)].clone()
}

/// Writes every key of the keyspace once, shared among the clients. Returns
/// the tally (latencies are not reported) and whether the deadline cut it short.
pub async fn prefill(
    plan: &Arc<Plan>,
    connections: &[KvClient<Channel>],
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
            while Instant::now() < deadline {
                let index = counters.issued.fetch_add(1, Ordering::Relaxed);
                if index >= plan.keyspace {
                    break;
                }
                let request = PutRequest {
                    key: keys::key(index, plan.key_size_bytes),
                    value: keys::random_value(&mut random, plan.value_size_bytes),
                };
                let started = Instant::now();
                match connection.put(request).await {
                    Ok(_) => tally.record_success(started.elapsed()),
                    Err(status) => tally.record_error(grpc_code_name(status.code())),
                }
                tally.writes += 1;
                counters.completed.fetch_add(1, Ordering::Relaxed);
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
    connections: &[KvClient<Channel>],
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
        let consistency = wire_consistency(plan.consistency) as i32;
        tasks.spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                if counters.issued.fetch_add(1, Ordering::Relaxed) >= plan.operations_max {
                    break;
                }
                let key = keys::key(random.random_range(0..plan.keyspace), plan.key_size_bytes);
                let read = plan.read_ratio > 0.0 && random.random_bool(plan.read_ratio);
                if read {
                    let request = GetRequest { key, consistency };
                    let request_started = Instant::now();
                    let answer = connection.get(request).await;
                    let latency = request_started.elapsed();
                    match answer {
                        Ok(response) => {
                            tally.record_success(latency);
                            if !response.get_ref().found {
                                tally.reads_not_found += 1;
                            }
                        }
                        Err(status) => tally.record_error(grpc_code_name(status.code())),
                    }
                    tally.reads += 1;
                } else {
                    let request = PutRequest {
                        key,
                        value: keys::random_value(&mut random, plan.value_size_bytes),
                    };
                    let request_started = Instant::now();
                    let answer = connection.put(request).await;
                    let latency = request_started.elapsed();
                    match answer {
                        Ok(_) => tally.record_success(latency),
                        Err(status) => tally.record_error(grpc_code_name(status.code())),
                    }
                    tally.writes += 1;
                }
                counters.completed.fetch_add(1, Ordering::Relaxed);
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
