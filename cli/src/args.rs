//! Command-line arguments.

use std::ffi::OsString;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: `get` found no such key.
pub const EXIT_KEY_NOT_FOUND: u8 = 1;
/// Exit code: bad command-line usage (clap's own).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the request failed (unreachable, timeout, server error, ...).
pub const EXIT_FAILED: u8 = 3;

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  get: the key does not exist (nothing is printed on stdout)
  2  bad usage
  3  the request failed: no endpoint reachable, timeout, or a server error

Keys and values are bytes. `get` prints the value alone, byte-exact, with no
newline added (one is added only when stdout is a terminal), so
`kvstore-cli get k > file` round-trips binary data. Use `put KEY -` to read the
value from stdin, and --hex-key to give keys as hex (for NUL bytes).";

/// kvstore-cli: talk to a kvstore cluster.
#[derive(Debug, Parser)]
#[command(name = "kvstore-cli", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Nodes' client addresses, HOST:PORT, comma-separated. Requests go to the
    /// first that answers; `status` asks every one.
    #[arg(
        long,
        env = "KVSTORE_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub endpoints: Vec<String>,

    /// Output format. `table` is for `status`.
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = OutputFormat::Text, global = true)]
    pub write_out: OutputFormat,

    /// Deadline for each request, such as 500ms, 5s or 1m.
    #[arg(long, default_value = "5s", value_parser = parse_duration, global = true)]
    pub timeout: Duration,

    /// Keys on the command line are hex-encoded (for keys with NUL bytes).
    #[arg(long, global = true)]
    pub hex_key: bool,

    /// Also print the response header (serving node, leader, term, index) on stderr.
    #[arg(short, long, global = true)]
    pub verbose: bool,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

const TXN_AFTER_HELP: &str = "\
Syntax (etcdctl's), one item per line:
  compares:   mod(\"key\") = \"5\"     targets: value, mod, create, version, lease
              value(\"k\") != \"v\"    operators: = != < >
  ops:        put KEY VALUE [--prev-kv]
              get KEY [RANGE_END] [--prefix] [--from-key] [--limit N] [--keys-only]
                  [--count-only] [--rev N]
              del KEY [RANGE_END] [--prefix] [--from-key] [--prev-kv]
Words may be quoted (\"a b\", with \\\" and \\\\ escapes). The parts end with a
blank line (the last one may end with the input). Prints SUCCESS or FAILURE,
then each op's output; -w json prints the whole response.

Example (create a lock only if it does not exist):
  printf 'create(\"lock\") = \"0\"\n\nput lock me\n\nget lock\n' | kvstore-cli txn";

/// Range options of `get` (and of a txn's get).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RangeArgs {
    /// Every key starting with KEY.
    #[arg(long)]
    pub prefix: bool,
    /// Every key from KEY on.
    #[arg(long, conflicts_with = "prefix")]
    pub from_key: bool,
    /// At most N pairs.
    #[arg(long)]
    pub limit: Option<i64>,
    /// Keys only, no values.
    #[arg(long)]
    pub keys_only: bool,
    /// Only the number of keys.
    #[arg(long)]
    pub count_only: bool,
    /// Read at this revision (it must not be compacted).
    #[arg(long)]
    pub rev: Option<i64>,
    /// Sort by this field.
    #[arg(long, value_enum, ignore_case = true)]
    pub sort_by: Option<SortBy>,
    /// Sort order (ascending by default when --sort-by is given).
    #[arg(long, value_enum, ignore_case = true)]
    pub order: Option<SortOrder>,
}

impl RangeArgs {
    /// Whether any option asks for a range read rather than a plain get.
    pub fn any(&self) -> bool {
        self.prefix
            || self.from_key
            || self.limit.is_some()
            || self.keys_only
            || self.count_only
            || self.rev.is_some()
            || self.sort_by.is_some()
            || self.order.is_some()
    }
}

/// What a range sorts by (etcdctl's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum SortBy {
    /// The key.
    Key,
    /// The create revision.
    Create,
    /// The mod revision.
    Modify,
    /// The value.
    Value,
    /// The version.
    Version,
}

/// A sort order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum SortOrder {
    /// Ascending.
    Ascend,
    /// Descending.
    Descend,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Plain output for people and shell pipelines.
    Text,
    /// One JSON document.
    Json,
    /// An aligned table (status).
    Table,
}

