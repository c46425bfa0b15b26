//! Checking what a background watcher received against two independent
//! records: the client history (what was acknowledged, at which revision,
//! what failed, what is unknown) and the store's own history of the watched
//! prefix (its state at every revision, read with ranges at past revisions,
//! a path of the server the watch code does not take).
//!
//! A watcher covers the revisions from `start` (the first revision after
//! the watch was created) to `end` (the revision of a linearizable range
//! taken once the writes stopped, which every watcher then caught up to).
//! Its checks, each a `bool` of [`WatchChecks`]:
//!
//! - `in_revision_order`: no event has a lower revision than the one before;
//! - `no_event_twice`: no revision delivers the same key twice (with one
//!   write per revision: no revision twice);
//! - `acknowledged_writes_seen`: every acknowledged write to the prefix
//!   whose revision (from its response header) lies in `start..=end` is an
//!   event at exactly that revision, with its key, kind and value;
//! - `no_phantom_events`: every event is a write of the history that was
//!   acknowledged at that revision or has an unknown outcome: nothing that
//!   surely failed, nothing nobody wrote, nothing at another revision than
//!   the one acknowledged, no unique value twice;
//! - `matches_store_history`: nothing missed, nothing extra, judged by the
//!   store: each event names the revision of its key's previous pair
//!   (`prev_kv`), which must be the watch's own previous event of that key
//!   (or the key as it stood at `start - 1`), so a change the watch missed
//!   or invented breaks its key's chain; and every revision of
//!   `start..=end` without an event must have changed nothing under the
//!   prefix (ranges at that revision and the one before). Ranges at past
//!   revisions are read only for those revisions: on kvstore each costs a
//!   scan of the prefix's whole history;
//! - `replays_to_final_state`: the prefix at `start - 1` with the events
//!   replayed in revision order is the final linearizable range (keys,
//!   values and mod revisions).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::history::{EventKind, History, OpKind, OpStatus, Operation, WatchEvent};

/// Problems listed per check at most (the rest are counted).
const PROBLEMS_SHOWN_MAX: usize = 3;

/// The watched prefix at one revision: key -> (value, mod revision).
pub type PrefixState = BTreeMap<String, (String, i64)>;

/// The deterministic result of one watcher's checks (the outcome's part).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WatchChecks {
    /// Its stream failed at least once and it resumed on another node (a
    /// fact of the run, not a check: it keeps the snapshot honest about
    /// what was exercised).
    pub resumed: bool,
    /// See the module docs.
    pub in_revision_order: bool,
    /// See the module docs.
    pub no_event_twice: bool,
    /// See the module docs.
    pub acknowledged_writes_seen: bool,
    /// See the module docs.
    pub no_phantom_events: bool,
    /// See the module docs.
    pub matches_store_history: bool,
    /// See the module docs.
    pub replays_to_final_state: bool,
}

impl WatchChecks {
    /// Every check holds.
    pub fn passed(&self) -> bool {
        self.in_revision_order
            && self.no_event_twice
            && self.acknowledged_writes_seen
            && self.no_phantom_events
            && self.matches_store_history
            && self.replays_to_final_state
    }
}

/// Where a watcher moved after its stream failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The node whose stream failed.
    pub from: u64,
    /// The node it resumed on.
    pub to: u64,
    /// The start revision it asked for there.
    pub start_revision: i64,
}

/// Everything one watcher's check needs.
#[derive(Debug, Clone, Copy)]
pub struct WatchInput<'a> {
    /// The watched prefix.
    pub prefix: &'a str,
    /// The first revision the watch covers.
    pub start: i64,
    /// The last revision checked (a linearizable range's).
    pub end: i64,
    /// What the watcher received, in arrival order.
    pub events: &'a [WatchEvent],
    /// Where it resumed.
    pub resumes: &'a [Resume],
    /// Every client operation.
    pub history: &'a History,
    /// The prefix at `start - 1`, and at `r - 1` and `r` for every revision
    /// `r` of `start..=end` without an event (see [`revisions_to_read`]).
    pub store: &'a BTreeMap<i64, PrefixState>,
    /// The prefix read with a linearizable range at `end`.
    pub final_state: &'a PrefixState,
}

