//! Leases whose owner dies (`lease` steps) and their check
//! (`expect_lease_expiry`).
//!
//! The owner grants a lease, attaches the keys `NAME/k0..` to it, renews it
//! on a keep-alive stream every third of its TTL, and stops right after
//! the first renewal once `keep_alive` has passed: it "dies" (its stream is
//! closed). Readers read the keys linearizably, back to back, at random
//! nodes, from the moment they are attached until the check stops them; a
//! watcher (resuming elsewhere when its node fails, see `watcher`) records
//! their events. The check is `checker::lease`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::background::hash;
use super::harness::Harness;
use super::watcher::{self, Watcher};
use crate::checker::lease::{check, LeaseChecks, LeaseInput};
use crate::client::{KeepAliveStream, Request};
use crate::history::{OpKind, OpStatus, Operation, WatchEvent};
use crate::scenario::LeaseStep;

/// How long the owner retries its grant and puts (a fresh cluster refuses
/// grants until its leader raised the storage version).
const SETUP_WINDOW: Duration = Duration::from_secs(15);
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Pause between two reads of one reader.
const READ_PAUSE: Duration = Duration::from_millis(40);
/// Added to the bound by which a correct cluster has deleted the keys:
/// the expiry is proposed at the leader's next tick and committed through
/// Raft, on a loaded 2-core machine.
const EXPIRY_SLACK: Duration = Duration::from_secs(3);
/// The readers go on this long after one saw the keys gone (a key coming
/// back would show).
const READS_AFTER_GONE: Duration = Duration::from_secs(1);
/// How long the watcher may take to catch up with the final read.
const WATCH_CATCH_UP: Duration = Duration::from_secs(20);

/// What the owner did, for the check.
#[derive(Debug, Clone, Default)]
pub(super) struct LeaseLog {
    /// The lease, once granted.
    pub(super) lease: Option<i64>,
    /// Its TTL as granted.
    pub(super) ttl: Duration,
    /// Every key attached, with its value.
    pub(super) keys: BTreeMap<String, String>,
    /// When the last key was attached (µs); readers start then.
    pub(super) attached_us: Option<u64>,
    /// (invocation, completion) of the grant and of every renewal answered
    /// with a TTL (µs).
    pub(super) renewals: Vec<(u64, u64)>,
    /// When the owner stopped renewing (µs).
    pub(super) died_us: Option<u64>,
}

/// A lease step's state: its owner's log, its readers and its watcher.
pub(super) struct LeaseRun {
    args: LeaseStep,
    log: Arc<Mutex<LeaseLog>>,
    stop: watch::Sender<bool>,
    readers: Option<JoinSet<()>>,
    watcher: Watcher,
}

/// The keys' common prefix.
pub(super) fn prefix(name: &str) -> String {
    format!("{name}/")
}

impl LeaseRun {
    /// Starts the watcher (at `watch_node`), the owner and the readers.
    /// Returns the run and the owner's task (the step's background task:
    /// it ends when the owner dies).
    pub(super) async fn start(
        harness: Harness,
        args: &LeaseStep,
        targets: Option<Vec<u64>>,
        watch_node: u64,
        seed: u64,
        verbose: bool,
    ) -> Result<(LeaseRun, tokio::task::JoinHandle<Result<String>>)> {
        let watcher = Watcher::start(
            harness.clone(),
            &format!("lease {}", args.name),
            &prefix(&args.name),
            watch_node,
            seed,
            verbose,
        )
        .await?;
        let log = Arc::new(Mutex::new(LeaseLog::default()));
        let (stop, stopped) = watch::channel(false);
        let mut readers = JoinSet::new();
        for index in 0..args.readers {
            readers.spawn(reader(
                harness.clone(),
                args.name.clone(),
                index,
                targets.clone(),
                log.clone(),
                stopped.clone(),
                seed,
            ));
        }
        let owner = tokio::spawn(owner(harness, args.clone(), targets, log.clone(), seed));
        Ok((
            LeaseRun {
                args: args.clone(),
                log,
                stop,
                readers: Some(readers),
                watcher,
            },
            owner,
        ))
    }

