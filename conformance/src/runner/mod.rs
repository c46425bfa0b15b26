//! Runs one scenario: starts its cluster, executes the steps, checks the
//! history, writes the artifacts and returns the deterministic outcome.
//!
//! - `harness`: observing the cluster (who leads, who caught up) and the
//!   faults that combine several container actions;
//! - `steps`: the scenario steps;
//! - `background`: workloads and the nemesis, which run while steps go on;
//! - `watcher`: background watchers that resume elsewhere, and their check;
//! - `lease`: a lease whose owner dies, its readers, and the expiry check;
//! - `lock`: clients taking a lock with fencing tokens, and its check.

mod background;
mod harness;
mod lease;
mod lock;
mod steps;
mod watcher;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::Serialize;
use testcontainers::bollard::Docker;

use crate::checker::lease::LeaseChecks;
use crate::checker::lock::LockChecks;
use crate::checker::watch::WatchChecks;
use crate::checker::{self, Limits, Report, Verdict};
use crate::client::{Client, Endpoints, Recorder, Timeouts};
use crate::cluster::{Cluster, ClusterConfig, NAME_PREFIX};
use crate::history::{History, OpKind, OpStatus, Operation};
use crate::scenario::Scenario;
use crate::timeline;
use harness::Harness;
use steps::Run;

/// Environment every node gets unless the scenario or the command line says
/// otherwise: fast elections for short scenarios.
pub fn default_node_env() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("KVSTORE_ELECTION_TIMEOUT_MS".to_string(), "500".to_string()),
        (
            "KVSTORE_HEARTBEAT_INTERVAL_MS".to_string(),
            "50".to_string(),
        ),
    ])
}

/// How to run scenarios.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Image to test.
    pub image: String,
    /// Environment for every node, over the defaults and the scenario's.
    pub node_env: BTreeMap<String, String>,
    /// Client API port inside the container.
    pub client_port: u16,
    /// Raft peer port inside the container.
    pub peer_port: u16,
    /// Where `SCENARIO/{history.json,outcome.yaml,timeline.html,node-N.log}` go.
    pub out_dir: PathBuf,
    /// Unique id of this run (names and labels).
    pub run_id: String,
    /// Client timeouts.
    pub timeouts: Timeouts,
    /// Checker limits.
    pub limits: Limits,
    /// Print each step as it runs.
    pub verbose: bool,
}

/// The deterministic outcome of a scenario: what the snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Scenario name.
    pub scenario: String,
    /// Every step passed and every check holds.
    pub passed: bool,
    /// Each step and its result (`passed`, `done`, `FAILED: ...`, `skipped`).
    pub steps: Vec<StepOutcome>,
    /// Whole-history checks.
    pub checks: Checks,
    /// Values read by `final_values` steps (`(absent)` for a missing key).
    pub final_values: BTreeMap<String, String>,
}

/// One step's line in the outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepOutcome {
    /// The step, described.
    pub step: String,
    /// What happened.
    pub result: String,
}

/// Checks over the whole history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checks {
    /// The linearizability checker found a linearization for every key
    /// (false on a violation, and when the search gave up).
    pub linearizable: bool,
    /// At least one client operation was acknowledged.
    pub operations_acknowledged: bool,
    /// Per watcher, what `expect_watches_match_history` found (absent in
    /// scenarios without watchers).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub watches: BTreeMap<String, WatchChecks>,
    /// Per lease, what `expect_lease_expiry` found (absent in scenarios
    /// without leases).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub leases: BTreeMap<String, LeaseChecks>,
    /// Per lock, what `expect_lock_safety` found (absent in scenarios
    /// without locks).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub locks: BTreeMap<String, LockChecks>,
}

impl Outcome {
    /// The outcome as YAML (the snapshot's text).
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).expect("an outcome serializes")
    }
}

/// Everything about one scenario run.
#[derive(Debug, Clone)]
pub struct ScenarioRun {
    /// The deterministic outcome.
    pub outcome: Outcome,
    /// Everything recorded.
    pub history: History,
    /// The checker's report.
    pub report: Report,
    /// Wall time of the scenario, cluster start and removal included.
    pub elapsed: Duration,
    /// Where the artifacts are.
    pub out_dir: PathBuf,
    /// The first failure, for people.
    pub failure: Option<String>,
}

/// Starts a cluster of `nodes` nodes of `options.image` with the default
/// environment and waits for a leader: for `kvstore-conformance exec`.
pub async fn start_ready_cluster(
    docker: &Docker,
    nodes: u64,
    options: &RunOptions,
) -> Result<Arc<Cluster>> {
    let mut env = default_node_env();
    env.extend(options.node_env.clone());
    let endpoints = Endpoints::default();
    let config = ClusterConfig {
        image: options.image.clone(),
        nodes,
        env,
        client_port: options.client_port,
        peer_port: options.peer_port,
        prefix: cluster_prefix(&options.run_id, "exec"),
        run: options.run_id.clone(),
    };
    let cluster = Arc::new(Cluster::start(docker.clone(), config, endpoints.clone()).await?);
    let harness = Harness {
        cluster: cluster.clone(),
        client: Client::new(endpoints, Recorder::new("exec", 0), options.timeouts),
        nodes,
    };
    harness
        .wait_for_leader(Duration::from_secs(30), None, 0)
        .await?;
    harness.wait_caught_up(Duration::from_secs(30)).await?;
    Ok(cluster)
}