/// The checks and, for people, what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchVerdict {
    /// Per check.
    pub checks: WatchChecks,
    /// One line per problem found (a few per check).
    pub problems: Vec<String>,
}

/// A write of the history to a key of the prefix, as an event would show it.
#[derive(Debug, Clone)]
struct Write<'a> {
    op: &'a Operation,
    kind: EventKind,
    /// The value a put stores (`None` for a delete, and for an increment
    /// whose outcome is unknown: any value then).
    value: Option<String>,
    /// What is known of it.
    fate: Fate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Acknowledged as a change, at this revision (0: none reported).
    Acknowledged(i64),
    /// May have happened, or not.
    Unknown,
    /// Surely did not happen (failed, or a txn whose compare did not hold,
    /// or a delete of nothing).
    NotDone,
}

fn writes<'a>(history: &'a History, prefix: &str) -> Vec<Write<'a>> {
    let revision = |op: &Operation| op.served.map_or(0, |served| served.revision);
    history
        .operations
        .iter()
        .filter(|op| op.key.starts_with(prefix))
        .filter_map(|op| {
            let (kind, value) = match op.kind {
                OpKind::Put | OpKind::Cas | OpKind::Increment => (EventKind::Put, op.value.clone()),
                OpKind::Delete => (EventKind::Delete, None),
                OpKind::Fenced => (EventKind::Put, op.value.clone()),
                OpKind::Get
                | OpKind::Transfer
                | OpKind::Audit
                | OpKind::Range
                | OpKind::LeaseGrant
                | OpKind::LeaseKeepAlive
                | OpKind::LeaseRevoke => return None,
            };
            let changed = match op.kind {
                OpKind::Delete => op.deleted == Some(true),
                OpKind::Cas | OpKind::Increment | OpKind::Fenced => op.swapped == Some(true),
                _ => true,
            };
            let fate = match op.status {
                OpStatus::Ok if changed => Fate::Acknowledged(revision(op)),
                OpStatus::Ok | OpStatus::Failed => Fate::NotDone,
                OpStatus::Unknown => Fate::Unknown,
            };
            Some(Write {
                op,
                kind,
                value,
                fate,
            })
        })
        .collect()
}

fn describe_write(write: &Write<'_>) -> String {
    format!(
        "#{} {} (sent to node {} by {})",
        write.op.id,
        write.op.describe(),
        write.op.node,
        write.op.client
    )
}

/// The changes from `before` to `after`, the state one revision later.
pub fn changes_at(revision: i64, before: &PrefixState, after: &PrefixState) -> Vec<Change> {
    let mut changes: Vec<Change> = after
        .iter()
        .filter(|(_, (_, mod_revision))| *mod_revision == revision)
        .map(|(key, (value, _))| Change {
            revision,
            key: key.clone(),
            kind: EventKind::Put,
            value: Some(value.clone()),
        })
        .collect();
    changes.extend(
        before
            .keys()
            .filter(|key| !after.contains_key(*key))
            .map(|key| Change {
                revision,
                key: key.clone(),
                kind: EventKind::Delete,
                value: None,
            }),
    );
    changes.sort();
    changes
}

/// The revisions of `start..=end` without an event.
fn gaps(events: &[WatchEvent], start: i64, end: i64) -> Vec<i64> {
    let seen: BTreeSet<i64> = events.iter().map(|event| event.revision).collect();
    (start..=end)
        .filter(|revision| !seen.contains(revision))
        .collect()
}

/// The revisions at which [`check`] needs the store's prefix for a watch of
/// `start..=end` that received `events`.
pub fn revisions_to_read(events: &[WatchEvent], start: i64, end: i64) -> BTreeSet<i64> {
    let mut revisions = BTreeSet::from([start - 1]);
    for revision in gaps(events, start, end) {
        revisions.insert(revision - 1);
        revisions.insert(revision);
    }
    revisions
}

