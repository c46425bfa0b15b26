//! Clients taking one lock with fencing tokens (`lock` steps) and their
//! check (`expect_lock_safety`).
//!
//! Each client loops, as etcd's `concurrency.Mutex` and `kvstore-cli lock`
//! do (`cli/src/recipes.rs`), through the generated gRPC client only:
//!
//! 1. a session: a lease of `ttl`, renewed every third of it on a
//!    keep-alive stream (moving to another node when the stream fails);
//! 2. its key `NAME/lock/<lease hex>` created by a txn on
//!    `create_revision == 0`, attached to the lease; the create revision is
//!    the fencing token;
//! 3. wait for its turn: a linearizable range of `NAME/lock/`; its own key
//!    must still be there (else the session expired: etcd's
//!    `ErrSessionExpired`), and when no key has a lower create revision it
//!    holds the lock; otherwise it watches the key just below its own for
//!    its deletion (from the range's revision + 1, NOPUT) and ranges again;
//! 4. holding: two fenced writes to `NAME/guard` (a txn storing its token,
//!    zero padded, if the stored one is below it), `hold` apart;
//! 5. release: stop renewing and revoke the lease (its key goes with it).
//!
//! Anything that fails or has an unknown outcome before the hold ends the
//! session (revoked, best effort) and the client starts over. A watcher of
//! the guarded key records its history. The check is `checker::lock`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use futures::StreamExt;
use kvstore_proto::kv::v1 as pb;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::background::hash;
use super::harness::Harness;
use super::lease::{pick, renew, Renewal};
use super::watcher::{self, Watcher};
use crate::checker::lock::{check, Hold, LockChecks, LockInput};
use crate::client::Request;
use crate::history::{OpStatus, WatchEvent};
use crate::scenario::LockStep;

const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long a client waits for its predecessor's deletion before it
/// ranges again (its watch may be at a node that froze).
const TURN_RECHECK: Duration = Duration::from_secs(1);
/// How long the watcher may take to catch up with the final read.
const WATCH_CATCH_UP: Duration = Duration::from_secs(20);
/// Digits of a fencing token as stored (bytewise order is numeric order).
const TOKEN_DIGITS: usize = 20;

/// The guarded key's value before any holder wrote.
fn initial_token() -> String {
    token_text(0)
}

fn token_text(token: i64) -> String {
    format!("{token:0width$}", width = TOKEN_DIGITS)
}

/// The guarded key.
pub(super) fn guard_key(name: &str) -> String {
    format!("{name}/guard")
}

fn lock_prefix(name: &str) -> String {
    format!("{name}/lock/")
}

/// A lock step's state: the holds so far and the guarded key's watcher.
pub(super) struct LockRun {
    args: LockStep,
    holds: Arc<Mutex<Vec<Hold>>>,
    watcher: Watcher,
}

