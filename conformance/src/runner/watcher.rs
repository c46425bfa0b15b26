//! Background watchers (`watch` steps) and their check
//! (`expect_watches_match_history`).
//!
//! A watcher watches a prefix on one node and records every event with the
//! node it came from. When its stream fails (its node was killed, the
//! connection broke, or the stream went silent), it resumes on another
//! running node with `start_revision` = the last revision it saw + 1: the
//! client behaviour under test, which the protos promise misses nothing
//! and repeats nothing. Every `PROGRESS_INTERVAL` it asks for progress, so
//! it knows up to which revision it has everything, and a silent stream is
//! noticed.

use std::collections::{btree_map, BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use futures::StreamExt;
use kvstore_proto::kv::v1 as pb;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::harness::Harness;
use super::steps::range_of;
use crate::checker::watch::{
    check, revisions_to_read, PrefixState, Resume, WatchChecks, WatchInput,
};
use crate::client::{prefix_end, Recorder, WatchStream};
use crate::cluster::NodeState;
use crate::history::{EventKind, WatchEvent};

/// How often a watcher asks its stream for progress.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// A stream that answers nothing (no event, no progress) for this long
/// counts as failed: the watcher resumes elsewhere.
const SILENCE_MAX: Duration = Duration::from_secs(3);
/// Pause between attempts to resume.
const RESUME_PAUSE: Duration = Duration::from_millis(200);
/// How long a watch may take to be created.
const CREATE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the final linearizable range is retried.
const FINAL_READ_WINDOW: Duration = Duration::from_secs(15);
/// Ranges at past revisions in flight at once while reading the store's
/// history of a prefix.
const HISTORY_READS_IN_FLIGHT_MAX: usize = 8;

/// What a watcher saw so far.
#[derive(Debug, Clone)]
pub(super) struct WatchLog {
    /// The watched prefix.
    pub(super) prefix: String,
    /// The first revision the watch covers (the revision after the one the
    /// node reported when the watch was created).
    pub(super) start: i64,
    /// Every event, in arrival order.
    pub(super) events: Vec<WatchEvent>,
    /// Every event up to this revision has arrived (from progress answers).
    pub(super) progress: i64,
    /// Where it moved after a stream failed.
    pub(super) resumes: Vec<Resume>,
    /// Why the server ended it for good (cancelled, e.g. compacted).
    pub(super) fatal: Option<String>,
}

/// A running (or stopped) watcher.
pub(super) struct Watcher {
    pub(super) log: Arc<Mutex<WatchLog>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<Result<String>>>,
}

impl Watcher {
    /// Creates the watch at `node` (from the next revision) and keeps it
    /// running in the background.
    pub(super) async fn start(
        harness: Harness,
        name: &str,
        prefix: &str,
        node: u64,
        seed: u64,
        verbose: bool,
    ) -> Result<Watcher> {
        let (stream, created) = match open(&harness, node, prefix, 0).await {
            Ok(opened) => opened,
            Err(Open::Retry(error) | Open::Fatal(error)) => {
                bail!("cannot watch {prefix:?} at node {node}: {error}")
            }
        };
        let revision = created.header.map_or(0, |header| header.revision);
        let log = Arc::new(Mutex::new(WatchLog {
            prefix: prefix.to_string(),
            start: revision + 1,
            events: Vec::new(),
            progress: revision,
            resumes: Vec::new(),
            fatal: None,
        }));
        let (stop, stopped) = watch::channel(false);
        let follower = Follower {
            harness,
            name: name.to_string(),
            log: log.clone(),
            stopped,
            rng: SmallRng::seed_from_u64(seed ^ super::background::hash(name)),
            verbose,
        };
        let task = tokio::spawn(follower.run(stream, node));
        Ok(Watcher {
            log,
            stop,
            task: Some(task),
        })
    }

    /// Tells it to stop; its task, unless taken before.
    pub(super) fn stop(&mut self) -> Option<JoinHandle<Result<String>>> {
        let _ = self.stop.send(true);
        self.task.take()
    }

    pub(super) fn snapshot(&self) -> WatchLog {
        self.log.lock().expect("watch log lock").clone()
    }
}

enum Open {
    /// Try again (elsewhere).
    Retry(String),
    /// The server refused the watch for good.
    Fatal(String),
}

/// Opens a stream at `node` and creates the watch; returns the stream and
/// the `created` response.
async fn open(
    harness: &Harness,
    node: u64,
    prefix: &str,
    start_revision: i64,
) -> Result<(WatchStream, pb::WatchResponse), Open> {
    let mut stream = harness
        .client
        .open_watch(node)
        .await
        .map_err(|status| Open::Retry(format!("{:?}: {}", status.code(), status.message())))?;
    let (key, range_end) = if prefix.is_empty() {
        (vec![0], vec![0])
    } else {
        (prefix.as_bytes().to_vec(), prefix_end(prefix))
    };
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key,
                range_end,
                start_revision,
                prev_kv: true,
                ..pb::WatchCreateRequest::default()
            },
        )),
    };
    stream
        .requests
        .unbounded_send(create)
        .map_err(|error| Open::Retry(format!("the stream closed: {error}")))?;
    match tokio::time::timeout(CREATE_TIMEOUT, stream.responses.message()).await {
        Err(_) => Err(Open::Retry(format!(
            "no answer to the create within {CREATE_TIMEOUT:?}"
        ))),
        Ok(Err(status)) => Err(Open::Retry(format!(
            "{:?}: {}",
            status.code(),
            status.message()
        ))),
        Ok(Ok(None)) => Err(Open::Retry("the stream ended".into())),
        Ok(Ok(Some(response))) if response.canceled => Err(Open::Fatal(cancelled(&response))),
        Ok(Ok(Some(response))) if response.created => Ok((stream, response)),
        Ok(Ok(Some(response))) => Err(Open::Retry(format!(
            "the first response did not create the watch: {response:?}"
        ))),
    }
}