/// One change of one key at one revision, as the store or an event says.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// The revision.
    pub revision: i64,
    /// The key.
    pub key: String,
    /// Put or delete.
    pub kind: EventKind,
    /// A put's value.
    pub value: Option<String>,
}

impl Change {
    fn describe(&self) -> String {
        self.kind
            .describe(&self.key, self.value.as_deref(), self.revision)
    }
}

/// Collects a check's problems, showing a few.
struct Problems<'a> {
    check: &'static str,
    shown: Vec<String>,
    count: usize,
    out: &'a mut Vec<String>,
}

impl<'a> Problems<'a> {
    fn new(check: &'static str, out: &'a mut Vec<String>) -> Self {
        Problems {
            check,
            shown: Vec::new(),
            count: 0,
            out,
        }
    }

    fn add(&mut self, problem: impl FnOnce() -> String) {
        self.count += 1;
        if self.shown.len() < PROBLEMS_SHOWN_MAX {
            self.shown.push(problem());
        }
    }

    /// Whether the check held; moves the problems out.
    fn finish(self) -> bool {
        for problem in self.shown {
            self.out.push(format!("{}: {problem}", self.check));
        }
        if self.count > PROBLEMS_SHOWN_MAX {
            self.out.push(format!(
                "{}: ... {} more",
                self.check,
                self.count - PROBLEMS_SHOWN_MAX
            ));
        }
        self.count == 0
    }
}

/// Where the watcher was around `revision`: the events just before and
/// after it, and a resume that asked for it.
fn context(input: &WatchInput<'_>, revision: i64) -> String {
    let before = input.events.iter().rfind(|event| event.revision < revision);
    let after = input.events.iter().find(|event| event.revision > revision);
    let show = |event: Option<&WatchEvent>| {
        event.map_or("nothing".to_string(), |event| {
            format!("{} from node {}", event.describe(), event.node)
        })
    };
    let mut text = format!("the watch went from {} to {}", show(before), show(after));
    if let Some(resume) = input
        .resumes
        .iter()
        .find(|resume| resume.start_revision == revision)
    {
        text.push_str(&format!(
            "; it had resumed on node {} (after node {} failed) with start_revision {}",
            resume.to, resume.from, resume.start_revision
        ));
    }
    text
}

