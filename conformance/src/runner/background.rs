//! Work that runs while the steps go on: workloads and the nemesis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::harness::Harness;
use crate::client::{Recorder, Request};
use crate::history::OpStatus;
use crate::scenario::{BankStep, CounterStep, NemesisFault, NemesisStep, WorkloadStep};

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
            let total = args.mix.put + args.mix.get + args.mix.delete + args.mix.cas;
            let mut counts = [0usize; 3];
            // The value this client last saw under each key: what its
            // compare-and-swaps expect (absent when it saw none).
            let mut seen: std::collections::HashMap<String, Option<String>> =
                std::collections::HashMap::new();
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
                } else if roll < args.mix.put + args.mix.get + args.mix.delete {
                    Request::Delete { key }
                } else {
                    Request::Cas {
                        expected: seen.get(&key).cloned().flatten(),
                        key,
                        value: format!("{}-c{index}-{sequence}", args.name),
                    }
                };
                let nodes = targets.clone().unwrap_or_else(|| harness.cluster.ids());
                let node = nodes[rng.random_range(0..nodes.len())];
                let operation = harness
                    .client
                    .execute(&client_name, process, node, &request)
                    .await;
                if operation.status == OpStatus::Ok {
                    let observed = match (&request, operation.swapped) {
                        (Request::Put { value, .. }, _)
                        | (Request::Cas { value, .. }, Some(true)) => Some(Some(value.clone())),
                        (Request::Delete { .. }, _) => Some(None),
                        _ => operation.read.clone(),
                    };
                    if let Some(observed) = observed {
                        seen.insert(operation.key.clone(), observed);
                    }
                }
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

/// Runs a counter: `clients` clients increment one key (a linearizable
/// range, then a txn that writes the value plus one if the key's mod
/// revision is still the one read), retrying when another won, until the
/// duration ends. `expect_counter` checks the result from the history.
pub(super) async fn counter(
    harness: Harness,
    args: CounterStep,
    targets: Option<Vec<u64>>,
    seed: u64,
) -> Result<String> {
    let deadline = Instant::now() + args.duration.0;
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
            let mut swapped = 0usize;
            while Instant::now() < deadline {
                let nodes = targets.clone().unwrap_or_else(|| harness.cluster.ids());
                let node = nodes[rng.random_range(0..nodes.len())];
                let request = Request::Increment {
                    key: args.name.clone(),
                };
                let operation = harness
                    .client
                    .execute(&client_name, process, node, &request)
                    .await;
                match (operation.status, operation.swapped) {
                    (OpStatus::Ok, Some(true)) => swapped += 1,
                    (OpStatus::Ok, _) => {}
                    (OpStatus::Failed, _) => tokio::time::sleep(Duration::from_millis(50)).await,
                    (OpStatus::Unknown, _) => process = recorder.new_process(),
                }
            }
            swapped
        });
    }
    let mut increments = 0;
    while let Some(result) = clients.join_next().await {
        increments += result.map_err(|error| anyhow!("a counter client crashed: {error}"))?;
    }
    if increments == 0 {
        bail!("counter {}: no increment was acknowledged", args.name);
    }
    Ok(format!("{increments} increments acknowledged"))
}

/// The prefix of bank `name`'s accounts, and account `index`.
pub(super) fn bank_account(name: &str, index: u32) -> (String, String) {
    let prefix = format!("{name}/acct-");
    let account = format!("{prefix}{index}");
    (prefix, account)
}

/// Runs a bank: opens the accounts, then `clients` clients transfer random
/// amounts between random accounts (txns guarded by both accounts' mod
/// revisions) while one more client audits the total with linearizable
/// ranges. An audit that sees another total fails the workload at once.
pub(super) async fn bank(
    harness: Harness,
    args: BankStep,
    targets: Option<Vec<u64>>,
    seed: u64,
) -> Result<String> {
    let recorder = harness.client.recorder().clone();
    let opener = format!("{} opener", args.name);
    let process = recorder.new_process();
    for index in 0..args.accounts {
        let (_, account) = bank_account(&args.name, index);
        let request = Request::Put {
            key: account.clone(),
            value: args.balance.to_string(),
        };
        let opened_by = Instant::now() + Duration::from_secs(15);
        loop {
            let nodes = targets.clone().unwrap_or_else(|| harness.cluster.ids());
            let operation = harness
                .client
                .execute(&opener, process, nodes[0], &request)
                .await;
            if operation.status == OpStatus::Ok {
                break;
            }
            if Instant::now() > opened_by {
                bail!("bank {}: cannot open {account}", args.name);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let total = args.balance * u64::from(args.accounts);
    let deadline = Instant::now() + args.duration.0;
    let mut clients = tokio::task::JoinSet::new();
    for index in 0..=args.clients {
        let harness = harness.clone();
        let args = args.clone();
        let targets = targets.clone();
        clients.spawn(async move {
            let mut rng =
                SmallRng::seed_from_u64(seed ^ hash(&args.name) ^ (u64::from(index) << 32));
            let recorder = harness.client.recorder().clone();
            let auditor = index == args.clients;
            let client_name = if auditor {
                format!("{} auditor", args.name)
            } else {
                format!("{} client {index}", args.name)
            };
            let mut process = recorder.new_process();
            let mut done = 0usize;
            while Instant::now() < deadline {
                let nodes = targets.clone().unwrap_or_else(|| harness.cluster.ids());
                let node = nodes[rng.random_range(0..nodes.len())];
                let (prefix, _) = bank_account(&args.name, 0);
                let request = if auditor {
                    Request::Audit { prefix }
                } else {
                    let from = rng.random_range(0..args.accounts);
                    let to = (from + rng.random_range(1..args.accounts.max(2))) % args.accounts;
                    Request::Transfer {
                        prefix,
                        from: bank_account(&args.name, from).1,
                        to: bank_account(&args.name, to).1,
                        amount: rng.random_range(1..=args.balance / 4 + 1),
                    }
                };
                let operation = harness
                    .client
                    .execute(&client_name, process, node, &request)
                    .await;
                match operation.status {
                    OpStatus::Ok => {
                        if let Some(Some(sum)) = &operation.read {
                            if *sum != total.to_string() {
                                return Err(anyhow!(
                                    "audit #{} at node {node} read a total of {sum}, not {total}",
                                    operation.id
                                ));
                            }
                        }
                        if operation.swapped != Some(false) {
                            done += 1;
                        }
                    }
                    OpStatus::Failed => tokio::time::sleep(Duration::from_millis(50)).await,
                    OpStatus::Unknown => process = recorder.new_process(),
                }
            }
            Ok(done)
        });
    }
    let mut done = 0;
    while let Some(result) = clients.join_next().await {
        done += result.map_err(|error| anyhow!("a bank client crashed: {error}"))??;
    }
    Ok(format!("{done} transfers and audits done"))
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

pub(super) fn hash(text: &str) -> u64 {
    // FNV-1a: stable across runs and platforms (std's hasher is not).
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
