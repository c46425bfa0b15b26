//! Work that runs while the steps go on: workloads and the nemesis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::harness::Harness;
use crate::client::{Recorder, Request};
use crate::history::OpStatus;
use crate::scenario::{NemesisFault, NemesisStep, WorkloadStep};

/// Runs a workload: `clients` concurrent clients, each issuing random
/// operations back to back until the duration or its operation cap is
/// reached. Returns a one-line report.
pub(super) async fn workload(
    harness: Harness,
    args: WorkloadStep,
    targets: Option<Vec<u64>>,
    seed: u64,
) -> Result<String> {
    let deadline = Instant::now() + args.duration.0;
    // A JoinSet: when the workload task is aborted, its clients are too.
    let mut clients = tokio::task::JoinSet::new();
    for index in 0..args.clients {
        let harness = harness.clone();
        let args = args.clone();
        let targets = targets.clone();
        clients.spawn(async move {
            let mut rng =
                SmallRng::seed_from_u64(seed ^ hash(&args.name) ^ (u64::from(index) << 32));
            let recorder = harness.client.recorder().clone();
            let client_name = format!("{} client {index}", args.name);
            let mut process = recorder.new_process();
            let total = args.mix.put + args.mix.get + args.mix.delete;
            let mut counts = [0usize; 3];
            for sequence in 0..args.max_ops {
                if Instant::now() >= deadline {
                    break;
                }
                let key = format!("{}-k{}", args.name, rng.random_range(0..args.keys.max(1)));
                let roll = rng.random_range(0..total.max(1));
                let request = if roll < args.mix.put {
                    Request::Put {
                        key,
                        value: format!("{}-c{index}-{sequence}", args.name),
                    }
                } else if roll < args.mix.put + args.mix.get {
                    Request::Get {
                        key,
                        consistency: args.consistency,
                    }
                } else {
                    Request::Delete { key }
                };
                let nodes = targets.clone().unwrap_or_else(|| harness.cluster.ids());
                let node = nodes[rng.random_range(0..nodes.len())];
                let operation = harness
                    .client
                    .execute(&client_name, process, node, &request)
                    .await;
                match operation.status {
                    OpStatus::Ok => counts[0] += 1,
                    OpStatus::Failed => {
                        counts[1] += 1;
                        // Do not hammer a node that is down.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    OpStatus::Unknown => {
                        counts[2] += 1;
                        // Its operation may still be pending: continue as a new process.
                        process = recorder.new_process();
                    }
                }
            }
            counts
        });
    }
    let mut totals = [0usize; 3];
    while let Some(result) = clients.join_next().await {
        let counts = result.map_err(|error| anyhow!("a workload client crashed: {error}"))?;
        for (total, count) in totals.iter_mut().zip(counts) {
            *total += count;
        }
    }
    if totals[0] == 0 {
        bail!(
            "workload {}: no operation was acknowledged ({} failed, {} unknown)",
            args.name,
            totals[1],
            totals[2]
        );
    }
    Ok(format!(
        "{} ok, {} failed, {} unknown",
        totals[0], totals[1], totals[2]
    ))
}

/// Injects random faults, one at a time: fault, hold, repair, gap.
pub(super) async fn nemesis(
    harness: Harness,
    recorder: Arc<Recorder>,
    args: NemesisStep,
    seed: u64,
    verbose: bool,
) -> Result<String> {
    if args.faults.is_empty() {
        bail!("nemesis {} has no faults to choose from", args.name);
    }
    let mut rng = SmallRng::seed_from_u64(seed ^ hash(&args.name));
    let deadline = Instant::now() + args.duration.0;
    let event = |text: String| {
        if verbose {
            eprintln!(
                "    [{:>7.3}s] nemesis: {text}",
                recorder.now_us() as f64 / 1e6
            );
        }
        recorder.event(text);
    };
    let ids = harness.cluster.ids();
    let mut injected = 0;
    let mut order: Vec<NemesisFault> = Vec::new();
    while Instant::now() + args.hold.0 < deadline {
        if order.is_empty() {
            // A seeded shuffle: every fault once, then again.
            order = args.faults.clone();
            for index in (1..order.len()).rev() {
                order.swap(index, rng.random_range(0..=index));
            }
        }
        let fault = order.remove(0);
        let random_node = ids[rng.random_range(0..ids.len())];
        let hold = match args.hold_max {
            Some(max) if max.0 > args.hold.0 => Duration::from_millis(
                rng.random_range(args.hold.0.as_millis() as u64..=max.0.as_millis() as u64),
            ),
            _ => args.hold.0,
        };
        match fault {
            NemesisFault::Kill | NemesisFault::KillLeader => {
                let id = if fault == NemesisFault::KillLeader {
                    harness.leader().await?
                } else {
                    random_node
                };
                event(format!("kill node {id}"));
                harness.cluster.kill(id).await?;
                tokio::time::sleep(hold).await;
                event(format!("start node {id}"));
                harness.client.forget(id);
                harness.cluster.start_node_again(id).await?;
            }
            NemesisFault::Restart => {
                event(format!("restart node {random_node}"));
                harness.restart(random_node).await?;
            }
            NemesisFault::Pause => {
                event(format!("pause node {random_node}"));
                harness.cluster.pause(random_node).await?;
                tokio::time::sleep(hold).await;
                event(format!("unpause node {random_node}"));
                harness.cluster.unpause(random_node).await?;
            }
            NemesisFault::Isolate | NemesisFault::IsolateLeader => {
                let id = if fault == NemesisFault::IsolateLeader {
                    harness.leader().await?
                } else {
                    random_node
                };
                event(format!("isolate node {id}"));
                harness.isolate(id).await?;
                tokio::time::sleep(hold).await;
                event("heal".into());
                harness.cluster.heal().await?;
            }
            NemesisFault::Cut => {
                let others: Vec<u64> = ids
                    .iter()
                    .copied()
                    .filter(|&id| id != random_node)
                    .collect();
                let other = others[rng.random_range(0..others.len())];
                event(format!("cut node {random_node} <-> node {other}"));
                harness.cluster.cut(random_node, other).await?;
                tokio::time::sleep(hold).await;
                event("heal".into());
                harness.cluster.heal().await?;
            }
        }
        injected += 1;
        tokio::time::sleep(args.gap.0).await;
    }
    Ok(format!("{injected} faults injected"))
}

fn hash(text: &str) -> u64 {
    // FNV-1a: stable across runs and platforms (std's hasher is not).
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
