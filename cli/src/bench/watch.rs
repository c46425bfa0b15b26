//! `bench watch`: the put workload runs while watches receive its events.
//! `--watchers` watch one key each (keys 0, 1, ... of the keyspace) and
//! `--prefix-watchers` watch the benchmark's key prefix, spread over
//! `--watch-streams` streams. Each value starts with the time its put was
//! sent (nanoseconds since the UNIX epoch), so a watcher measures the time
//! from the put being sent to its event arriving (commit, apply and
//! delivery: etcd's `benchmark watch-latency` measures the same span).
//! Against etcd (`--protocol etcd`) the same watches go through etcd's
//! Watch service.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch as signal};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;

use crate::args::Protocol;
use crate::bench::api::etcd;
use crate::bench::keys;
use crate::bench::plan::Plan;
use crate::bench::summary::{latency_histogram, milliseconds_text};
use crate::bench::watch_decode::LiteWatchResponse;
use crate::client::{self, Failure};
use kvstore_proto::kv::v1 as pb;

/// Bytes of the send time at the start of every value.
pub const STAMP_BYTES: usize = 8;
/// Longest wait for every watch of a stream to be created.
const CREATE_WAIT: Duration = Duration::from_secs(60);
/// After the writes, the wait for the last events stops once none came for
/// this long (when the number expected is unknown).
const QUIET_END: Duration = Duration::from_secs(2);

/// Writes the current time into the first bytes of `value`.
pub fn stamp(value: &mut [u8]) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    if let Some(head) = value.get_mut(..STAMP_BYTES) {
        head.copy_from_slice(&now.to_be_bytes());
    }
}

/// Time since `stamped` (nanoseconds since the UNIX epoch).
fn since_stamp(stamped: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    Duration::from_nanos(now.saturating_sub(stamped))
}

/// The watches of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchPlan {
    /// Watches of one key each.
    pub watchers: u64,
    /// Watches of the whole key prefix.
    pub prefix_watchers: u64,
    /// Streams they are spread over.
    pub streams: u64,
    /// Longest wait for the events after the writes.
    pub drain: Duration,
    /// Create the watches after the writes, from revision 1.
    pub history: bool,
}

/// What the watchers of one stream counted.
struct StreamTally {
    latency_us: Histogram<u64>,
    error: Option<String>,
}

/// The running watchers.
pub struct Watchers {
    plan: WatchPlan,
    tasks: JoinSet<StreamTally>,
    stop: signal::Sender<bool>,
    events: Arc<AtomicU64>,
    last_event: Arc<Mutex<Option<Instant>>>,
}

/// What the watchers measured.
#[derive(Debug, Clone)]
pub struct WatchSummary {
    plan: WatchPlan,
    events: u64,
    expected: Option<u64>,
    /// From the first write to the last event.
    elapsed: Duration,
    latency_us: Histogram<u64>,
    errors: Vec<String>,
}

/// One stream's watches: (key, range end).
fn stream_watches(plan: &Plan, watch: &WatchPlan, stream: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut prefix_end = keys::KEY_PREFIX.to_vec();
    *prefix_end.last_mut().expect("a prefix") += 1;
    (0..watch.watchers + watch.prefix_watchers)
        .filter(|watcher| watcher % watch.streams == stream)
        .map(|watcher| {
            if watcher < watch.watchers {
                (keys::key(watcher, plan.key_size_bytes), Vec::new())
            } else {
                (keys::KEY_PREFIX.to_vec(), prefix_end.clone())
            }
        })
        .collect()
}

type SeenStream = tonic::Streaming<LiteWatchResponse>;

/// Opens a watch stream at `path` whose requests are `requests`, decoding
/// the responses with [`LiteWatchResponse`].
async fn open_with<R: prost::Message + Default + Send + Sync + 'static>(
    channel: tonic::transport::Channel,
    path: &'static str,
    requests: Vec<R>,
) -> Result<SeenStream, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
    grpc.ready()
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    // Every create is sent before the call: a grpc-go server (etcd) sends
    // no response headers before its first answer. The request side stays
    // open (both servers keep watches after it closes, too).
    let (sender, outgoing) = mpsc::channel(requests.len().max(1));
    for request in requests {
        let _ = sender.try_send(request);
    }
    let stream =
        futures::StreamExt::chain(ReceiverStream::new(outgoing), futures::stream::pending());
    let codec = tonic_prost::ProstCodec::<R, LiteWatchResponse>::default();
    let path = http::uri::PathAndQuery::from_static(path);
    Ok(grpc
        .streaming(tonic::Request::new(stream), path, codec)
        .await?
        .into_inner())
}

