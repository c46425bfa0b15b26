//! What happened during a scenario: every client operation with its invoke and
//! completion times and outcome, and every fault the runner injected. Written
//! to `history.json` for debugging and fed to the linearizability checker.

use serde::{Deserialize, Serialize};

/// The kind of a client operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// `KV/Put`.
    Put,
    /// `KV/Get`.
    Get,
    /// `KV/Delete`.
    Delete,
    /// `KV/Txn` as a compare-and-swap on one key: put `value` if the key's
    /// value is `expected` (absent: the key must not exist); otherwise read
    /// it. Checked as a register operation.
    Cas,
    /// A counter increment: a linearizable range of the key, then a txn
    /// that puts the value plus one if the key's mod revision is still the
    /// one read (not part of the register check: `expect_counter` counts).
    Increment,
    /// A bank transfer: a range over every account, then a txn moving an
    /// amount if neither account changed since (checked by the audits).
    Transfer,
    /// A linearizable range over every bank account; `read` is the sum.
    Audit,
    /// A linearizable range of every key under the prefix in `key`; `read`
    /// lists the pairs found (`k=v` separated by spaces). The keys under
    /// the prefix change by lease expiry, which no client operation
    /// records, so they are left to their steps (`expect_lease_expiry`,
    /// `expect_lock_safety`), not checked as registers.
    Range,
    /// A fenced write: a txn that stores `value` (a fencing token, zero
    /// padded) if the key's value is below it bytewise, and reads the key
    /// otherwise. Checked as a register operation.
    Fenced,
    /// `Lease/LeaseGrant`; `key` names what the lease is for (its keys'
    /// prefix), `value` is the lease id in hex once granted.
    LeaseGrant,
    /// One renewal on a `Lease/LeaseKeepAlive` stream; `read` is the TTL
    /// answered (`0`: the lease is gone).
    LeaseKeepAlive,
    /// `Lease/LeaseRevoke` of the lease in `value` (hex).
    LeaseRevoke,
}

impl OpKind {
    /// Operations on keys that leases delete, or on leases themselves: the
    /// register check leaves every key under their `key` alone.
    pub fn is_lease_recipe(self) -> bool {
        matches!(
            self,
            OpKind::Range | OpKind::LeaseGrant | OpKind::LeaseKeepAlive | OpKind::LeaseRevoke
        )
    }
}

/// How an operation ended, from the client's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpStatus {
    /// The server acknowledged it.
    Ok,
    /// It surely did not happen (e.g. UNAVAILABLE, INVALID_ARGUMENT, or the
    /// client could not even connect).
    Failed,
    /// It may or may not have happened (timeout, connection lost, UNKNOWN,
    /// DEADLINE_EXCEEDED): for a write, the checker lets it take effect at
    /// any time after its invocation, or never.
    Unknown,
}

/// Read consistency of a `Get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Through the leader, after ReadIndex (the default).
    #[default]
    Linearizable,
    /// Served from the answering node's local state.
    Serializable,
}

/// The response header of an acknowledged operation (who served it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Served {
    /// Node that answered.
    pub node_id: u64,
    /// Leader when the request was served.
    pub leader_id: u64,
    /// Term in which it was served.
    pub term: u64,
    /// Commit index of a write, read index of a read.
    pub index: u64,
    /// Node that forwarded the request to `node_id` (0: not forwarded).
    pub forwarded_by: u64,
    /// Store revision the response reflects: for a write that changed
    /// something, its own revision (0: the server reported none).
    #[serde(default)]
    pub revision: i64,
}