fn cancelled(response: &pb::WatchResponse) -> String {
    format!(
        "cancelled: {:?} (compact_revision {})",
        response.cancel_reason, response.compact_revision
    )
}

/// How following one stream ended.
enum Ended {
    /// Told to stop.
    Stopped,
    /// The stream failed: resume elsewhere.
    Failed(String),
    /// The server cancelled the watch: no resume can help.
    Cancelled(String),
}

/// The task behind a watcher.
struct Follower {
    harness: Harness,
    name: String,
    log: Arc<Mutex<WatchLog>>,
    stopped: watch::Receiver<bool>,
    rng: SmallRng,
    verbose: bool,
}

impl Follower {
    fn event(&self, text: String) {
        let recorder = self.harness.client.recorder();
        if self.verbose {
            eprintln!("    [{:>7.3}s] {text}", recorder.now_us() as f64 / 1e6);
        }
        recorder.event(text);
    }

    fn stop_requested(&self) -> bool {
        *self.stopped.borrow()
    }

    async fn run(mut self, mut stream: WatchStream, mut node: u64) -> Result<String> {
        loop {
            let reason = match self.follow(&mut stream, node).await {
                Ended::Stopped => break,
                Ended::Cancelled(reason) => {
                    self.log.lock().expect("watch log lock").fatal = Some(reason.clone());
                    bail!("watch {} at node {node}: {reason}", self.name);
                }
                Ended::Failed(reason) => reason,
            };
            let failed = node;
            // Resume on another running node, from the revision after the
            // last one seen.
            loop {
                if self.stop_requested() {
                    return Ok(self.summary());
                }
                let candidates: Vec<u64> = self
                    .harness
                    .cluster
                    .ids()
                    .into_iter()
                    .filter(|&id| {
                        id != failed && self.harness.cluster.state(id) == NodeState::Running
                    })
                    .collect();
                if candidates.is_empty() {
                    tokio::time::sleep(RESUME_PAUSE).await;
                    continue;
                }
                let next_node = candidates[self.rng.random_range(0..candidates.len())];
                let next_revision = {
                    let log = self.log.lock().expect("watch log lock");
                    log.events
                        .iter()
                        .map(|event| event.revision + 1)
                        .max()
                        .unwrap_or(log.start)
                };
                match open(&self.harness, next_node, &self.prefix(), next_revision).await {
                    Ok((opened, _)) => {
                        self.event(format!(
                            "watch {}: stream at node {failed} failed ({reason}); resumed at node {next_node} from revision {next_revision}",
                            self.name
                        ));
                        self.log
                            .lock()
                            .expect("watch log lock")
                            .resumes
                            .push(Resume {
                                from: failed,
                                to: next_node,
                                start_revision: next_revision,
                            });
                        stream = opened;
                        node = next_node;
                        break;
                    }
                    Err(Open::Fatal(error)) => {
                        self.log.lock().expect("watch log lock").fatal = Some(error.clone());
                        bail!(
                            "watch {} resuming at node {next_node} from revision {next_revision}: {error}",
                            self.name
                        );
                    }
                    Err(Open::Retry(_)) => tokio::time::sleep(RESUME_PAUSE).await,
                }
            }
        }
        Ok(self.summary())
    }

