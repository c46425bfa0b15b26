//! The checked, resolved settings of one `bench` run, and the limits that
//! bound it.

use std::time::Duration;

use crate::args::{BenchArgs, Consistency, Protocol, Workload};
use crate::bench::keys;
use crate::bench::watch::{self, WatchPlan};

/// Most concurrent clients (tasks with a request in flight). Each holds a
/// latency histogram of some tens of KiB.
pub const CLIENTS_MAX: u64 = 1_000;
/// Most gRPC connections.
pub const CONNECTIONS_MAX: u64 = 256;
/// Most requests in one run.
pub const OPERATIONS_TOTAL_MAX: u64 = 1_000_000_000;
/// Requests when neither `--total` nor `--duration` is given.
pub const OPERATIONS_TOTAL_DEFAULT: u64 = 10_000;
/// Longest run; a run bound by `--total` alone stops here too.
pub const DURATION_MAX: Duration = Duration::from_secs(60 * 60);
/// Longest prefill; past it the run fails before measuring.
pub const PREFILL_DURATION_MAX: Duration = Duration::from_secs(10 * 60);
/// Most distinct keys (the prefill writes each once).
pub const KEYSPACE_MAX: u64 = 100_000_000;
/// Largest key: the server's default key limit.
pub const KEY_SIZE_BYTES_MAX: u64 = 4 * 1024;
/// Largest value: the server's default value limit.
pub const VALUE_SIZE_BYTES_MAX: u64 = 1024 * 1024;
/// Most key and value bytes in flight at once (clients x request size).
pub const IN_FLIGHT_BYTES_MAX: u64 = 512 * 1024 * 1024;
/// Fraction of reads in `mixed` when `--ratio` is not given.
pub const READ_RATIO_DEFAULT: f64 = 0.5;
/// Keys per range of `bench range` by default.
pub const RANGE_KEYS_DEFAULT: u64 = 100;

/// What ends the measured run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// `--total` (given or the default) and the run-time limit.
    Operations,
    /// `--duration` (and `--total` when given, or its limit).
    Time,
}

/// Settings of one run, all checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// What is measured.
    pub workload: Workload,
    /// Concurrent clients.
    pub clients: usize,
    /// gRPC connections.
    pub connections: usize,
    /// The endpoint of each connection, round-robin over `--endpoints`.
    pub connection_endpoints: Vec<String>,
    /// Requests at most.
    pub operations_max: u64,
    /// Run time at most.
    pub duration_max: Duration,
    /// Which bound the user set, for the progress bar.
    pub bound: Bound,
    /// Bytes in every key.
    pub key_size_bytes: usize,
    /// Bytes in every written value.
    pub value_size_bytes: usize,
    /// Distinct keys.
    pub keyspace: u64,
    /// Fraction of requests that are reads: 0 for put, 1 for get.
    pub read_ratio: f64,
    /// range: keys per range.
    pub range_keys: u64,
    /// Consistency of reads.
    pub consistency: Consistency,
    /// Write every key once before measuring.
    pub prefill: bool,
    /// Seed of client `i`'s RNG is derived from it and `i`.
    pub seed: u64,
    /// Never draw a progress bar.
    pub progress_hidden: bool,
    /// The API of the servers measured.
    pub protocol: Protocol,
    /// Settings that are allowed but likely unintended, to print on stderr.
    pub warnings: Vec<String>,
    /// watch: the watches.
    pub watch: Option<WatchPlan>,
}

/// Most watches of a `bench watch` run.
const WATCHERS_MAX: u64 = 1_000_000;
/// Most watch streams of a run.
const WATCH_STREAMS_MAX: u64 = 10_000;

/// The watches of `bench watch`, checked; None for other workloads.
fn watch_plan(arguments: &BenchArgs) -> Result<Option<WatchPlan>, String> {
    let given = arguments.watchers.is_some()
        || arguments.watch_history
        || arguments.prefix_watchers > 0
        || arguments.watch_streams != 16;
    if arguments.workload != Workload::Watch {
        if given {
            return Err(
                "--watchers, --prefix-watchers, --watch-streams and --watch-history apply only to `bench watch`"
                    .into(),
            );
        }
        return Ok(None);
    }
    let watchers = arguments.watchers.unwrap_or(arguments.keyspace);
    check_range(
        "--watchers",
        watchers,
        0,
        arguments.keyspace.min(WATCHERS_MAX),
    )?;
    check_range(
        "--prefix-watchers",
        arguments.prefix_watchers,
        0,
        WATCHERS_MAX,
    )?;
    check_range(
        "--watch-streams",
        arguments.watch_streams,
        1,
        WATCH_STREAMS_MAX,
    )?;
    if watchers + arguments.prefix_watchers == 0 {
        return Err("bench watch needs --watchers or --prefix-watchers above 0".into());
    }
    if (arguments.value_size_bytes as usize) < watch::STAMP_BYTES {
        return Err(format!(
            "bench watch needs --value-size of at least {} (the send time)",
            watch::STAMP_BYTES
        ));
    }
    Ok(Some(WatchPlan {
        watchers,
        prefix_watchers: arguments.prefix_watchers,
        streams: arguments.watch_streams,
        drain: arguments.watch_drain,
        history: arguments.watch_history,
    }))
}

