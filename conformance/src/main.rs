//! kvstore-conformance: a black-box conformance runner for kvstore (or any
//! other implementation of its protos).
//!
//! It reads YAML scenarios, starts a fresh cluster per scenario in docker
//! (testcontainers, the locally built image, private networks), drives it
//! through the generated gRPC client, injects faults (kill, stop/start,
//! pause, partitions), records every client operation, checks the history
//! for linearizability, and reports a deterministic outcome that the test
//! suite snapshot-tests with insta.

mod checker;
mod client;
mod cluster;
mod docker_api;
mod history;
mod runner;
mod scenario;
mod timeline;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};

use checker::{Limits, Verdict};
use client::Timeouts;
use history::History;
use runner::{RunOptions, ScenarioRun};
use scenario::Scenario;

/// Exit code when a scenario failed.
const EXIT_FAILED: u8 = 1;
/// Exit code for bad usage or a broken environment (no docker, no image).
const EXIT_ERROR: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "kvstore-conformance",
    version,
    about = "Black-box conformance suite for kvstore clusters in docker."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run scenarios (all of SCENARIOS_DIR when none is named). Exit code 0:
    /// all passed; 1: a scenario failed; 2: usage or environment error.
    Run(RunArgs),
    /// Re-check a saved history.json and rewrite its timeline.html.
    Check {
        /// A history.json written by `run`.
        history: PathBuf,
    },
    /// List the scenarios with what they catch.
    List {
        /// Directory of the scenario files.
        #[arg(long, default_value = "scenarios")]
        scenarios_dir: PathBuf,
    },
    /// Start a fresh cluster, wait for a leader, run COMMAND with
    /// KVSTORE_ENDPOINTS (client ports) and KVSTORE_RAFT_ENDPOINTS (raft
    /// ports) set to the nodes' 127.0.0.1 addresses, remove the cluster, and
    /// exit with COMMAND's exit code.
    Exec {
        /// Image to run; it must exist locally.
        #[arg(
            long,
            env = "KVSTORE_CONFORMANCE_IMAGE",
            default_value = "kvstore:local"
        )]
        image: String,
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Client API port inside the containers.
        #[arg(long, default_value_t = 50051)]
        client_port: u16,
        /// Raft peer port inside the containers.
        #[arg(long, default_value_t = 60051)]
        peer_port: u16,
        /// The command and its arguments.
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// Remove containers and networks left by runs that were killed.
    Cleanup,
}

/// Arguments of `run`.
#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Scenario names (file stems) or paths to .yaml files.
    scenarios: Vec<String>,
    /// Image to test; it must exist locally (nothing is pulled).
    #[arg(
        long,
        env = "KVSTORE_CONFORMANCE_IMAGE",
        default_value = "kvstore:local"
    )]
    image: String,
    /// Directory of the scenario files.
    #[arg(long, default_value = "scenarios")]
    scenarios_dir: PathBuf,
    /// Where per-scenario artifacts go: SCENARIO/{outcome.yaml,history.json,timeline.html,node-N.log}.
    #[arg(long, default_value = "conformance/out")]
    out: PathBuf,
    /// Extra environment for every node, KEY=VALUE (repeatable); wins
    /// over the scenario's and the defaults.
    #[arg(long = "node-env", value_name = "KEY=VALUE", value_parser = parse_env)]
    node_env: Vec<(String, String)>,
    /// Client API port inside the containers.
    #[arg(long, default_value_t = 50051)]
    client_port: u16,
    /// Raft peer port inside the containers.
    #[arg(long, default_value_t = 60051)]
    peer_port: u16,
    /// Also compare each outcome with the insta snapshot in this
    /// directory (`outcomes__SCENARIO.snap`); a difference fails.
    #[arg(long, value_name = "DIR")]
    compare_snapshots: Option<PathBuf>,
    /// gRPC deadline of each client request, in milliseconds.
    #[arg(long, default_value_t = 2500)]
    request_timeout_ms: u64,
    /// Print every step, operation and fault as it happens.
    #[arg(short, long)]
    verbose: bool,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    if key.is_empty() {
        return Err(format!("{text:?} has an empty name"));
    }
    Ok((key.to_string(), value.to_string()))
}

fn run_id() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{:x}{:x}", seconds % 0x10_0000, std::process::id() % 0x1000)
}

fn select_scenarios(names: &[String], directory: &Path) -> Result<Vec<Scenario>> {
    if names.is_empty() {
        let scenarios = Scenario::load_all(directory)?;
        if scenarios.is_empty() {
            bail!("no *.yaml scenario in {}", directory.display());
        }
        return Ok(scenarios);
    }
    names
        .iter()
        .map(|name| {
            let path = if name.ends_with(".yaml") {
                PathBuf::from(name)
            } else {
                directory.join(format!("{name}.yaml"))
            };
            Scenario::load(&path)
        })
        .collect()
}

fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs_f64();
    if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else {
        format!(
            "{}m{:02}s",
            duration.as_secs() / 60,
            duration.as_secs() % 60
        )
    }
}

/// The body of an insta snapshot file (after its `---` header).
fn snapshot_body(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("---\n")?;
    let end = rest.find("\n---\n")?;
    Some(&rest[end + 5..])
}

fn print_summary(runs: &[(ScenarioRun, Option<String>)], elapsed: Duration) {
    println!();
    println!(
        "{:<38} {:<6} {:>7} {:>22} {:>13} {:>8}",
        "SCENARIO", "RESULT", "STEPS", "OPS ok/failed/unknown", "LINEARIZABLE", "TIME"
    );
    for (run, snapshot_problem) in runs {
        let passed_steps = run
            .outcome
            .steps
            .iter()
            .filter(|step| step.result == "passed" || step.result == "done")
            .count();
        let (ok, failed, unknown) = run.history.counts();
        let passed = run.outcome.passed && snapshot_problem.is_none();
        println!(
            "{:<38} {:<6} {:>7} {:>22} {:>13} {:>8}",
            run.outcome.scenario,
            if passed { "pass" } else { "FAIL" },
            format!("{passed_steps}/{}", run.outcome.steps.len()),
            format!("{ok}/{failed}/{unknown}"),
            match run.report.verdict {
                Verdict::Linearizable => "true",
                Verdict::NotLinearizable => "false",
                Verdict::Inconclusive => "inconclusive",
            },
            format_duration(run.elapsed),
        );
    }
    let failed = runs
        .iter()
        .filter(|(run, problem)| !run.outcome.passed || problem.is_some())
        .count();
    println!();
    println!(
        "conformance: {} passed, {failed} failed",
        runs.len() - failed
    );
    println!("total time {}", format_duration(elapsed));
}

#[allow(clippy::too_many_arguments)]
async fn run(args: RunArgs, run_id: String) -> Result<u8> {
    let RunArgs {
        scenarios: names,
        image,
        scenarios_dir,
        out,
        node_env,
        client_port,
        peer_port,
        compare_snapshots,
        request_timeout_ms,
        verbose,
    } = args;
    let scenarios = select_scenarios(&names, &scenarios_dir)?;
    let setup = docker_api::prepare()?;
    let docker = docker_api::client(&setup).await?;
    cluster::check_image(&docker, &image).await?;
    let options = RunOptions {
        image: image.clone(),
        node_env: node_env.into_iter().collect::<BTreeMap<_, _>>(),
        client_port,
        peer_port,
        out_dir: out.clone(),
        run_id,
        timeouts: Timeouts {
            request: Duration::from_millis(request_timeout_ms),
            ..Timeouts::default()
        },
        limits: Limits::default(),
        verbose,
    };
    println!(
        "kvstore-conformance: {} scenario(s) against {image} (docker API {}.{}{}; run {}; artifacts in {})",
        scenarios.len(),
        setup.daemon_version.0,
        setup.daemon_version.1,
        if setup.shim { ", testcontainers through the API-version shim" } else { "" },
        options.run_id,
        out.display()
    );
    if !options.node_env.is_empty() {
        println!("  extra node environment: {:?}", options.node_env);
    }
    let started = Instant::now();
    let mut runs = Vec::new();
    for scenario in &scenarios {
        println!("== {} ({} steps)", scenario.name, scenario.steps.len());
        let run = runner::run_scenario(&docker, scenario, &options).await;
        let snapshot_problem = match &compare_snapshots {
            None => None,
            Some(directory) => {
                let path = directory.join(format!("outcomes__{}.snap", scenario.name));
                match std::fs::read_to_string(&path) {
                    Err(_) => Some(format!("no snapshot {}", path.display())),
                    Ok(text) => match snapshot_body(&text) {
                        Some(body) if body.trim_end() == run.outcome.to_yaml().trim_end() => None,
                        Some(_) => Some(format!("outcome differs from {}", path.display())),
                        None => Some(format!("{} is not an insta snapshot", path.display())),
                    },
                }
            }
        };
        match (&run.failure, &snapshot_problem) {
            (None, None) => println!(
                "   pass in {} ({} operations, artifacts in {})",
                format_duration(run.elapsed),
                run.history.operations.len(),
                run.out_dir.display()
            ),
            (failure, problem) => {
                if let Some(failure) = failure {
                    println!("   FAIL: {failure}");
                }
                if let Some(problem) = problem {
                    println!("   FAIL: {problem}");
                }
                println!(
                    "   history: {}  timeline: {}  node logs: {}",
                    run.out_dir.join("history.json").display(),
                    run.out_dir.join("timeline.html").display(),
                    run.out_dir.join("node-N.log").display()
                );
            }
        }
        runs.push((run, snapshot_problem));
    }
    print_summary(&runs, started.elapsed());
    let all_passed = runs
        .iter()
        .all(|(run, problem)| run.outcome.passed && problem.is_none());
    Ok(if all_passed { 0 } else { EXIT_FAILED })
}

