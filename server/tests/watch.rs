//! Watch (issue #23) with real processes: live events and history in
//! revision order on any node, resuming on another node after the leader
//! is killed with nothing missed or repeated, compaction, a client too
//! slow to read caught up from the history, limits, bad requests and
//! progress notifications.

// Cluster tests hold the serial lock across awaits on purpose: each test has
// its own runtime, and the lock keeps two clusters from running at once.
#![allow(clippy::await_holding_lock)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kvstore_proto::kv::v1 as pb;
use pb::watch_client::WatchClient;
use support::{Cluster, ServerProcess};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const WAIT: Duration = Duration::from_secs(10);

/// One watch stream of a generated client.
struct WatchStream {
    requests: mpsc::Sender<pb::WatchRequest>,
    responses: Streaming<pb::WatchResponse>,
}

impl WatchStream {
    async fn open(client_addr: SocketAddr) -> Self {
        Self::open_with_window(client_addr, None).await
    }

    /// With HTTP/2 windows of `window` bytes (None: tonic's). A client that
    /// does not read holds a window's worth of responses; past that, the
    /// server's own buffer fills.
    async fn open_with_window(client_addr: SocketAddr, window: Option<u32>) -> Self {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{client_addr}"))
            .expect("an endpoint")
            .initial_stream_window_size(window)
            .initial_connection_window_size(window)
            .connect()
            .await
            .expect("connecting");
        let mut client = WatchClient::new(channel);
        let (requests, outgoing) = mpsc::channel(16);
        let responses = client
            .watch(ReceiverStream::new(outgoing))
            .await
            .expect("a watch stream")
            .into_inner();
        Self {
            requests,
            responses,
        }
    }

    async fn send(&self, request: pb::watch_request::RequestUnion) {
        self.requests
            .send(pb::WatchRequest {
                request_union: Some(request),
            })
            .await
            .expect("the stream is open");
    }

    /// Creates a watch and returns the `created` response.
    async fn create(&mut self, create: pb::WatchCreateRequest) -> pb::WatchResponse {
        self.send(pb::watch_request::RequestUnion::CreateRequest(create))
            .await;
        let created = self.next().await.expect("a response to the create");
        assert!(created.created, "{created:?}");
        created
    }

    /// The next response, or `None` when none comes within `WAIT`.
    async fn next(&mut self) -> Option<pb::WatchResponse> {
        self.next_within(WAIT).await
    }

    async fn next_within(&mut self, wait: Duration) -> Option<pb::WatchResponse> {
        match tokio::time::timeout(wait, self.responses.message()).await {
            Ok(Ok(response)) => response,
            Ok(Err(status)) => panic!("the watch stream failed: {status:?}"),
            Err(_) => None,
        }
    }

    /// Events until one at `revision` or later arrived.
    async fn events_through(&mut self, revision: i64) -> Vec<Seen> {
        let mut seen = Vec::new();
        while seen
            .last()
            .is_none_or(|last: &Seen| last.revision < revision)
        {
            let response = self
                .next()
                .await
                .unwrap_or_else(|| panic!("no event through {revision}; saw {seen:?}"));
            seen.extend(response.events.iter().map(Seen::of));
        }
        seen
    }
}

/// One event as a test compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    revision: i64,
    kind: pb::EventType,
    key: String,
    value: String,
    previous: Option<String>,
}

impl Seen {
    fn of(event: &pb::Event) -> Self {
        let kv = event.kv.clone().expect("an event carries its key");
        Self {
            revision: kv.mod_revision,
            kind: event.r#type(),
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            value: String::from_utf8_lossy(&kv.value).into_owned(),
            previous: event
                .prev_kv
                .as_ref()
                .map(|previous| String::from_utf8_lossy(&previous.value).into_owned()),
        }
    }

    fn put(revision: i64, key: &str, value: &str, previous: Option<&str>) -> Self {
        Self {
            revision,
            kind: pb::EventType::Put,
            key: key.into(),
            value: value.into(),
            previous: previous.map(str::to_string),
        }
    }

