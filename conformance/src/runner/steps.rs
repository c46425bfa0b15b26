//! The scenario steps.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use kvstore_proto::kv::v1 as pb;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;

use super::background::{bank, bank_account, counter, nemesis, workload};
use super::harness::{Harness, STATUS_TIMEOUT};
use super::lease::LeaseRun;
use super::lock::LockRun;
use super::watcher::{self, Watcher};
use crate::checker::lease::LeaseChecks;
use crate::checker::lock::LockChecks;
use crate::checker::watch::WatchChecks;
use crate::client::{Recorder, Request};
use crate::cluster::NodeState;
use crate::history::{OpKind, OpStatus, Operation, WatchEvent};
use crate::scenario::{Expect, LeaderChange, Scenario, Step, Target, TermStep};

/// How long a step's client operation is retried while it must succeed.
const RETRY_WINDOW: Duration = Duration::from_secs(15);
const RETRY_PAUSE: Duration = Duration::from_millis(300);

/// State of one scenario run.
pub(super) struct Run<'a> {
    scenario: &'a Scenario,
    harness: Harness,
    recorder: Arc<Recorder>,
    rng: SmallRng,
    old_leader: Option<u64>,
    marked_term: Option<u64>,
    named: BTreeMap<String, (u64, Option<pb::StatusResponse>)>,
    background: Vec<(String, String, JoinHandle<Result<String>>)>,
    final_values: BTreeMap<String, String>,
    step_process: usize,
    verbose: bool,
    /// The bank workloads started: name -> (accounts, total).
    banks: BTreeMap<String, (u32, u64)>,
    /// The revision of the last `compact` step.
    compacted: Option<i64>,
    /// The background watchers, by name (kept after they stop: their events
    /// go into the history).
    watchers: BTreeMap<String, Watcher>,
    /// The checks of `expect_watches_match_history`, per watcher.
    watch_checks: BTreeMap<String, WatchChecks>,
    /// The `lease` steps' owners, readers and watchers, by name.
    leases: BTreeMap<String, LeaseRun>,
    /// The checks of `expect_lease_expiry`, per lease.
    lease_checks: BTreeMap<String, LeaseChecks>,
    /// The `lock` steps' holds and watchers, by name.
    locks: BTreeMap<String, LockRun>,
    /// The checks of `expect_lock_safety`, per lock.
    lock_checks: BTreeMap<String, LockChecks>,
}

impl<'a> Run<'a> {
    pub(super) fn new(
        scenario: &'a Scenario,
        harness: Harness,
        recorder: Arc<Recorder>,
        verbose: bool,
    ) -> Self {
        Run {
            scenario,
            harness,
            rng: SmallRng::seed_from_u64(scenario.seed),
            old_leader: None,
            marked_term: None,
            named: BTreeMap::new(),
            background: Vec::new(),
            final_values: BTreeMap::new(),
            banks: BTreeMap::new(),
            compacted: None,
            watchers: BTreeMap::new(),
            watch_checks: BTreeMap::new(),
            leases: BTreeMap::new(),
            lease_checks: BTreeMap::new(),
            locks: BTreeMap::new(),
            lock_checks: BTreeMap::new(),
            step_process: recorder.new_process(),
            recorder,
            verbose,
        }
    }

    /// The background tasks still running: (label, handle). Watchers still
    /// running are told to stop first.
    pub(super) fn take_background(&mut self) -> Vec<(String, JoinHandle<Result<String>>)> {
        let mut tasks: Vec<(String, JoinHandle<Result<String>>)> =
            watcher::stop_all(&mut self.watchers);
        for lease in self.leases.values_mut() {
            tasks.extend(lease.stop());
        }
        for lock in self.locks.values_mut() {
            tasks.extend(lock.stop());
        }
        tasks.extend(
            std::mem::take(&mut self.background)
                .into_iter()
                .map(|(_, label, handle)| (label, handle)),
        );
        tasks
    }

    /// The values read by `final_values` steps.
    pub(super) fn take_final_values(&mut self) -> BTreeMap<String, String> {
        std::mem::take(&mut self.final_values)
    }

    /// The checks of `expect_watches_match_history`, per watcher.
    pub(super) fn take_watch_checks(&mut self) -> BTreeMap<String, WatchChecks> {
        std::mem::take(&mut self.watch_checks)
    }