    fn prefix(&self) -> String {
        self.log.lock().expect("watch log lock").prefix.clone()
    }

    fn summary(&self) -> String {
        let log = self.log.lock().expect("watch log lock");
        format!(
            "{} events, resumed {} times",
            log.events.len(),
            log.resumes.len()
        )
    }

    /// Reads one stream until it fails or the watcher is told to stop.
    async fn follow(&mut self, stream: &mut WatchStream, node: u64) -> Ended {
        enum Wake {
            Stop,
            Tick,
            Message(Option<Result<pb::WatchResponse, tonic::Status>>),
        }
        let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
        let mut answered = Instant::now();
        loop {
            if self.stop_requested() {
                return Ended::Stopped;
            }
            let wake = tokio::select! {
                changed = self.stopped.changed() => match changed {
                    Ok(()) => continue,
                    // The watcher is gone: nobody will read the log.
                    Err(_) => Wake::Stop,
                },
                _ = ticker.tick() => Wake::Tick,
                message = stream.responses.next() => Wake::Message(message),
            };
            match wake {
                Wake::Stop => return Ended::Stopped,
                Wake::Tick => {
                    if answered.elapsed() > SILENCE_MAX {
                        return Ended::Failed(format!("no answer for {SILENCE_MAX:?}"));
                    }
                    let progress = pb::WatchRequest {
                        request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(
                            pb::WatchProgressRequest {},
                        )),
                    };
                    if let Err(error) = stream.requests.unbounded_send(progress) {
                        return Ended::Failed(format!("the request stream closed: {error}"));
                    }
                }
                Wake::Message(None) => return Ended::Failed("the stream ended".into()),
                Wake::Message(Some(Err(status))) => {
                    return Ended::Failed(format!("{:?}: {}", status.code(), status.message()))
                }
                Wake::Message(Some(Ok(response))) => {
                    answered = Instant::now();
                    if response.canceled {
                        return Ended::Cancelled(cancelled(&response));
                    }
                    self.take(&response, node);
                }
            }
        }
    }

    fn take(&self, response: &pb::WatchResponse, node: u64) {
        let at_us = self.harness.client.recorder().now_us();
        let mut log = self.log.lock().expect("watch log lock");
        if response.watch_id == -1 {
            let revision = response.header.as_ref().map_or(0, |header| header.revision);
            log.progress = log.progress.max(revision);
        }
        for event in &response.events {
            let kv = event.kv.clone().unwrap_or_default();
            let kind = if event.r#type() == pb::EventType::Delete {
                EventKind::Delete
            } else {
                EventKind::Put
            };
            log.events.push(WatchEvent {
                watch: self.name.clone(),
                node,
                at_us,
                revision: kv.mod_revision,
                kind,
                key: String::from_utf8_lossy(&kv.key).into_owned(),
                value: (kind == EventKind::Put)
                    .then(|| String::from_utf8_lossy(&kv.value).into_owned()),
                previous: event
                    .prev_kv
                    .as_ref()
                    .map(|previous| previous.mod_revision)
                    .filter(|revision| *revision > 0),
            });
        }
    }
}

