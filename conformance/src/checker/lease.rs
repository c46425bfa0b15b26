//! The check of `expect_lease_expiry`: a lease whose owner stopped renewing
//! it keeps its keys until its TTL has run out since the last renewal, and
//! then loses all of them at one revision, within a bound.
//!
//! Times are the runner's (µs since the scenario started, one monotonic
//! clock), read conservatively:
//!
//! - the **deadline** is the *invocation* of the last renewal answered with a
//!   TTL (or of the grant) plus the TTL: the leader restarted the TTL when it
//!   served that renewal, which was after the client sent it, so no correct
//!   cluster deletes the keys before then;
//! - a read is linearized somewhere between its invocation and completion,
//!   so a read that *completed* before the deadline must see every key; one
//!   that completed later may see them gone, and one that started earlier
//!   and saw them is always fine;
//! - the **bound** is the latest time by which a correct cluster has
//!   deleted them (computed by the step: the deadline, or a later
//!   leader change, plus the TTL, the election timeout and some slack); some
//!   read that completed by then must see none of them.

use std::collections::BTreeMap;

use serde::Serialize;

use super::millis;

use crate::history::{range_pairs, EventKind, Operation, WatchEvent};

/// What `expect_lease_expiry` found (the outcome's `checks.leases.NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseChecks {
    /// Keys attached to the lease.
    pub keys: usize,
    /// Every read that completed before the deadline saw every key, with
    /// its value.
    pub present_until_deadline: bool,
    /// A read that completed by the bound saw none of them, and no read
    /// invoked after the bound saw any.
    pub gone_within_bound: bool,
    /// No read saw only some of them, and none saw any again after a read
    /// (at its revision or an earlier one) saw none.
    pub deleted_at_one_revision: bool,
    /// The watcher saw each key's put, then its delete, every delete at
    /// the same revision, and nothing else; reads below that revision saw
    /// every key, reads at or above it none.
    pub watch_saw_the_deletes: bool,
}

impl LeaseChecks {
    /// Whether every check holds.
    pub fn passed(&self) -> bool {
        self.present_until_deadline
            && self.gone_within_bound
            && self.deleted_at_one_revision
            && self.watch_saw_the_deletes
    }
}

/// What the check looks at.
#[derive(Debug)]
pub struct LeaseInput<'a> {
    /// Every key attached to the lease, with its value.
    pub keys: &'a BTreeMap<String, String>,
    /// The last renewal's invocation plus the TTL (µs).
    pub deadline_us: u64,
    /// By when a correct cluster has deleted the keys (µs).
    pub bound_us: u64,
    /// The acknowledged `Range` reads of the keys' prefix, invoked after
    /// every key was attached.
    pub reads: &'a [&'a Operation],
    /// The watcher's events under the prefix.
    pub events: &'a [WatchEvent],
}

/// The checks and, for people, what broke them.
#[derive(Debug, Clone)]
pub struct LeaseVerdict {
    /// The booleans.
    pub checks: LeaseChecks,
    /// What failed, one line each (a few per check).
    pub problems: Vec<String>,
}

/// How many problems of one check are listed.
const PROBLEMS_PER_CHECK_MAX: usize = 3;

fn describe(read: &Operation) -> String {
    format!(
        "read #{} at node {} [{}, {}] (revision {})",
        read.id,
        read.node,
        millis(read.invoke_us),
        millis(read.complete_us),
        read.served.map_or(0, |served| served.revision)
    )
}