    /// The checks of `expect_lease_expiry` and `expect_lock_safety`.
    pub(super) fn take_lease_and_lock_checks(
        &mut self,
    ) -> (BTreeMap<String, LeaseChecks>, BTreeMap<String, LockChecks>) {
        (
            std::mem::take(&mut self.lease_checks),
            std::mem::take(&mut self.lock_checks),
        )
    }

    /// Every event the watchers received (those of leases and locks too).
    pub(super) fn watch_events(&self) -> Vec<WatchEvent> {
        let mut events = watcher::events(&self.watchers);
        events.extend(self.leases.values().flat_map(LeaseRun::events));
        events.extend(self.locks.values().flat_map(LockRun::events));
        events
    }

    /// The cluster's election timeout, as the runner configures it.
    fn election_timeout(&self) -> Duration {
        let mut env = super::default_node_env();
        env.extend(self.scenario.cluster.env.clone());
        let millis = env
            .get("KVSTORE_ELECTION_TIMEOUT_MS")
            .and_then(|text| text.parse().ok())
            .unwrap_or(1000);
        Duration::from_millis(millis)
    }

    /// Waits for the background task `name` of `kind` if it still runs.
    async fn await_named(&mut self, kind: &str, name: &str) -> Result<()> {
        let label = format!("{kind} {name}");
        if let Some(index) = self
            .background
            .iter()
            .position(|(_, task, _)| *task == label)
        {
            let (_, task, handle) = self.background.remove(index);
            let report = handle
                .await
                .map_err(|error| anyhow!("{task} crashed: {error}"))??;
            self.event(format!("{task} finished: {report}"));
        }
        Ok(())
    }
    fn event(&self, text: String) {
        if self.verbose {
            eprintln!("    [{:>7.3}s] {text}", self.recorder.now_us() as f64 / 1e6);
        }
        self.recorder.event(text);
    }

    /// Resolves a target to node ids.
    async fn resolve(&mut self, target: &Target) -> Result<Vec<u64>> {
        let nodes = self.harness.nodes;
        Ok(match target {
            Target::Leader => vec![self.harness.leader().await?],
            Target::Follower => {
                let followers = self.harness.followers().await?;
                vec![followers[self.rng.random_range(0..followers.len())]]
            }
            Target::Followers => self.harness.followers().await?,
            Target::OldLeader => vec![self
                .old_leader
                .ok_or_else(|| anyhow!("no `mark` step before: no old leader"))?],
            Target::Node(id) if (1..=nodes).contains(id) => vec![*id],
            Target::Node(id) => bail!("no node {id} in a {nodes}-node cluster"),
            Target::Named(name) => vec![self
                .named
                .get(name)
                .map(|(id, _)| *id)
                .ok_or_else(|| anyhow!("no node remembered as {name:?}"))?],
            Target::All => self.harness.cluster.ids(),
            Target::Others => bail!("`others` only makes sense in a partition"),
            Target::Any => {
                let running: Vec<u64> = self
                    .harness
                    .cluster
                    .ids()
                    .into_iter()
                    .filter(|&id| self.harness.cluster.state(id) == NodeState::Running)
                    .collect();
                if running.is_empty() {
                    bail!("no node is running");
                }
                vec![running[self.rng.random_range(0..running.len())]]
            }
        })
    }

    async fn resolve_one(&mut self, target: &Target) -> Result<u64> {
        let ids = self.resolve(target).await?;
        match ids.as_slice() {
            [id] => Ok(*id),
            _ => bail!("{target} must name exactly one node"),
        }
    }

    fn label(target: &Target, id: u64) -> String {
        match target {
            Target::Node(_) => format!("node {id}"),
            other => format!("node {id} ({other})"),
        }
    }

    /// Runs a client operation at every node the target names (one for
    /// most targets, e.g. every follower for `followers`); all must pass.
    async fn client_steps(
        &mut self,
        request: Request,
        at: &Target,
        expect: &Expect,
        forwarded: Option<bool>,
    ) -> Result<String> {
        if matches!(at, Target::Followers | Target::All) {
            let mut result = String::new();
            for node in self.resolve(at).await? {
                result = self
                    .client_step(request.clone(), &Target::Node(node), expect, forwarded)
                    .await?;
            }
            return Ok(result);
        }
        self.client_step(request, at, expect, forwarded).await
    }