/// Every running watcher stopped; their events, for the history.
pub(super) fn stop_all(
    watchers: &mut BTreeMap<String, Watcher>,
) -> Vec<(String, JoinHandle<Result<String>>)> {
    watchers
        .iter_mut()
        .filter_map(|(name, watcher)| watcher.stop().map(|task| (format!("watch {name}"), task)))
        .collect()
}

/// Every event of every watcher, watcher by watcher.
pub(super) fn events(watchers: &BTreeMap<String, Watcher>) -> Vec<WatchEvent> {
    watchers
        .values()
        .flat_map(|watcher| watcher.snapshot().events)
        .collect()
}

/// `expect_watches_match_history`: reads each watched prefix linearizably
/// (its revision is the end of the check), waits until every watcher has
/// everything up to it, stops them, reads the store's prefix at every
/// revision they cover, and checks each watcher (see
/// `checker::watch`). Returns the checks of every watcher checked, and
/// the step's result.
pub(super) async fn check_watchers(
    harness: &Harness,
    watchers: &mut BTreeMap<String, Watcher>,
    recorder: &Recorder,
    timeout: Duration,
) -> (BTreeMap<String, WatchChecks>, Result<String>) {
    let mut checks = BTreeMap::new();
    let result = check_each(harness, watchers, recorder, timeout, &mut checks).await;
    (checks, result)
}

async fn check_each(
    harness: &Harness,
    watchers: &mut BTreeMap<String, Watcher>,
    recorder: &Recorder,
    timeout: Duration,
    checks: &mut BTreeMap<String, WatchChecks>,
) -> Result<String> {
    if watchers.is_empty() {
        bail!("no `watch` step before");
    }
    let mut prefixes: BTreeMap<String, (PrefixState, i64)> = BTreeMap::new();
    for watcher in watchers.values() {
        if let btree_map::Entry::Vacant(entry) = prefixes.entry(watcher.snapshot().prefix) {
            let read = final_read(harness, entry.key()).await?;
            entry.insert(read);
        }
    }
    let deadline = Instant::now() + timeout;
    for (name, watcher) in watchers.iter() {
        let end = prefixes[&watcher.snapshot().prefix].1;
        wait_for_progress(watcher, name, end, (deadline, timeout)).await?;
    }
    for (name, task) in stop_all(watchers) {
        let report = task
            .await
            .map_err(|error| anyhow!("{name} crashed: {error}"))??;
        recorder.event(format!("{name} stopped: {report}"));
    }
    let mut stores: BTreeMap<String, BTreeMap<i64, PrefixState>> = BTreeMap::new();
    for (prefix, (_, end)) in &prefixes {
        let revisions: BTreeSet<i64> = watchers
            .values()
            .map(Watcher::snapshot)
            .filter(|log| log.prefix == *prefix)
            .flat_map(|log| revisions_to_read(&log.events, log.start, *end))
            .collect();
        let reading = Instant::now();
        let count = revisions.len();
        stores.insert(
            prefix.clone(),
            store_history(harness, prefix, revisions).await?,
        );
        recorder.event(format!(
            "read {prefix:?} at {count} past revisions in {:?}",
            reading.elapsed()
        ));
    }
    let history = recorder.snapshot();
    let checking = Instant::now();
    let mut problems = Vec::new();
    let mut failed = Vec::new();
    let mut counts = Vec::new();
    for (name, watcher) in watchers.iter() {
        let log = watcher.snapshot();
        let (final_state, end) = &prefixes[&log.prefix];
        let verdict = check(&WatchInput {
            prefix: &log.prefix,
            start: log.start,
            end: *end,
            events: &log.events,
            resumes: &log.resumes,
            history: &history,
            store: &stores[&log.prefix],
            final_state,
        });
        counts.push(format!(
            "watch {name}: {} events for revisions {}..={end}, {} resumes",
            log.events.len(),
            log.start,
            log.resumes.len()
        ));
        if !verdict.checks.passed() {
            failed.push(name.clone());
        }
        problems.extend(
            verdict
                .problems
                .into_iter()
                .map(|problem| format!("watch {name}: {problem}")),
        );
        checks.insert(name.clone(), verdict.checks);
    }
    for line in &counts {
        recorder.event(format!("{line} (checked in {:?})", checking.elapsed()));
    }
    if !failed.is_empty() {
        bail!(
            "watches {} do not match the history:\n      {}",
            failed.join(", "),
            problems.join("\n      ")
        );
    }
    Ok("passed".into())
}

