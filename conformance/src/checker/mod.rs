//! Linearizability checking of a recorded history, Porcupine style.
//!
//! Keys are independent registers, so the history is split per key
//! (P-compositionality) and each key is searched on its own by
//! [`wgl::search`]. Which operations count:
//!
//! - an acknowledged put or delete is a known write; an acknowledged get a
//!   known read;
//! - a put or delete with an unknown outcome may have taken effect at any time
//!   after its invocation, or never: its completion is "at infinity" and any
//!   answer is accepted;
//! - a failed operation surely did not happen and is left out, as is a get
//!   that did not return a value (it changed nothing);
//! - a serializable get is left out: it is served from the answering node's
//!   local state and promised to be possibly stale, so it is not part of the
//!   linearizable contract (scenarios check it with explicit expectations).
//!
//! On a violation, the failing key's history is shrunk to a small
//! counterexample with steps that provably keep it non-linearizable (see
//! [`minimize`]), so what is printed is a real contradiction, not an artifact
//! of leaving operations out.

pub mod lease;
pub mod lock;
pub mod register;
pub mod watch;
pub mod wgl;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::history::{Consistency, History, OpKind, OpStatus, Operation};
use register::{Input, Output, Register};
use wgl::{search, Budget, CheckOp, Search};

/// The overall answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every key has a linearization.
    Linearizable,
    /// At least one key has none.
    NotLinearizable,
    /// No violation found, but the search gave up on some key.
    Inconclusive,
}

/// A violation on one key, shrunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// Ids (in the history) of a small set of operations that on its own has
    /// no linearization, in invocation order.
    pub counterexample: Vec<usize>,
    /// Of those, the ones the search could linearize, in order.
    pub longest: Vec<usize>,
    /// The operations that could not be linearized after `longest`.
    pub stuck: Vec<usize>,
    /// Ids of delete operations whose answer (deleted or not) was ignored in
    /// the counterexample (they still remove the key).
    pub relaxed: Vec<usize>,
    /// False when the budget ran out before the counterexample was 1-minimal.
    pub minimal: bool,
}

/// What the checker found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The answer.
    pub verdict: Verdict,
    /// Keys checked.
    pub keys: usize,
    /// Operations that took part in the check.
    pub operations: usize,
    /// Every key without a linearization.
    pub violating_keys: Vec<String>,
    /// Keys the search gave up on.
    pub inconclusive_keys: Vec<String>,
    /// The first violating key (in key order), shrunk.
    pub violation: Option<Violation>,
}

/// Microseconds as milliseconds, for people.
pub(crate) fn millis(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// Time limits of one check.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Search time per key.
    pub per_key: Duration,
    /// Total time for shrinking a counterexample.
    pub shrink: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_key: Duration::from_secs(30),
            shrink: Duration::from_secs(20),
        }
    }
}

/// One operation of one key, ready for the search and for shrinking.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyOp {
    id: usize,
    call: u64,
    ret: Option<u64>,
    input: Input,
    output: Output,
}

impl KeyOp {
    fn is_known_delete(&self) -> bool {
        matches!(
            (self.input, self.output),
            (Input::Delete, Output::Deleted(_))
        )
    }
    /// Ends at or after `time` (so it may be linearized after an op called then).
    fn may_end_after(&self, time: u64) -> bool {
        self.ret.is_none_or(|ret| ret >= time)
    }
    fn to_check(&self) -> CheckOp<Input, Output> {
        CheckOp {
            id: self.id,
            call: self.call,
            ret: self.ret,
            input: self.input,
            output: self.output,
        }
    }
}