    /// Runs a client operation with its expectation; returns the result text.
    async fn client_step(
        &mut self,
        request: Request,
        at: &Target,
        expect: &Expect,
        forwarded: Option<bool>,
    ) -> Result<String> {
        let must_succeed = matches!(expect, Expect::Ok | Expect::Value(_) | Expect::Absent);
        let deadline = Instant::now() + RETRY_WINDOW;
        let mut attempts = Vec::new();
        loop {
            let node = self.resolve_one(at).await?;
            let operation = self
                .harness
                .client
                .execute("steps", self.step_process, node, &request)
                .await;
            if operation.status == OpStatus::Unknown {
                self.step_process = self.recorder.new_process();
            }
            if self.verbose {
                eprintln!(
                    "    [{:>7.3}s] node {node}: {}",
                    self.recorder.now_us() as f64 / 1e6,
                    operation.describe()
                );
            }
            attempts.push(format!(
                "node {node}: {}{}",
                operation.describe(),
                operation
                    .error
                    .as_deref()
                    .map(|error| format!(" ({error})"))
                    .unwrap_or_default()
            ));
            if must_succeed && operation.status != OpStatus::Ok && Instant::now() < deadline {
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            let passed = match expect {
                Expect::Any => return Ok("done".into()),
                Expect::Ok => operation.status == OpStatus::Ok,
                Expect::Fail => operation.status == OpStatus::Failed,
                Expect::NotOk => operation.status != OpStatus::Ok,
                Expect::Value(value) => operation.read == Some(Some(value.clone())),
                Expect::Absent => operation.read == Some(None),
                Expect::FreshOrFail => {
                    operation.status != OpStatus::Ok || self.is_fresh(&operation)
                }
            };
            if passed {
                if let (Some(expected), Some(served)) = (forwarded, operation.served) {
                    let was_forwarded = served.forwarded_by == node && served.node_id != node;
                    let was_local = served.forwarded_by == 0 && served.node_id == node;
                    if (expected && !was_forwarded) || (!expected && !was_local) {
                        bail!(
                            "sent to node {node}: served by node {} (leader {}), forwarded by {}",
                            served.node_id,
                            served.leader_id,
                            served.forwarded_by
                        );
                    }
                }
                return Ok("passed".into());
            }
            bail!("expected {expect}; got {}", attempts.join("; then "));
        }
    }

    /// Whether an acknowledged read returned a value no older than the last
    /// write of its key acknowledged before it started (a write still
    /// pending, unknown, or concurrent with that one may also be seen).
    fn is_fresh(&self, read: &Operation) -> bool {
        let history = self.recorder.snapshot();
        let writes: Vec<&Operation> = history
            .operations
            .iter()
            .filter(|op| {
                op.key == read.key
                    && matches!(op.kind, OpKind::Put | OpKind::Delete | OpKind::Cas)
                    && op.swapped != Some(false)
                    && op.status != OpStatus::Failed
            })
            .collect();
        let value_of = |op: &Operation| match op.kind {
            OpKind::Put | OpKind::Cas => op.value.clone(),
            _ => None,
        };
        let last = writes
            .iter()
            .filter(|op| op.status == OpStatus::Ok && op.complete_us < read.invoke_us)
            .max_by_key(|op| op.complete_us);
        let mut allowed: Vec<Option<String>> = Vec::new();
        match last {
            Some(last) => {
                allowed.push(value_of(last));
                for op in &writes {
                    let may_follow =
                        op.status == OpStatus::Unknown || op.complete_us > last.invoke_us;
                    if op.invoke_us < read.complete_us && may_follow {
                        allowed.push(value_of(op));
                    }
                }
            }
            None => {
                allowed.push(None);
                allowed.extend(
                    writes
                        .iter()
                        .filter(|op| op.invoke_us < read.complete_us)
                        .map(|op| value_of(op)),
                );
            }
        }
        read.read
            .as_ref()
            .is_some_and(|value| allowed.contains(value))
    }

    /// The nodes a background client picks from (`None`: any running node,
    /// picked per request).
    async fn targets_of(&mut self, at: &Target) -> Result<Option<Vec<u64>>> {
        Ok(match at {
            Target::Any | Target::All => None,
            other => Some(self.resolve(other).await?),
        })
    }

    /// Keeps `task` running in the background until `await` (or the end).
    fn start_background(&mut self, kind: &str, name: &str, task: JoinHandle<Result<String>>) {
        self.event(format!("{kind} {name} started"));
        self.background
            .push((name.to_string(), format!("{kind} {name}"), task));
    }

    /// Reads `key` linearizably at any node, retrying for a while.
    async fn read_retried(&mut self, key: &str) -> Result<Option<String>> {
        let request = Request::Get {
            key: key.to_string(),
            consistency: Default::default(),
        };
        let deadline = Instant::now() + RETRY_WINDOW;
        loop {
            let node = self.resolve_one(&Target::Any).await?;
            let operation = self
                .harness
                .client
                .execute("steps", self.step_process, node, &request)
                .await;
            if let Some(value) = operation.read {
                return Ok(value);
            }
            if Instant::now() > deadline {
                bail!("cannot read {key}: {}", operation.error.unwrap_or_default());
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Runs one step; returns its result text (`passed`, `done`).
    pub(super) async fn step(&mut self, step: &Step) -> Result<String> {
        let cluster = self.harness.cluster.clone();
        match step {
            Step::WaitForLeader(args) => {
                let (not, above) = if args.new {
                    (
                        Some(
                            self.old_leader
                                .ok_or_else(|| anyhow!("`new: true` needs a `mark` step before"))?,
                        ),
                        self.marked_term.unwrap_or(0),
                    )
                } else {
                    (None, 0)
                };
                let leader = self
                    .harness
                    .wait_for_leader(args.timeout.0, not, above)
                    .await?;
                self.event(format!("leader: node {} (term {})", leader.id, leader.term));
                Ok("passed".into())
            }
            Step::WaitCaughtUp(args) => {
                self.harness.wait_caught_up(args.timeout.0).await?;
                Ok("passed".into())
            }
            Step::Sleep(span) => {
                tokio::time::sleep(span.0).await;
                Ok("done".into())
            }
            Step::Await(name) => {
                let mut waited = 0;
                let mut index = 0;
                while index < self.background.len() {
                    if name
                        .as_ref()
                        .is_none_or(|name| *name == self.background[index].0)
                    {
                        let (_, task, handle) = self.background.remove(index);
                        waited += 1;
                        let report = handle
                            .await
                            .map_err(|error| anyhow!("{task} crashed: {error}"))??;
                        self.event(format!("{task} finished: {report}"));
                    } else {
                        index += 1;
                    }
                }
                if waited == 0 && name.is_some() {
                    bail!(
                        "nothing named {:?} runs in the background",
                        name.as_deref().unwrap_or_default()
                    );
                }
                Ok("done".into())
            }
            Step::Mark => {
                let leader = self
                    .harness
                    .wait_for_leader(Duration::from_secs(20), None, 0)
                    .await?;
                self.old_leader = Some(leader.id);
                self.marked_term = Some(leader.term);
                self.event(format!(
                    "mark: leader node {} term {}",
                    leader.id, leader.term
                ));
                Ok("done".into())
            }
            Step::Remember(args) => {
                let id = self.resolve_one(&args.node).await?;
                let status = self.harness.client.status(id, STATUS_TIMEOUT).await.ok();
                self.event(format!("remember node {id} as {}", args.name));
                self.named.insert(args.name.clone(), (id, status));
                Ok("done".into())
            }
            Step::Put(args) => {
                let request = Request::Put {
                    key: args.key.clone(),
                    value: args.value.clone(),
                };
                self.client_steps(request, &args.at, &args.expect, args.forwarded)
                    .await
            }
            Step::Get(args) => {
                let request = Request::Get {
                    key: args.key.clone(),
                    consistency: args.consistency,
                };
                self.client_steps(request, &args.at, &args.expect, args.forwarded)
                    .await
            }
            Step::Delete(args) => {
                let request = Request::Delete {
                    key: args.key.clone(),
                };
                self.client_steps(request, &args.at, &args.expect, args.forwarded)
                    .await
            }
            Step::Kill(target)
            | Step::Stop(target)
            | Step::Start(target)
            | Step::Restart(target)
            | Step::Pause(target)
            | Step::Unpause(target) => {
                let ids = self.resolve(target).await?;
                let verb = step
                    .describe()
                    .split(' ')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let labels: Vec<String> = ids.iter().map(|&id| Self::label(target, id)).collect();
                self.event(format!("{verb} {}", labels.join(", ")));
                let actions = ids.iter().map(|&id| {
                    let harness = self.harness.clone();
                    let step = step.clone();
                    async move {
                        match step {
                            Step::Kill(_) => harness.cluster.kill(id).await,
                            Step::Stop(_) => harness.cluster.stop(id).await,
                            Step::Start(_) => harness.cluster.start_node_again(id).await,
                            Step::Restart(_) => harness.restart(id).await,
                            Step::Pause(_) => harness.cluster.pause(id).await,
                            _ => harness.cluster.unpause(id).await,
                        }
                    }
                });
                // "kill all" kills every node at once: a whole-cluster crash.
                for result in futures::future::join_all(actions).await {
                    result?;
                }
                Ok("done".into())
            }
            Step::Isolate(target) => {
                let id = self.resolve_one(target).await?;
                self.event(format!("isolate {}", Self::label(target, id)));
                self.harness.isolate(id).await?;
                Ok("done".into())
            }
            Step::Partition(groups) => {
                let mut resolved: Vec<Vec<u64>> = Vec::new();
                let mut others_at = None;
                for (index, group) in groups.iter().enumerate() {
                    let mut ids = Vec::new();
                    for target in group {
                        if *target == Target::Others {
                            others_at = Some(index);
                        } else {
                            ids.extend(self.resolve(target).await?);
                        }
                    }
                    resolved.push(ids);
                }
                let named: Vec<u64> = resolved.iter().flatten().copied().collect();
                let rest: Vec<u64> = cluster
                    .ids()
                    .into_iter()
                    .filter(|id| !named.contains(id))
                    .collect();
                match others_at {
                    Some(index) => resolved[index].extend(rest),
                    None if !rest.is_empty() => resolved.push(rest),
                    None => {}
                }
                let mut seen = std::collections::BTreeSet::new();
                for id in resolved.iter().flatten() {
                    if !seen.insert(*id) {
                        bail!("node {id} is in two groups of the partition");
                    }
                }
                let text: Vec<String> = resolved.iter().map(|group| format!("{group:?}")).collect();
                self.event(format!("partition {}", text.join(" | ")));
                for (index, group) in resolved.iter().enumerate() {
                    for other in &resolved[index + 1..] {
                        for &a in group {
                            for &b in other {
                                cluster.cut(a, b).await?;
                            }
                        }
                    }
                }
                Ok("done".into())
            }
            Step::Cut(a, b) => {
                let (a, b) = (self.resolve_one(a).await?, self.resolve_one(b).await?);
                self.event(format!("cut node {a} <-> node {b}"));
                cluster.cut(a, b).await?;
                Ok("done".into())
            }
            Step::Heal => {
                self.event("heal".into());
                cluster.heal().await?;
                Ok("done".into())
            }
            Step::Workload(args) => {
                let targets = self.targets_of(&args.at).await?;
                let task = tokio::spawn(workload(
                    self.harness.clone(),
                    args.clone(),
                    targets,
                    self.scenario.seed,
                ));
                self.event(format!("workload {} started", args.name));
                if args.background {
                    self.background.push((
                        args.name.clone(),
                        format!("workload {}", args.name),
                        task,
                    ));
                } else {
                    let report = task
                        .await
                        .map_err(|error| anyhow!("workload crashed: {error}"))??;
                    self.event(format!("workload {} finished: {report}", args.name));
                }
                Ok("done".into())
            }
            Step::Nemesis(args) => {
                let task = tokio::spawn(nemesis(
                    self.harness.clone(),
                    self.recorder.clone(),
                    args.clone(),
                    self.scenario.seed,
                    self.verbose,
                ));
                self.background
                    .push((args.name.clone(), format!("nemesis {}", args.name), task));
                Ok("done".into())
            }
            Step::ExpectLeader(change) => {
                let old = self
                    .old_leader
                    .ok_or_else(|| anyhow!("no `mark` step before"))?;
                let marked_term = self.marked_term.unwrap_or(0);
                let leader = self
                    .harness
                    .wait_for_leader(Duration::from_secs(20), None, 0)
                    .await?;
                let ok = match change {
                    LeaderChange::Changed => leader.id != old && leader.term > marked_term,
                    LeaderChange::Unchanged => leader.id == old && leader.term == marked_term,
                };
                if !ok {
                    bail!(
                        "leader was node {old} in term {marked_term}, is node {} in term {}",
                        leader.id,
                        leader.term
                    );
                }
                Ok("passed".into())
            }
            Step::ExpectTerm(TermStep {
                min_increase,
                max_increase,
            }) => {
                let marked = self
                    .marked_term
                    .ok_or_else(|| anyhow!("no `mark` step before"))?;
                let leader = self
                    .harness
                    .wait_for_leader(Duration::from_secs(20), None, 0)
                    .await?;
                let view = self.harness.view().await;
                let highest = view
                    .statuses
                    .values()
                    .map(|status| status.term)
                    .max()
                    .unwrap_or(leader.term);
                let increase = highest.saturating_sub(marked);
                if min_increase.is_some_and(|min| increase < min)
                    || max_increase.is_some_and(|max| increase > max)
                {
                    bail!("term went from {marked} to {highest} (+{increase})");
                }
                Ok("passed".into())
            }
            Step::ExpectSnapshotCatchUp(target) => {
                let Target::Named(name) = target else {
                    bail!("expect_snapshot_catch_up takes a node remembered (with `remember`) while it was up");
                };
                let (id, before) = self
                    .named
                    .get(name)
                    .cloned()
                    .ok_or_else(|| anyhow!("no node remembered as {name:?}"))?;
                let before = before
                    .ok_or_else(|| anyhow!("node {id} did not answer when it was remembered"))?;
                let leader = self
                    .harness
                    .wait_for_leader(Duration::from_secs(20), None, 0)
                    .await?;
                let now = self
                    .harness
                    .client
                    .status(id, STATUS_TIMEOUT)
                    .await
                    .map_err(|error| anyhow!(error))?;
                let problems: Vec<String> = [
                    (leader.snapshot_index <= before.last_log_index).then(|| {
                        format!(
                            "the leader's snapshot index {} does not pass node {id}'s old log end {} (no compaction: plain replication would do)",
                            leader.snapshot_index, before.last_log_index
                        )
                    }),
                    (now.snapshot_index <= before.last_log_index).then(|| {
                        format!("node {id}'s snapshot index {} did not pass its old log end {}", now.snapshot_index, before.last_log_index)
                    }),
                    (now.applied_index < leader.snapshot_index)
                        .then(|| format!("node {id} applied {} < the leader's snapshot {}", now.applied_index, leader.snapshot_index)),
                ]
                .into_iter()
                .flatten()
                .collect();
                if !problems.is_empty() {
                    bail!("{}", problems.join("; "));
                }
                Ok("passed".into())
            }
            Step::Counter(args) => {
                let targets = self.targets_of(&args.at).await?;
                let task = tokio::spawn(counter(
                    self.harness.clone(),
                    args.clone(),
                    targets,
                    self.scenario.seed,
                ));
                self.start_background("counter", &args.name, task);
                Ok("done".into())
            }
            Step::Bank(args) => {
                if args.accounts < 2 {
                    bail!("a bank needs at least two accounts");
                }
                let targets = self.targets_of(&args.at).await?;
                self.banks.insert(
                    args.name.clone(),
                    (args.accounts, args.balance * u64::from(args.accounts)),
                );
                let task = tokio::spawn(bank(
                    self.harness.clone(),
                    args.clone(),
                    targets,
                    self.scenario.seed,
                ));
                self.start_background("bank", &args.name, task);
                Ok("done".into())
            }
            Step::ExpectCounter(name) => {
                let value = self.read_retried(name).await?;
                let value: u64 = match value {
                    None => 0,
                    Some(text) => text
                        .parse()
                        .map_err(|_| anyhow!("counter {name} holds {text:?}"))?,
                };
                let history = self.recorder.snapshot();
                let increments = history
                    .operations
                    .iter()
                    .filter(|op| op.kind == OpKind::Increment && op.key == *name);
                let (mut acknowledged, mut unknown) = (0u64, 0u64);
                for op in increments {
                    match (op.status, op.swapped) {
                        (OpStatus::Ok, Some(true)) => acknowledged += 1,
                        (OpStatus::Unknown, _) => unknown += 1,
                        _ => {}
                    }
                }
                self.event(format!(
                    "counter {name}: {value}, {acknowledged} increments acknowledged, {unknown} unknown"
                ));
                if value < acknowledged {
                    bail!("counter {name} holds {value}, but {acknowledged} increments were acknowledged: {} lost", acknowledged - value);
                }
                if value > acknowledged + unknown {
                    bail!("counter {name} holds {value}, more than the {acknowledged} acknowledged and {unknown} unknown increments");
                }
                Ok("passed".into())
            }
            Step::ExpectBankTotal(name) => {
                let (accounts, total) = *self
                    .banks
                    .get(name)
                    .ok_or_else(|| anyhow!("no bank {name:?} started before"))?;
                let (prefix, _) = bank_account(name, 0);
                let history = self.recorder.snapshot();
                let audits: Vec<&Operation> = history
                    .operations
                    .iter()
                    .filter(|op| {
                        op.kind == OpKind::Audit && op.key == prefix && op.status == OpStatus::Ok
                    })
                    .collect();
                if let Some(bad) = audits
                    .iter()
                    .find(|op| op.read != Some(Some(total.to_string())))
                {
                    bail!("audit #{} read {:?}, not {total}", bad.id, bad.read);
                }
                let request = Request::Audit {
                    prefix: prefix.clone(),
                };
                let deadline = Instant::now() + RETRY_WINDOW;
                let sum = loop {
                    let node = self.resolve_one(&Target::Any).await?;
                    let operation = self
                        .harness
                        .client
                        .execute("steps", self.step_process, node, &request)
                        .await;
                    if let Some(Some(sum)) = operation.read {
                        break sum;
                    }
                    if Instant::now() > deadline {
                        bail!(
                            "cannot audit bank {name}: {}",
                            operation.error.unwrap_or_default()
                        );
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                };
                self.event(format!(
                    "bank {name}: {} audits during the run, final total {sum} over {accounts} accounts",
                    audits.len()
                ));
                if sum != total.to_string() {
                    bail!("bank {name} ends with a total of {sum}, not {total}");
                }
                if audits.is_empty() {
                    bail!("no audit of bank {name} succeeded during the run");
                }
                Ok("passed".into())
            }
            Step::Compact(args) => {
                let leader = self.harness.leader().await?;
                let current = self
                    .harness
                    .client
                    .range(leader, range_of("", None, 0))
                    .await
                    .map_err(|status| anyhow!("reading the revision: {status}"))?
                    .header
                    .map_or(0, |header| header.revision);
                let revision = current - i64::try_from(args.keep).unwrap_or(i64::MAX);
                if revision < 2 {
                    bail!(
                        "the store is at revision {current}: nothing to compact keeping {}",
                        args.keep
                    );
                }
                self.harness
                    .client
                    .compact(leader, revision)
                    .await
                    .map_err(|status| anyhow!("compacting at {revision}: {status}"))?;
                self.event(format!(
                    "compacted at revision {revision} (current {current})"
                ));
                self.compacted = Some(revision);
                Ok("done".into())
            }
            Step::ExpectRangesAgree(args) => {
                let leader = self.harness.leader().await?;
                let client = self.harness.client.clone();
                let current = client
                    .range(leader, range_of(&args.prefix, None, 0))
                    .await
                    .map_err(|status| anyhow!("reading the revision: {status}"))?
                    .header
                    .map_or(0, |header| header.revision);
                let oldest = (current - i64::try_from(args.revisions).unwrap_or(i64::MAX))
                    .max(self.compacted.unwrap_or(1))
                    .max(1);
                let nodes = self.resolve(&Target::All).await?;
                let mut compared = 0;
                for revision in oldest..=current {
                    let expected = client
                        .range(leader, range_of(&args.prefix, Some(()), revision))
                        .await
                        .map_err(|status| anyhow!("leader at revision {revision}: {status}"))?
                        .kvs;
                    for &node in &nodes {
                        let got = client
                            .range(node, range_of(&args.prefix, Some(()), revision))
                            .await
                            .map_err(|status| {
                                anyhow!("node {node} at revision {revision}: {status}")
                            })?
                            .kvs;
                        if got != expected {
                            bail!(
                                "node {node} at revision {revision}: {} pairs, the leader's {}: {}",
                                got.len(),
                                expected.len(),
                                describe_difference(&got, &expected)
                            );
                        }
                        compared += 1;
                    }
                }
                if let Some(compacted) = self.compacted.filter(|compacted| *compacted > 1) {
                    for &node in &nodes {
                        match client
                            .range(node, range_of(&args.prefix, Some(()), compacted - 1))
                            .await
                        {
                            Err(status) if status.code() == tonic::Code::OutOfRange => {}
                            Err(status) => bail!(
                                "node {node} at compacted revision {}: {status}",
                                compacted - 1
                            ),
                            Ok(_) => {
                                bail!("node {node} served compacted revision {}", compacted - 1)
                            }
                        }
                    }
                }
                self.event(format!(
                    "{compared} ranges compared at revisions {oldest}..={current} on nodes {nodes:?}"
                ));
                Ok("passed".into())
            }
            Step::Watch(args) => {
                if self.watchers.contains_key(&args.name) {
                    bail!("a watcher named {:?} already runs", args.name);
                }
                let node = self.resolve_one(&args.node).await?;
                let watcher = Watcher::start(
                    self.harness.clone(),
                    &args.name,
                    &args.prefix,
                    node,
                    self.scenario.seed,
                    self.verbose,
                )
                .await?;
                let start = watcher.log.lock().expect("watch log lock").start;
                self.event(format!(
                    "watch {} of {:?} created at node {node} from revision {start}",
                    args.name, args.prefix
                ));
                self.watchers.insert(args.name.clone(), watcher);
                Ok("done".into())
            }
            Step::ExpectWatchesMatchHistory(args) => {
                let (checks, result) = watcher::check_watchers(
                    &self.harness,
                    &mut self.watchers,
                    &self.recorder,
                    args.timeout.0,
                )
                .await;
                self.watch_checks.extend(checks);
                result
            }
            Step::Lease(args) => {
                if self.leases.contains_key(&args.name) {
                    bail!("a lease named {:?} already runs", args.name);
                }
                let targets = self.targets_of(&args.at).await?;
                let watch_node = self.resolve_one(&args.watch_at).await?;
                let (lease, owner) = LeaseRun::start(
                    self.harness.clone(),
                    args,
                    targets,
                    watch_node,
                    self.scenario.seed,
                    self.verbose,
                )
                .await?;
                self.leases.insert(args.name.clone(), lease);
                self.start_background("lease", &args.name, owner);
                Ok("done".into())
            }
            Step::ExpectLeaseExpiry(name) => {
                self.await_named("lease", name).await?;
                let election_timeout = self.election_timeout();
                let harness = self.harness.clone();
                let lease = self
                    .leases
                    .get_mut(name)
                    .ok_or_else(|| anyhow!("no lease {name:?} started before"))?;
                let (checks, result) = lease.expect_expiry(&harness, election_timeout).await;
                if let Some(checks) = checks {
                    self.lease_checks.insert(name.clone(), checks);
                }
                result
            }
            Step::Lock(args) => {
                if self.locks.contains_key(&args.name) {
                    bail!("a lock named {:?} already runs", args.name);
                }
                let targets = self.targets_of(&args.at).await?;
                let watch_node = self.resolve_one(&args.watch_at).await?;
                let (lock, clients) = LockRun::start(
                    self.harness.clone(),
                    args,
                    targets,
                    watch_node,
                    self.scenario.seed,
                    self.verbose,
                )
                .await?;
                self.locks.insert(args.name.clone(), lock);
                self.start_background("lock", &args.name, clients);
                Ok("done".into())
            }
            Step::ExpectLockSafety(name) => {
                self.await_named("lock", name).await?;
                let harness = self.harness.clone();
                let lock = self
                    .locks
                    .get_mut(name)
                    .ok_or_else(|| anyhow!("no lock {name:?} started before"))?;
                let (checks, result) = lock.expect_safety(&harness).await;
                if let Some(checks) = checks {
                    self.lock_checks.insert(name.clone(), checks);
                }
                result
            }
            Step::FinalValues(keys) => {
                for key in keys {
                    let value = self.read_retried(key).await?;
                    self.final_values
                        .insert(key.clone(), value.unwrap_or_else(|| "(absent)".into()));
                }
                Ok("done".into())
            }
        }
    }
}

/// A range of every key with `prefix` (`""`: every key); serializable at
/// `revision` when `serializable` is given (each node answers from its own
/// state), else linearizable at the current revision.
pub(super) fn range_of(prefix: &str, serializable: Option<()>, revision: i64) -> pb::RangeRequest {
    let (key, range_end) = if prefix.is_empty() {
        (vec![0], vec![0])
    } else {
        (
            prefix.as_bytes().to_vec(),
            crate::client::prefix_end(prefix),
        )
    };
    pb::RangeRequest {
        key,
        range_end,
        revision,
        consistency: if serializable.is_some() {
            pb::Consistency::Serializable
        } else {
            pb::Consistency::Linearizable
        } as i32,
        ..pb::RangeRequest::default()
    }
}

/// The first pair where two range answers differ.
fn describe_difference(got: &[pb::KeyValue], expected: &[pb::KeyValue]) -> String {
    let show = |pair: Option<&pb::KeyValue>| match pair {
        None => "nothing".to_string(),
        Some(pair) => format!(
            "{}={} (create {}, mod {}, version {})",
            String::from_utf8_lossy(&pair.key),
            String::from_utf8_lossy(&pair.value),
            pair.create_revision,
            pair.mod_revision,
            pair.version
        ),
    };
    let position = got
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(expected.len()));
    format!(
        "first difference at pair {position}: {} against {}",
        show(got.get(position)),
        show(expected.get(position))
    )
}