impl Plan {
    /// Checks `arguments` and resolves defaults; `endpoints` is the global
    /// `--endpoints` list. The error is one line for the user.
    pub fn new(arguments: &BenchArgs, endpoints: &[String]) -> Result<Plan, String> {
        let mut warnings = Vec::new();
        check_range("--clients", arguments.clients, 1, CLIENTS_MAX)?;
        check_range("--conns", arguments.connections, 1, CONNECTIONS_MAX)?;
        if arguments.connections > arguments.clients {
            return Err(format!(
                "--conns ({}) must not exceed --clients ({}): a connection without a client is idle",
                arguments.connections, arguments.clients
            ));
        }
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|endpoint| endpoint.trim().to_string())
            .filter(|endpoint| !endpoint.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err("--endpoints is empty".into());
        }
        let connections = to_usize(arguments.connections);
        if connections < endpoints.len() {
            warnings.push(format!(
                "--conns {connections} uses only the first {connections} of the {} endpoints",
                endpoints.len()
            ));
        }
        let connection_endpoints = (0..connections)
            .map(|connection| endpoints[connection % endpoints.len()].clone())
            .collect();

        if let Some(total) = arguments.total_operations {
            check_range("--total", total, 1, OPERATIONS_TOTAL_MAX)?;
        }
        if let Some(duration) = arguments.duration {
            if duration > DURATION_MAX {
                return Err(format!(
                    "--duration must be at most {} s",
                    DURATION_MAX.as_secs()
                ));
            }
        }
        let (operations_max, duration_max, bound) =
            match (arguments.total_operations, arguments.duration) {
                (total, Some(duration)) => {
                    (total.unwrap_or(OPERATIONS_TOTAL_MAX), duration, Bound::Time)
                }
                (total, None) => (
                    total.unwrap_or(OPERATIONS_TOTAL_DEFAULT),
                    DURATION_MAX,
                    Bound::Operations,
                ),
            };

        check_range("--keyspace", arguments.keyspace, 1, KEYSPACE_MAX)?;
        let key_size_bytes_min = keys::key_size_bytes_min(arguments.keyspace);
        if arguments.key_size_bytes < key_size_bytes_min as u64 {
            return Err(format!(
                "--key-size {} is too small for --keyspace {}: keys `{}<index>` need at least {key_size_bytes_min} bytes",
                arguments.key_size_bytes,
                arguments.keyspace,
                String::from_utf8_lossy(keys::KEY_PREFIX),
            ));
        }
        check_range(
            "--key-size",
            arguments.key_size_bytes,
            1,
            KEY_SIZE_BYTES_MAX,
        )?;
        check_range(
            "--value-size",
            arguments.value_size_bytes,
            0,
            VALUE_SIZE_BYTES_MAX,
        )?;
        let in_flight_bytes =
            arguments.clients * (arguments.key_size_bytes + arguments.value_size_bytes);
        if in_flight_bytes > IN_FLIGHT_BYTES_MAX {
            return Err(format!(
                "--clients x (--key-size + --value-size) is {in_flight_bytes} bytes in flight; at most {IN_FLIGHT_BYTES_MAX}"
            ));
        }