async fn exec(
    image: String,
    nodes: u64,
    client_port: u16,
    peer_port: u16,
    command: Vec<String>,
) -> Result<u8> {
    let setup = docker_api::prepare()?;
    let docker = docker_api::client(&setup).await?;
    cluster::check_image(&docker, &image).await?;
    let options = RunOptions {
        image,
        node_env: BTreeMap::new(),
        client_port,
        peer_port,
        out_dir: PathBuf::new(),
        run_id: run_id(),
        timeouts: Timeouts::default(),
        limits: Limits::default(),
        verbose: false,
    };
    let cluster = runner::start_ready_cluster(&docker, nodes, &options).await?;
    let mut clients = Vec::new();
    let mut peers = Vec::new();
    for id in cluster.ids() {
        clients.push(format!(
            "127.0.0.1:{}",
            cluster.published_port(id, client_port).await?
        ));
        peers.push(format!(
            "127.0.0.1:{}",
            cluster.published_port(id, peer_port).await?
        ));
    }
    eprintln!(
        "kvstore-conformance exec: {nodes}-node cluster up; KVSTORE_ENDPOINTS={} KVSTORE_RAFT_ENDPOINTS={}",
        clients.join(","),
        peers.join(",")
    );
    let status = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .env("KVSTORE_ENDPOINTS", clients.join(","))
        .env("KVSTORE_RAFT_ENDPOINTS", peers.join(","))
        .status()
        .await;
    match Arc::try_unwrap(cluster) {
        Ok(mut cluster) => cluster.remove().await,
        Err(cluster) => drop(cluster),
    }
    let status = status.with_context(|| format!("cannot run {:?}", command[0]))?;
    Ok(status
        .code()
        .map(|code| code.clamp(0, 255) as u8)
        .unwrap_or(EXIT_FAILED))
}

fn check(path: &Path) -> Result<u8> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)?;
    let history: History = serde_json::from_value(value.get("history").cloned().unwrap_or(value))
        .context("not a history.json written by `run`")?;
    let report = checker::check(&history, Limits::default());
    let page = path.with_file_name("timeline.html");
    std::fs::write(&page, timeline::render(&history, &report))?;
    println!(
        "{}: {} operations, {:?}; timeline: {}",
        history.scenario,
        history.operations.len(),
        report.verdict,
        page.display()
    );
    if report.violation.is_some() {
        println!("{}", runner::describe_violation(&history, &report));
        return Ok(EXIT_FAILED);
    }
    Ok(0)
}

fn list(directory: &Path) -> Result<u8> {
    for scenario in Scenario::load_all(directory)? {
        println!(
            "{}\n    {}\n    catches: {}",
            scenario.name,
            scenario.description,
            scenario.catches.join("; ")
        );
    }
    Ok(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { history } => check(&history),
        Command::List { scenarios_dir } => list(&scenarios_dir),
        command => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|error| anyhow!("cannot start the runtime: {error}"))
            .and_then(|runtime| runtime.block_on(async_main(command))),
    };
    docker_api::cleanup();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("kvstore-conformance: error: {error:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

async fn async_main(command: Command) -> Result<u8> {
    match command {
        Command::Run(args) => {
            let id = run_id();
            let work = run(args, id.clone());
            tokio::select! {
                result = work => result,
                _ = tokio::signal::ctrl_c() => {
                    eprintln!("interrupted: removing this run's containers and networks");
                    let setup = docker_api::prepare()?;
                    let docker = docker_api::client(&setup).await?;
                    cluster::cleanup(&docker, Some(&id)).await?;
                    Ok(130)
                }
            }
        }
        Command::Exec {
            image,
            nodes,
            client_port,
            peer_port,
            command,
        } => exec(image, nodes, client_port, peer_port, command).await,
        Command::Cleanup => {
            let setup = docker_api::prepare()?;
            let docker = docker_api::client(&setup).await?;
            let (containers, networks) = cluster::cleanup(&docker, None).await?;
            println!("removed {containers} container(s) and {networks} network(s) left by conformance runs");
            Ok(0)
        }
        Command::Check { .. } | Command::List { .. } => unreachable!("handled without a runtime"),
    }
}