/// Checks every key of `history`.
pub fn check(history: &History, limits: Limits) -> Report {
    // Keys that read-modify-write recipes change (a counter's key, a bank's
    // accounts under its prefix) are not registers this model knows: their
    // own steps check them (`expect_counter`, `expect_bank_total`). Nor are
    // keys that leases delete (no client operation records an expiry):
    // `expect_lease_expiry` and `expect_lock_safety` check those.
    let recipe_keys: std::collections::BTreeSet<&str> = history
        .operations
        .iter()
        .filter(|operation| {
            matches!(
                operation.kind,
                OpKind::Increment | OpKind::Transfer | OpKind::Audit
            ) || operation.kind.is_lease_recipe()
        })
        .map(|operation| operation.key.as_str())
        .collect();
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for operation in &history.operations {
        if recipe_keys
            .iter()
            .any(|recipe| operation.key.starts_with(recipe))
        {
            continue;
        }
        by_key
            .entry(operation.key.as_str())
            .or_default()
            .push(operation);
    }
    let mut report = Report {
        verdict: Verdict::Linearizable,
        keys: by_key.len(),
        operations: 0,
        violating_keys: Vec::new(),
        inconclusive_keys: Vec::new(),
        violation: None,
    };
    for (key, operations) in by_key {
        let ops = key_ops(&operations);
        report.operations += ops.len();
        match run(&ops, Instant::now() + limits.per_key) {
            Search::Linearizable => {}
            Search::Inconclusive => report.inconclusive_keys.push(key.to_string()),
            Search::Violation { .. } => {
                report.violating_keys.push(key.to_string());
                if report.violation.is_none() {
                    report.violation = Some(minimize(key, ops, Instant::now() + limits.shrink));
                }
            }
        }
    }
    report.verdict = if !report.violating_keys.is_empty() {
        Verdict::NotLinearizable
    } else if !report.inconclusive_keys.is_empty() {
        Verdict::Inconclusive
    } else {
        Verdict::Linearizable
    };
    report
}

/// The checked operations of one key, values interned in bytewise order
/// (a fenced write compares them).
fn key_ops(operations: &[&Operation]) -> Vec<KeyOp> {
    let mut sorted: Vec<&str> = operations
        .iter()
        .flat_map(|operation| {
            [
                operation.value.as_deref(),
                operation.read.as_ref().and_then(|read| read.as_deref()),
                operation
                    .expected
                    .as_ref()
                    .and_then(|expected| expected.as_deref()),
            ]
        })
        .flatten()
        .collect();
    // A put's missing value is the empty one.
    sorted.push("");
    sorted.sort_unstable();
    sorted.dedup();
    let values: HashMap<&str, u32> = sorted
        .iter()
        .enumerate()
        .map(|(index, value)| (*value, index as u32 + 1))
        .collect();
    let intern = |value: Option<&str>| -> u32 { value.map_or(0, |value| values[value]) };
    let mut ops = Vec::new();
    for operation in operations {
        let (ret, known) = match operation.status {
            OpStatus::Failed => continue,
            OpStatus::Ok => (Some(operation.complete_us), true),
            OpStatus::Unknown => (None, false),
        };
        // A compare-and-swap's or fenced write's answer: swapped, or the
        // value it found instead.
        let swap_output = || match (known, operation.swapped) {
            (true, Some(true)) => Output::Swapped,
            (true, Some(false)) => Output::NotSwapped(intern(
                operation.read.as_ref().and_then(|read| read.as_deref()),
            )),
            _ => Output::Unknown,
        };
        let (input, output) = match operation.kind {
            OpKind::Put => {
                let value = intern(Some(operation.value.as_deref().unwrap_or_default()));
                (
                    Input::Put(value),
                    if known {
                        Output::Written
                    } else {
                        Output::Unknown
                    },
                )
            }
            OpKind::Delete => (
                Input::Delete,
                match (known, operation.deleted) {
                    (true, Some(deleted)) => Output::Deleted(deleted),
                    _ => Output::Unknown,
                },
            ),
            OpKind::Cas => {
                let expected = intern(
                    operation
                        .expected
                        .as_ref()
                        .and_then(|expected| expected.as_deref()),
                );
                let new = intern(Some(operation.value.as_deref().unwrap_or_default()));
                (Input::Cas { expected, new }, swap_output())
            }
            OpKind::Fenced => {
                let new = intern(Some(operation.value.as_deref().unwrap_or_default()));
                (Input::Fence { new }, swap_output())
            }
            // Checked by their own steps (counts, sums, leases), not as
            // registers.
            OpKind::Increment
            | OpKind::Transfer
            | OpKind::Audit
            | OpKind::Range
            | OpKind::LeaseGrant
            | OpKind::LeaseKeepAlive
            | OpKind::LeaseRevoke => continue,
            OpKind::Get if operation.consistency == Some(Consistency::Serializable) => continue,
            OpKind::Get => {
                // A get that did not return changed nothing.
                let Some(read) = (if known { operation.read.as_ref() } else { None }) else {
                    continue;
                };
                (Input::Get, Output::Read(intern(read.as_deref())))
            }
        };
        ops.push(KeyOp {
            id: operation.id,
            call: operation.invoke_us,
            ret,
            input,
            output,
        });
    }
    ops
}