        let read_ratio = match (arguments.workload, arguments.ratio) {
            (Workload::Mixed, ratio) => {
                let ratio = ratio.unwrap_or(READ_RATIO_DEFAULT);
                if !(0.0..=1.0).contains(&ratio) {
                    return Err(format!("--ratio must be within 0.0 and 1.0, not {ratio}"));
                }
                ratio
            }
            (_, Some(_)) => return Err("--ratio applies only to `bench mixed`".into()),
            (Workload::Put | Workload::Txn | Workload::Watch | Workload::Keepalive, None) => 0.0,
            (Workload::Get | Workload::Range, None) => 1.0,
        };
        if matches!(
            arguments.workload,
            Workload::Put | Workload::Txn | Workload::Watch
        ) && arguments.consistency.is_some()
        {
            return Err(
                "--consistency applies to reads: `bench get`, `bench mixed` or `bench range`"
                    .into(),
            );
        }
        let range_keys = match (arguments.workload, arguments.range_keys) {
            (Workload::Range, keys) => {
                let keys = keys.unwrap_or(RANGE_KEYS_DEFAULT);
                // The key after the last one read must exist: below --keyspace.
                check_range(
                    "--range-keys",
                    keys,
                    1,
                    arguments.keyspace.saturating_sub(1),
                )?;
                keys
            }
            (_, Some(_)) => return Err("--range-keys applies only to `bench range`".into()),
            (_, None) => 0,
        };
        let prefill = if arguments.prefill {
            true
        } else if arguments.no_prefill {
            false
        } else {
            !matches!(
                arguments.workload,
                Workload::Put | Workload::Watch | Workload::Keepalive
            )
        };
        let watch = watch_plan(arguments)?;

        Ok(Plan {
            workload: arguments.workload,
            clients: to_usize(arguments.clients),
            connections,
            connection_endpoints,
            operations_max,
            duration_max,
            bound,
            key_size_bytes: to_usize(arguments.key_size_bytes),
            value_size_bytes: to_usize(arguments.value_size_bytes),
            keyspace: arguments.keyspace,
            read_ratio,
            range_keys,
            consistency: arguments.consistency.unwrap_or(Consistency::Linearizable),
            prefill,
            seed: arguments.seed,
            progress_hidden: arguments.no_progress,
            protocol: arguments.protocol,
            warnings,
            watch,
        })
    }

    /// The connection that client `client` uses.
    pub fn connection_of_client(&self, client: usize) -> usize {
        client % self.connections
    }

    /// Distinct endpoints in use, in order.
    pub fn endpoints_used(&self) -> Vec<String> {
        let mut endpoints: Vec<String> = Vec::new();
        for endpoint in &self.connection_endpoints {
            if !endpoints.contains(endpoint) {
                endpoints.push(endpoint.clone());
            }
        }
        endpoints
    }
}

fn check_range(flag: &str, value: u64, minimum: u64, maximum: u64) -> Result<(), String> {
    if (minimum..=maximum).contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{flag} must be within {minimum} and {maximum}, not {value}"
        ))
    }
}