    fn delete(revision: i64, key: &str, previous: Option<&str>) -> Self {
        Self {
            revision,
            kind: pb::EventType::Delete,
            key: key.into(),
            value: String::new(),
            previous: previous.map(str::to_string),
        }
    }
}

fn prefix(prefix: &str) -> pb::WatchCreateRequest {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("a prefix") += 1;
    pb::WatchCreateRequest {
        key: prefix.into(),
        range_end: end,
        ..pb::WatchCreateRequest::default()
    }
}

fn put(key: &str, value: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: key.into(),
        value: value.into(),
        ..pb::PutRequest::default()
    }
}

/// Asserts that `seen` holds each revision of `start..=last` once, in
/// order, naming the first one out of place.
fn assert_each_revision_once(seen: &[Seen], start: i64, last: i64, watch: &str) {
    let revisions: Vec<i64> = seen.iter().map(|event| event.revision).collect();
    let expected: Vec<i64> = (start..=last).collect();
    if let Some(at) =
        (0..revisions.len().max(expected.len())).find(|at| revisions.get(*at) != expected.get(*at))
    {
        panic!(
            "{watch}: {} events for revisions {start}..={last}; at position {at} saw {:?} where {:?} was due",
            revisions.len(),
            revisions.get(at),
            expected.get(at)
        );
    }
}