fn run(ops: &[KeyOp], deadline: Instant) -> Search {
    let checks: Vec<_> = ops.iter().map(KeyOp::to_check).collect();
    search(&Register, &checks, Budget { deadline })
}

fn fails(ops: &[KeyOp], deadline: Instant) -> bool {
    matches!(run(ops, deadline), Search::Violation { .. })
}

/// The history of the operations invoked at or before `cutoff`, as a client
/// would have seen it at that instant: writes still in flight become unknown,
/// reads still in flight are dropped.
fn prefix(ops: &[KeyOp], cutoff: u64) -> Vec<KeyOp> {
    ops.iter()
        .filter(|op| op.call <= cutoff)
        .filter_map(|op| match op.ret {
            Some(ret) if ret > cutoff => match op.input {
                Input::Get => None,
                _ => Some(KeyOp {
                    ret: None,
                    output: Output::Unknown,
                    ..op.clone()
                }),
            },
            _ => Some(op.clone()),
        })
        .collect()
}

/// Shrinks a non-linearizable key history. Every step keeps "no
/// linearization exists", because from a linearization of the bigger history
/// one of the smaller follows; so the result is a genuine counterexample,
/// never an artifact of leaving operations out:
///
/// 1. the shortest failing prefix: the operations invoked up to some
///    completion instant, those still in flight then made unknown (writes) or dropped
///    (reads); a linearization of the whole restricted to the prefix is one
///    of the prefix. Binary search over the instants.
/// 2. then, greedily until nothing changes:
///    - drop a get (it changes no state);
///    - forget a delete's answer (that only allows more);
///    - drop a put whose value no remaining get read, when no remaining
///      delete with a known answer may directly follow it (come after it
///      with no write surely in between): in a linearization, nothing
///      between the put and the next write observed its value;
///    - drop a delete when no remaining get of "absent" and no remaining
///      delete with a known answer may directly follow it (same argument).
///
/// Returns the result and whether it got to a fixed point in time.
fn shrink(ops: Vec<KeyOp>, deadline: Instant) -> (Vec<KeyOp>, bool) {
    // Cut at completion instants, so the last op of a prefix is complete;
    // u64::MAX cuts nothing.
    let mut cutoffs: Vec<u64> = ops.iter().filter_map(|op| op.ret).collect();
    cutoffs.push(u64::MAX);
    cutoffs.sort_unstable();
    cutoffs.dedup();
    // Smallest index whose prefix fails; the last one (everything) fails.
    let (mut low, mut high) = (0, cutoffs.len().saturating_sub(1));
    while low < high {
        if Instant::now() > deadline {
            break;
        }
        let middle = (low + high) / 2;
        if fails(&prefix(&ops, cutoffs[middle]), deadline) {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    let mut current = prefix(&ops, cutoffs[high]);

    let mut changed = true;
    while changed {
        changed = false;
        let mut index = current.len();
        while index > 0 {
            index -= 1;
            if Instant::now() > deadline {
                return (current, false);
            }
            let op = current[index].clone();
            // Forget a delete's answer first: it makes the delete removable.
            if op.is_known_delete() {
                let mut candidate = current.clone();
                candidate[index].output = Output::Unknown;
                if fails(&candidate, deadline) {
                    current = candidate;
                    changed = true;
                }
            }
            let op = current[index].clone();
            // May `other` observe the state right after `op` (come after it
            // with no definite write in between)?
            let may_follow =
                |other: &KeyOp| other.may_end_after(op.call) && !separated(&current, &op, other);
            let others = || current.iter().filter(|other| other.id != op.id);
            let removable = match op.input {
                Input::Get => true,
                Input::Put(value) => others().all(|other| {
                    other.output != Output::Read(value)
                        && !(other.is_known_delete() && may_follow(other))
                }),
                Input::Delete => others().all(|other| {
                    !((other.output == Output::Read(0) || other.is_known_delete())
                        && may_follow(other))
                }),
                // Kept: whether anything observed its write, or relied on
                // its compare, is not worked out here.
                Input::Cas { .. } | Input::Fence { .. } => false,
            };
            if removable {
                let mut candidate = current.clone();
                candidate.remove(index);
                if fails(&candidate, deadline) {
                    current = candidate;
                    changed = true;
                }
            }
        }
    }
    (current, true)
}

/// Whether a write in `ops` (other than `first` and `second`) surely takes
/// effect between them: it starts after `first` ended and ends before
/// `second` started, so in every linearization it separates the two.
fn separated(ops: &[KeyOp], first: &KeyOp, second: &KeyOp) -> bool {
    let Some(first_end) = first.ret else {
        return false;
    };
    ops.iter().any(|between| {
        between.id != first.id
            && between.id != second.id
            && between.input != Input::Get
            && first_end < between.call
            && between.ret.is_some_and(|end| end < second.call)
    })
}

fn minimize(key: &str, ops: Vec<KeyOp>, deadline: Instant) -> Violation {
    let originals: HashMap<usize, Output> = ops.iter().map(|op| (op.id, op.output)).collect();
    let (mut shrunk, minimal) = shrink(ops, deadline);
    shrunk.sort_by_key(|op| (op.call, op.id));
    let relaxed = shrunk
        .iter()
        .filter(|op| op.input == Input::Delete && op.output == Output::Unknown)
        .filter(|op| matches!(originals.get(&op.id), Some(Output::Deleted(_))))
        .map(|op| op.id)
        .collect();
    let (longest, stuck) = match run(&shrunk, Instant::now() + Duration::from_secs(5)) {
        Search::Violation { longest, stuck } => (longest, stuck),
        _ => (Vec::new(), Vec::new()),
    };
    Violation {
        key: key.to_string(),
        counterexample: shrunk.iter().map(|op| op.id).collect(),
        longest,
        stuck,
        relaxed,
        minimal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Consistency, Operation};

    struct Builder {
        history: History,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                history: History::default(),
            }
        }
        fn push(
            &mut self,
            kind: OpKind,
            key: &str,
            times: (u64, u64),
            status: OpStatus,
        ) -> &mut Operation {
            let id = self.history.operations.len();
            self.history.operations.push(Operation {
                id,
                client: format!("c{id}"),
                process: id,
                node: 1,
                kind,
                key: key.into(),
                value: None,
                consistency: (kind == OpKind::Get).then_some(Consistency::Linearizable),
                invoke_us: times.0,
                complete_us: times.1,
                status,
                read: None,
                deleted: None,
                expected: None,
                swapped: None,
                served: None,
                error: None,
            });
            self.history.operations.last_mut().unwrap()
        }
        fn cas(
            &mut self,
            key: &str,
            (expected, value): (Option<&str>, &str),
            outcome: Option<Result<(), Option<&str>>>,
            times: (u64, u64),
        ) -> usize {
            let status = if outcome.is_some() {
                OpStatus::Ok
            } else {
                OpStatus::Unknown
            };
            let op = self.push(OpKind::Cas, key, times, status);
            op.expected = Some(expected.map(str::to_string));
            op.value = Some(value.into());
            match outcome {
                Some(Ok(())) => op.swapped = Some(true),
                Some(Err(read)) => {
                    op.swapped = Some(false);
                    op.read = Some(read.map(str::to_string));
                }
                None => {}
            }
            op.id
        }
        fn put(&mut self, key: &str, value: &str, times: (u64, u64), status: OpStatus) -> usize {
            let op = self.push(OpKind::Put, key, times, status);
            op.value = Some(value.into());
            op.id
        }
        fn get(&mut self, key: &str, read: Option<&str>, times: (u64, u64)) -> usize {
            let op = self.push(OpKind::Get, key, times, OpStatus::Ok);
            op.read = Some(read.map(str::to_string));
            op.id
        }
        fn delete(
            &mut self,
            key: &str,
            deleted: Option<bool>,
            times: (u64, u64),
            status: OpStatus,
        ) -> usize {
            let op = self.push(OpKind::Delete, key, times, status);
            op.deleted = deleted;
            op.id
        }
    }

    fn check_default(history: &History) -> Report {
        check(history, Limits::default())
    }

    #[test]
    fn two_swaps_from_one_value_are_a_lost_update() {
        let mut h = Builder::new();
        h.put("c", "0", (0, 10), OpStatus::Ok);
        h.cas("c", (Some("0"), "1"), Some(Ok(())), (20, 30));
        h.cas("c", (Some("1"), "2"), Some(Ok(())), (40, 50));
        h.cas("c", (Some("1"), "x"), Some(Err(Some("2"))), (60, 70));
        h.cas("c", (None, "y"), Some(Err(Some("2"))), (60, 70));
        h.cas("c", (Some("2"), "3"), None, (80, 90));
        h.get("c", Some("3"), (100, 110));
        assert_eq!(check_default(&h.history).verdict, Verdict::Linearizable);
        // Both swapped from 3: one of them must have seen the other's value.
        h.cas("c", (Some("3"), "4"), Some(Ok(())), (120, 130));
        h.cas("c", (Some("3"), "5"), Some(Ok(())), (140, 150));
        assert_eq!(check_default(&h.history).verdict, Verdict::NotLinearizable);
    }

    #[test]
    fn fenced_writes_must_store_increasing_tokens() {
        let mut h = Builder::new();
        let fenced = |h: &mut Builder, token: &str, outcome: Option<Result<(), &str>>, times| {
            let status = if outcome.is_some() {
                OpStatus::Ok
            } else {
                OpStatus::Unknown
            };
            let op = h.push(OpKind::Fenced, "guard", times, status);
            op.value = Some(token.into());
            match outcome {
                Some(Ok(())) => op.swapped = Some(true),
                Some(Err(read)) => {
                    op.swapped = Some(false);
                    op.read = Some(Some(read.into()));
                }
                None => {}
            }
        };
        h.put("guard", "00", (0, 10), OpStatus::Ok);
        fenced(&mut h, "05", Some(Ok(())), (20, 30));
        fenced(&mut h, "03", Some(Err("05")), (40, 50));
        fenced(&mut h, "09", None, (60, 70));
        fenced(&mut h, "07", Some(Err("09")), (80, 90));
        h.get("guard", Some("09"), (100, 110));
        assert_eq!(check_default(&h.history).verdict, Verdict::Linearizable);
        // A lower token stored after a higher one: a fenced write out of order.
        fenced(&mut h, "08", Some(Ok(())), (120, 130));
        assert_eq!(check_default(&h.history).verdict, Verdict::NotLinearizable);
    }

    #[test]
    fn keys_under_a_lease_recipe_range_are_left_to_their_steps() {
        let mut h = Builder::new();
        h.put("lease/k0", "v", (0, 10), OpStatus::Ok);
        // The lease expired: no client operation deleted the key.
        h.get("lease/k0", None, (20, 30));
        h.push(OpKind::Range, "lease/", (11, 19), OpStatus::Ok);
        assert_eq!(check_default(&h.history).verdict, Verdict::Linearizable);
    }

    #[test]
    fn keys_of_read_modify_write_recipes_are_left_to_their_steps() {
        let mut h = Builder::new();
        h.put("bank/acct-0", "100", (0, 10), OpStatus::Ok);
        h.get("bank/acct-0", Some("70"), (20, 30));
        h.get("counter", Some("5"), (20, 30));
        h.get("other", Some("x"), (20, 30));
        h.push(OpKind::Transfer, "bank/acct-", (11, 19), OpStatus::Ok);
        h.push(OpKind::Increment, "counter", (11, 19), OpStatus::Ok);
        let report = check_default(&h.history);
        assert_eq!(report.violating_keys, vec!["other".to_string()]);
    }

    #[test]
    fn empty_history_is_linearizable() {
        let report = check_default(&History::default());
        assert_eq!(report.verdict, Verdict::Linearizable);
        assert_eq!(report.keys, 0);
    }

    #[test]
    fn keys_are_independent() {
        let mut h = Builder::new();
        h.put("a", "1", (0, 10), OpStatus::Ok);
        h.put("b", "2", (5, 15), OpStatus::Ok);
        h.get("a", Some("1"), (20, 30));
        h.get("b", Some("2"), (20, 30));
        h.get("c", None, (20, 30));
        let report = check_default(&h.history);
        assert_eq!(report.verdict, Verdict::Linearizable);
        assert_eq!(report.keys, 3);
    }

    #[test]
    fn failed_writes_are_ignored_and_must_not_be_seen() {
        let mut h = Builder::new();
        h.put("a", "1", (0, 10), OpStatus::Ok);
        h.put("a", "2", (20, 30), OpStatus::Failed);
        h.get("a", Some("1"), (40, 50));
        assert_eq!(check_default(&h.history).verdict, Verdict::Linearizable);
        h.get("a", Some("2"), (60, 70));
        let report = check_default(&h.history);
        assert_eq!(report.verdict, Verdict::NotLinearizable);
        assert_eq!(report.violating_keys, vec!["a".to_string()]);
    }

    #[test]
    fn serializable_reads_are_not_checked() {
        let mut h = Builder::new();
        h.put("a", "1", (0, 10), OpStatus::Ok);
        h.put("a", "2", (20, 30), OpStatus::Ok);
        let stale = h.get("a", Some("1"), (40, 50));
        h.history.operations[stale].consistency = Some(Consistency::Serializable);
        assert_eq!(check_default(&h.history).verdict, Verdict::Linearizable);
    }

    #[test]
    fn unknown_write_seen_later_is_fine() {
        let mut h = Builder::new();
        h.put("a", "1", (0, 10), OpStatus::Ok);
        h.put("a", "2", (20, 30), OpStatus::Unknown);
        h.get("a", Some("1"), (40, 50));
        h.get("a", Some("2"), (5000, 5010));
        assert_eq!(check_default(&h.history).verdict, Verdict::Linearizable);
    }

    #[test]
    fn lost_acknowledged_write_is_a_violation_with_a_small_counterexample() {
        let mut h = Builder::new();
        // Noise on other keys and on the same key.
        for round in 0..50u64 {
            let t = round * 100;
            h.put("noise", &format!("n{round}"), (t, t + 10), OpStatus::Ok);
            h.put("a", &format!("v{round}"), (t + 20, t + 30), OpStatus::Ok);
            h.get("a", Some(&format!("v{round}")), (t + 40, t + 50));
        }
        // The acknowledged write of "lost" ...
        let lost = h.put("a", "lost", (6000, 6010), OpStatus::Ok);
        // ... is not seen by a read that starts after it completed.
        let read = h.get("a", Some("v49"), (6100, 6110));
        h.put("a", "later", (6200, 6210), OpStatus::Ok);
        h.get("a", Some("later"), (6300, 6310));

        let report = check_default(&h.history);
        assert_eq!(report.verdict, Verdict::NotLinearizable);
        let violation = report.violation.unwrap();
        assert_eq!(violation.key, "a");
        assert!(violation.minimal);
        // v49's put, the lost put and the stale read.
        let v49 = h
            .history
            .operations
            .iter()
            .find(|op| op.value.as_deref() == Some("v49"))
            .unwrap()
            .id;
        assert_eq!(violation.counterexample, vec![v49, lost, read]);
        assert!(violation.stuck.contains(&read), "{violation:?}");
    }

    #[test]
    fn counterexample_never_drops_the_write_a_read_saw() {
        // A read of a value nobody wrote is its own counterexample, but a read
        // of a written value is never shrunk into one.
        let mut h = Builder::new();
        h.put("a", "1", (0, 10), OpStatus::Ok);
        h.put("a", "2", (20, 30), OpStatus::Ok);
        h.get("a", Some("1"), (40, 50));
        let violation = check_default(&h.history).violation.unwrap();
        assert_eq!(violation.counterexample, vec![0, 1, 2]);
    }

    #[test]
    fn old_deletes_do_not_stay_in_the_counterexample() {
        // Many deletes long before; then put 1, read 1, read absent.
        let mut h = Builder::new();
        for round in 0..20u64 {
            h.delete("a", Some(false), (round * 10, round * 10 + 5), OpStatus::Ok);
        }
        let put = h.put("a", "1", (1000, 1010), OpStatus::Ok);
        h.get("a", Some("1"), (1020, 1030));
        let absent = h.get("a", None, (1040, 1050));
        let violation = check_default(&h.history).violation.unwrap();
        // The read of 1 is not needed: a put then an absent read suffices.
        assert_eq!(violation.counterexample, vec![put, absent], "{violation:?}");
    }

    #[test]
    fn delete_answers_are_checked() {
        let mut h = Builder::new();
        h.put("a", "1", (0, 10), OpStatus::Ok);
        h.delete("a", Some(false), (20, 30), OpStatus::Ok);
        let report = check_default(&h.history);
        assert_eq!(report.verdict, Verdict::NotLinearizable);
        let violation = report.violation.unwrap();
        assert_eq!(violation.counterexample, vec![0, 1]);
        assert!(violation.relaxed.is_empty());
    }

    #[test]
    fn delete_then_absent_read() {
        let mut h = Builder::new();
        h.put("a", "1", (0, 10), OpStatus::Ok);
        h.delete("a", Some(true), (20, 30), OpStatus::Ok);
        h.get("a", None, (40, 50));
        h.delete("a", Some(false), (60, 70), OpStatus::Ok);
        assert_eq!(check_default(&h.history).verdict, Verdict::Linearizable);
        // An unknown delete may or may not have removed the key.
        let mut h = Builder::new();
        h.put("a", "1", (0, 10), OpStatus::Ok);
        h.delete("a", None, (20, 30), OpStatus::Unknown);
        h.get("a", Some("1"), (40, 50));
        h.get("a", None, (60, 70));
        assert_eq!(check_default(&h.history).verdict, Verdict::Linearizable);
    }

    #[test]
    fn absent_read_after_put_keeps_its_delete_free_context() {
        // put 1, delete (ok), put 2, read absent: a violation; shrinking must
        // not drop the put of 2 and keep a misleading "absent" read alone.
        let mut h = Builder::new();
        h.put("a", "1", (0, 10), OpStatus::Ok);
        h.delete("a", Some(true), (20, 30), OpStatus::Ok);
        h.put("a", "2", (40, 50), OpStatus::Ok);
        h.get("a", None, (60, 70));
        let violation = check_default(&h.history).violation.unwrap();
        assert!(violation.counterexample.contains(&2), "{violation:?}");
        assert!(violation.counterexample.contains(&3), "{violation:?}");
    }

    #[test]
    fn prefix_makes_in_flight_writes_unknown_and_drops_in_flight_reads() {
        let ops = vec![
            KeyOp {
                id: 0,
                call: 0,
                ret: Some(100),
                input: Input::Put(1),
                output: Output::Written,
            },
            KeyOp {
                id: 1,
                call: 10,
                ret: Some(20),
                input: Input::Get,
                output: Output::Read(0),
            },
            KeyOp {
                id: 2,
                call: 30,
                ret: Some(200),
                input: Input::Get,
                output: Output::Read(1),
            },
            KeyOp {
                id: 3,
                call: 300,
                ret: Some(400),
                input: Input::Get,
                output: Output::Read(1),
            },
        ];
        let cut = prefix(&ops, 50);
        assert_eq!(cut.len(), 2);
        assert_eq!(cut[0].ret, None);
        assert_eq!(cut[0].output, Output::Unknown);
        assert_eq!(cut[1].id, 1);
    }

    /// Histories of a real atomic register (each op takes effect at a random
    /// instant inside its interval) are always linearizable, whatever the
    /// overlap, unknown outcomes included; corrupting one read of such a
    /// history either keeps it linearizable or yields a counterexample that
    /// contains the corrupted read.
    #[test]
    fn simulated_atomic_register_histories() {
        use rand::rngs::SmallRng;
        use rand::{Rng, SeedableRng};
        for seed in 0..100u64 {
            let mut rng = SmallRng::seed_from_u64(seed);
            // (effect time, op index) for every op, applied in effect order.
            let mut h = Builder::new();
            let mut effects = Vec::new();
            for index in 0..30u64 {
                let call = rng.random_range(0..1000);
                let length = rng.random_range(1..200);
                let effect = call + rng.random_range(0..=length);
                let kind = rng.random_range(0..3);
                let unknown = rng.random_range(0..10) == 0;
                let status = if unknown {
                    OpStatus::Unknown
                } else {
                    OpStatus::Ok
                };
                let id = match kind {
                    0 => h.put("k", &format!("v{index}"), (call, call + length), status),
                    1 => h.get("k", None, (call, call + length)),
                    _ => h.delete("k", None, (call, call + length), status),
                };
                // An unknown write may never take effect.
                if !(unknown && rng.random_range(0..2) == 0) || kind == 1 {
                    effects.push((effect, id));
                }
            }
            effects.sort();
            let mut state: Option<String> = None;
            for (_, id) in effects {
                let op = &mut h.history.operations[id];
                match op.kind {
                    OpKind::Put => state = op.value.clone(),
                    OpKind::Get => op.read = Some(state.clone()),
                    OpKind::Delete => {
                        op.deleted = Some(state.is_some());
                        state = None;
                    }
                    other => unreachable!("the simulation makes no {other:?}"),
                }
            }
            let report = check_default(&h.history);
            assert_eq!(report.verdict, Verdict::Linearizable, "seed {seed}");

            let reads: Vec<usize> = h
                .history
                .operations
                .iter()
                .filter(|op| op.kind == OpKind::Get)
                .map(|op| op.id)
                .collect();
            if let Some(&victim) = reads.get(rng.random_range(0..reads.len().max(1))) {
                h.history.operations[victim].read = Some(Some("never written".into()));
                let report = check_default(&h.history);
                assert_eq!(report.verdict, Verdict::NotLinearizable, "seed {seed}");
                let violation = report.violation.unwrap();
                assert!(
                    violation.counterexample.contains(&victim),
                    "seed {seed}: {violation:?}"
                );
            }
        }
    }
}