/// The start revision of the watches: 1 (the whole history) or the next.
fn start_revision(history: bool) -> i64 {
    i64::from(history)
}

/// Opens one stream on `endpoint` and creates `watches` on it.
async fn open_stream(
    protocol: Protocol,
    endpoint: &str,
    timeout: Duration,
    watches: &[(Vec<u8>, Vec<u8>)],
    history: bool,
) -> Result<SeenStream, Failure> {
    let channel = client::connect_for_streams(endpoint, timeout).await?;
    let opened = match protocol {
        Protocol::Kvstore => {
            let creates = watches
                .iter()
                .map(|(key, range_end)| pb::WatchRequest {
                    request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                        pb::WatchCreateRequest {
                            key: key.clone(),
                            range_end: range_end.clone(),
                            start_revision: start_revision(history),
                            ..pb::WatchCreateRequest::default()
                        },
                    )),
                })
                .collect();
            open_with(channel, "/kvstore.v1.Watch/Watch", creates).await
        }
        Protocol::Etcd => {
            let creates = watches
                .iter()
                .map(|(key, range_end)| etcd::WatchRequest {
                    request_union: Some(etcd::watch_request::RequestUnion::CreateRequest(
                        etcd::WatchCreateRequest {
                            key: key.clone(),
                            range_end: range_end.clone(),
                            start_revision: start_revision(history),
                            ..etcd::WatchCreateRequest::default()
                        },
                    )),
                })
                .collect();
            open_with(channel, "/etcdserverpb.Watch/Watch", creates).await
        }
    };
    opened.map_err(|status| client::describe_status(endpoint, &status))
}

impl Watchers {
    /// Opens the streams and waits until every watch is created.
    pub async fn start(plan: &Plan, watch: WatchPlan, timeout: Duration) -> Result<Self, Failure> {
        use futures::StreamExt;
        let (stop, stopped) = signal::channel(false);
        let events = Arc::new(AtomicU64::new(0));
        let last_event = Arc::new(Mutex::new(None));
        let mut tasks = JoinSet::new();
        for stream in 0..watch.streams {
            let watches = stream_watches(plan, &watch, stream);
            if watches.is_empty() {
                continue;
            }
            let endpoints = &plan.connection_endpoints;
            let endpoint = &endpoints[stream as usize % endpoints.len()];
            let mut responses =
                open_stream(plan.protocol, endpoint, timeout, &watches, watch.history).await?;
            let mut created = 0;
            let deadline = tokio::time::Instant::now() + CREATE_WAIT;
            while created < watches.len() {
                let next = tokio::time::timeout_at(deadline, responses.next())
                    .await
                    .map_err(|_| {
                        Failure(format!(
                            "{endpoint}: the watches were not all created within {CREATE_WAIT:?}"
                        ))
                    })?;
                match next {
                    Some(Ok(seen)) if seen.canceled => {
                        return Err(Failure(format!(
                            "{endpoint}: a watch was refused: {}",
                            seen.cancel_reason
                        )))
                    }
                    Some(Ok(seen)) => {
                        // From the history, events may come before the
                        // last watch of the stream is created.
                        created += usize::from(seen.created);
                        if seen.events > 0 {
                            events.fetch_add(seen.events, Ordering::Relaxed);
                            *last_event.lock().expect("not poisoned") = Some(Instant::now());
                        }
                    }
                    Some(Err(status)) => return Err(client::describe_status(endpoint, &status)),
                    None => return Err(Failure(format!("{endpoint}: the watch stream ended"))),
                }
            }
            let events = Arc::clone(&events);
            let last_event = Arc::clone(&last_event);
            let mut stopped = stopped.clone();
            // Events from the history are as old as their writes: no latency.
            let timed = !watch.history;
            tasks.spawn(async move {
                let mut tally = StreamTally {
                    latency_us: latency_histogram(),
                    error: None,
                };
                loop {
                    let next = tokio::select! {
                        next = responses.next() => next,
                        _ = stopped.changed() => break,
                    };
                    match next {
                        Some(Ok(seen)) => {
                            for stamp in seen.stamps.iter().filter(|_| timed) {
                                let latency = since_stamp(*stamp);
                                let _ = tally.latency_us.record(latency.as_micros().max(1) as u64);
                            }
                            events.fetch_add(seen.events, Ordering::Relaxed);
                            *last_event.lock().expect("not poisoned") = Some(Instant::now());
                            if seen.canceled {
                                tally.error =
                                    Some(format!("a watch was cancelled: {}", seen.cancel_reason));
                                break;
                            }
                        }
                        Some(Err(status)) => {
                            tally.error = Some(client::grpc_code_name(status.code()));
                            break;
                        }
                        None => break,
                    }
                }
                tally
            });
        }
        Ok(Self {
            plan: watch,
            tasks,
            stop,
            events,
            last_event,
        })
    }