/// Runs every check.
pub fn check(input: &LeaseInput<'_>) -> LeaseVerdict {
    let mut problems = Vec::new();
    let seen: Vec<(&Operation, BTreeMap<String, String>)> = input
        .reads
        .iter()
        .map(|read| {
            let pairs = read
                .read
                .as_ref()
                .and_then(|read| read.as_deref())
                .map(range_pairs)
                .unwrap_or_default();
            (*read, pairs)
        })
        .collect();
    let all = |pairs: &BTreeMap<String, String>| pairs == input.keys;

    // Present until the deadline.
    let early: Vec<String> = seen
        .iter()
        .filter(|(read, pairs)| read.complete_us < input.deadline_us && !all(pairs))
        .map(|(read, pairs)| {
            let missing: Vec<&str> = input
                .keys
                .iter()
                .filter(|(key, value)| pairs.get(*key) != Some(value))
                .map(|(key, _)| key.as_str())
                .collect();
            format!(
                "keys gone before the deadline: {} did not see {} ({} before the deadline {}: last renewal + TTL)",
                describe(read),
                missing.join(", "),
                millis(input.deadline_us - read.complete_us),
                millis(input.deadline_us)
            )
        })
        .collect();
    let present_until_deadline = early.is_empty();
    problems.extend(early.into_iter().take(PROBLEMS_PER_CHECK_MAX));

    // Gone by the bound.
    let gone_in_time = seen
        .iter()
        .any(|(read, pairs)| read.complete_us <= input.bound_us && pairs.is_empty());
    let late: Vec<String> = seen
        .iter()
        .filter(|(read, pairs)| read.invoke_us > input.bound_us && !pairs.is_empty())
        .map(|(read, pairs)| {
            format!(
                "{} invoked after the bound {} still saw {} keys",
                describe(read),
                millis(input.bound_us),
                pairs.len()
            )
        })
        .collect();
    if !gone_in_time {
        problems.push(format!(
            "no read that completed by the bound {} (deadline {} + TTL + election timeout + slack) saw the keys gone",
            millis(input.bound_us),
            millis(input.deadline_us)
        ));
    }
    let gone_within_bound = gone_in_time && late.is_empty();
    problems.extend(late.into_iter().take(PROBLEMS_PER_CHECK_MAX));

    // All or nothing, never back.
    let mut by_revision: Vec<&(&Operation, BTreeMap<String, String>)> = seen.iter().collect();
    by_revision.sort_by_key(|(read, _)| (read.served.map_or(0, |served| served.revision), read.id));
    let mut partial: Vec<String> = seen
        .iter()
        .filter(|(_, pairs)| !pairs.is_empty() && !all(pairs))
        .map(|(read, pairs)| {
            format!(
                "{} saw {} of the {} keys",
                describe(read),
                pairs.len(),
                input.keys.len()
            )
        })
        .collect();
    let first_gone = by_revision.iter().position(|(_, pairs)| pairs.is_empty());
    if let Some(first) = first_gone {
        partial.extend(
            by_revision[first..]
                .iter()
                .filter(|(_, pairs)| !pairs.is_empty())
                .map(|(read, _)| {
                    format!(
                        "{} saw keys again after {} saw none",
                        describe(read),
                        describe(by_revision[first].0)
                    )
                }),
        );
    }
    let deleted_at_one_revision = partial.is_empty();
    problems.extend(partial.into_iter().take(PROBLEMS_PER_CHECK_MAX));

    // The watcher.
    let mut watch_problems = Vec::new();
    let mut per_key: BTreeMap<&str, Vec<&WatchEvent>> = BTreeMap::new();
    for event in input.events {
        match input.keys.get(&event.key) {
            Some(_) => per_key.entry(event.key.as_str()).or_default().push(event),
            None => {
                watch_problems.push(format!("event of a key not attached: {}", event.describe()))
            }
        }
    }
    let mut delete_revisions: Vec<i64> = Vec::new();
    for (key, value) in input.keys {
        let events = per_key.get(key.as_str()).cloned().unwrap_or_default();
        match events.as_slice() {
            [put, delete]
                if put.kind == EventKind::Put
                    && put.value.as_ref() == Some(value)
                    && delete.kind == EventKind::Delete
                    && put.revision < delete.revision =>
            {
                delete_revisions.push(delete.revision);
            }
            other => {
                let described: Vec<String> = other.iter().map(|event| event.describe()).collect();
                watch_problems.push(format!(
                    "{key}: events [{}], not its put then its delete",
                    described.join(", ")
                ));
            }
        }
    }
    delete_revisions.sort_unstable();
    delete_revisions.dedup();
    match delete_revisions.as_slice() {
        [revision] => {
            for (read, pairs) in &seen {
                let at = read.served.map_or(0, |served| served.revision);
                let expected_all = at < *revision;
                if (expected_all && !all(pairs)) || (!expected_all && !pairs.is_empty()) {
                    watch_problems.push(format!(
                        "{} saw {} keys, but the watcher saw them deleted at revision {revision}",
                        describe(read),
                        pairs.len()
                    ));
                }
            }
        }
        [] => {}
        several => watch_problems.push(format!("the keys were deleted at revisions {several:?}")),
    }
    let watch_saw_the_deletes = watch_problems.is_empty();
    problems.extend(watch_problems.into_iter().take(PROBLEMS_PER_CHECK_MAX));

    LeaseVerdict {
        checks: LeaseChecks {
            keys: input.keys.len(),
            present_until_deadline,
            gone_within_bound,
            deleted_at_one_revision,
            watch_saw_the_deletes,
        },
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{OpKind, OpStatus, Served};

    fn read(
        id: usize,
        (invoke_us, complete_us): (u64, u64),
        revision: i64,
        pairs: &str,
    ) -> Operation {
        Operation {
            id,
            client: "reader".into(),
            process: 0,
            node: 1,
            kind: OpKind::Range,
            key: "l/".into(),
            value: None,
            consistency: None,
            invoke_us,
            complete_us,
            status: OpStatus::Ok,
            read: Some(Some(pairs.into())),
            deleted: None,
            expected: None,
            swapped: None,
            served: Some(Served {
                revision,
                ..Served::default()
            }),
            error: None,
        }
    }

    fn event(key: &str, kind: EventKind, revision: i64) -> WatchEvent {
        WatchEvent {
            watch: "w".into(),
            node: 1,
            at_us: 0,
            revision,
            kind,
            key: key.into(),
            value: (kind == EventKind::Put).then(|| format!("{key}-v")),
            previous: None,
        }
    }

    fn keys() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("l/k0".to_string(), "l/k0-v".to_string()),
            ("l/k1".to_string(), "l/k1-v".to_string()),
        ])
    }

    const BOTH: &str = "l/k0=l/k0-v l/k1=l/k1-v";

    fn events() -> Vec<WatchEvent> {
        vec![
            event("l/k0", EventKind::Put, 2),
            event("l/k1", EventKind::Put, 3),
            event("l/k0", EventKind::Delete, 9),
            event("l/k1", EventKind::Delete, 9),
        ]
    }

    fn run(reads: &[Operation], events: &[WatchEvent]) -> LeaseVerdict {
        let keys = keys();
        let reads: Vec<&Operation> = reads.iter().collect();
        check(&LeaseInput {
            keys: &keys,
            deadline_us: 1_000,
            bound_us: 5_000,
            reads: &reads,
            events,
        })
    }

    #[test]
    fn keys_kept_until_the_deadline_then_deleted_together() {
        let reads = [
            read(0, (100, 200), 3, BOTH),
            // Started before the deadline, ended after it: either answer.
            read(1, (900, 1_100), 3, BOTH),
            read(2, (950, 1_200), 9, ""),
            read(3, (1_300, 1_400), 9, ""),
            read(4, (6_000, 6_100), 10, ""),
        ];
        let verdict = run(&reads, &events());
        assert!(verdict.checks.passed(), "{:?}", verdict.problems);
    }

    #[test]
    fn keys_gone_before_the_deadline_are_caught() {
        let reads = [read(0, (100, 200), 3, BOTH), read(1, (800, 900), 9, "")];
        let verdict = run(&reads, &events());
        assert!(!verdict.checks.present_until_deadline);
        assert!(
            verdict.checks.watch_saw_the_deletes,
            "{:?}",
            verdict.problems
        );
        assert!(verdict.problems[0].contains("keys gone before the deadline"));
    }

    #[test]
    fn keys_kept_past_the_bound_are_caught() {
        let reads = [
            read(0, (100, 200), 3, BOTH),
            read(1, (5_100, 5_200), 3, BOTH),
        ];
        let verdict = run(&reads, &events()[..2]);
        assert!(!verdict.checks.gone_within_bound);
        assert!(!verdict.checks.watch_saw_the_deletes);
    }

    #[test]
    fn a_partial_delete_or_a_key_back_is_caught() {
        let reads = [
            read(0, (1_100, 1_200), 9, ""),
            read(1, (1_300, 1_400), 10, "l/k1=l/k1-v"),
        ];
        let verdict = run(&reads, &events());
        assert!(!verdict.checks.deleted_at_one_revision);
        assert!(!verdict.checks.watch_saw_the_deletes);
        let mut split = events();
        split[3].revision = 10;
        let verdict = run(&[read(0, (1_100, 1_200), 11, "")], &split);
        assert!(verdict.checks.deleted_at_one_revision);
        assert!(!verdict.checks.watch_saw_the_deletes);
    }
}