fn revision_of(header: &Option<pb::ResponseHeader>) -> i64 {
    header.as_ref().expect("a header").revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_and_history_arrive_in_revision_order_on_any_node() {
    let _serial = support::serial();
    let mut cluster = Cluster::start(3, &[]);
    let (leader, _) = cluster.wait_for_leader(WAIT).await;
    support::wait_for_revisions(cluster.node(leader).client_addr).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let mut kv = cluster.node(leader).client().await;

    // Live: a prefix watch with previous values on a follower, a key watch
    // without deletes on the leader.
    let mut on_follower = WatchStream::open(cluster.node(follower).client_addr).await;
    let created = on_follower
        .create(pb::WatchCreateRequest {
            prev_kv: true,
            ..prefix("w/")
        })
        .await;
    assert_eq!(created.watch_id, 0);
    let mut on_leader = WatchStream::open(cluster.node(leader).client_addr).await;
    on_leader
        .create(pb::WatchCreateRequest {
            key: b"w/a".to_vec(),
            filters: vec![pb::WatchFilterType::Nodelete as i32],
            watch_id: 7,
            ..pb::WatchCreateRequest::default()
        })
        .await;

    let first = revision_of(&kv.put(put("w/a", "1")).await.unwrap().into_inner().header);
    kv.put(put("other", "x")).await.unwrap();
    kv.put(put("w/b", "2")).await.unwrap();
    // One txn, two keys: one revision, in the txn's order.
    let txn = kv
        .txn(pb::TxnRequest {
            success: vec![
                pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestPut(put("w/b", "3"))),
                },
                pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestPut(put("w/a", "4"))),
                },
            ],
            ..pb::TxnRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let txn_revision = revision_of(&txn.header);
    let deleted = kv
        .delete_range(pb::DeleteRangeRequest {
            key: b"w/".to_vec(),
            range_end: b"w0".to_vec(),
            ..pb::DeleteRangeRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let last = revision_of(&deleted.header);
    assert_eq!(last, first + 4);

    let expected = vec![
        Seen::put(first, "w/a", "1", None),
        Seen::put(first + 2, "w/b", "2", None),
        Seen::put(txn_revision, "w/b", "3", Some("2")),
        Seen::put(txn_revision, "w/a", "4", Some("1")),
        Seen::delete(last, "w/a", Some("4")),
        Seen::delete(last, "w/b", Some("3")),
    ];
    assert_eq!(on_follower.events_through(last).await, expected);
    let on_key = on_leader.events_through(txn_revision).await;
    assert_eq!(
        on_key,
        vec![
            Seen::put(first, "w/a", "1", None),
            Seen::put(txn_revision, "w/a", "4", None),
        ]
    );
    // A create comes back with version 1; the txn's write is the second.
    kv.put(put("w/a", "5")).await.unwrap();
    let response = on_leader.next().await.expect("the put after the delete");
    assert_eq!(response.watch_id, 7);
    assert_eq!(response.events[0].kv.as_ref().unwrap().version, 1);

    // History: the same events from the first revision, on the other
    // follower, then live.
    let other = (1..=3).find(|id| *id != leader && *id != follower).unwrap();
    let mut history = WatchStream::open(cluster.node(other).client_addr).await;
    history
        .create(pb::WatchCreateRequest {
            start_revision: first,
            prev_kv: true,
            ..prefix("w/")
        })
        .await;
    let mut replayed = history.events_through(last + 1).await;
    assert_eq!(
        replayed.remove(replayed.len() - 1),
        Seen::put(last + 1, "w/a", "5", None)
    );
    assert_eq!(replayed, expected);

    // Cancel: acknowledged, and nothing more for that watch.
    history
        .send(pb::watch_request::RequestUnion::CancelRequest(
            pb::WatchCancelRequest { watch_id: 0 },
        ))
        .await;
    let canceled = history.next().await.expect("the cancel's answer");
    assert!(canceled.canceled && canceled.watch_id == 0, "{canceled:?}");
    kv.put(put("w/c", "6")).await.unwrap();
    assert!(history
        .next_within(Duration::from_millis(500))
        .await
        .is_none());
}

/// A watcher on the leader and one on a follower; writes go on while the
/// leader is killed; each watcher resumes on a surviving node from the
/// revision after the last it saw. Together they must have seen every
/// revision from the first on, once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumed_on_another_node_after_the_leader_dies_misses_and_repeats_nothing() {
    let _serial = support::serial();
    let mut cluster = Cluster::start(3, &[]);
    let (leader, _) = cluster.wait_for_leader(WAIT).await;
    support::wait_for_revisions(cluster.node(leader).client_addr).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let mut kv = cluster.node(follower).client().await;
    let start = revision_of(
        &kv.put(put("r/start", "0"))
            .await
            .unwrap()
            .into_inner()
            .header,
    ) + 1;

    let mut watchers = Vec::new();
    for id in [leader, follower] {
        let mut stream = WatchStream::open(cluster.node(id).client_addr).await;
        stream
            .create(pb::WatchCreateRequest {
                start_revision: start,
                ..prefix("r/")
            })
            .await;
        watchers.push((id, stream, Vec::<Seen>::new()));
    }
    // Writes through every node, retried elsewhere on failure (an
    // unacknowledged one may still commit: it is then a revision too).
    let endpoints: Vec<SocketAddr> = cluster.nodes.iter().map(|node| node.client_addr).collect();
    let writer = tokio::spawn(async move {
        let mut last = 0;
        for round in 0..300 {
            for attempt in 0..20 {
                let address = endpoints[(round + attempt) % endpoints.len()];
                let Some(mut client) = support::client_for(address, Duration::from_secs(2)).await
                else {
                    continue;
                };
                if let Ok(response) = client
                    .put(put(&format!("r/{}", round % 7), &round.to_string()))
                    .await
                {
                    last = revision_of(&response.into_inner().header);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        last
    });
    // Read for a while, then kill the leader in the middle of the writes.
    for (_, stream, seen) in &mut watchers {
        let response = stream.next().await.expect("events before the kill");
        seen.extend(response.events.iter().map(Seen::of));
    }
    cluster.node(leader).kill();
    let last = writer.await.unwrap();
    assert!(last > start, "the writes went on after the kill");
    let third = 6 - leader - follower;
    for (watched_on, stream, seen) in &mut watchers {
        // The follower's stream may still run: read what it has; then
        // resume on a node that lives, from the next revision.
        if *watched_on != leader {
            while let Some(response) = stream.next_within(Duration::from_millis(200)).await {
                seen.extend(response.events.iter().map(Seen::of));
            }
        }
        let resume_on = if *watched_on == leader {
            follower
        } else {
            third
        };
        let next = seen.last().map_or(start, |event| event.revision + 1);
        let mut resumed = WatchStream::open(cluster.node(resume_on).client_addr).await;
        resumed
            .create(pb::WatchCreateRequest {
                start_revision: next,
                ..prefix("r/")
            })
            .await;
        if next <= last {
            seen.extend(resumed.events_through(last).await);
        }
        assert_each_revision_once(
            seen,
            start,
            last,
            &format!("the watch first on node {watched_on}"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_compacted_revision_is_cancelled_naming_it() {
    let _serial = support::serial();
    let directory = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&directory.path().join("node"), &[]);
    support::wait_for_revisions(server.client_addr).await;
    let mut kv = server.client().await;
    let first = revision_of(&kv.put(put("c/a", "1")).await.unwrap().into_inner().header);
    kv.put(put("c/a", "2")).await.unwrap();
    kv.delete(pb::DeleteRequest {
        key: b"c/a".to_vec(),
    })
    .await
    .unwrap();
    let compacted = first + 2;
    kv.compact(pb::CompactionRequest {
        revision: compacted,
        physical: true,
    })
    .await
    .unwrap();
    let mut stream = WatchStream::open(server.client_addr).await;
    for start in [first, compacted] {
        let created = stream
            .create(pb::WatchCreateRequest {
                start_revision: start,
                ..prefix("c/")
            })
            .await;
        let canceled = stream.next().await.expect("the cancellation");
        assert_eq!(canceled.watch_id, created.watch_id);
        assert!(canceled.canceled, "{canceled:?}");
        assert_eq!(canceled.compact_revision, compacted);
        assert!(
            canceled
                .cancel_reason
                .contains(&format!("compacted at {compacted}")),
            "{canceled:?}"
        );
    }
    // From the revision after the compacted one: allowed, and live.
    stream
        .create(pb::WatchCreateRequest {
            start_revision: compacted + 1,
            ..prefix("c/")
        })
        .await;
    let next = revision_of(&kv.put(put("c/b", "3")).await.unwrap().into_inner().header);
    assert_eq!(next, compacted + 1);
    assert_eq!(
        stream.events_through(next).await,
        vec![Seen::put(next, "c/b", "3", None)]
    );
}

/// A client that does not read while thousands of writes go by: its
/// buffer fills, the writes go on (apply never waits for it), and once it
/// reads it gets every event, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_too_slow_to_read_is_caught_up_from_the_history() {
    let _serial = support::serial();
    let directory = tempfile::tempdir().unwrap();
    let metrics = support::loopback(support::free_port());
    let mut server = ServerProcess::prepare(
        &directory.path().join("node"),
        support::loopback(support::free_port()),
        support::loopback(support::free_port()),
        &[],
    );
    server.metrics_addr = Some(metrics);
    server.spawn();
    server.wait_listening();
    support::wait_for_revisions(server.client_addr).await;
    let mut kv = server.client().await;
    let start = revision_of(
        &kv.put(put("s/start", "0"))
            .await
            .unwrap()
            .into_inner()
            .header,
    ) + 1;
    // HTTP/2's smallest windows: the server's buffer fills soon.
    let mut stream = WatchStream::open_with_window(server.client_addr, Some(65_535)).await;
    stream.create(prefix("s/")).await;

    // 4,000 writes with 200-byte values from 8 clients: far more than the
    // stream's 1,024 responses and the HTTP/2 windows hold.
    const WRITES: usize = 4_000;
    let value = "v".repeat(200);
    let started = Instant::now();
    let mut writers = Vec::new();
    for writer in 0..8 {
        let mut client = kv.clone();
        let value = value.clone();
        writers.push(tokio::spawn(async move {
            let mut last = 0;
            for n in 0..WRITES / 8 {
                let response = client
                    .put(put(&format!("s/{writer}/{n}"), &value))
                    .await
                    .expect("writes do not wait for the watcher");
                last = last.max(revision_of(&response.into_inner().header));
            }
            last
        }));
    }
    let mut last = 0;
    for writer in writers {
        last = last.max(writer.await.unwrap());
    }
    eprintln!(
        "{WRITES} writes in {:?} with a watcher not reading",
        started.elapsed()
    );
    assert_eq!(last, start + WRITES as i64 - 1);
    let seen = stream.events_through(last).await;
    assert_each_revision_once(&seen, start, last, "the slow watch");
    // It did leave the live path (else this test proves nothing).
    let scraped = support::http_get(metrics, "/metrics").expect("metrics");
    let slow = scraped
        .body
        .lines()
        .find_map(|line| line.strip_prefix("kvstore_watch_slow_watchers_total "))
        .and_then(|value| value.trim().parse::<u64>().ok())
        .expect("the slow-watcher counter");
    assert!(slow >= 1, "the watcher never went to catch-up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_creates_and_too_many_watchers_are_refused_with_a_reason() {
    let _serial = support::serial();
    let directory = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        &directory.path().join("node"),
        &["--max-watchers", "2", "--max-key-bytes", "16"],
    );
    support::wait_for_revisions(server.client_addr).await;
    let mut stream = WatchStream::open(server.client_addr).await;
    let refused = |response: pb::WatchResponse, reason: &str| {
        assert!(response.created && response.canceled, "{response:?}");
        assert_eq!(response.watch_id, -1);
        assert!(response.cancel_reason.contains(reason), "{response:?}");
    };
    for (create, reason) in [
        (pb::WatchCreateRequest::default(), "key must not be empty"),
        (
            pb::WatchCreateRequest {
                key: vec![b'k'; 17],
                ..pb::WatchCreateRequest::default()
            },
            "--max-key-bytes",
        ),
        (
            pb::WatchCreateRequest {
                key: b"b".to_vec(),
                range_end: b"a".to_vec(),
                ..pb::WatchCreateRequest::default()
            },
            "watcher range is empty",
        ),
        (
            pb::WatchCreateRequest {
                key: b"a".to_vec(),
                start_revision: -1,
                ..pb::WatchCreateRequest::default()
            },
            "negative",
        ),
    ] {
        refused(stream.create(create).await, reason);
    }
    let key = |watch_id| pb::WatchCreateRequest {
        key: b"k".to_vec(),
        watch_id,
        ..pb::WatchCreateRequest::default()
    };
    assert_eq!(stream.create(key(5)).await.watch_id, 5);
    refused(stream.create(key(5)).await, "duplicate watch ID");
    assert_eq!(stream.create(key(0)).await.watch_id, 0);
    refused(stream.create(key(0)).await, "--max-watchers");
    // A cancel of an unknown id is ignored; one of a real id frees a place.
    stream
        .send(pb::watch_request::RequestUnion::CancelRequest(
            pb::WatchCancelRequest { watch_id: 42 },
        ))
        .await;
    stream
        .send(pb::watch_request::RequestUnion::CancelRequest(
            pb::WatchCancelRequest { watch_id: 5 },
        ))
        .await;
    let canceled = stream.next().await.unwrap();
    assert_eq!((canceled.watch_id, canceled.canceled), (5, true));
    assert_eq!(stream.create(key(0)).await.watch_id, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_watches_get_progress_notifications_and_progress_requests_are_answered() {
    let _serial = support::serial();
    let directory = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        &directory.path().join("node"),
        &["--watch-progress-notify-interval-ms", "200"],
    );
    support::wait_for_revisions(server.client_addr).await;
    let mut kv = server.client().await;
    let revision = revision_of(&kv.put(put("p/a", "1")).await.unwrap().into_inner().header);
    let mut stream = WatchStream::open(server.client_addr).await;
    let created = stream
        .create(pb::WatchCreateRequest {
            progress_notify: true,
            ..prefix("p/")
        })
        .await;
    assert_eq!(revision_of(&created.header), revision);
    let progress = stream.next().await.expect("a progress notification");
    assert_eq!(progress.watch_id, created.watch_id);
    assert!(progress.events.is_empty() && !progress.canceled);
    assert_eq!(revision_of(&progress.header), revision);

    let mut quiet = WatchStream::open(server.client_addr).await;
    quiet.create(prefix("q/")).await;
    let written = revision_of(&kv.put(put("x", "1")).await.unwrap().into_inner().header);
    quiet
        .send(pb::watch_request::RequestUnion::ProgressRequest(
            pb::WatchProgressRequest {},
        ))
        .await;
    let answer = quiet.next().await.expect("the progress answer");
    assert_eq!(answer.watch_id, -1);
    assert_eq!(revision_of(&answer.header), written);
    // Without progress_notify, no periodic response.
    assert!(quiet
        .next_within(Duration::from_millis(600))
        .await
        .is_none());
}

/// A metric's value in a scrape of `/metrics` at `address` (a series is
/// named with its labels, as `kvstore_snapshots_total{kind="installed"}`).
fn metric(address: SocketAddr, series: &str) -> f64 {
    let scraped = support::http_get(address, "/metrics").expect("metrics");
    scraped
        .body
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A follower frozen while the leader moves on far enough to compact its
/// log, so that it catches up by installing a snapshot: revisions that came
/// without events. Its watcher gets every one of them from the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_on_a_follower_that_installs_a_snapshot_misses_nothing() {
    let _serial = support::serial();
    let mut cluster = Cluster::start_observed(3, &["--snapshot-entries", "50"]);
    let (leader, _) = cluster.wait_for_leader(WAIT).await;
    support::wait_for_revisions(cluster.node(leader).client_addr).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let mut kv = cluster.node(leader).client().await;
    let start = revision_of(
        &kv.put(put("n/start", "0"))
            .await
            .unwrap()
            .into_inner()
            .header,
    ) + 1;
    let mut stream = WatchStream::open(cluster.node(follower).client_addr).await;
    stream
        .create(pb::WatchCreateRequest {
            start_revision: start,
            ..prefix("n/")
        })
        .await;
    let mut seen = Vec::new();
    let mut last = 0;
    for round in 0..10 {
        last = revision_of(
            &kv.put(put("n/a", &round.to_string()))
                .await
                .unwrap()
                .into_inner()
                .header,
        );
    }
    seen.extend(stream.events_through(last).await);
    cluster.node(follower).signal("STOP");
    for round in 0..400 {
        let key = format!("n/{}", round % 5);
        last = revision_of(
            &kv.put(put(&key, &round.to_string()))
                .await
                .unwrap()
                .into_inner()
                .header,
        );
    }
    cluster.node(follower).signal("CONT");
    seen.extend(stream.events_through(last).await);
    assert_each_revision_once(&seen, start, last, "the follower's watch");
    let metrics = cluster
        .node(follower)
        .metrics_addr
        .expect("an observed node");
    assert!(
        metric(metrics, "kvstore_snapshots_total{kind=\"installed\"}") >= 1.0,
        "the follower caught up without a snapshot: this test proves nothing"
    );
}

/// A node stopping gracefully ends its watch streams with UNAVAILABLE
/// (clients resume elsewhere) instead of waiting for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_ends_open_watch_streams() {
    let _serial = support::serial();
    let directory = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&directory.path().join("node"), &[]);
    support::wait_for_revisions(server.client_addr).await;
    let mut stream = WatchStream::open(server.client_addr).await;
    stream.create(prefix("g/")).await;
    let started = Instant::now();
    server.signal("TERM");
    let ended = tokio::time::timeout(WAIT, stream.responses.message())
        .await
        .expect("the stream ends when the node stops");
    let status = ended.expect_err("an error status, not a clean end");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(server.wait_exit(WAIT), Some(0));
    eprintln!("stopped in {:?} with a watch open", started.elapsed());
}
