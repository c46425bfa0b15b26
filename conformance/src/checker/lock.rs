//! The check of `expect_lock_safety`: clients took one lock with etcd's
//! recipe (a session lease, a key created under the lock's prefix, wait
//! until no key has a lower create revision); the create revision is the
//! holder's fencing token.
//!
//! Each hold is recorded with the runner's clock (µs since the scenario
//! started): `acquired` is the completion of the range that showed the
//! holder's key first (its `read_invoke` is that range's invocation), and
//! `released` the moment the holder stopped acting as one: when it invoked
//! the revoke of its session, or noticed earlier that the session was gone.
//!
//! **The property.** Take two holds A and B with A's token below B's. B's
//! acquiring range was linearized at some instant p in [B.read_invoke,
//! B.acquired] and did not see A's key, which existed before p (it was
//! created before B's key, which was created before that range). So A's key
//! was deleted before p, and keys are deleted only by a revoke (A invokes it
//! at A.released) or by the expiry of A's lease. A correct cluster expires a
//! lease no earlier than the TTL after a renewal was *sent*; so if some
//! renewal of A (or its grant) completed by B.read_invoke and was sent less
//! than a TTL before B.acquired, A's lease was alive through all of
//! [B.read_invoke, B.acquired], and B.acquired <= A.released means the lock
//! was handed to B while A held it: a violation. An overlap is
//! **explained** only when A's lease could have expired (A's renewals failed
//! for a TTL): then A's holder learns it lost the lock late, and that is
//! what fencing is for.
//!
//! Checks:
//! - `holds_do_not_overlap`: no pair (A, B) as above with B.acquired <=
//!   A.released while A's lease was guaranteed alive;
//! - `tokens_increase_with_acquisition`: no such pair where B even acquired
//!   before A did (a lower token acquiring after a higher one);
//! - `fenced_writes_in_order`: the guarded key's history (its watcher's
//!   events, in revision order) holds strictly increasing tokens, every
//!   acknowledged fenced write that stored its token is an event at its
//!   revision, and every event is a token some fenced write sent (or the
//!   initial value);
//! - `every_client_held`: each client held the lock at least once.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::millis;

use crate::history::{EventKind, OpKind, OpStatus, Operation, WatchEvent};

/// One hold of the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The client.
    pub client: String,
    /// Its key's create revision (the fencing token).
    pub token: i64,
    /// The session lease.
    pub lease: i64,
    /// Invocation of the range that showed it held the lock (µs).
    pub read_invoke_us: u64,
    /// Completion of that range: it knew it held the lock (µs).
    pub acquired_us: u64,
    /// When it stopped acting as the holder (µs).
    pub released_us: u64,
    /// The session's TTL (µs).
    pub ttl_us: u64,
    /// (invocation, completion) of the grant and of every renewal answered
    /// with a TTL, up to the release.
    pub renewals: Vec<(u64, u64)>,
}

impl Hold {
    /// Whether its lease was surely alive through `from..=to`: a renewal
    /// completed by `from` was sent less than a TTL before `to`.
    fn alive_through(&self, from: u64, to: u64) -> bool {
        self.renewals
            .iter()
            .any(|(invoke, complete)| *complete <= from && invoke + self.ttl_us > to)
    }
}

/// What `expect_lock_safety` found (the outcome's `checks.locks.NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockChecks {
    /// No two holds overlapped unless the earlier one's session may have
    /// expired.
    pub holds_do_not_overlap: bool,
    /// No lower token acquired after a higher one (same exception).
    pub tokens_increase_with_acquisition: bool,
    /// The guarded key only ever stored increasing tokens.
    pub fenced_writes_in_order: bool,
    /// Every client held the lock at least once.
    pub every_client_held: bool,
}

impl LockChecks {
    /// Whether every check holds.
    pub fn passed(&self) -> bool {
        self.holds_do_not_overlap
            && self.tokens_increase_with_acquisition
            && self.fenced_writes_in_order
            && self.every_client_held
    }
}

/// What the check looks at.
#[derive(Debug)]
pub struct LockInput<'a> {
    /// Every hold.
    pub holds: &'a [Hold],
    /// The clients that took part.
    pub clients: &'a [String],
    /// The guarded key.
    pub guard: &'a str,
    /// The guarded key's value before any holder wrote.
    pub initial: &'a str,
    /// The watcher's events on the guarded key.
    pub events: &'a [WatchEvent],
    /// Every operation (the fenced writes are taken from it).
    pub operations: &'a [Operation],
}