/// One client operation, invoke to completion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Position in the history.
    pub id: usize,
    /// Who issued it: `step 4`, `workload w1 client 2`, ...
    pub client: String,
    /// The timeline row. A client that saw an unknown outcome continues as a
    /// new process (as in Jepsen), since its previous operation may still be
    /// pending.
    pub process: usize,
    /// Node the request was sent to.
    pub node: u64,
    /// The operation.
    pub kind: OpKind,
    /// The key (UTF-8; the runner only uses text keys).
    pub key: String,
    /// The value written by a put.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Read consistency of a get.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
    /// Microseconds since the scenario started, just before the request was sent.
    pub invoke_us: u64,
    /// Microseconds since the scenario started, when the client had its answer
    /// (or gave up).
    pub complete_us: u64,
    /// How it ended.
    pub status: OpStatus,
    /// For an acknowledged get: the value read (`None`: the key was absent).
    /// In JSON: no field when nothing was read, `null` for absent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub read: Option<Option<String>>,
    /// For an acknowledged delete: whether the key existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<bool>,
    /// For a compare-and-swap: the value it expected (`null`: absent).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub expected: Option<Option<String>>,
    /// For an acknowledged compare-and-swap, increment or transfer: whether
    /// its compares held (so it wrote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swapped: Option<bool>,
    /// Who served an acknowledged operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served: Option<Served>,
    /// The error of a failed or unknown operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A field that is there (even as `null`) is `Some`: keeps "read absent"
/// (`Some(None)`) apart from "read nothing" (`None`) through JSON.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

impl Operation {
    /// A one-line description: `put k=v`, `get k -> v`, `delete k -> true`.
    pub fn describe(&self) -> String {
        let call = match self.kind {
            OpKind::Put => format!("put {}={}", self.key, self.value.as_deref().unwrap_or("")),
            OpKind::Get => match self.consistency {
                Some(Consistency::Serializable) => format!("get {} (serializable)", self.key),
                _ => format!("get {}", self.key),
            },
            OpKind::Delete => format!("delete {}", self.key),
            OpKind::Cas => format!(
                "cas {}: {} -> {}",
                self.key,
                match &self.expected {
                    Some(Some(expected)) => expected.as_str(),
                    _ => "(absent)",
                },
                self.value.as_deref().unwrap_or("")
            ),
            OpKind::Increment => format!("increment {}", self.key),
            OpKind::Transfer => format!(
                "transfer {} {}",
                self.key,
                self.value.as_deref().unwrap_or("")
            ),
            OpKind::Audit => format!("audit {}", self.key),
            OpKind::Range => format!("range {}", self.key),
            OpKind::Fenced => format!(
                "fenced put {}={}",
                self.key,
                self.value.as_deref().unwrap_or("")
            ),
            OpKind::LeaseGrant => format!("lease grant for {}", self.key),
            OpKind::LeaseKeepAlive => format!(
                "lease keep-alive {} for {}",
                self.value.as_deref().unwrap_or(""),
                self.key
            ),
            OpKind::LeaseRevoke => format!(
                "lease revoke {} for {}",
                self.value.as_deref().unwrap_or(""),
                self.key
            ),
        };
        if self.status == OpStatus::Ok {
            match self.kind {
                OpKind::Range => {
                    return match self.read.as_ref().and_then(|read| read.as_deref()) {
                        Some("") | None => format!("{call} -> (none)"),
                        Some(pairs) => format!("{call} -> {pairs}"),
                    }
                }
                OpKind::LeaseGrant => {
                    return format!("{call} -> {}", self.value.as_deref().unwrap_or(""))
                }
                OpKind::LeaseKeepAlive => {
                    return match self.read.as_ref().and_then(|read| read.as_deref()) {
                        Some("0") | None => format!("{call} -> gone"),
                        Some(ttl) => format!("{call} -> ttl {ttl}"),
                    }
                }
                _ => {}
            }
        }
        match self.status {
            OpStatus::Ok if self.swapped == Some(true) => format!("{call} -> swapped"),
            OpStatus::Ok if self.swapped == Some(false) => match &self.read {
                Some(Some(value)) => format!("{call} -> not swapped, read {value}"),
                Some(None) => format!("{call} -> not swapped, read (absent)"),
                None => format!("{call} -> not swapped"),
            },
            OpStatus::Ok => match (&self.read, self.deleted) {
                (Some(Some(value)), _) => format!("{call} -> {value}"),
                (Some(None), _) => format!("{call} -> (absent)"),
                (None, Some(deleted)) => format!("{call} -> deleted={deleted}"),
                (None, None) => format!("{call} -> ok"),
            },
            OpStatus::Failed => format!("{call} -> failed"),
            OpStatus::Unknown => format!("{call} -> unknown"),
        }
    }
}