/// Read consistency of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read (the default).
    Linearizable,
    /// Served from the contacted node's local state; may be stale.
    Serializable,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Store VALUE under KEY.
    Put {
        /// The key.
        key: OsString,
        /// The value; `-` reads it from stdin.
        value: OsString,
        /// Also print the previous pair (key and value lines).
        #[arg(long)]
        prev_kv: bool,
        /// Attach the key to this lease (its id in hex, as `lease grant`
        /// prints it): the key is deleted when the lease expires or is
        /// revoked.
        #[arg(long)]
        lease: Option<String>,
    },
    /// Print the value of KEY; with a range (RANGE_END, --prefix,
    /// --from-key) or a range option, every pair of the range as etcdctl
    /// does: the key on one line, the value on the next.
    Get {
        /// The key (the first of the range).
        key: OsString,
        /// End of the range, excluded.
        range_end: Option<OsString>,
        /// How fresh the read must be.
        #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
        consistency: Consistency,
        #[command(flatten)]
        range: RangeArgs,
    },
    /// Remove KEY, or every key of a range; prints how many were deleted.
    #[command(visible_alias = "del")]
    Delete {
        /// The key (the first of the range).
        key: OsString,
        /// End of the range, excluded.
        range_end: Option<OsString>,
        /// Every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// Every key from KEY on.
        #[arg(long, conflicts_with = "prefix")]
        from_key: bool,
        /// Also print the deleted pairs.
        #[arg(long)]
        prev_kv: bool,
    },
    /// Run a transaction read from stdin in etcdctl's syntax: compares, a
    /// blank line, the success ops, a blank line, the failure ops.
    #[command(after_help = TXN_AFTER_HELP)]
    Txn {
        /// Prompt for each part (on stderr).
        #[arg(short, long)]
        interactive: bool,
    },
    /// Drop the history below REVISION: reads below it then fail.
    Compact {
        /// The revision.
        revision: u64,
        /// Wait until the answering node has dropped the history (millions of
        /// revisions take minutes: give a longer --timeout, as `--timeout 10m`).
        #[arg(long)]
        physical: bool,
    },
    /// Show every endpoint's role, term, leader and log positions.
    Status {
        /// Refresh the table in place until interrupted (Ctrl-C).
        #[arg(long)]
        watch: bool,
        /// Time between refreshes with --watch.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
        /// With --watch: stop after this many refreshes.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Print the events of KEY, or of a range, until interrupted (Ctrl-C):
    /// etcdctl's lines (PUT or DELETE, [the previous key and value,] the
    /// key, the value) or, with -w json, one JSON object per event and
    /// line. When the watched node goes away, the watch resumes on the
    /// next endpoint from the revision after the last event printed.
    Watch {
        /// The key (the first of the range).
        key: OsString,
        /// End of the range, excluded.
        range_end: Option<OsString>,
        /// Every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// Every key from KEY on.
        #[arg(long, conflicts_with = "prefix")]
        from_key: bool,
        /// Start from this revision (the history first, then live).
        #[arg(long)]
        rev: Option<i64>,
        /// Also print each event's previous pair.
        #[arg(long)]
        prev_kv: bool,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Leases: keys that disappear when their owner stops renewing them.
    #[command(subcommand)]
    Lease(LeaseCommand),
    /// Take the lock NAME (etcd's recipe: a session lease and a key
    /// NAME/<lease id> ordered by create revision). With COMMAND, run it while
    /// holding the lock, then release it and exit with its code; the lock
    /// key is in KVSTORE_LOCK_KEY and its create revision, a fencing token
    /// that grows from one holder to the next, in KVSTORE_LOCK_REVISION.
    /// Without, print the key and hold the lock until Ctrl-C.
    Lock {
        /// The lock's name (a key prefix).
        name: OsString,
        /// The command to run while holding the lock.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<OsString>,
        /// The session's lease TTL, in seconds: how long the lock outlives
        /// this process if it dies.
        #[arg(long, default_value_t = 60)]
        ttl: i64,
    },
    /// Campaign for leadership of NAME with PROPOSAL (etcd's recipe): print
    /// the leader key and the proposal once elected, lead until Ctrl-C. With
    /// -l, print the current leader's proposal and every change instead.
    Elect {
        /// The election's name (a key prefix).
        name: OsString,
        /// This candidate's value.
        proposal: Option<OsString>,
        /// Observe the election instead of campaigning.
        #[arg(short, long)]
        listen: bool,
        /// The session's lease TTL, in seconds.
        #[arg(long, default_value_t = 60)]
        ttl: i64,
    },
    /// Measure throughput and latency of put, get or mixed requests.
    #[command(after_help = BENCH_AFTER_HELP)]
    Bench(BenchArgs),
}

/// `lease` subcommands (ids in hex, as etcdctl).
#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Grant a lease of TTL seconds; prints its id.
    Grant {
        /// Time to live, in seconds.
        ttl: i64,
    },
    /// Revoke a lease: its keys are deleted.
    Revoke {
        /// The lease id (hex).
        id: String,
    },
    /// Keep a lease alive (a renewal every third of its TTL) until Ctrl-C;
    /// exit code 3 once the lease is gone.
    KeepAlive {
        /// The lease id (hex).
        id: String,
        /// Renew once and exit.
        #[arg(long)]
        once: bool,
    },
    /// Show a lease's granted and remaining TTL.
    Timetolive {
        /// The lease id (hex).
        id: String,
        /// Also list the keys attached to it.
        #[arg(long)]
        keys: bool,
    },
    /// List every lease.
    List,
}

