//! Scenario files (`scenarios/*.yaml`): a cluster description and a list of
//! steps. Each step is either a bare word (`- heal`) or a one-key map
//! (`- kill: leader`, `- put: {key: a, value: "1", at: follower}`). The
//! format is documented in `conformance/README.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_norway::Value;

use crate::history::Consistency;

/// One scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Name; the file name without `.yaml`.
    pub name: String,
    /// What it does, for people.
    pub description: String,
    /// Which faults of a server it catches, for people.
    pub catches: Vec<String>,
    /// Seed of every random choice (follower picks, workloads, nemesis).
    pub seed: u64,
    /// The cluster to start.
    pub cluster: ClusterSpec,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// The cluster a scenario starts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Number of nodes (ids 1..=nodes).
    #[serde(default = "default_nodes")]
    pub nodes: u64,
    /// Extra environment for every node, on top of the runner's defaults.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_nodes() -> u64 {
    3
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            nodes: default_nodes(),
            env: BTreeMap::new(),
        }
    }
}

/// Which node(s) a step acts on, resolved when the step runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The current leader.
    Leader,
    /// One follower of the current leader, picked with the scenario's seed.
    Follower,
    /// Every follower of the current leader.
    Followers,
    /// The leader at the last `mark` step.
    OldLeader,
    /// A node by id.
    Node(u64),
    /// A node remembered with `remember`.
    Named(String),
    /// Every node.
    All,
    /// In a partition: every node not named by another group.
    Others,
    /// For client operations: a random node.
    Any,
}