    /// Stops the readers and the watcher (at the end of a scenario that did
    /// not check the lease).
    pub(super) fn stop(&mut self) -> Vec<(String, tokio::task::JoinHandle<Result<String>>)> {
        let mut tasks = self.stop_readers();
        if let Some(task) = self.watcher.stop() {
            tasks.push((format!("watch lease {}", self.args.name), task));
        }
        tasks
    }

    /// The watcher's events.
    pub(super) fn events(&self) -> Vec<WatchEvent> {
        self.watcher.snapshot().events
    }

    /// `expect_lease_expiry`: waits until the owner died and a reader saw
    /// the keys gone (or the bound passed), stops the readers and the
    /// watcher, and checks. `election_timeout` is the cluster's.
    pub(super) async fn expect_expiry(
        &mut self,
        harness: &Harness,
        election_timeout: Duration,
    ) -> (Option<LeaseChecks>, Result<String>) {
        let log = self.log.lock().expect("lease log lock").clone();
        let (Some(died_us), Some(&(last_renewal_us, _))) = (log.died_us, log.renewals.last())
        else {
            return (
                None,
                Err(anyhow!(
                    "the owner of lease {} has not died yet (`await: {}` before this step)",
                    self.args.name,
                    self.args.name
                )),
            );
        };
        let recorder = harness.client.recorder().clone();
        let ttl_us = log.ttl.as_micros() as u64;
        let deadline_us = last_renewal_us + ttl_us;
        // A leader that took over at instant P expires the lease no later
        // than P + TTL + election timeout; every leader change of the
        // scenario happened before this step started.
        let bound_us = deadline_us.max(recorder.now_us())
            + ttl_us
            + (election_timeout + EXPIRY_SLACK).as_micros() as u64;
        let name = self.args.name.clone();
        let prefix = prefix(&name);
        let attached_us = log.attached_us.unwrap_or(0);
        let gone_at = |operations: &[crate::history::Operation]| {
            operations
                .iter()
                .filter(|op| op.kind == OpKind::Range && op.key == prefix)
                .filter(|op| op.status == OpStatus::Ok && op.invoke_us >= attached_us)
                .filter(|op| op.read.as_ref().and_then(|read| read.as_deref()) == Some(""))
                .map(|op| op.complete_us)
                .min()
        };
        loop {
            let now_us = recorder.now_us();
            match gone_at(&recorder.snapshot().operations) {
                Some(gone_us) if now_us >= gone_us + READS_AFTER_GONE.as_micros() as u64 => break,
                None if now_us > bound_us + READS_AFTER_GONE.as_micros() as u64 => break,
                _ => tokio::time::sleep(RETRY_PAUSE).await,
            }
        }
        for (task_name, task) in self.stop_readers() {
            if let Err(error) = task.await {
                return (None, Err(anyhow!("{task_name} crashed: {error}")));
            }
        }
        let events = match self.stop_watcher(harness).await {
            Ok(events) => events,
            Err(error) => return (None, Err(error)),
        };
        let history = recorder.snapshot();
        let reads: Vec<&crate::history::Operation> = history
            .operations
            .iter()
            .filter(|op| op.kind == OpKind::Range && op.key == prefix)
            .filter(|op| op.status == OpStatus::Ok && op.invoke_us >= attached_us)
            .collect();
        let verdict = check(&LeaseInput {
            keys: &log.keys,
            deadline_us,
            bound_us,
            reads: &reads,
            events: &events,
        });
        recorder.event(format!(
            "lease {name}: owner died at {:.3}s, last renewal sent at {:.3}s, deadline {:.3}s, bound {:.3}s; {} reads, first without the keys done at {}",
            died_us as f64 / 1e6,
            last_renewal_us as f64 / 1e6,
            deadline_us as f64 / 1e6,
            bound_us as f64 / 1e6,
            reads.len(),
            gone_at(&history.operations)
                .map_or("never".to_string(), |gone| format!("{:.3}s", gone as f64 / 1e6))
        ));
        let result = if verdict.checks.passed() {
            Ok("passed".to_string())
        } else {
            Err(anyhow!(
                "lease {name}:\n      {}",
                verdict.problems.join("\n      ")
            ))
        };
        (Some(verdict.checks), result)
    }