const BENCH_AFTER_HELP: &str = "\
Endpoints:
  The --conns connections are spread round-robin over --endpoints, and the
  clients over the connections. Any node takes writes (followers forward them
  to the leader). To measure through the leader only, list only the leader:
    kvstore-cli --endpoints 127.0.0.1:51151 bench put --clients 64 --conns 4
  To spread the load over a 3-node cluster, list all three and use --conns 3
  or a multiple of it.

Keys and values:
  Key i of the keyspace is `bench-` followed by i in zero-padded decimal,
  --key-size bytes in all (`bench-0000000042`). Each request picks a key
  uniformly from 0..keyspace with an RNG seeded by --seed; values are random
  bytes. get and mixed first write every key of the keyspace once (the
  prefill, not measured) unless --no-prefill is given.

Results:
  Throughput counts succeeded requests; latency (HDR histogram, successful
  requests only) is measured from just before each call to its response.
  Failed requests are counted by gRPC code. -w json prints one JSON object
  with latencies in microseconds (latency_us_p50, ...).
  Each request's deadline is --timeout.

Comparing with etcd:
  --protocol etcd drives etcd's v3 gRPC API (Put, and Range of one key) with
  the same clients, keys, values and histogram, so both stores are measured
  the same way:
    kvstore-cli --endpoints 127.0.0.1:2379 bench put --protocol etcd --clients 64
  `make bench-etcd` runs the standard workloads against a local etcd cluster.

Exit codes: 0 when the run completed, even with some failed requests;
2 bad usage; 3 when no request succeeded or the run could not start.";

/// What `bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Writes only.
    Put,
    /// Reads only, with --consistency.
    Get,
    /// Reads (fraction --ratio) and writes.
    Mixed,
    /// Compare-and-swap txns on random keys: put if the key exists (its
    /// mod revision is above 0), else read it.
    Txn,
    /// Ranges of --range-keys consecutive keys from a random key, with
    /// --consistency.
    Range,
    /// Lease renewals: each client grants itself a lease and renews it on
    /// its own keep-alive stream and connection.
    Keepalive,
    /// Writes, as put, while --watchers watches of single keys and
    /// --prefix-watchers watches of the benchmark's key prefix receive the
    /// events: events delivered per second, and the time from a put being
    /// sent to its event arriving.
    Watch,
}

impl Workload {
    /// The name as typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Mixed => "mixed",
            Workload::Txn => "txn",
            Workload::Range => "range",
            Workload::Watch => "watch",
            Workload::Keepalive => "keepalive",
        }
    }
}