impl Target {
    /// Parses `leader`, `a follower`, `followers`, `the old leader`,
    /// `node 2` / `2`, `all`, `others`, `any`, or a remembered name.
    pub fn parse(text: &str) -> Result<Target> {
        let words = text.trim().to_lowercase();
        let words = words
            .strip_prefix("the ")
            .or_else(|| words.strip_prefix("a "))
            .unwrap_or(&words)
            .trim();
        Ok(match words {
            "leader" => Target::Leader,
            "follower" => Target::Follower,
            "followers" => Target::Followers,
            "old leader" | "old_leader" => Target::OldLeader,
            "all" | "all nodes" => Target::All,
            "others" | "the others" | "rest" => Target::Others,
            "any" | "any node" => Target::Any,
            other => {
                let digits = other
                    .strip_prefix("node")
                    .map(|rest| rest.trim_start_matches([' ', '-', '_']))
                    .unwrap_or(other);
                match digits.parse::<u64>() {
                    Ok(0) => bail!("node ids start at 1"),
                    Ok(id) => Target::Node(id),
                    Err(_)
                        if other
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_ ".contains(c))
                            && !other.is_empty() =>
                    {
                        Target::Named(other.to_string())
                    }
                    Err(_) => bail!("unknown node target {text:?}"),
                }
            }
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Leader => write!(f, "leader"),
            Target::Follower => write!(f, "a follower"),
            Target::Followers => write!(f, "followers"),
            Target::OldLeader => write!(f, "old leader"),
            Target::Node(id) => write!(f, "node {id}"),
            Target::Named(name) => write!(f, "{name}"),
            Target::All => write!(f, "all"),
            Target::Others => write!(f, "others"),
            Target::Any => write!(f, "any node"),
        }
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let text = match value {
            Value::String(text) => text,
            Value::Number(number) => number.to_string(),
            other => {
                return Err(serde::de::Error::custom(format!(
                    "a node target must be a word, not {other:?}"
                )))
            }
        };
        Target::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A duration written `500ms`, `2s`, `1.5s` or `1m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl Span {
    /// Parses `500ms`, `2s`, `1.5s`, `1m`.
    pub fn parse(text: &str) -> Result<Span> {
        let text = text.trim();
        let (number, unit) = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .map(|at| text.split_at(at))
            .ok_or_else(|| anyhow!("duration {text:?} needs a unit (ms, s, m)"))?;
        let number: f64 = number
            .parse()
            .map_err(|_| anyhow!("bad duration {text:?}"))?;
        let seconds = match unit.trim() {
            "ms" => number / 1000.0,
            "s" => number,
            "m" | "min" => number * 60.0,
            _ => bail!("bad duration unit in {text:?} (ms, s, m)"),
        };
        if !(0.0..=3600.0).contains(&seconds) {
            bail!("duration {text:?} out of range (0 to 1h)");
        }
        Ok(Span(Duration::from_secs_f64(seconds)))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if millis.is_multiple_of(1000) {
            write!(f, "{}s", millis / 1000)
        } else {
            write!(f, "{millis}ms")
        }
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Span::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// What a client operation must end with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Anything: the operation is only recorded.
    Any,
    /// Acknowledged (retried while it fails, within the step's timeout).
    Ok,
    /// Surely not done (failed).
    Fail,
    /// Not acknowledged: failed or unknown ("refuses").
    NotOk,
    /// A get: acknowledged with this value (retried while not acknowledged).
    Value(String),
    /// A get: acknowledged, key absent.
    Absent,
    /// A get: not acknowledged, or acknowledged with the latest acknowledged
    /// value of the key (never a stale one).
    FreshOrFail,
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Any => write!(f, "anything"),
            Expect::Ok => write!(f, "ok"),
            Expect::Fail => write!(f, "failed"),
            Expect::NotOk => write!(f, "refused (failed or unknown)"),
            Expect::Value(value) => write!(f, "value {value}"),
            Expect::Absent => write!(f, "absent"),
            Expect::FreshOrFail => write!(f, "fresh or failed"),
        }
    }
}

impl<'de> Deserialize<'de> for Expect {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = Value::deserialize(deserializer)?;
        match value {
            Value::String(text) => match text.as_str() {
                "any" => Ok(Expect::Any),
                "ok" => Ok(Expect::Ok),
                "fail" | "failed" => Ok(Expect::Fail),
                "not_ok" | "refused" => Ok(Expect::NotOk),
                "absent" => Ok(Expect::Absent),
                "fresh_or_fail" => Ok(Expect::FreshOrFail),
                other => Err(D::Error::custom(format!(
                    "unknown expectation {other:?} (any, ok, fail, not_ok, absent, fresh_or_fail, {{value: V}})"
                ))),
            },
            Value::Mapping(map) if map.len() == 1 => match map.get("value") {
                Some(Value::String(value)) => Ok(Expect::Value(value.clone())),
                Some(Value::Number(value)) => Ok(Expect::Value(value.to_string())),
                _ => Err(D::Error::custom("expected {value: TEXT}")),
            },
            other => Err(D::Error::custom(format!("bad expectation {other:?}"))),
        }
    }
}

/// `put` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutStep {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// Node the request goes to.
    #[serde(default = "target_any")]
    pub at: Target,
    /// Required outcome.
    #[serde(default = "expect_ok")]
    pub expect: Expect,
    /// Check the response header: `true` = the node forwarded it to the
    /// leader (`forwarded_by` is the node); `false` = served by the node.
    #[serde(default)]
    pub forwarded: Option<bool>,
}

/// `get` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetStep {
    /// Key.
    pub key: String,
    /// Node the request goes to.
    #[serde(default = "target_any")]
    pub at: Target,
    /// Read consistency.
    #[serde(default)]
    pub consistency: Consistency,
    /// Required outcome.
    #[serde(default = "expect_ok")]
    pub expect: Expect,
    /// Check the response header: `true` = the node forwarded it to the
    /// leader (`forwarded_by` is the node); `false` = served by the node.
    #[serde(default)]
    pub forwarded: Option<bool>,
}

/// `delete` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteStep {
    /// Key.
    pub key: String,
    /// Node the request goes to.
    #[serde(default = "target_any")]
    pub at: Target,
    /// Required outcome.
    #[serde(default = "expect_ok")]
    pub expect: Expect,
    /// Check the response header: `true` = the node forwarded it to the
    /// leader (`forwarded_by` is the node); `false` = served by the node.
    #[serde(default)]
    pub forwarded: Option<bool>,
}

fn target_any() -> Target {
    Target::Any
}

fn expect_ok() -> Expect {
    Expect::Ok
}

/// Share of each operation kind in a workload.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    /// Weight of puts.
    #[serde(default)]
    pub put: u32,
    /// Weight of gets.
    #[serde(default)]
    pub get: u32,
    /// Weight of deletes.
    #[serde(default)]
    pub delete: u32,
    /// Weight of compare-and-swaps (a txn: put if the key holds the value
    /// this client last saw there).
    #[serde(default)]
    pub cas: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            put: 45,
            get: 45,
            delete: 10,
            cas: 0,
        }
    }
}

/// `counter` arguments: clients incrementing one key with
/// compare-on-mod-revision retries.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterStep {
    /// Name, for `await` and `expect_counter`.
    pub name: String,
    /// Concurrent clients.
    #[serde(default = "default_clients")]
    pub clients: u32,
    /// How long each client keeps going.
    pub duration: Span,
    /// Where each attempt goes (`any`: a random node per attempt).
    #[serde(default = "target_any")]
    pub at: Target,
}

/// `bank` arguments: transfers between accounts, and audits of the total.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BankStep {
    /// Name, for `await` and `expect_bank_total`; the accounts are
    /// `NAME/acct-0` .. `NAME/acct-{accounts-1}`.
    pub name: String,
    /// Concurrent transfer clients (one more client audits).
    #[serde(default = "default_clients")]
    pub clients: u32,
    /// How long each client keeps going.
    pub duration: Span,
    /// Accounts.
    #[serde(default = "default_accounts")]
    pub accounts: u32,
    /// Each account's opening balance.
    #[serde(default = "default_balance")]
    pub balance: u64,
    /// Where each request goes (`any`: a random node per request).
    #[serde(default = "target_any")]
    pub at: Target,
}

fn default_accounts() -> u32 {
    5
}

fn default_balance() -> u64 {
    100
}

/// `compact` arguments: compact the history, keeping the last `keep`
/// revisions.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactStep {
    /// Revisions kept below the current one.
    pub keep: u64,
}

/// `expect_ranges_agree` arguments.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangesAgreeStep {
    /// The keys compared: every key with this prefix.
    pub prefix: String,
    /// How many revisions back from the current one (down to the compacted
    /// one) are compared.
    pub revisions: u64,
}

/// `watch` arguments: a background watcher of a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchStep {
    /// Name, for the outcome and the history.
    pub name: String,
    /// The node the watch is created at (resolved when the step runs).
    pub node: Target,
    /// The watched keys: every key with this prefix (`""`: every key).
    pub prefix: String,
}

/// `lease` arguments: an owner grants a lease, attaches keys to it, keeps
/// it alive for a while and then stops renewing it (it dies); readers read
/// the keys linearizably until `expect_lease_expiry`, and a watcher
/// records their events.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseStep {
    /// Name, for `await` (the owner) and `expect_lease_expiry`; the keys
    /// are `NAME/k0` .. `NAME/k{keys-1}`.
    pub name: String,
    /// The lease's time to live (whole seconds).
    pub ttl: Span,
    /// Keys attached to the lease.
    #[serde(default = "default_lease_keys")]
    pub keys: u32,
    /// How long the owner renews the lease after the keys are attached; it
    /// stops right after the first renewal past this.
    pub keep_alive: Span,
    /// Concurrent readers of the keys.
    #[serde(default = "default_readers")]
    pub readers: u32,
    /// Where each request goes (`any`: a random node per request; a
    /// keep-alive stream stays on one node until it fails).
    #[serde(default = "target_any")]
    pub at: Target,
    /// The node the watcher of the keys is created at.
    #[serde(default = "target_follower")]
    pub watch_at: Target,
}

fn default_lease_keys() -> u32 {
    3
}

fn default_readers() -> u32 {
    2
}

fn target_follower() -> Target {
    Target::Follower
}

/// `lock` arguments: clients taking one lock in a loop with etcd's recipe,
/// each holder writing its fencing token to a guarded key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockStep {
    /// Name, for `await` and `expect_lock_safety`; the lock's keys are
    /// `NAME/lock/<lease id in hex>`, the guarded key `NAME/guard`.
    pub name: String,
    /// Concurrent clients.
    #[serde(default = "default_clients")]
    pub clients: u32,
    /// How long each client keeps taking the lock.
    pub duration: Span,
    /// Each session lease's time to live (whole seconds).
    pub ttl: Span,
    /// How long a holder keeps the lock (two fenced writes, one at the
    /// start and one half way).
    #[serde(default = "default_hold_time")]
    pub hold: Span,
    /// Where each request goes (`any`: a random node per request).
    #[serde(default = "target_any")]
    pub at: Target,
    /// The node the watcher of the guarded key is created at.
    #[serde(default = "target_follower")]
    pub watch_at: Target,
}

fn default_hold_time() -> Span {
    Span(Duration::from_millis(200))
}

/// `expect_watches_match_history` arguments.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchCheckStep {
    /// How long each watcher may take to receive everything up to the
    /// final read's revision.
    #[serde(default = "default_wait")]
    pub timeout: Span,
}

impl Default for WatchCheckStep {
    fn default() -> Self {
        WatchCheckStep {
            timeout: default_wait(),
        }
    }
}

/// `workload` arguments: N clients for D over K keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadStep {
    /// Name, for `await` and in the history.
    #[serde(default = "default_workload_name")]
    pub name: String,
    /// Concurrent clients.
    #[serde(default = "default_clients")]
    pub clients: u32,
    /// How long each client keeps going.
    pub duration: Span,
    /// Keys `NAME-k0` .. `NAME-k{keys-1}`.
    #[serde(default = "default_keys")]
    pub keys: u32,
    /// Where each operation goes (`any`: a random node per operation).
    #[serde(default = "target_any")]
    pub at: Target,
    /// Read consistency of the gets.
    #[serde(default)]
    pub consistency: Consistency,
    /// Operation mix.
    #[serde(default)]
    pub mix: Mix,
    /// Upper bound of operations per client.
    #[serde(default = "default_max_ops")]
    pub max_ops: u32,
    /// Run in the background (the default) or wait for it here.
    #[serde(default = "default_true")]
    pub background: bool,
}

fn default_workload_name() -> String {
    "load".into()
}
fn default_clients() -> u32 {
    3
}
fn default_keys() -> u32 {
    4
}
fn default_max_ops() -> u32 {
    10000
}
fn default_true() -> bool {
    true
}

/// A fault the nemesis can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NemesisFault {
    /// SIGKILL a random node, start it again after the hold time.
    Kill,
    /// SIGKILL the leader, start it again after the hold time.
    KillLeader,
    /// Graceful restart (SIGTERM, start) of a random node.
    Restart,
    /// Freeze a random node for the hold time.
    Pause,
    /// Cut a random node from its peers for the hold time.
    Isolate,
    /// Cut the leader from its peers for the hold time.
    IsolateLeader,
    /// Cut one random peer link for the hold time.
    Cut,
}

/// `nemesis` arguments: random faults, one at a time, going through the
/// list in a seeded random order (every fault once before any repeats).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NemesisStep {
    /// Name, for `await`.
    #[serde(default = "default_nemesis_name")]
    pub name: String,
    /// How long to keep injecting.
    pub duration: Span,
    /// How long each fault lasts (at least).
    #[serde(default = "default_hold")]
    pub hold: Span,
    /// When set, each fault lasts a random time between `hold` and this.
    #[serde(default)]
    pub hold_max: Option<Span>,
    /// Calm time between two faults.
    #[serde(default = "default_hold")]
    pub gap: Span,
    /// The faults to choose from.
    pub faults: Vec<NemesisFault>,
}

fn default_nemesis_name() -> String {
    "nemesis".into()
}
fn default_hold() -> Span {
    Span(Duration::from_secs(1))
}

/// `wait_for_leader` arguments.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitLeaderStep {
    /// Give up after this long.
    #[serde(default = "default_wait")]
    pub timeout: Span,
    /// Require a leader other than the old leader, in a higher term.
    #[serde(default)]
    pub new: bool,
}

impl Default for WaitLeaderStep {
    fn default() -> Self {
        WaitLeaderStep {
            timeout: default_wait(),
            new: false,
        }
    }
}

/// `wait_caught_up` arguments.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitCaughtUpStep {
    /// Give up after this long.
    #[serde(default = "default_wait")]
    pub timeout: Span,
}

impl Default for WaitCaughtUpStep {
    fn default() -> Self {
        WaitCaughtUpStep {
            timeout: default_wait(),
        }
    }
}

fn default_wait() -> Span {
    Span(Duration::from_secs(20))
}

/// `remember` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RememberStep {
    /// The name later steps use as a target.
    pub name: String,
    /// The node, resolved now.
    pub node: Target,
}

/// `expect_term` arguments: the current leader's term against the term at
/// the last `mark`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TermStep {
    /// At least this much higher.
    #[serde(default)]
    pub min_increase: Option<u64>,
    /// At most this much higher.
    #[serde(default)]
    pub max_increase: Option<u64>,
}

/// Whether the leader must have changed since the last `mark`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaderChange {
    /// Another node leads now.
    Changed,
    /// The same node leads, in the same term.
    Unchanged,
}

/// One step.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Wait until a leader is elected and known by a majority.
    WaitForLeader(WaitLeaderStep),
    /// Wait until every running node applied everything the leader committed.
    WaitCaughtUp(WaitCaughtUpStep),
    /// Do nothing for a while.
    Sleep(Span),
    /// Wait for a background workload or nemesis (`None`: all of them).
    Await(Option<String>),
    /// Remember the leader as "the old leader" and its term.
    Mark,
    /// Give a node a name.
    Remember(RememberStep),
    /// A put.
    Put(PutStep),
    /// A get.
    Get(GetStep),
    /// A delete.
    Delete(DeleteStep),
    /// SIGKILL.
    Kill(Target),
    /// Graceful stop (SIGTERM).
    Stop(Target),
    /// Start stopped or killed nodes.
    Start(Target),
    /// Graceful stop then start.
    Restart(Target),
    /// Freeze (docker pause).
    Pause(Target),
    /// Thaw.
    Unpause(Target),
    /// Cut a node from all its peers (the client still reaches it).
    Isolate(Target),
    /// Cut every peer link between different groups.
    Partition(Vec<Vec<Target>>),
    /// Cut the peer link between two nodes.
    Cut(Target, Target),
    /// Reconnect every cut peer link.
    Heal,
    /// Concurrent random clients.
    Workload(WorkloadStep),
    /// Random faults, one at a time.
    Nemesis(NemesisStep),
    /// The leader must (not) have changed since the last `mark`.
    ExpectLeader(LeaderChange),
    /// The leader's term against the term at the last `mark`.
    ExpectTerm(TermStep),
    /// A node caught up through a snapshot (see the README).
    ExpectSnapshotCatchUp(Target),
    /// Read these keys (linearizable, retried) into the outcome's final values.
    FinalValues(Vec<String>),
    /// Clients incrementing a counter with compare-and-swap retries.
    Counter(CounterStep),
    /// The counter's final value against the increments acknowledged.
    ExpectCounter(String),
    /// Transfers between accounts under audit.
    Bank(BankStep),
    /// The bank's total unchanged, by every audit and at the end.
    ExpectBankTotal(String),
    /// Compact the history (at the leader, physically).
    Compact(CompactStep),
    /// Every running node answers ranges at past revisions as the leader
    /// does, and refuses the compacted ones.
    ExpectRangesAgree(RangesAgreeStep),
    /// A background watcher of a prefix that resumes elsewhere when its
    /// stream fails.
    Watch(WatchStep),
    /// Every watcher's events against the client history and the store's
    /// history.
    ExpectWatchesMatchHistory(WatchCheckStep),
    /// A lease owner that dies, readers and a watcher of its keys.
    Lease(LeaseStep),
    /// The lease's keys lived until its TTL ran out after the last
    /// renewal, then went, all at one revision, within a bound.
    ExpectLeaseExpiry(String),
    /// Clients taking a lock with fencing tokens.
    Lock(LockStep),
    /// Holders never overlapped (beyond an expired session), tokens grew
    /// with acquisition, the guarded key's values only grew.
    ExpectLockSafety(String),
}

impl Step {
    /// The step as one deterministic line for the outcome.
    pub fn describe(&self) -> String {
        match self {
            Step::WaitForLeader(args) if args.new => "wait for a new leader".into(),
            Step::WaitForLeader(_) => "wait for a leader".into(),
            Step::WaitCaughtUp(_) => "wait until all running nodes caught up".into(),
            Step::Sleep(span) => format!("sleep {span}"),
            Step::Await(Some(name)) => format!("await {name}"),
            Step::Await(None) => "await background tasks".into(),
            Step::Mark => "mark the leader and term".into(),
            Step::Remember(args) => format!("remember {} as {}", args.node, args.name),
            Step::Put(args) => format!(
                "put {}={} at {}, expect {}{}",
                args.key,
                args.value,
                args.at,
                args.expect,
                forwarded(args.forwarded)
            ),
            Step::Get(args) => {
                let consistency = match args.consistency {
                    Consistency::Linearizable => "",
                    Consistency::Serializable => " (serializable)",
                };
                format!(
                    "get {}{consistency} at {}, expect {}{}",
                    args.key,
                    args.at,
                    args.expect,
                    forwarded(args.forwarded)
                )
            }
            Step::Delete(args) => format!(
                "delete {} at {}, expect {}{}",
                args.key,
                args.at,
                args.expect,
                forwarded(args.forwarded)
            ),
            Step::Kill(target) => format!("kill {target}"),
            Step::Stop(target) => format!("stop {target}"),
            Step::Start(target) => format!("start {target}"),
            Step::Restart(target) => format!("restart {target}"),
            Step::Pause(target) => format!("pause {target}"),
            Step::Unpause(target) => format!("unpause {target}"),
            Step::Isolate(target) => format!("isolate {target}"),
            Step::Partition(groups) => {
                let groups: Vec<String> = groups
                    .iter()
                    .map(|group| {
                        group
                            .iter()
                            .map(Target::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .map(|group| format!("[{group}]"))
                    .collect();
                format!("partition {}", groups.join(" | "))
            }
            Step::Cut(a, b) => format!("cut {a} <-> {b}"),
            Step::Heal => "heal the network".into(),
            Step::Workload(args) => format!(
                "workload {}: {} clients, {}, {} keys, at {}",
                args.name, args.clients, args.duration, args.keys, args.at
            ),
            Step::Nemesis(args) => {
                let faults: Vec<String> = args
                    .faults
                    .iter()
                    .map(|fault| format!("{fault:?}"))
                    .collect();
                format!(
                    "nemesis {}: {} of [{}]",
                    args.name,
                    args.duration,
                    faults.join(", ")
                )
            }
            Step::ExpectLeader(LeaderChange::Changed) => "expect the leader changed".into(),
            Step::ExpectLeader(LeaderChange::Unchanged) => "expect the leader unchanged".into(),
            Step::ExpectTerm(args) => match (args.min_increase, args.max_increase) {
                (Some(min), Some(max)) => format!("expect the term increased by {min} to {max}"),
                (Some(min), None) => format!("expect the term increased by at least {min}"),
                (None, Some(max)) => format!("expect the term increased by at most {max}"),
                (None, None) => "expect the term".into(),
            },
            Step::ExpectSnapshotCatchUp(target) => {
                format!("expect {target} caught up through a snapshot")
            }
            Step::FinalValues(keys) => format!("read final values of {}", keys.join(", ")),
            Step::Counter(args) => format!(
                "counter {}: {} clients increment with compare-and-swap, {}, at {}",
                args.name, args.clients, args.duration, args.at
            ),
            Step::ExpectCounter(name) => format!(
                "expect counter {name} to hold every acknowledged increment and no more than were tried"
            ),
            Step::Bank(args) => format!(
                "bank {}: {} accounts of {}, {} clients transfer, one audits, {}, at {}",
                args.name, args.accounts, args.balance, args.clients, args.duration, args.at
            ),
            Step::ExpectBankTotal(name) => {
                format!("expect bank {name}'s total unchanged by every audit and at the end")
            }
            Step::Compact(args) => format!("compact, keeping the last {} revisions", args.keep),
            Step::ExpectRangesAgree(args) => format!(
                "expect every node to answer ranges of {:?} at the last {} revisions as the leader, and to refuse compacted ones",
                args.prefix, args.revisions
            ),
            Step::Watch(args) => format!(
                "watch {:?} at {} as {}, resuming elsewhere from the next revision when its stream fails",
                args.prefix, args.node, args.name
            ),
            Step::ExpectWatchesMatchHistory(_) => "expect every watcher's events to be the committed writes: in revision order, once each, every acknowledged write at its revision, nothing failed or unknown to the history, exactly the store's changes".into(),
            Step::Lease(args) => format!(
                "lease {}: ttl {}, {} keys, kept alive {} then its owner dies; {} readers at {}, a watcher at {}",
                args.name, args.ttl, args.keys, args.keep_alive, args.readers, args.at, args.watch_at
            ),
            Step::ExpectLeaseExpiry(name) => format!(
                "expect lease {name}'s keys present at every read until the TTL after the last renewal, then gone at one revision within TTL + election timeout + slack"
            ),
            Step::Lock(args) => format!(
                "lock {}: {} clients take it for {}, session ttl {}, hold {} with fenced writes, at {}, guarded key watched at {}",
                args.name, args.clients, args.duration, args.ttl, args.hold, args.at, args.watch_at
            ),
            Step::ExpectLockSafety(name) => format!(
                "expect lock {name}: no holds overlap unless a session expired, tokens grow with acquisition, the guarded key's values only grow"
            ),
        }
    }
}

fn forwarded(forwarded: Option<bool>) -> &'static str {
    match forwarded {
        None => "",
        Some(true) => ", forwarded to the leader",
        Some(false) => ", served locally",
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    catches: Vec<String>,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    cluster: ClusterSpec,
    steps: Vec<Value>,
}

fn args<T: DeserializeOwned>(kind: &str, value: Value) -> Result<T> {
    serde_norway::from_value(value).with_context(|| format!("bad arguments for {kind}"))
}

fn args_or_default<T: DeserializeOwned + Default>(kind: &str, value: Option<Value>) -> Result<T> {
    match value {
        None | Some(Value::Null) => Ok(T::default()),
        Some(value) => args(kind, value),
    }
}

fn parse_step(value: Value) -> Result<Step> {
    let (kind, arguments) = match value {
        Value::String(kind) => (kind, None),
        Value::Mapping(map) if map.len() == 1 => {
            let (key, arguments) = map.into_iter().next().expect("one entry");
            let Value::String(kind) = key else {
                bail!("a step's name must be a word");
            };
            (kind, Some(arguments))
        }
        other => bail!("a step is a word or a one-key map, not {other:?}"),
    };
    let required =
        |arguments: Option<Value>| arguments.ok_or_else(|| anyhow!("{kind} needs an argument"));
    let target = |arguments: Option<Value>| -> Result<Target> { args(&kind, required(arguments)?) };
    Ok(match kind.as_str() {
        "wait_for_leader" => Step::WaitForLeader(args_or_default(&kind, arguments)?),
        "wait_caught_up" => Step::WaitCaughtUp(args_or_default(&kind, arguments)?),
        "sleep" => Step::Sleep(args(&kind, required(arguments)?)?),
        "await" => Step::Await(match arguments {
            None | Some(Value::Null) => None,
            Some(value) => Some(args(&kind, value)?),
        }),
        "mark" => Step::Mark,
        "remember" => Step::Remember(args(&kind, required(arguments)?)?),
        "put" => Step::Put(args(&kind, required(arguments)?)?),
        "get" => Step::Get(args(&kind, required(arguments)?)?),
        "delete" => Step::Delete(args(&kind, required(arguments)?)?),
        "kill" => Step::Kill(target(arguments)?),
        "stop" => Step::Stop(target(arguments)?),
        "start" => Step::Start(target(arguments)?),
        "restart" => Step::Restart(target(arguments)?),
        "pause" => Step::Pause(target(arguments)?),
        "unpause" => Step::Unpause(target(arguments)?),
        "isolate" => Step::Isolate(target(arguments)?),
        "partition" => {
            let groups: Vec<Vec<Target>> = args(&kind, required(arguments)?)?;
            if groups.len() < 2 {
                bail!("partition needs at least two groups");
            }
            Step::Partition(groups)
        }
        "cut" => {
            let pair: Vec<Target> = args(&kind, required(arguments)?)?;
            let [a, b]: [Target; 2] = pair
                .try_into()
                .map_err(|_| anyhow!("cut takes two nodes"))?;
            Step::Cut(a, b)
        }
        "heal" => Step::Heal,
        "workload" => Step::Workload(args(&kind, required(arguments)?)?),
        "nemesis" => Step::Nemesis(args(&kind, required(arguments)?)?),
        "expect_leader" => Step::ExpectLeader(args(&kind, required(arguments)?)?),
        "expect_term" => Step::ExpectTerm(args(&kind, required(arguments)?)?),
        "expect_snapshot_catch_up" => Step::ExpectSnapshotCatchUp(target(arguments)?),
        "final_values" => Step::FinalValues(args(&kind, required(arguments)?)?),
        "counter" => Step::Counter(args(&kind, required(arguments)?)?),
        "expect_counter" => Step::ExpectCounter(args(&kind, required(arguments)?)?),
        "bank" => Step::Bank(args(&kind, required(arguments)?)?),
        "expect_bank_total" => Step::ExpectBankTotal(args(&kind, required(arguments)?)?),
        "compact" => Step::Compact(args(&kind, required(arguments)?)?),
        "expect_ranges_agree" => Step::ExpectRangesAgree(args(&kind, required(arguments)?)?),
        "watch" => Step::Watch(args(&kind, required(arguments)?)?),
        "expect_watches_match_history" => {
            Step::ExpectWatchesMatchHistory(args_or_default(&kind, arguments)?)
        }
        "lease" => {
            let lease: LeaseStep = args(&kind, required(arguments)?)?;
            whole_seconds(&lease.ttl)?;
            Step::Lease(lease)
        }
        "expect_lease_expiry" => Step::ExpectLeaseExpiry(args(&kind, required(arguments)?)?),
        "lock" => {
            let lock: LockStep = args(&kind, required(arguments)?)?;
            whole_seconds(&lock.ttl)?;
            Step::Lock(lock)
        }
        "expect_lock_safety" => Step::ExpectLockSafety(args(&kind, required(arguments)?)?),
        other => bail!("unknown step {other:?}"),
    })
}

/// A lease TTL: whole seconds, at least one (the protos count in seconds).
fn whole_seconds(ttl: &Span) -> Result<()> {
    if ttl.0.subsec_nanos() != 0 || ttl.0.is_zero() {
        bail!("a lease ttl is whole seconds, at least 1s (not {ttl})");
    }
    Ok(())
}

impl Scenario {
    /// Parses a scenario; `default_name` is used when the file has no `name`.
    pub fn parse(text: &str, default_name: &str) -> Result<Scenario> {
        let file: ScenarioFile = serde_norway::from_str(text)?;
        let steps = file
            .steps
            .into_iter()
            .enumerate()
            .map(|(index, step)| parse_step(step).with_context(|| format!("step {}", index + 1)))
            .collect::<Result<Vec<_>>>()?;
        if file.cluster.nodes == 0 || file.cluster.nodes > 9 {
            bail!("cluster.nodes must be 1 to 9");
        }
        Ok(Scenario {
            name: file.name.unwrap_or_else(|| default_name.to_string()),
            description: file.description.trim().to_string(),
            catches: file.catches,
            seed: file.seed,
            cluster: file.cluster,
            steps,
        })
    }

    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let stem = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .ok_or_else(|| anyhow!("bad scenario file name {}", path.display()))?;
        Scenario::parse(&text, stem).with_context(|| format!("in {}", path.display()))
    }

    /// Every `*.yaml` of `directory`, sorted by name.
    pub fn load_all(directory: &Path) -> Result<Vec<Scenario>> {
        let mut paths: Vec<_> = std::fs::read_dir(directory)
            .with_context(|| format!("cannot list {}", directory.display()))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| {
                path.extension()
                    .is_some_and(|extension| extension == "yaml")
            })
            .collect();
        paths.sort();
        paths.iter().map(|path| Scenario::load(path)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!(Target::parse("leader").unwrap(), Target::Leader);
        assert_eq!(Target::parse("a follower").unwrap(), Target::Follower);
        assert_eq!(Target::parse("the old leader").unwrap(), Target::OldLeader);
        assert_eq!(Target::parse("node 2").unwrap(), Target::Node(2));
        assert_eq!(Target::parse("3").unwrap(), Target::Node(3));
        assert_eq!(
            Target::parse("victim").unwrap(),
            Target::Named("victim".into())
        );
        assert!(Target::parse("node 0").is_err());
        assert!(Target::parse("{}").is_err());
    }

    #[test]
    fn parses_durations() {
        assert_eq!(Span::parse("500ms").unwrap().0, Duration::from_millis(500));
        assert_eq!(Span::parse("1.5s").unwrap().0, Duration::from_millis(1500));
        assert_eq!(Span::parse("2m").unwrap().0, Duration::from_secs(120));
        assert!(Span::parse("5").is_err());
        assert!(Span::parse("5h").is_err());
        assert_eq!(Span::parse("1500ms").unwrap().to_string(), "1500ms");
        assert_eq!(Span::parse("3s").unwrap().to_string(), "3s");
    }

    #[test]
    fn parses_a_scenario() {
        let text = r#"
description: demo
catches: [stale reads]
seed: 7
cluster:
  nodes: 3
  env: {KVSTORE_SNAPSHOT_ENTRIES: "200"}
steps:
  - wait_for_leader
  - wait_for_leader: {timeout: 5s, new: true}
  - put: {key: a, value: "1", at: leader}
  - get: {key: a, at: old leader, expect: fresh_or_fail, consistency: serializable}
  - get: {key: a, expect: {value: 1}}
  - delete: {key: a, expect: any}
  - mark
  - remember: {name: victim, node: a follower}
  - kill: leader
  - partition: [[leader], [others]]
  - cut: [node 1, 2]
  - heal
  - workload: {clients: 2, duration: 2s, keys: 3}
  - nemesis: {duration: 3s, faults: [kill, pause, isolate_leader]}
  - await
  - await: load
  - expect_leader: changed
  - expect_term: {max_increase: 1}
  - expect_snapshot_catch_up: victim
  - final_values: [a]
  - watch: {name: w, node: a follower, prefix: "w/"}
  - expect_watches_match_history
  - lease: {name: owner, ttl: 4s, keep_alive: 3s}
  - expect_lease_expiry: owner
  - lock: {name: locks, duration: 5s, ttl: 3s}
  - expect_lock_safety: locks
"#;
        let scenario = Scenario::parse(text, "demo").unwrap();
        assert_eq!(scenario.name, "demo");
        assert_eq!(scenario.seed, 7);
        assert_eq!(scenario.steps.len(), 26);
        match &scenario.steps[22] {
            Step::Lease(lease) => {
                assert_eq!((lease.keys, lease.readers), (3, 2));
                assert_eq!(lease.watch_at, Target::Follower);
            }
            other => panic!("{other:?}"),
        }
        match &scenario.steps[24] {
            Step::Lock(lock) => {
                assert_eq!(lock.clients, 3);
                assert_eq!(lock.hold.0, Duration::from_millis(200));
            }
            other => panic!("{other:?}"),
        }
        assert!(Scenario::parse(
            "steps: [{lease: {name: a, ttl: 1500ms, keep_alive: 1s}}]",
            "x"
        )
        .is_err());
        assert_eq!(
            scenario.steps[0],
            Step::WaitForLeader(WaitLeaderStep::default())
        );
        match &scenario.steps[4] {
            Step::Get(get) => assert_eq!(get.expect, Expect::Value("1".into())),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            scenario.steps[9],
            Step::Partition(vec![vec![Target::Leader], vec![Target::Others]])
        );
        assert_eq!(
            scenario.steps[10],
            Step::Cut(Target::Node(1), Target::Node(2))
        );
        assert_eq!(
            scenario.steps[20],
            Step::Watch(WatchStep {
                name: "w".into(),
                node: Target::Follower,
                prefix: "w/".into(),
            })
        );
        assert_eq!(
            scenario.steps[21],
            Step::ExpectWatchesMatchHistory(WatchCheckStep::default())
        );
        assert_eq!(
            scenario.steps[3].describe(),
            "get a (serializable) at old leader, expect fresh or failed"
        );
    }

    #[test]
    fn rejects_unknown_steps_and_fields() {
        assert!(Scenario::parse("steps: [explode]", "x").is_err());
        assert!(Scenario::parse("steps: [{put: {key: a, value: b, colour: red}}]", "x").is_err());
        assert!(Scenario::parse("steps: [{partition: [[leader]]}]", "x").is_err());
        assert!(Scenario::parse("steps: [{kill: {}}]", "x").is_err());
    }

    #[test]
    fn every_scenario_file_parses() {
        let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let scenarios = Scenario::load_all(&directory).unwrap();
        assert!(scenarios.len() >= 10, "{} scenarios", scenarios.len());
        for scenario in scenarios {
            assert!(
                !scenario.description.is_empty(),
                "{}: no description",
                scenario.name
            );
            assert!(
                !scenario.catches.is_empty(),
                "{}: no catches",
                scenario.name
            );
        }
    }
}