    /// Waits for the events of `writes` successful writes (all of them when
    /// the number expected is known, else until none came for a while, at
    /// most the drain time), then stops the streams. `started`: when the
    /// writes began.
    pub async fn finish(mut self, writes: u64, keyspace: u64, started: Instant) -> WatchSummary {
        // Every key watched once: each write has one key event, plus one
        // per prefix watch.
        let expected = (self.plan.watchers == keyspace)
            .then(|| writes * (1 + self.plan.prefix_watchers))
            .or_else(|| (self.plan.watchers == 0).then(|| writes * self.plan.prefix_watchers));
        let deadline = Instant::now() + self.plan.drain;
        loop {
            let events = self.events.load(Ordering::Relaxed);
            if expected.is_some_and(|expected| events >= expected) || Instant::now() >= deadline {
                break;
            }
            let quiet = self
                .last_event
                .lock()
                .expect("not poisoned")
                .is_none_or(|last| last.elapsed() >= QUIET_END);
            if expected.is_none() && quiet {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let last = *self.last_event.lock().expect("not poisoned");
        let _ = self.stop.send(true);
        let mut latency_us = latency_histogram();
        let mut errors = Vec::new();
        while let Some(joined) = self.tasks.join_next().await {
            if let Ok(tally) = joined {
                let _ = latency_us.add(&tally.latency_us);
                errors.extend(tally.error);
            }
        }
        WatchSummary {
            plan: self.plan,
            events: self.events.load(Ordering::Relaxed),
            expected,
            elapsed: last.map_or(Duration::ZERO, |last| {
                last.saturating_duration_since(started)
            }),
            latency_us,
            errors,
        }
    }
}

impl WatchSummary {
    fn events_per_second(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.events as f64 / seconds
        } else {
            0.0
        }
    }

    fn latency_at(&self, quantile: f64) -> u64 {
        if self.latency_us.is_empty() {
            0
        } else {
            self.latency_us.value_at_quantile(quantile)
        }
    }

    /// Rows for the text table.
    pub fn text(&self) -> String {
        let plan = &self.plan;
        let expected = self
            .expected
            .map_or_else(String::new, |expected| format!(" of {expected} expected"));
        let from = if plan.history {
            " (from the history, after the writes)"
        } else {
            ""
        };
        let mut text = format!(
            "watches          {} on single keys, {} on the prefix, over {} streams{from}\n\
             events           {}{expected} in {:.2} s: {:.0} events/s\n\
             put to event     p50 {} ms, p99 {} ms, max {} ms\n",
            plan.watchers,
            plan.prefix_watchers,
            plan.streams,
            self.events,
            self.elapsed.as_secs_f64(),
            self.events_per_second(),
            milliseconds_text(self.latency_at(0.5)),
            milliseconds_text(self.latency_at(0.99)),
            milliseconds_text(self.latency_us.max()),
        );
        if !self.errors.is_empty() {
            text += &format!("watch errors     {}\n", self.errors.join("; "));
        }
        text
    }

    /// The `watch` object of the JSON summary.
    pub fn json(&self) -> Value {
        json!({
            "watchers": self.plan.watchers,
            "prefix_watchers": self.plan.prefix_watchers,
            "streams": self.plan.streams,
            "events": self.events,
            "events_expected": self.expected,
            "elapsed_seconds": self.elapsed.as_secs_f64(),
            "events_per_second": self.events_per_second(),
            "latency_ms": {
                "p50": self.latency_at(0.5) as f64 / 1000.0,
                "p99": self.latency_at(0.99) as f64 / 1000.0,
                "max": self.latency_us.max() as f64 / 1000.0,
            },
            "errors": self.errors,
        })
    }

    /// True when events were expected and some never came.
    pub fn lost_events(&self) -> bool {
        self.expected.is_some_and(|expected| self.events < expected)
    }
}