impl Consistency {
    /// The name as typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Serializable => "serializable",
        }
    }
}

/// Arguments of `bench`. Checked and resolved by `bench::plan::Plan::new`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub workload: Workload,

    /// Concurrent requests in flight: one task each, sending its next request
    /// when the previous one is answered (after an UNAVAILABLE answer, once
    /// it has waited 1 ms, doubling with each one in a row up to 100 ms).
    #[arg(long, default_value_t = 1)]
    pub clients: u64,

    /// gRPC (HTTP/2) connections, spread round-robin over --endpoints.
    #[arg(long = "conns", default_value_t = 1)]
    pub connections: u64,

    /// Stop after this many requests [default: 10000 when --duration is not
    /// given]. With --duration, whichever comes first.
    #[arg(long = "total")]
    pub total_operations: Option<u64>,

    /// Stop after this long, such as 10s or 2m. With --total, whichever comes
    /// first.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Size of every key, in bytes.
    #[arg(long = "key-size", default_value_t = 16)]
    pub key_size_bytes: u64,

    /// Size of every written value, in bytes.
    #[arg(long = "value-size", default_value_t = 256)]
    pub value_size_bytes: u64,

    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub keyspace: u64,

    /// mixed: fraction of requests that are reads, 0.0 to 1.0 [default: 0.5].
    #[arg(long)]
    pub ratio: Option<f64>,

    /// range: keys per range (consecutive keys of the keyspace) [default: 100].
    #[arg(long)]
    pub range_keys: Option<u64>,

    /// Consistency of reads (get and mixed) [default: linearizable].
    #[arg(long, value_enum)]
    pub consistency: Option<Consistency>,

    /// Write every key once before measuring [default: on for get and mixed].
    #[arg(long, overrides_with = "no_prefill")]
    pub prefill: bool,

    /// Do not write the keyspace before measuring.
    #[arg(long, overrides_with = "prefill")]
    pub no_prefill: bool,

    /// Seed of the random key choice and values; the same seed replays the
    /// same keys in each client.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Never draw the progress bar (it is drawn on stderr only when stderr is
    /// a terminal).
    #[arg(long)]
    pub no_progress: bool,

    /// The API of the servers at --endpoints: kvstore's, or etcd's v3 gRPC
    /// API (to run the same workloads against etcd for comparison).
    #[arg(long, value_enum, default_value_t = Protocol::Kvstore)]
    pub protocol: Protocol,

    /// watch: watches of one key each, keys 0, 1, ... of the keyspace
    /// [default: the keyspace, every key watched once].
    #[arg(long)]
    pub watchers: Option<u64>,

    /// watch: watches of the whole key prefix (each gets every event).
    #[arg(long, default_value_t = 0)]
    pub prefix_watchers: u64,

    /// watch: streams the watches are spread over (round-robin over the
    /// endpoints).
    #[arg(long, default_value_t = 16)]
    pub watch_streams: u64,

    /// watch: create the watches after the writes, from revision 1: every
    /// event then comes from the history (a fresh cluster's whole history),
    /// and events/s measures delivery alone, from the creation to the last
    /// event.
    #[arg(long)]
    pub watch_history: bool,

    /// watch: longest wait for the events after the last write.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub watch_drain: Duration,
}

/// Which server API `bench` drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// kvstore.v1.KV: Put and Get.
    Kvstore,
    /// etcd's etcdserverpb.KV (v3 API): Put and Range of one key;
    /// serializable reads set Range's `serializable` flag.
    Etcd,
}

impl Protocol {
    /// The name as typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Kvstore => "kvstore",
            Protocol::Etcd => "etcd",
        }
    }
}

/// Parses `500ms`, `5s`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) =
        match text.find(|character: char| !character.is_ascii_digit() && character != '.') {
            Some(position) => text.split_at(position),
            None => (text, "s"),
        };
    let number: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {text:?} (use ms, s or m)"
            ))
        }
    };
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err(format!("duration must be positive: {text:?}"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("abc").is_err());
    }
}