/// The pairs an acknowledged `Range` read, as `read` lists them.
pub fn range_pairs(read: &str) -> std::collections::BTreeMap<String, String> {
    read.split(' ')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) => (key.to_string(), value.to_string()),
            None => (pair.to_string(), String::new()),
        })
        .collect()
}

/// A fault or other runner action, shown on the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Microseconds since the scenario started.
    pub at_us: u64,
    /// What happened, e.g. `kill node 2 (leader)`.
    pub text: String,
}

/// What a watch event did to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The key was written.
    Put,
    /// The key was deleted.
    Delete,
}

/// One event a background watcher received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// The watcher's name (the `watch` step's `name`).
    pub watch: String,
    /// Node whose stream delivered it.
    pub node: u64,
    /// Microseconds since the scenario started, when it arrived.
    pub at_us: u64,
    /// The revision of the write (the event's `mod_revision`).
    pub revision: i64,
    /// Put or delete.
    pub kind: EventKind,
    /// The key (UTF-8, lossy).
    pub key: String,
    /// A put's value (none for a delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The revision of the key's previous pair (`prev_kv`), none when the
    /// key did not exist before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<i64>,
}

impl EventKind {
    /// `put k=v @R` or `delete k @R`.
    pub fn describe(self, key: &str, value: Option<&str>, revision: i64) -> String {
        match self {
            EventKind::Put => format!("put {key}={} @{revision}", value.unwrap_or("")),
            EventKind::Delete => format!("delete {key} @{revision}"),
        }
    }
}

impl WatchEvent {
    /// `put k=v @R` or `delete k @R`.
    pub fn describe(&self) -> String {
        self.kind
            .describe(&self.key, self.value.as_deref(), self.revision)
    }
}

/// Everything recorded for one scenario run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Scenario name.
    pub scenario: String,
    /// Seed of every random choice the runner made.
    pub seed: u64,
    /// Client operations in invocation order of recording.
    pub operations: Vec<Operation>,
    /// Faults and other runner actions.
    pub events: Vec<Event>,
    /// Every event of the background watchers, per watcher in arrival order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watch_events: Vec<WatchEvent>,
}

impl History {
    /// Operations that were acknowledged.
    pub fn acknowledged(&self) -> usize {
        self.operations
            .iter()
            .filter(|operation| operation.status == OpStatus::Ok)
            .count()
    }

    /// Counts of `(ok, failed, unknown)` operations.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut counts = (0, 0, 0);
        for operation in &self.operations {
            match operation.status {
                OpStatus::Ok => counts.0 += 1,
                OpStatus::Failed => counts.1 += 1,
                OpStatus::Unknown => counts.2 += 1,
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_survive_json() {
        let mut operation = Operation {
            id: 1,
            client: "c".into(),
            process: 0,
            node: 1,
            kind: OpKind::Get,
            key: "k".into(),
            value: None,
            consistency: Some(Consistency::Linearizable),
            invoke_us: 1,
            complete_us: 2,
            status: OpStatus::Ok,
            read: Some(None),
            deleted: None,
            expected: None,
            swapped: None,
            served: None,
            error: None,
        };
        for read in [None, Some(None), Some(Some("v".to_string()))] {
            operation.read = read.clone();
            let json = serde_json::to_string(&operation).unwrap();
            let back: Operation = serde_json::from_str(&json).unwrap();
            assert_eq!(back.read, read, "{json}");
        }
    }
}