/// Runs every check of one watcher.
pub fn check(input: &WatchInput<'_>) -> WatchVerdict {
    let mut problems = Vec::new();
    let writes = writes(input.history, input.prefix);

    let mut order = Problems::new("in revision order", &mut problems);
    for pair in input.events.windows(2) {
        if pair[1].revision < pair[0].revision {
            order.add(|| {
                format!(
                    "{} from node {} came after {} from node {}",
                    pair[1].describe(),
                    pair[1].node,
                    pair[0].describe(),
                    pair[0].node
                )
            });
        }
    }
    let in_revision_order = order.finish();

    let mut twice = Problems::new("no event twice", &mut problems);
    let mut seen: BTreeMap<(i64, &str), &WatchEvent> = BTreeMap::new();
    for event in input.events {
        if let Some(first) = seen.insert((event.revision, event.key.as_str()), event) {
            twice.add(|| {
                format!(
                    "{} arrived twice: from node {}, then from node {}",
                    event.describe(),
                    first.node,
                    event.node
                )
            });
        }
    }
    let no_event_twice = twice.finish();

    let mut events_at: HashMap<i64, Vec<&WatchEvent>> = HashMap::new();
    for event in input.events {
        events_at.entry(event.revision).or_default().push(event);
    }
    let mut acknowledged_at: HashMap<i64, Vec<&Write<'_>>> = HashMap::new();
    let mut by_key: HashMap<&str, Vec<&Write<'_>>> = HashMap::new();
    for write in &writes {
        if let Fate::Acknowledged(revision) = write.fate {
            acknowledged_at.entry(revision).or_default().push(write);
        }
        by_key.entry(write.op.key.as_str()).or_default().push(write);
    }

    let mut missed = Problems::new("acknowledged writes seen", &mut problems);
    for write in &writes {
        let Fate::Acknowledged(revision) = write.fate else {
            continue;
        };
        if revision == 0 {
            missed.add(|| {
                format!(
                    "{} was acknowledged without a revision in its header",
                    describe_write(write)
                )
            });
            continue;
        }
        if !(input.start..=input.end).contains(&revision) {
            continue;
        }
        let found = events_at.get(&revision).into_iter().flatten().any(|event| {
            event.key == write.op.key
                && event.kind == write.kind
                && (write.kind == EventKind::Delete || event.value == write.value)
        });
        if !found {
            missed.add(|| {
                format!(
                    "missed revision {revision} of {}; {}",
                    describe_write(write),
                    context(input, revision)
                )
            });
        }
    }
    let acknowledged_writes_seen = missed.finish();

    let mut phantom = Problems::new("no phantom events", &mut problems);
    let unique_values: BTreeMap<(&str, &str), usize> = writes
        .iter()
        .filter_map(|write| Some((write.op.key.as_str(), write.value.as_deref()?)))
        .fold(BTreeMap::new(), |mut counts, key_value| {
            *counts.entry(key_value).or_default() += 1;
            counts
        });
    let mut put_at: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for event in input.events {
        let matches = |write: &&Write<'_>| {
            write.op.key == event.key
                && write.kind == event.kind
                && (event.kind == EventKind::Delete
                    || write.value.is_none()
                    || write.value == event.value)
        };
        let at_revision = acknowledged_at
            .get(&event.revision)
            .into_iter()
            .flatten()
            .any(&matches);
        let candidates: Vec<&Write<'_>> = if at_revision {
            Vec::new()
        } else {
            by_key
                .get(event.key.as_str())
                .into_iter()
                .flatten()
                .copied()
                .filter(|write| matches(write))
                .collect()
        };
        let unknown = candidates.iter().any(|write| write.fate == Fate::Unknown);
        if !(at_revision || unknown) {
            let acknowledged = candidates.iter().find_map(|write| match write.fate {
                Fate::Acknowledged(revision) => Some((write, revision)),
                _ => None,
            });
            phantom.add(|| match (acknowledged, candidates.first()) {
                (Some((write, revision)), _) => format!(
                    "{} from node {}, but {} was acknowledged at revision {revision}",
                    event.describe(),
                    event.node,
                    describe_write(write)
                ),
                (None, Some(write)) => format!(
                    "{} from node {} is {}, which surely did not happen",
                    event.describe(),
                    event.node,
                    describe_write(write)
                ),
                (None, None) => format!(
                    "{} from node {}: no such write in the history",
                    event.describe(),
                    event.node
                ),
            });
        }
        if let (EventKind::Put, Some(value)) = (event.kind, event.value.as_deref()) {
            let key_value = (event.key.as_str(), value);
            if unique_values.get(&key_value) == Some(&1) {
                if let Some(first) = put_at.insert(key_value, event.revision) {
                    if first != event.revision {
                        phantom.add(|| {
                            format!(
                                "{} from node {}: the one write of that value was already an event at revision {first}",
                                event.describe(),
                                event.node
                            )
                        });
                    }
                }
            }
        }
    }
    let no_phantom_events = phantom.finish();

    let mut store = Problems::new("matches store history", &mut problems);
    let initial = input.store.get(&(input.start - 1));
    if initial.is_none() {
        store.add(|| format!("the prefix at revision {} was not read", input.start - 1));
    }
    for revision in gaps(input.events, input.start, input.end) {
        match (input.store.get(&(revision - 1)), input.store.get(&revision)) {
            (Some(before), Some(after)) => {
                for change in changes_at(revision, before, after) {
                    store.add(|| {
                        format!(
                            "missed revision {revision}: no event, but the store has {} there; {}",
                            change.describe(),
                            context(input, revision)
                        )
                    });
                }
            }
            _ => store.add(|| format!("the prefix at revision {revision} was not read")),
        }
    }
    let mut ordered: Vec<&WatchEvent> = input.events.iter().collect();
    ordered.sort_by_key(|event| event.revision);
    let mut chains: BTreeMap<&str, Option<i64>> = initial
        .into_iter()
        .flatten()
        .map(|(key, (_, revision))| (key.as_str(), Some(*revision)))
        .collect();
    for event in ordered {
        if event.revision < input.start {
            store.add(|| {
                format!(
                    "{} from node {} is older than the watch's start revision {}",
                    event.describe(),
                    event.node,
                    input.start
                )
            });
            continue;
        }
        let chain = chains.entry(event.key.as_str()).or_insert(None);
        if event.previous != *chain {
            store.add(|| {
                let show = |revision: Option<i64>| {
                    revision.map_or("absent".to_string(), |revision| format!("@{revision}"))
                };
                let missed = match (event.previous, *chain) {
                    (Some(previous), Some(seen)) if previous > seen => {
                        format!("missed revision {previous}: ")
                    }
                    (Some(previous), None) => format!("missed revision {previous}: "),
                    _ => String::new(),
                };
                format!(
                    "{missed}{} from node {} follows {} of its key, but the watch had it {}; {}",
                    event.describe(),
                    event.node,
                    show(event.previous),
                    show(*chain),
                    context(input, event.previous.unwrap_or(event.revision))
                )
            });
        }
        *chain = (event.kind == EventKind::Put).then_some(event.revision);
    }
    let matches_store_history = store.finish();

    let mut replay = Problems::new("replays to final state", &mut problems);
    let mut state: PrefixState = input
        .store
        .get(&(input.start - 1))
        .cloned()
        .unwrap_or_default();
    let mut ordered: Vec<&WatchEvent> = input
        .events
        .iter()
        .filter(|event| event.revision <= input.end)
        .collect();
    ordered.sort_by_key(|event| event.revision);
    for event in ordered {
        match event.kind {
            EventKind::Put => {
                state.insert(
                    event.key.clone(),
                    (event.value.clone().unwrap_or_default(), event.revision),
                );
            }
            EventKind::Delete => {
                state.remove(&event.key);
            }
        }
    }
    let keys: BTreeSet<&String> = state.keys().chain(input.final_state.keys()).collect();
    for key in keys {
        let (replayed, read) = (state.get(key), input.final_state.get(key));
        if replayed != read {
            let show = |pair: Option<&(String, i64)>| {
                pair.map_or("absent".to_string(), |(value, revision)| {
                    format!("{value} @{revision}")
                })
            };
            replay.add(|| {
                format!(
                    "{key}: the events replay to {}, the final range reads {}",
                    show(replayed),
                    show(read)
                )
            });
        }
    }
    let replays_to_final_state = replay.finish();

    WatchVerdict {
        checks: WatchChecks {
            resumed: !input.resumes.is_empty(),
            in_revision_order,
            no_event_twice,
            acknowledged_writes_seen,
            no_phantom_events,
            matches_store_history,
            replays_to_final_state,
        },
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Served;

    fn op(id: usize, kind: OpKind, key: &str, value: Option<&str>, status: OpStatus) -> Operation {
        Operation {
            id,
            client: "c".into(),
            process: 0,
            node: 1,
            kind,
            key: key.into(),
            value: value.map(str::to_string),
            consistency: None,
            invoke_us: id as u64 * 10,
            complete_us: id as u64 * 10 + 5,
            status,
            read: None,
            deleted: None,
            expected: None,
            swapped: None,
            served: None,
            error: None,
        }
    }

    fn acknowledged(mut operation: Operation, revision: i64) -> Operation {
        operation.served = Some(Served {
            node_id: 1,
            revision,
            ..Served::default()
        });
        if operation.kind == OpKind::Delete {
            operation.deleted = Some(true);
        }
        operation
    }

    fn event(
        revision: i64,
        kind: EventKind,
        key: &str,
        value: Option<&str>,
        previous: Option<i64>,
    ) -> WatchEvent {
        WatchEvent {
            watch: "w".into(),
            node: 2,
            at_us: revision as u64,
            revision,
            kind,
            key: key.into(),
            value: value.map(str::to_string),
            previous,
        }
    }

    /// A history of five writes under `p/` at revisions 2..=6 (one
    /// unknown, at 5) and one outside it at 7, one failed write, the store
    /// at every revision 1..=7, and the events a correct watch from
    /// revision 2 receives.
    struct Fixture {
        history: History,
        store: BTreeMap<i64, PrefixState>,
        final_state: PrefixState,
        events: Vec<WatchEvent>,
    }

    fn fixture() -> Fixture {
        let put = |id, key, value| op(id, OpKind::Put, key, Some(value), OpStatus::Ok);
        let operations = vec![
            acknowledged(put(0, "p/a", "1"), 2),
            acknowledged(put(1, "p/b", "2"), 3),
            acknowledged(op(2, OpKind::Delete, "p/a", None, OpStatus::Ok), 4),
            op(3, OpKind::Put, "p/b", Some("3"), OpStatus::Unknown),
            acknowledged(put(4, "p/a", "4"), 6),
            op(5, OpKind::Put, "p/a", Some("never"), OpStatus::Failed),
            acknowledged(put(6, "other", "x"), 7),
        ];
        let history = History {
            operations,
            ..History::default()
        };
        let state = |pairs: &[(&str, &str, i64)]| -> PrefixState {
            pairs
                .iter()
                .map(|(key, value, revision)| (key.to_string(), (value.to_string(), *revision)))
                .collect()
        };
        let store = BTreeMap::from([
            (1, state(&[])),
            (2, state(&[("p/a", "1", 2)])),
            (3, state(&[("p/a", "1", 2), ("p/b", "2", 3)])),
            (4, state(&[("p/b", "2", 3)])),
            (5, state(&[("p/b", "3", 5)])),
            (6, state(&[("p/a", "4", 6), ("p/b", "3", 5)])),
            (7, state(&[("p/a", "4", 6), ("p/b", "3", 5)])),
        ]);
        let final_state = store[&7].clone();
        let events = vec![
            event(2, EventKind::Put, "p/a", Some("1"), None),
            event(3, EventKind::Put, "p/b", Some("2"), None),
            event(4, EventKind::Delete, "p/a", None, Some(2)),
            event(5, EventKind::Put, "p/b", Some("3"), Some(3)),
            event(6, EventKind::Put, "p/a", Some("4"), None),
        ];
        Fixture {
            history,
            store,
            final_state,
            events,
        }
    }

    fn run(fixture: &Fixture, events: &[WatchEvent], resumes: &[Resume]) -> WatchVerdict {
        check(&WatchInput {
            prefix: "p/",
            start: 2,
            end: 7,
            events,
            resumes,
            history: &fixture.history,
            store: &fixture.store,
            final_state: &fixture.final_state,
        })
    }

    #[test]
    fn a_complete_watch_passes_every_check() {
        let fixture = fixture();
        let verdict = run(&fixture, &fixture.events, &[]);
        assert!(verdict.checks.passed(), "{:?}", verdict.problems);
        assert!(!verdict.checks.resumed);
    }

    #[test]
    fn a_resume_one_revision_late_misses_an_acknowledged_write() {
        let fixture = fixture();
        // Resumed with start_revision 4 after seeing 3, but got 5 first.
        let mut events = fixture.events.clone();
        events.remove(2);
        let resumes = [Resume {
            from: 1,
            to: 3,
            start_revision: 4,
        }];
        let verdict = run(&fixture, &events, &resumes);
        assert!(verdict.checks.resumed);
        assert!(!verdict.checks.acknowledged_writes_seen);
        assert!(!verdict.checks.matches_store_history);
        // p/a is written again at 6: the final state cannot tell.
        assert!(verdict.checks.replays_to_final_state);
        assert!(verdict.checks.in_revision_order && verdict.checks.no_phantom_events);
        assert!(
            verdict.problems[0].starts_with("acknowledged writes seen: missed revision 4")
                && verdict.problems[0].contains("resumed on node 3"),
            "{:?}",
            verdict.problems
        );
    }

    #[test]
    fn a_missed_write_of_unknown_outcome_is_caught_by_the_store_history() {
        let fixture = fixture();
        let mut events = fixture.events.clone();
        events.remove(3);
        let verdict = run(&fixture, &events, &[]);
        assert!(verdict.checks.acknowledged_writes_seen);
        assert!(!verdict.checks.matches_store_history);
        assert!(
            verdict
                .problems
                .iter()
                .any(|problem| problem.contains("missed revision 5")),
            "{:?}",
            verdict.problems
        );
    }

    #[test]
    fn a_missed_change_is_caught_by_its_key_chain_and_only_gaps_are_read() {
        let fixture = fixture();
        // Revision 3 went missing, but a phantom at 3 on another key hides
        // the gap: p/b's next event names 3 as its previous change.
        let mut events = fixture.events.clone();
        events[1] = event(3, EventKind::Put, "p/c", Some("x"), None);
        let verdict = run(&fixture, &events, &[]);
        assert!(!verdict.checks.matches_store_history);
        assert!(
            verdict.problems.iter().any(|problem| problem
                .starts_with("matches store history: missed revision 3: put p/b=3 @5")),
            "{:?}",
            verdict.problems
        );
        assert_eq!(
            revisions_to_read(&fixture.events, 2, 7),
            BTreeSet::from([1, 6, 7])
        );
        assert_eq!(
            revisions_to_read(&fixture.events[..4], 2, 7),
            BTreeSet::from([1, 5, 6, 7])
        );
    }

    #[test]
    fn repeats_and_disorder_are_caught() {
        let fixture = fixture();
        let mut events = fixture.events.clone();
        events.insert(3, events[2].clone());
        let verdict = run(&fixture, &events, &[]);
        assert!(!verdict.checks.no_event_twice);
        assert!(verdict.checks.in_revision_order);
        let mut events = fixture.events.clone();
        events.swap(1, 2);
        let verdict = run(&fixture, &events, &[]);
        assert!(!verdict.checks.in_revision_order);
        assert!(verdict.checks.no_event_twice);
    }

    #[test]
    fn failed_invented_and_misplaced_writes_are_phantoms() {
        let fixture = fixture();
        for (wrong, says) in [
            (
                event(7, EventKind::Put, "p/a", Some("never"), Some(6)),
                "surely did not happen",
            ),
            (
                event(7, EventKind::Put, "p/z", Some("9"), None),
                "no such write in the history",
            ),
            (
                event(7, EventKind::Put, "p/a", Some("4"), Some(6)),
                "was acknowledged at revision 6",
            ),
        ] {
            let mut events = fixture.events.clone();
            events.push(wrong);
            let verdict = run(&fixture, &events, &[]);
            assert!(!verdict.checks.no_phantom_events);
            // Its chain holds (the last of its key): the final state tells.
            assert!(!verdict.checks.replays_to_final_state);
            assert!(
                verdict.problems[0].contains(says),
                "{says}: {:?}",
                verdict.problems
            );
        }
    }

    #[test]
    fn store_changes_are_the_differences_of_consecutive_revisions() {
        let fixture = fixture();
        let changes = changes_at(5, &fixture.store[&4], &fixture.store[&5]);
        assert_eq!(
            changes,
            vec![Change {
                revision: 5,
                key: "p/b".into(),
                kind: EventKind::Put,
                value: Some("3".into()),
            }]
        );
        let changes = changes_at(4, &fixture.store[&3], &fixture.store[&4]);
        assert_eq!(changes[0].kind, EventKind::Delete);
        assert!(changes_at(7, &fixture.store[&6], &fixture.store[&7]).is_empty());
    }
}