/// The checks and, for people, what broke them (and how many overlaps an
/// expired session explained).
#[derive(Debug, Clone)]
pub struct LockVerdict {
    /// The booleans.
    pub checks: LockChecks,
    /// What failed, a few lines per check.
    pub problems: Vec<String>,
    /// Overlaps explained by a session that may have expired.
    pub explained_overlaps: usize,
}

/// How many problems of one check are listed.
const PROBLEMS_PER_CHECK_MAX: usize = 3;

fn describe(hold: &Hold) -> String {
    format!(
        "{} (token {}, lease {:x}) held [{}, {}]",
        hold.client,
        hold.token,
        hold.lease,
        millis(hold.acquired_us),
        millis(hold.released_us)
    )
}

/// Runs every check.
pub fn check(input: &LockInput<'_>) -> LockVerdict {
    let mut problems = Vec::new();
    let mut holds: Vec<&Hold> = input.holds.iter().collect();
    holds.sort_by_key(|hold| hold.token);
    let mut overlaps = Vec::new();
    let mut inversions = Vec::new();
    let mut explained_overlaps = 0;
    for (index, earlier) in holds.iter().enumerate() {
        for later in &holds[index + 1..] {
            if later.acquired_us > earlier.released_us {
                continue;
            }
            if !earlier.alive_through(later.read_invoke_us, later.acquired_us) {
                explained_overlaps += 1;
                continue;
            }
            let text = format!(
                "{} acquired at {}, while {} and its session was surely alive",
                describe(later),
                millis(later.acquired_us),
                describe(earlier)
            );
            if later.acquired_us < earlier.acquired_us {
                inversions.push(format!("lower token acquired later: {text}"));
            }
            overlaps.push(text);
        }
    }
    let holds_do_not_overlap = overlaps.is_empty();
    let tokens_increase_with_acquisition = inversions.is_empty();
    problems.extend(overlaps.into_iter().take(PROBLEMS_PER_CHECK_MAX));
    problems.extend(inversions.into_iter().take(PROBLEMS_PER_CHECK_MAX));

    // The guarded key's history.
    let fenced: Vec<&Operation> = input
        .operations
        .iter()
        .filter(|op| op.kind == OpKind::Fenced && op.key == input.guard)
        .collect();
    let sent: BTreeSet<&str> = fenced
        .iter()
        .filter(|op| op.status != OpStatus::Failed)
        .filter_map(|op| op.value.as_deref())
        .chain([input.initial])
        .collect();
    let mut guard_problems = Vec::new();
    let mut events: Vec<&WatchEvent> = input
        .events
        .iter()
        .filter(|event| event.key == input.guard)
        .collect();
    events.sort_by_key(|event| event.revision);
    let mut last: Option<&WatchEvent> = None;
    for event in &events {
        let value = event.value.as_deref().unwrap_or_default();
        if event.kind != EventKind::Put {
            guard_problems.push(format!("the guarded key was deleted: {}", event.describe()));
        } else if !sent.contains(value) {
            guard_problems.push(format!("nobody wrote {}", event.describe()));
        }
        if let Some(previous) = last {
            if previous.value.as_deref().unwrap_or_default() >= value {
                guard_problems.push(format!(
                    "a fenced write out of order: {} after {}",
                    event.describe(),
                    previous.describe()
                ));
            }
        }
        last = Some(event);
    }
    let at: BTreeMap<i64, &str> = events
        .iter()
        .map(|event| (event.revision, event.value.as_deref().unwrap_or_default()))
        .collect();
    for op in fenced
        .iter()
        .filter(|op| op.status == OpStatus::Ok && op.swapped == Some(true))
    {
        let revision = op.served.map_or(0, |served| served.revision);
        let value = op.value.as_deref().unwrap_or_default();
        if at.get(&revision) != Some(&value) {
            guard_problems.push(format!(
                "#{} {} acknowledged at revision {revision}, but the watcher saw {}",
                op.id,
                op.describe(),
                at.get(&revision).copied().unwrap_or("nothing there")
            ));
        }
    }
    let fenced_writes_in_order = guard_problems.is_empty();
    problems.extend(guard_problems.into_iter().take(PROBLEMS_PER_CHECK_MAX));

    let held: BTreeSet<&str> = input
        .holds
        .iter()
        .map(|hold| hold.client.as_str())
        .collect();
    let idle: Vec<&str> = input
        .clients
        .iter()
        .map(String::as_str)
        .filter(|client| !held.contains(client))
        .collect();
    if !idle.is_empty() {
        problems.push(format!("never held the lock: {}", idle.join(", ")));
    }
    LockVerdict {
        checks: LockChecks {
            holds_do_not_overlap,
            tokens_increase_with_acquisition,
            fenced_writes_in_order,
            every_client_held: idle.is_empty(),
        },
        problems,
        explained_overlaps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Served;

    fn hold(client: &str, token: i64, (acquired_us, released_us): (u64, u64)) -> Hold {
        Hold {
            client: client.into(),
            token,
            lease: token,
            read_invoke_us: acquired_us - 5,
            acquired_us,
            released_us,
            ttl_us: 1_000,
            renewals: vec![(acquired_us - 100, acquired_us - 90)],
        }
    }

    fn fenced(id: usize, token: &str, swapped: bool, revision: i64) -> Operation {
        Operation {
            id,
            client: "c".into(),
            process: 0,
            node: 1,
            kind: OpKind::Fenced,
            key: "g".into(),
            value: Some(token.into()),
            consistency: None,
            invoke_us: 0,
            complete_us: 1,
            status: OpStatus::Ok,
            read: None,
            deleted: None,
            expected: None,
            swapped: Some(swapped),
            served: Some(Served {
                revision,
                ..Served::default()
            }),
            error: None,
        }
    }

    fn put(token: &str, revision: i64) -> WatchEvent {
        WatchEvent {
            watch: "g".into(),
            node: 1,
            at_us: 0,
            revision,
            kind: EventKind::Put,
            key: "g".into(),
            value: Some(token.into()),
            previous: None,
        }
    }

    fn run(holds: &[Hold], operations: &[Operation], events: &[WatchEvent]) -> LockVerdict {
        let clients = vec!["a".to_string(), "b".to_string()];
        check(&LockInput {
            holds,
            clients: &clients,
            guard: "g",
            initial: "00",
            events,
            operations,
        })
    }

    #[test]
    fn holds_one_after_another_pass() {
        let holds = [hold("a", 10, (200, 400)), hold("b", 12, (450, 600))];
        let operations = [fenced(0, "10", true, 11), fenced(1, "12", true, 13)];
        let events = [put("00", 2), put("10", 11), put("12", 13)];
        let verdict = run(&holds, &operations, &events);
        assert!(verdict.checks.passed(), "{:?}", verdict.problems);
    }

    #[test]
    fn an_overlap_while_the_session_lived_is_a_violation() {
        let holds = [hold("a", 10, (200, 500)), hold("b", 12, (450, 600))];
        let verdict = run(&holds, &[], &[]);
        assert!(!verdict.checks.holds_do_not_overlap);
        assert!(verdict.checks.tokens_increase_with_acquisition);
        // A lower token acquiring after a higher one.
        let holds = [hold("a", 10, (500, 700)), hold("b", 12, (450, 600))];
        let verdict = run(&holds, &[], &[]);
        assert!(!verdict.checks.tokens_increase_with_acquisition);
    }

    #[test]
    fn an_overlap_after_the_session_may_have_expired_is_explained() {
        let mut earlier = hold("a", 10, (200, 3_000));
        earlier.renewals = vec![(100, 150)];
        // B acquires at 2_000: A's last renewal was sent at 100, TTL 1_000.
        let holds = [earlier, hold("b", 12, (2_000, 2_500))];
        let verdict = run(&holds, &[], &[]);
        assert!(
            verdict.checks.holds_do_not_overlap,
            "{:?}",
            verdict.problems
        );
        assert_eq!(verdict.explained_overlaps, 1);
    }

    #[test]
    fn fenced_writes_out_of_order_are_caught() {
        let holds = [hold("a", 10, (200, 400)), hold("b", 12, (450, 600))];
        let operations = [fenced(0, "12", true, 11), fenced(1, "10", true, 13)];
        let events = [put("12", 11), put("10", 13)];
        let verdict = run(&holds, &operations, &events);
        assert!(!verdict.checks.fenced_writes_in_order);
        // An acknowledged write the watcher never saw.
        let operations = [fenced(0, "10", true, 11)];
        let verdict = run(&holds, &operations, &[]);
        assert!(!verdict.checks.fenced_writes_in_order);
        assert!(!run(&holds[..1], &[], &[]).checks.every_client_held);
    }
}