/// Values here were checked against limits far below `usize::MAX`.
fn to_usize(value: u64) -> usize {
    usize::try_from(value).expect("a checked limit fits in usize")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{Cli, Command};

    fn plan(line: &str) -> Result<Plan, String> {
        let cli = Cli::try_parse_from(line.split_whitespace()).expect("the line parses");
        match &cli.command {
            Command::Bench(arguments) => Plan::new(arguments, &cli.endpoints),
            other => panic!("not bench: {other:?}"),
        }
    }

    #[test]
    fn the_protocol_defaults_to_kvstore_and_can_be_etcd() {
        assert_eq!(
            plan("kvstore-cli bench put").unwrap().protocol,
            Protocol::Kvstore
        );
        let etcd =
            plan("kvstore-cli bench get --protocol etcd --consistency serializable").unwrap();
        assert_eq!(etcd.protocol, Protocol::Etcd);
        assert_eq!(etcd.consistency, Consistency::Serializable);
    }

    #[test]
    fn defaults_resolve_per_workload() {
        let put = plan("kvstore-cli bench put").unwrap();
        assert_eq!(put.operations_max, OPERATIONS_TOTAL_DEFAULT);
        assert_eq!(put.duration_max, DURATION_MAX);
        assert_eq!(put.bound, Bound::Operations);
        assert_eq!((put.clients, put.connections), (1, 1));
        assert_eq!((put.key_size_bytes, put.value_size_bytes), (16, 256));
        assert_eq!(put.read_ratio, 0.0);
        assert!(!put.prefill);
        assert_eq!(put.connection_endpoints, vec!["127.0.0.1:50051"]);

        let get = plan("kvstore-cli bench get").unwrap();
        assert_eq!(get.read_ratio, 1.0);
        assert!(get.prefill);
        assert_eq!(get.consistency, Consistency::Linearizable);

        let mixed = plan("kvstore-cli bench mixed --no-prefill").unwrap();
        assert_eq!(mixed.read_ratio, READ_RATIO_DEFAULT);
        assert!(!mixed.prefill);
        assert!(plan("kvstore-cli bench put --prefill").unwrap().prefill);
        // The last of --prefill / --no-prefill wins.
        assert!(
            plan("kvstore-cli bench get --no-prefill --prefill")
                .unwrap()
                .prefill
        );
    }

    #[test]
    fn total_and_duration_bound_the_run_whichever_comes_first() {
        let by_time = plan("kvstore-cli bench put --duration 10s").unwrap();
        assert_eq!(by_time.operations_max, OPERATIONS_TOTAL_MAX);
        assert_eq!(by_time.duration_max, Duration::from_secs(10));
        assert_eq!(by_time.bound, Bound::Time);

        let both = plan("kvstore-cli bench put --duration 10s --total 500").unwrap();
        assert_eq!(both.operations_max, 500);
        assert_eq!(both.duration_max, Duration::from_secs(10));

        let by_count = plan("kvstore-cli bench put --total 500").unwrap();
        assert_eq!(by_count.operations_max, 500);
        assert_eq!(by_count.duration_max, DURATION_MAX);

        assert!(plan("kvstore-cli bench put --total 0").is_err());
        assert!(Cli::try_parse_from(["kvstore-cli", "bench", "put", "--duration", "2h"]).is_err());
        assert!(plan("kvstore-cli bench put --duration 61m")
            .is_err_and(|error| error.contains("--duration")));
    }

    #[test]
    fn connections_spread_round_robin_over_endpoints() {
        let plan =
            plan("kvstore-cli --endpoints a:1,b:2,c:3 bench put --clients 8 --conns 4").unwrap();
        assert_eq!(plan.connection_endpoints, vec!["a:1", "b:2", "c:3", "a:1"]);
        assert_eq!(plan.endpoints_used(), vec!["a:1", "b:2", "c:3"]);
        let connections: Vec<usize> = (0..8)
            .map(|client| plan.connection_of_client(client))
            .collect();
        assert_eq!(connections, vec![0, 1, 2, 3, 0, 1, 2, 3]);
        assert!(plan.warnings.is_empty());
    }

    #[test]
    fn fewer_connections_than_endpoints_warns() {
        let plan = plan("kvstore-cli --endpoints a:1,b:2,c:3 bench put").unwrap();
        assert_eq!(plan.endpoints_used(), vec!["a:1"]);
        assert_eq!(plan.warnings.len(), 1);
        assert!(plan.warnings[0].contains("first 1 of the 3"));
    }

    #[test]
    fn bad_arguments_are_refused_with_the_flag_named() {
        let refused = |line: &str, flag: &str| {
            let error = plan(line).expect_err(line);
            assert!(error.contains(flag), "{line}: {error}");
        };
        refused("kvstore-cli bench put --clients 0", "--clients");
        refused("kvstore-cli bench put --clients 1001", "--clients");
        refused("kvstore-cli bench put --clients 2 --conns 3", "--conns");
        refused("kvstore-cli bench put --conns 0", "--conns");
        refused("kvstore-cli bench put --keyspace 0", "--keyspace");
        refused("kvstore-cli bench put --key-size 8", "--key-size");
        refused("kvstore-cli bench put --key-size 5000", "--key-size");
        refused("kvstore-cli bench put --value-size 2000000", "--value-size");
        refused(
            "kvstore-cli bench put --clients 1000 --value-size 1048576",
            "in flight",
        );
        refused("kvstore-cli bench put --ratio 0.5", "--ratio");
        refused("kvstore-cli bench get --ratio 0.5", "--ratio");
        refused("kvstore-cli bench mixed --ratio 1.5", "--ratio");
        refused("kvstore-cli bench mixed --ratio NaN", "--ratio");
        refused(
            "kvstore-cli bench put --consistency serializable",
            "--consistency",
        );
        refused("kvstore-cli --endpoints , bench put", "--endpoints");
    }

    #[test]
    fn key_size_must_hold_the_largest_index() {
        // `bench-` + 4 digits for keys 0..=9999.
        assert!(plan("kvstore-cli bench put --keyspace 10000 --key-size 10").is_ok());
        assert!(plan("kvstore-cli bench put --keyspace 10001 --key-size 10").is_err());
        let plan = plan("kvstore-cli bench mixed --ratio 0.9 --consistency serializable").unwrap();
        assert_eq!(plan.read_ratio, 0.9);
        assert_eq!(plan.consistency, Consistency::Serializable);
    }
}