/// The prefix read linearizably (retried across leader changes): its
/// pairs, and the revision of the read.
pub(super) async fn final_read(harness: &Harness, prefix: &str) -> Result<(PrefixState, i64)> {
    let deadline = Instant::now() + FINAL_READ_WINDOW;
    loop {
        let leader = harness.leader().await?;
        match harness
            .client
            .range(leader, range_of(prefix, None, 0))
            .await
        {
            Ok(response) => {
                let revision = response.header.as_ref().map_or(0, |header| header.revision);
                return Ok((state_of(&response.kvs), revision));
            }
            Err(status) if Instant::now() > deadline => {
                bail!("cannot read {prefix:?} linearizably: {status}")
            }
            Err(_) => tokio::time::sleep(RESUME_PAUSE).await,
        }
    }
}

/// The prefix at each of `revisions`, read at the leader (serializable
/// ranges at past revisions: the store's own history; revision 0 and below
/// hold nothing).
async fn store_history(
    harness: &Harness,
    prefix: &str,
    revisions: BTreeSet<i64>,
) -> Result<BTreeMap<i64, PrefixState>> {
    let leader = harness.leader().await?;
    let client = &harness.client;
    let reads = futures::stream::iter(revisions)
        .map(|revision| async move {
            if revision < 1 {
                return Ok((revision, PrefixState::new()));
            }
            let response = client
                .range(leader, range_of(prefix, Some(()), revision))
                .await
                .map_err(|status| {
                    anyhow!("reading {prefix:?} at revision {revision} at node {leader}: {status}")
                })?;
            Ok::<_, anyhow::Error>((revision, state_of(&response.kvs)))
        })
        .buffered(HISTORY_READS_IN_FLIGHT_MAX);
    reads.collect::<Vec<_>>().await.into_iter().collect()
}

fn state_of(pairs: &[pb::KeyValue]) -> PrefixState {
    pairs
        .iter()
        .map(|pair| {
            (
                String::from_utf8_lossy(&pair.key).into_owned(),
                (
                    String::from_utf8_lossy(&pair.value).into_owned(),
                    pair.mod_revision,
                ),
            )
        })
        .collect()
}

/// Waits until `watcher` has every event up to revision `end`, until
/// `deadline` (`timeout` after the wait began).
async fn wait_for_progress(
    watcher: &Watcher,
    name: &str,
    end: i64,
    (deadline, timeout): (Instant, Duration),
) -> Result<()> {
    loop {
        let log = watcher.snapshot();
        if let Some(fatal) = &log.fatal {
            bail!("watch {name} ended: {fatal}");
        }
        if log.progress >= end {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "watch {name} has everything only up to revision {} after {timeout:?}, not up to {end}",
                log.progress
            );
        }
        tokio::time::sleep(PROGRESS_INTERVAL).await;
    }
}

/// Waits until `watcher` has every event up to revision `end` (within
/// `timeout`), stops it, and returns its events: for the checks of leases
/// and locks, which own their watchers.
pub(super) async fn stop_at(
    watcher: &mut Watcher,
    name: &str,
    end: i64,
    timeout: Duration,
) -> Result<Vec<WatchEvent>> {
    wait_for_progress(watcher, name, end, (Instant::now() + timeout, timeout)).await?;
    if let Some(task) = watcher.stop() {
        task.await
            .map_err(|error| anyhow!("watch {name} crashed: {error}"))??;
    }
    Ok(watcher.snapshot().events)
}