impl LockRun {
    /// Writes the guarded key's initial token, starts its watcher (at
    /// `watch_node`) and the clients. Returns the run and the clients'
    /// task (the step's background task).
    pub(super) async fn start(
        harness: Harness,
        args: &LockStep,
        targets: Option<Vec<u64>>,
        watch_node: u64,
        seed: u64,
        verbose: bool,
    ) -> Result<(LockRun, tokio::task::JoinHandle<Result<String>>)> {
        let watcher = Watcher::start(
            harness.clone(),
            &format!("lock {}", args.name),
            &guard_key(&args.name),
            watch_node,
            seed,
            verbose,
        )
        .await?;
        let recorder = harness.client.recorder().clone();
        let process = recorder.new_process();
        let put = Request::Put {
            key: guard_key(&args.name),
            value: initial_token(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut rng = SmallRng::seed_from_u64(seed ^ hash(&guard_key(&args.name)));
        loop {
            let node = pick(&harness, &targets, &mut rng);
            let operation = harness
                .client
                .execute(&format!("lock {}", args.name), process, node, &put)
                .await;
            if operation.status == OpStatus::Ok {
                break;
            }
            if Instant::now() > deadline {
                return Err(anyhow!(
                    "cannot write the guarded key: {}",
                    operation.error.unwrap_or_default()
                ));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        let holds = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(clients(harness, args.clone(), targets, holds.clone(), seed));
        Ok((
            LockRun {
                args: args.clone(),
                holds,
                watcher,
            },
            task,
        ))
    }

    /// Stops the watcher (at the end of a scenario that did not check).
    pub(super) fn stop(&mut self) -> Vec<(String, tokio::task::JoinHandle<Result<String>>)> {
        self.watcher
            .stop()
            .map(|task| (format!("watch lock {}", self.args.name), task))
            .into_iter()
            .collect()
    }

    /// The watcher's events.
    pub(super) fn events(&self) -> Vec<WatchEvent> {
        self.watcher.snapshot().events
    }

    /// `expect_lock_safety`, once the clients finished.
    pub(super) async fn expect_safety(
        &mut self,
        harness: &Harness,
    ) -> (Option<LockChecks>, Result<String>) {
        let name = self.args.name.clone();
        let guard = guard_key(&name);
        let events = match watcher::final_read(harness, &guard).await {
            Ok((_, end)) => {
                watcher::stop_at(
                    &mut self.watcher,
                    &format!("lock {name}"),
                    end,
                    WATCH_CATCH_UP,
                )
                .await
            }
            Err(error) => Err(error),
        };
        let events = match events {
            Ok(events) => events,
            Err(error) => return (None, Err(error)),
        };
        let recorder = harness.client.recorder();
        let history = recorder.snapshot();
        let holds = self.holds.lock().expect("holds lock").clone();
        let clients: Vec<String> = (0..self.args.clients)
            .map(|index| client_name(&name, index))
            .collect();
        let initial = initial_token();
        let verdict = check(&LockInput {
            holds: &holds,
            clients: &clients,
            guard: &guard,
            initial: &initial,
            events: &events,
            operations: &history.operations,
        });
        recorder.event(format!(
            "lock {name}: {} holds by {} clients, {} guarded-key events, {} overlaps explained by a session that may have expired",
            holds.len(),
            clients.len(),
            events.len(),
            verdict.explained_overlaps
        ));
        let result = if verdict.checks.passed() {
            Ok("passed".to_string())
        } else {
            Err(anyhow!(
                "lock {name}:\n      {}",
                verdict.problems.join("\n      ")
            ))
        };
        (Some(verdict.checks), result)
    }
}

fn client_name(name: &str, index: u32) -> String {
    format!("lock {name} client {index}")
}

async fn clients(
    harness: Harness,
    args: LockStep,
    targets: Option<Vec<u64>>,
    holds: Arc<Mutex<Vec<Hold>>>,
    seed: u64,
) -> Result<String> {
    let deadline = Instant::now() + args.duration.0;
    let mut set = tokio::task::JoinSet::new();
    for index in 0..args.clients {
        let client = Client {
            harness: harness.clone(),
            name: client_name(&args.name, index),
            args: args.clone(),
            targets: targets.clone(),
            rng: SmallRng::seed_from_u64(seed ^ hash(&client_name(&args.name, index))),
            process: harness.client.recorder().new_process(),
            holds: holds.clone(),
        };
        set.spawn(client.run(deadline));
    }
    let mut sessions = 0;
    while let Some(result) = set.join_next().await {
        sessions += result.map_err(|error| anyhow!("a lock client crashed: {error}"))?;
    }
    let held = holds.lock().expect("holds lock").len();
    Ok(format!("{held} holds in {sessions} sessions"))
}

/// What a session's keeper shares with its client.
#[derive(Debug, Default)]
struct SessionState {
    /// (invocation, completion) of the grant and of each renewal answered
    /// with a TTL.
    renewals: Vec<(u64, u64)>,
    /// When a renewal was answered "gone" (µs).
    lost_us: Option<u64>,
}

struct Session {
    lease: i64,
    ttl: Duration,
    state: Arc<Mutex<SessionState>>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Session {
    fn lost(&self) -> Option<u64> {
        self.state.lock().expect("session lock").lost_us
    }
}

struct Client {
    harness: Harness,
    name: String,
    args: LockStep,
    targets: Option<Vec<u64>>,
    rng: SmallRng,
    process: usize,
    holds: Arc<Mutex<Vec<Hold>>>,
}

/// How one attempt at the lock ended.
enum Attempt {
    /// Held and released.
    Held,
    /// Given up (a failure, the session lost, or time is up).
    Abandoned,
}

impl Client {
    fn node(&mut self) -> u64 {
        pick(&self.harness, &self.targets, &mut self.rng)
    }

    async fn execute(
        &mut self,
        request: &Request,
    ) -> (crate::history::Operation, Vec<pb::KeyValue>) {
        let node = self.node();
        let (operation, pairs) = self
            .harness
            .client
            .execute_full(&self.name, self.process, node, request)
            .await;
        if operation.status == OpStatus::Unknown {
            self.process = self.harness.client.recorder().new_process();
        }
        (operation, pairs)
    }

    /// Takes the lock again and again until `deadline`; returns the number
    /// of sessions.
    async fn run(mut self, deadline: Instant) -> usize {
        let mut sessions = 0;
        while Instant::now() < deadline {
            let Some(session) = self.start_session().await else {
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            };
            sessions += 1;
            let attempt = self.attempt(&session, deadline).await;
            self.end_session(session).await;
            if matches!(attempt, Attempt::Abandoned) {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
        sessions
    }

    async fn start_session(&mut self) -> Option<Session> {
        let grant = Request::LeaseGrant {
            label: lock_prefix(&self.args.name),
            ttl_seconds: self.args.ttl.0.as_secs() as i64,
        };
        let (granted, _) = self.execute(&grant).await;
        if granted.status != OpStatus::Ok {
            return None;
        }
        let lease = i64::from_str_radix(granted.value.as_deref()?, 16).ok()?;
        let ttl = granted
            .read
            .clone()
            .flatten()
            .and_then(|ttl| ttl.parse().ok())
            .map_or(self.args.ttl.0, Duration::from_secs);
        let state = Arc::new(Mutex::new(SessionState {
            renewals: vec![(granted.invoke_us, granted.complete_us)],
            lost_us: None,
        }));
        let keeper = tokio::spawn(keep_alive(
            self.harness.clone(),
            self.name.clone(),
            lock_prefix(&self.args.name),
            self.targets.clone(),
            lease,
            ttl,
            state.clone(),
            SmallRng::seed_from_u64(self.rng.random()),
        ));
        Some(Session {
            lease,
            ttl,
            state,
            keeper,
        })
    }

    async fn end_session(&mut self, session: Session) {
        session.keeper.abort();
        let _ = session.keeper.await;
        let revoke = Request::LeaseRevoke {
            label: lock_prefix(&self.args.name),
            id: session.lease,
        };
        // Best effort: a lease not revoked expires.
        for _ in 0..3 {
            let (operation, _) = self.execute(&revoke).await;
            if operation.status != OpStatus::Failed {
                break;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    async fn attempt(&mut self, session: &Session, deadline: Instant) -> Attempt {
        let key = format!("{}{:x}", lock_prefix(&self.args.name), session.lease);
        let create = Request::Create {
            key: key.clone(),
            value: self.name.clone(),
            lease: session.lease,
        };
        let (created, _) = self.execute(&create).await;
        if created.status != OpStatus::Ok || created.swapped != Some(true) {
            return Attempt::Abandoned;
        }
        let token = created.served.map_or(0, |served| served.revision);
        // Wait for the turn.
        let range = Request::Range {
            prefix: lock_prefix(&self.args.name),
        };
        let (read_invoke_us, acquired_us) = loop {
            if Instant::now() >= deadline || session.lost().is_some() {
                return Attempt::Abandoned;
            }
            let (read, pairs) = self.execute(&range).await;
            if read.status != OpStatus::Ok {
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            if !pairs.iter().any(|pair| pair.key == key.as_bytes()) {
                // The session expired and took the key: etcd's
                // ErrSessionExpired.
                return Attempt::Abandoned;
            }
            let before = pairs
                .iter()
                .filter(|pair| pair.create_revision < token)
                .max_by_key(|pair| pair.create_revision);
            match before {
                None => break (read.invoke_us, read.complete_us),
                Some(pair) => {
                    let from = read.served.map_or(0, |served| served.revision) + 1;
                    let node = self.node();
                    wait_for_delete(&self.harness, node, pair.key.clone(), from).await;
                }
            }
        };
        // Holding: two fenced writes.
        let fenced = Request::Fenced {
            key: guard_key(&self.args.name),
            token: token_text(token),
        };
        for round in 0..2 {
            if session.lost().is_some() {
                break;
            }
            self.execute(&fenced).await;
            if round == 0 {
                tokio::time::sleep(self.args.hold.0 / 2).await;
            }
        }
        tokio::time::sleep(self.args.hold.0 / 2).await;
        let now_us = self.harness.client.recorder().now_us();
        let state = session.state.lock().expect("session lock");
        let released_us = state.lost_us.map_or(now_us, |lost| lost.min(now_us));
        self.holds.lock().expect("holds lock").push(Hold {
            client: self.name.clone(),
            token,
            lease: session.lease,
            read_invoke_us,
            acquired_us,
            released_us,
            ttl_us: session.ttl.as_micros() as u64,
            renewals: state.renewals.clone(),
        });
        Attempt::Held
    }
}

/// Waits until `key` is deleted at revision `from` or later (a watch at
/// `node`), for `TURN_RECHECK` at most; any failure just ends the wait (the
/// caller ranges again).
async fn wait_for_delete(harness: &Harness, node: u64, key: Vec<u8>, from: i64) {
    let waiting = async {
        let Ok(mut stream) = harness.client.open_watch(node).await else {
            return;
        };
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key,
                    start_revision: from,
                    filters: vec![pb::WatchFilterType::Noput as i32],
                    ..pb::WatchCreateRequest::default()
                },
            )),
        };
        if stream.requests.unbounded_send(create).is_err() {
            return;
        }
        while let Some(Ok(response)) = stream.responses.next().await {
            if response.canceled || !response.events.is_empty() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(TURN_RECHECK, waiting).await;
}

/// A session's keeper: renews `lease` every third of its TTL on a
/// keep-alive stream at a random node, moving on when the stream fails;
/// ends when a renewal is answered "gone".
#[allow(clippy::too_many_arguments)]
async fn keep_alive(
    harness: Harness,
    client: String,
    label: String,
    targets: Option<Vec<u64>>,
    lease: i64,
    ttl: Duration,
    state: Arc<Mutex<SessionState>>,
    mut rng: SmallRng,
) {
    let recorder = harness.client.recorder().clone();
    let mut process = recorder.new_process();
    let every = ttl / 3;
    let mut stream = None;
    loop {
        tokio::time::sleep(if stream.is_some() { every } else { RETRY_PAUSE }).await;
        match renew(
            &harness,
            &mut stream,
            (&client, &mut process),
            (&targets, &mut rng),
            (&label, lease),
        )
        .await
        {
            Renewal::Gone(operation) => {
                state.lock().expect("session lock").lost_us = Some(operation.complete_us);
                return;
            }
            Renewal::Renewed(operation) => state
                .lock()
                .expect("session lock")
                .renewals
                .push((operation.invoke_us, operation.complete_us)),
            Renewal::NotAnswered => {}
        }
    }
}