/// A file-name-safe name for a run: `kvconf-RUN-SCENARIO`.
pub fn cluster_prefix(run_id: &str, scenario: &str) -> String {
    let scenario: String = scenario
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("{NAME_PREFIX}{run_id}-{scenario}")
}

/// Runs one scenario from start to finish. Never panics on a scenario
/// failure: the outcome says what failed.
pub async fn run_scenario(
    docker: &Docker,
    scenario: &Scenario,
    options: &RunOptions,
) -> ScenarioRun {
    let started = Instant::now();
    let recorder = Recorder::new(&scenario.name, scenario.seed);
    let endpoints = Endpoints::default();
    let client = Client::new(endpoints.clone(), recorder.clone(), options.timeouts);
    let mut env = default_node_env();
    env.extend(scenario.cluster.env.clone());
    env.extend(options.node_env.clone());
    let config = ClusterConfig {
        image: options.image.clone(),
        nodes: scenario.cluster.nodes,
        env,
        client_port: options.client_port,
        peer_port: options.peer_port,
        prefix: cluster_prefix(&options.run_id, &scenario.name),
        run: options.run_id.clone(),
    };
    let out_dir = options.out_dir.join(&scenario.name);
    let mut steps: Vec<StepOutcome> = Vec::new();
    let mut failure: Option<String> = None;
    let mut final_values = BTreeMap::new();
    let mut watches = BTreeMap::new();
    let mut leases = BTreeMap::new();
    let mut locks = BTreeMap::new();
    let mut logs: BTreeMap<u64, String> = BTreeMap::new();

    match Cluster::start(docker.clone(), config, endpoints).await {
        Err(error) => {
            failure = Some(format!("cannot start the cluster: {error:#}"));
            steps.push(StepOutcome {
                step: "start the cluster".into(),
                result: format!("FAILED: {error:#}"),
            });
        }
        Ok(cluster) => {
            let cluster = Arc::new(cluster);
            let harness = Harness {
                cluster: cluster.clone(),
                client: client.clone(),
                nodes: scenario.cluster.nodes,
            };
            let mut run = Run::new(scenario, harness, recorder.clone(), options.verbose);
            for (index, step) in scenario.steps.iter().enumerate() {
                let description = step.describe();
                if failure.is_some() {
                    steps.push(StepOutcome {
                        step: description,
                        result: "skipped".into(),
                    });
                    continue;
                }
                if options.verbose {
                    eprintln!(
                        "  [{:>7.3}s] step {}: {description}",
                        recorder.now_us() as f64 / 1e6,
                        index + 1
                    );
                }
                recorder.event(format!("step {}: {description}", index + 1));
                let result = match run.step(step).await {
                    Ok(result) => result,
                    Err(error) => {
                        failure = Some(format!("step {} ({description}): {error:#}", index + 1));
                        format!("FAILED: {error:#}")
                    }
                };
                steps.push(StepOutcome {
                    step: description,
                    result,
                });
            }
            // Background work still running ends with the scenario.
            for (name, handle) in run.take_background() {
                if failure.is_some() {
                    // Aborting drops its JoinSet, which aborts its clients.
                    handle.abort();
                    let _ = handle.await;
                    continue;
                }
                match handle.await {
                    Ok(Ok(report)) => recorder.event(format!("{name} finished: {report}")),
                    Ok(Err(error)) => failure = Some(format!("{name}: {error:#}")),
                    Err(error) => failure = Some(format!("{name} crashed: {error}")),
                }
            }
            final_values = run.take_final_values();
            watches = run.take_watch_checks();
            (leases, locks) = run.take_lease_and_lock_checks();
            recorder.add_watch_events(run.watch_events());
            drop(run);
            for id in cluster.ids() {
                logs.insert(id, cluster.logs(id).await);
            }
            // Every task holding the cluster has ended by now; give stragglers
            // a moment, then remove it (or leave it to Drop).
            let mut cluster = cluster;
            for _ in 0..100 {
                match Arc::try_unwrap(cluster) {
                    Ok(mut owned) => {
                        owned.remove().await;
                        break;
                    }
                    Err(shared) => {
                        cluster = shared;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }

    let history = recorder.snapshot();
    let report = tokio::task::spawn_blocking({
        let history = history.clone();
        let limits = options.limits;
        move || checker::check(&history, limits)
    })
    .await
    .unwrap_or_else(|error| panic!("the checker panicked: {error}"));
    let acknowledged = history.acknowledged() > 0;
    if failure.is_none() {
        if report.verdict != Verdict::Linearizable {
            failure = Some(format!(
                "history is not linearizable: {}",
                describe_violation(&history, &report)
            ));
        } else if !acknowledged {
            failure = Some("no client operation was acknowledged".into());
        }
    }
    let outcome = Outcome {
        scenario: scenario.name.clone(),
        passed: failure.is_none(),
        steps,
        checks: Checks {
            linearizable: report.verdict == Verdict::Linearizable,
            operations_acknowledged: acknowledged,
            watches,
            leases,
            locks,
        },
        final_values,
    };
    if let Err(error) = write_artifacts(&out_dir, &outcome, &history, &report, &logs) {
        eprintln!(
            "warning: cannot write the artifacts of {}: {error:#}",
            scenario.name
        );
    }
    ScenarioRun {
        outcome,
        history,
        report,
        elapsed: started.elapsed(),
        out_dir,
        failure,
    }
}

/// The counterexample as text, one operation a line.
pub fn describe_violation(history: &History, report: &Report) -> String {
    let Some(violation) = &report.violation else {
        return match report.verdict {
            Verdict::Inconclusive => format!(
                "the search gave up on keys {}",
                report.inconclusive_keys.join(", ")
            ),
            _ => "no violation".into(),
        };
    };
    let by_id: BTreeMap<usize, &Operation> =
        history.operations.iter().map(|op| (op.id, op)).collect();
    let mut text = format!(
        "key {:?}: these {} operations have no linearization{}:",
        violation.key,
        violation.counterexample.len(),
        if violation.minimal {
            ""
        } else {
            " (not fully shrunk)"
        }
    );
    for id in &violation.counterexample {
        if let Some(op) = by_id.get(id) {
            let complete = if op.status == OpStatus::Unknown && op.kind != OpKind::Get {
                "     ?    ".to_string()
            } else {
                format!("{:>8.1}ms", op.complete_us as f64 / 1000.0)
            };
            text.push_str(&format!(
                "\n    #{id:<5} [{:>8.1}ms, {complete}] node {} {:<28} {}{}",
                op.invoke_us as f64 / 1000.0,
                op.node,
                op.client,
                op.describe(),
                if violation.relaxed.contains(id) {
                    " (answer ignored)"
                } else {
                    ""
                }
            ));
        }
    }
    let stuck: Vec<String> = violation.stuck.iter().map(|id| format!("#{id}")).collect();
    text.push_str(&format!(
        "\n    after linearizing {} of them, none of {} could come next",
        violation.longest.len(),
        stuck.join(", ")
    ));
    if report.violating_keys.len() > 1 {
        text.push_str(&format!(
            "\n    (keys without a linearization: {})",
            report.violating_keys.join(", ")
        ));
    }
    text
}

#[derive(Serialize)]
struct HistoryFile<'a> {
    history: &'a History,
    check: &'a Report,
}

fn write_artifacts(
    directory: &Path,
    outcome: &Outcome,
    history: &History,
    report: &Report,
    logs: &BTreeMap<u64, String>,
) -> Result<()> {
    if directory.exists() {
        std::fs::remove_dir_all(directory)
            .with_context(|| format!("cannot clear {}", directory.display()))?;
    }
    std::fs::create_dir_all(directory)
        .with_context(|| format!("cannot create {}", directory.display()))?;
    std::fs::write(directory.join("outcome.yaml"), outcome.to_yaml())?;
    let file = HistoryFile {
        history,
        check: report,
    };
    std::fs::write(
        directory.join("history.json"),
        serde_json::to_string_pretty(&file)?,
    )?;
    std::fs::write(
        directory.join("timeline.html"),
        timeline::render(history, report),
    )?;
    for (id, text) in logs {
        std::fs::write(directory.join(format!("node-{id}.log")), text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_docker_names() {
        assert_eq!(cluster_prefix("r1", "Leader Kill"), "kvconf-r1-leader-kill");
    }

    #[test]
    fn outcome_yaml_is_stable() {
        let outcome = Outcome {
            scenario: "s".into(),
            passed: true,
            steps: vec![StepOutcome {
                step: "put a=1 at leader, expect ok".into(),
                result: "passed".into(),
            }],
            checks: Checks {
                linearizable: true,
                operations_acknowledged: true,
                watches: BTreeMap::new(),
                leases: BTreeMap::new(),
                locks: BTreeMap::new(),
            },
            final_values: BTreeMap::from([("a".into(), "1".into())]),
        };
        assert_eq!(
            outcome.to_yaml(),
            "scenario: s\npassed: true\nsteps:\n- step: put a=1 at leader, expect ok\n  result: passed\nchecks:\n  linearizable: true\n  operations_acknowledged: true\nfinal_values:\n  a: '1'\n"
        );
    }
}