    fn stop_readers(&mut self) -> Vec<(String, tokio::task::JoinHandle<Result<String>>)> {
        let _ = self.stop.send(true);
        let mut tasks = Vec::new();
        if let Some(mut readers) = self.readers.take() {
            tasks.push((
                format!("lease {} readers", self.args.name),
                tokio::spawn(async move {
                    while readers.join_next().await.is_some() {}
                    Ok("stopped".to_string())
                }),
            ));
        }
        tasks
    }

    async fn stop_watcher(&mut self, harness: &Harness) -> Result<Vec<WatchEvent>> {
        let prefix = prefix(&self.args.name);
        let (_, end) = watcher::final_read(harness, &prefix).await?;
        watcher::stop_at(
            &mut self.watcher,
            &format!("lease {}", self.args.name),
            end,
            WATCH_CATCH_UP,
        )
        .await
    }
}

pub(super) fn pick(harness: &Harness, targets: &Option<Vec<u64>>, rng: &mut SmallRng) -> u64 {
    let nodes = targets.clone().unwrap_or_else(|| harness.cluster.ids());
    nodes[rng.random_range(0..nodes.len())]
}

/// Runs `request` until it is acknowledged (a new timeline row after an
/// unknown outcome), for `SETUP_WINDOW` at most.
async fn until_ok(
    harness: &Harness,
    (client, process): (&str, &mut usize),
    targets: &Option<Vec<u64>>,
    rng: &mut SmallRng,
    request: &Request,
) -> Result<crate::history::Operation> {
    let deadline = Instant::now() + SETUP_WINDOW;
    loop {
        let node = pick(harness, targets, rng);
        let operation = harness
            .client
            .execute(client, *process, node, request)
            .await;
        match operation.status {
            OpStatus::Ok => return Ok(operation),
            OpStatus::Unknown => *process = harness.client.recorder().new_process(),
            OpStatus::Failed => {}
        }
        if Instant::now() > deadline {
            bail!(
                "{} not acknowledged within {SETUP_WINDOW:?}: {}",
                operation.describe(),
                operation.error.unwrap_or_default()
            );
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// The owner: grant, attach, renew, die.
async fn owner(
    harness: Harness,
    args: LeaseStep,
    targets: Option<Vec<u64>>,
    log: Arc<Mutex<LeaseLog>>,
    seed: u64,
) -> Result<String> {
    let recorder = harness.client.recorder().clone();
    let client_name = format!("lease {} owner", args.name);
    let mut process = recorder.new_process();
    let mut rng = SmallRng::seed_from_u64(seed ^ hash(&client_name));
    let prefix = prefix(&args.name);
    let grant = Request::LeaseGrant {
        label: prefix.clone(),
        ttl_seconds: args.ttl.0.as_secs() as i64,
    };
    let granted = until_ok(
        &harness,
        (&client_name, &mut process),
        &targets,
        &mut rng,
        &grant,
    )
    .await?;
    let id = granted
        .value
        .as_deref()
        .and_then(|hex| i64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| anyhow!("a grant answered without a lease id"))?;
    let ttl_seconds: u64 = granted
        .read
        .clone()
        .flatten()
        .and_then(|ttl| ttl.parse().ok())
        .unwrap_or(args.ttl.0.as_secs());
    let ttl = Duration::from_secs(ttl_seconds);
    {
        let mut log = log.lock().expect("lease log lock");
        log.lease = Some(id);
        log.ttl = ttl;
        log.renewals.push((granted.invoke_us, granted.complete_us));
    }
    let renew_every = ttl / 3;
    let mut last_renewal = Instant::now();
    for index in 0..args.keys {
        let key = format!("{prefix}k{index}");
        let value = format!("{}-v{index}", args.name);
        let put = Request::LeasedPut {
            key: key.clone(),
            value: value.clone(),
            lease: id,
        };
        until_ok(
            &harness,
            (&client_name, &mut process),
            &targets,
            &mut rng,
            &put,
        )
        .await?;
        log.lock().expect("lease log lock").keys.insert(key, value);
    }
    log.lock().expect("lease log lock").attached_us = Some(recorder.now_us());
    let stop_at = Instant::now() + args.keep_alive.0;
    let mut stream: Option<(u64, KeepAliveStream)> = None;
    let mut renewals = 0;
    loop {
        tokio::time::sleep(if stream.is_some() {
            renew_every
        } else {
            RETRY_PAUSE
        })
        .await;
        if last_renewal.elapsed() > ttl {
            bail!(
                "the owner of lease {} could not renew it for its TTL ({ttl:?})",
                args.name
            );
        }
        match renew(
            &harness,
            &mut stream,
            (&client_name, &mut process),
            (&targets, &mut rng),
            (&prefix, id),
        )
        .await
        {
            Renewal::Gone(operation) => bail!(
                "lease {} gone while its owner renewed it: {}",
                args.name,
                operation.error.unwrap_or_default()
            ),
            Renewal::Renewed(operation) => {
                last_renewal = Instant::now();
                renewals += 1;
                log.lock()
                    .expect("lease log lock")
                    .renewals
                    .push((operation.invoke_us, operation.complete_us));
                if Instant::now() >= stop_at {
                    break;
                }
            }
            Renewal::NotAnswered => {}
        }
    }
    drop(stream);
    let died_us = recorder.now_us();
    log.lock().expect("lease log lock").died_us = Some(died_us);
    recorder.event(format!(
        "lease {}: the owner of lease {id:x} dies (no more keep-alives)",
        args.name
    ));
    Ok(format!(
        "lease {id:x}: {} keys, {renewals} renewals, then the owner died",
        args.keys
    ))
}

/// What one renewal came to.
pub(super) enum Renewal {
    /// Answered with a TTL.
    Renewed(Operation),
    /// Answered: the lease is gone.
    Gone(Operation),
    /// No stream could be opened, or no answer came (the stream is dropped).
    NotAnswered,
}

/// Renews `lease` (labelled `label` in the history) once on `stream`,
/// opened first at a node picked from `targets` when there is none, and
/// dropped when it fails; the client's timeline row moves on after an
/// unknown outcome.
pub(super) async fn renew(
    harness: &Harness,
    stream: &mut Option<(u64, KeepAliveStream)>,
    (client, process): (&str, &mut usize),
    (targets, rng): (&Option<Vec<u64>>, &mut SmallRng),
    (label, lease): (&str, i64),
) -> Renewal {
    if stream.is_none() {
        let node = pick(harness, targets, rng);
        match harness.client.open_keep_alive(node).await {
            Ok(opened) => *stream = Some((node, opened)),
            Err(_) => return Renewal::NotAnswered,
        }
    }
    let Some((node, open)) = stream.as_mut() else {
        return Renewal::NotAnswered;
    };
    let operation = harness
        .client
        .keep_alive(open, (client, *process), *node, label, lease)
        .await;
    match (
        operation.status,
        operation.read.clone().flatten().as_deref(),
    ) {
        (OpStatus::Ok, Some("0")) => Renewal::Gone(operation),
        (OpStatus::Ok, _) => Renewal::Renewed(operation),
        (status, _) => {
            if status == OpStatus::Unknown {
                *process = harness.client.recorder().new_process();
            }
            *stream = None;
            Renewal::NotAnswered
        }
    }
}

/// A reader: linearizable ranges of the keys at random nodes, back to
/// back, from the moment they are attached until told to stop.
async fn reader(
    harness: Harness,
    name: String,
    index: u32,
    targets: Option<Vec<u64>>,
    log: Arc<Mutex<LeaseLog>>,
    stopped: watch::Receiver<bool>,
    seed: u64,
) {
    let recorder = harness.client.recorder().clone();
    let client_name = format!("lease {name} reader {index}");
    let mut rng = SmallRng::seed_from_u64(seed ^ hash(&client_name));
    let mut process = recorder.new_process();
    let request = Request::Range {
        prefix: prefix(&name),
    };
    while !*stopped.borrow() {
        if log.lock().expect("lease log lock").attached_us.is_none() {
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
        }
        let node = pick(&harness, &targets, &mut rng);
        let operation = harness
            .client
            .execute(&client_name, process, node, &request)
            .await;
        if operation.status == OpStatus::Unknown {
            process = recorder.new_process();
        }
        tokio::time::sleep(READ_PAUSE).await;
    }
}
