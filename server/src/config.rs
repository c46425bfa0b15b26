//! Server flags. Every flag can also be set by an environment variable
//! (`KVSTORE_ID`, `KVSTORE_CLIENT_ADDR`, ...); a flag on the command line wins.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::limits;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines for a terminal.
    Text,
    /// One JSON object per line, for ELK, Loki and friends.
    Json,
}

/// Whether an empty data directory starts a new cluster member or rejoins
/// a cluster that already knows this node (etcd's `--initial-cluster-state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InitialClusterState {
    /// The node is new: an empty data directory is its first start.
    New,
    /// The cluster already knows this node and its data directory was lost:
    /// it may have voted or acknowledged entries it no longer has, so it
    /// neither votes nor campaigns until it has caught up from the leader.
    Existing,
}

/// A deliberate bug (see `--inject-fault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InjectedFault {
    /// Linearizable reads served from local state, without ReadIndex.
    StaleReads,
    /// Writes acknowledged when proposed, before they are committed.
    EarlyAck,
    /// Txn compares decided on the answering node's local state before the
    /// txn is proposed (the branch taken is then proposed unconditionally):
    /// two compare-and-swaps from one value can both succeed.
    StaleCompare,
    /// A watch created with a start revision starts one revision later: a
    /// client resuming after the last revision it saw misses one.
    WatchResumeLate,
    /// A new leader expires every lease at once instead of extending it:
    /// keys of a lease disappear before its TTL after a leader change.
    LeaseEarlyExpiry,
}

/// What history to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Keep everything (the default, as etcd's retention "0").
    Off,
    /// Keep the last this many revisions.
    Revisions(u64),
    /// Keep what was written within this long.
    Period(Duration),
}

/// Parses `--auto-compaction-retention` for `mode`: a revision count in
/// `revision` mode; in `periodic` mode a duration (`1h`, `30m`, `90s`) or a
/// number of hours (etcd's plain number). `0` is off.
pub fn parse_retention(mode: &str, text: &str) -> Result<Retention, String> {
    let text = text.trim();
    match mode {
        "revision" => {
            let keep: u64 = text.parse().map_err(|_| {
                format!("--auto-compaction-retention {text:?}: revision mode takes a number of revisions")
            })?;
            Ok(if keep == 0 {
                Retention::Off
            } else {
                Retention::Revisions(keep)
            })
        }
        "periodic" => {
            let duration = match text.parse::<u64>() {
                Ok(hours) => Duration::from_secs(hours * 3600),
                Err(_) => parse_duration(text).ok_or_else(|| {
                    format!("--auto-compaction-retention {text:?}: periodic mode takes a duration such as 1h, 30m or 90s, or a number of hours")
                })?,
            };
            Ok(if duration.is_zero() {
                Retention::Off
            } else {
                Retention::Period(duration)
            })
        }
        other => Err(format!(
            "--auto-compaction-mode {other:?}: periodic or revision"
        )),
    }
}

fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (amount, unit) = text.split_at(split);
    let amount: u64 = amount.parse().ok()?;
    Some(match unit {
        "h" => Duration::from_secs(amount * 3600),
        "m" => Duration::from_secs(amount * 60),
        "s" => Duration::from_secs(amount),
        "ms" => Duration::from_millis(amount),
        _ => return None,
    })
}

/// kvstore-server: one node of a Raft-replicated key-value store.
#[derive(Debug, Clone, Parser)]
#[command(name = "kvstore-server", version, about, long_about = None)]
pub struct ServerConfig {
    /// This node's id: a positive integer, unique in the cluster.
    #[arg(long, env = "KVSTORE_ID", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub id: u64,

    /// Address the client gRPC API (kvstore.v1.KV) listens on.
    #[arg(long, env = "KVSTORE_CLIENT_ADDR", default_value = "127.0.0.1:50051")]
    pub client_addr: SocketAddr,

    /// Address the Raft peer API (kvstore.raft.v1.Raft) listens on; peers
    /// reach this node here.
    #[arg(long, env = "KVSTORE_RAFT_ADDR", default_value = "127.0.0.1:60051")]
    pub raft_addr: SocketAddr,

    /// Address the HTTP observability port listens on: /metrics (Prometheus),
    /// /healthz, /readyz, /status (JSON) and / (the cluster status page).
    /// Port 0 picks a free port.
    #[arg(long, env = "KVSTORE_METRICS_ADDR", default_value = "127.0.0.1:9101")]
    pub metrics_addr: SocketAddr,

    /// The other members' HTTP observability addresses as a browser reaches
    /// them, `ID=HOST:PORT,...`: the status page served by this node polls
    /// them. Members left out are shown without data.
    #[arg(long, env = "KVSTORE_PEER_METRICS_ADDRS", value_delimiter = ',', value_parser = parse_member_address)]
    pub peer_metrics_addrs: Vec<MemberAddress>,

    /// The other members and their raft addresses: `ID=HOST:PORT,...`. Empty
    /// for a single-node cluster.
    #[arg(long, env = "KVSTORE_PEERS", value_delimiter = ',', value_parser = parse_peer)]
    pub peers: Vec<Peer>,

    /// Name of the cluster; nodes refuse peers of another cluster.
    #[arg(long, env = "KVSTORE_CLUSTER_ID", default_value = "kvstore")]
    pub cluster_id: String,

    /// Election timeout base T in milliseconds; each election waits a random
    /// time in [T, 2T).
    #[arg(long, env = "KVSTORE_ELECTION_TIMEOUT_MS", default_value_t = limits::ELECTION_TIMEOUT_MS_DEFAULT)]
    pub election_timeout_ms: u64,

    /// Leader heartbeat interval in milliseconds (one Raft tick).
    #[arg(long, env = "KVSTORE_HEARTBEAT_INTERVAL_MS", default_value_t = limits::HEARTBEAT_INTERVAL_MS_DEFAULT)]
    pub heartbeat_interval_ms: u64,

    /// Applied entries between snapshots; the log before a snapshot is deleted.
    #[arg(long, env = "KVSTORE_SNAPSHOT_ENTRIES", default_value_t = limits::SNAPSHOT_ENTRIES_DEFAULT)]
    pub snapshot_entries: u64,

    /// Bytes of applied entries between snapshots, whichever of this and
    /// --snapshot-entries comes first: bounds the memory the log holds.
    #[arg(long, env = "KVSTORE_SNAPSHOT_LOG_BYTES", default_value_t = limits::SNAPSHOT_LOG_BYTES_DEFAULT)]
    pub snapshot_log_bytes: u64,

    /// What automatic compaction keeps (etcd's flag): `periodic` keeps a
    /// time window of history (--auto-compaction-retention 1h), `revision`
    /// the last N revisions (--auto-compaction-retention 1000).
    #[arg(long, env = "KVSTORE_AUTO_COMPACTION_MODE", default_value = "periodic", value_parser = ["periodic", "revision"])]
    pub auto_compaction_mode: String,

    /// How much history automatic compaction keeps: a duration (`1h`,
    /// `30m`, or a number of hours) in periodic mode, a revision count in
    /// revision mode; 0 (the default, as etcd) keeps everything.
    #[arg(long, env = "KVSTORE_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,

    /// Longest time, in milliseconds, that applied writes stay in memory
    /// before they are written behind into LevelDB (like etcd's
    /// --backend-batch-interval). Writes are answered once applied in
    /// memory; the WAL (or the snapshot it was compacted into) holds them
    /// until LevelDB does.
    #[arg(long, env = "KVSTORE_BACKEND_BATCH_INTERVAL_MS", default_value_t = limits::BACKEND_BATCH_INTERVAL_MS_DEFAULT)]
    pub backend_batch_interval_ms: u64,
    /// Distinct keys held in memory before they are written behind into
    /// LevelDB, whichever of this and --backend-batch-interval-ms comes
    /// first (like etcd's --backend-batch-limit). Writers wait while one
    /// batch is being written and twice this many keys wait behind it.
    #[arg(long, env = "KVSTORE_BACKEND_BATCH_LIMIT", default_value_t = limits::BACKEND_BATCH_LIMIT_DEFAULT)]
    pub backend_batch_limit: usize,
    /// The WAL's last segment is zero-filled this far ahead, so that each
    /// fdatasync writes the data alone (the file size does not change);
    /// 0 appends to the end of the file instead.
    #[arg(long, env = "KVSTORE_WAL_PREALLOCATE_BYTES", default_value_t = kvstore_wal::PREALLOCATE_BYTES_DEFAULT)]
    pub wal_preallocate_bytes: u64,

    /// Threads of the async runtime that serves both ports and runs the
    /// Raft driver. Default: the cores available to the process, less one
    /// left to the WAL and storage threads, at least one (so one on a
    /// 2-core machine). When several nodes share a machine, give each its
    /// share of the cores.
    #[arg(long, env = "KVSTORE_WORKER_THREADS",
          value_parser = clap::value_parser!(u64).range(1..=limits::WORKER_THREADS_MAX as u64))]
    pub worker_threads: Option<u64>,

    /// Deliberate bugs, for proving that the conformance suite catches them.
    /// NEVER use in production. `stale-reads`: linearizable reads are served
    /// from local state without ReadIndex. `early-ack`: writes are
    /// acknowledged as soon as the leader proposes them, before commit.
    #[arg(long, env = "KVSTORE_INJECT_FAULT", value_enum, hide = true)]
    pub inject_fault: Option<InjectedFault>,

    /// Directory holding this node's state; created when missing.
    #[arg(long, env = "KVSTORE_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// `new`: an empty data directory is this node's first start. `existing`:
    /// the cluster already knows this node and its data directory was lost
    /// (wiped, replaced disk): the node catches up from the leader before it
    /// votes or campaigns again. Ignored when the data directory holds state.
    #[arg(long, env = "KVSTORE_INITIAL_CLUSTER_STATE", value_enum, default_value_t = InitialClusterState::New)]
    pub initial_cluster_state: InitialClusterState,

    /// Free space, in bytes, the data directory's filesystem must keep.
    /// Below it (or on a read-only filesystem) the node does not campaign,
    /// hands leadership over if it leads, and /readyz and Status say why;
    /// checked every few seconds, so it recovers once space is freed.
    #[arg(long, env = "KVSTORE_MIN_FREE_BYTES", default_value_t = limits::FREE_BYTES_MIN_DEFAULT)]
    pub min_free_bytes: u64,

    /// Log line format.
    #[arg(long, env = "KVSTORE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter: a level (error, warn, info, debug, trace) or a tracing
    /// filter such as `info,kvstore_server=debug`.
    #[arg(long, env = "KVSTORE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Largest key accepted, in bytes.
    #[arg(long = "max-key-bytes", env = "KVSTORE_MAX_KEY_BYTES", default_value_t = limits::KEY_BYTES_MAX_DEFAULT)]
    pub key_bytes_max: usize,

    /// Largest value accepted, in bytes.
    #[arg(long = "max-value-bytes", env = "KVSTORE_MAX_VALUE_BYTES", default_value_t = limits::VALUE_BYTES_MAX_DEFAULT)]
    pub value_bytes_max: usize,

    /// Most client connections open at once; more are closed as soon as
    /// they are accepted, while the open ones keep working.
    #[arg(long = "max-connections", env = "KVSTORE_MAX_CONNECTIONS", default_value_t = limits::CLIENT_CONNECTIONS_MAX_DEFAULT)]
    pub connections_max: usize,

    /// Most connections open at once on the HTTP observability port.
    #[arg(long = "max-http-connections", env = "KVSTORE_MAX_HTTP_CONNECTIONS", default_value_t = limits::HTTP_CONNECTIONS_MAX_DEFAULT)]
    pub http_connections_max: usize,

    /// Time, in milliseconds, a new connection on any port has to send its
    /// first bytes (the HTTP/2 preface, or an HTTP request) before it is
    /// closed.
    #[arg(long, env = "KVSTORE_HANDSHAKE_TIMEOUT_MS", default_value_t = limits::HANDSHAKE_TIMEOUT_MS_DEFAULT)]
    pub handshake_timeout_ms: u64,

    /// Time, in milliseconds, a connection may go without a request before
    /// it is closed (an HTTP/2 GOAWAY on the gRPC ports).
    #[arg(long, env = "KVSTORE_IDLE_TIMEOUT_MS", default_value_t = limits::IDLE_TIMEOUT_MS_DEFAULT)]
    pub idle_timeout_ms: u64,

    /// Most watches this node serves at once, over all streams; a create
    /// over it is cancelled at once with a reason naming this flag.
    #[arg(long = "max-watchers", env = "KVSTORE_MAX_WATCHERS", default_value_t = crate::node::watchers::WATCHERS_MAX_DEFAULT)]
    pub watchers_max: usize,

    /// Time, in milliseconds, between the progress notifications of a quiet
    /// watch that asked for them (etcd's 10 minutes by default; at least
    /// 100).
    #[arg(long, env = "KVSTORE_WATCH_PROGRESS_NOTIFY_INTERVAL_MS", default_value_t = crate::node::watchers::catchup::PROGRESS_NOTIFY_INTERVAL_MS_DEFAULT)]
    pub watch_progress_notify_interval_ms: u64,
}

/// Another member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its node id.
    pub id: u64,
    /// Its raft address, `HOST:PORT` (a name is resolved when connecting).
    pub raft_addr: String,
}

/// Another member's HTTP observability address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberAddress {
    /// Its node id.
    pub id: u64,
    /// `HOST:PORT`, as a browser reaches it.
    pub address: String,
}

/// Parses `ID=HOST:PORT` into a [`MemberAddress`].
fn parse_member_address(text: &str) -> Result<MemberAddress, String> {
    let peer = parse_peer(text)?;
    Ok(MemberAddress {
        id: peer.id,
        address: peer.raft_addr,
    })
}

/// Parses `ID=HOST:PORT`.
fn parse_peer(text: &str) -> Result<Peer, String> {
    let (id, address) = text
        .split_once('=')
        .ok_or_else(|| format!("peer {text:?} is not ID=HOST:PORT"))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| format!("peer id {id:?} is not a positive integer"))?;
    if id == 0 {
        return Err("peer ids start at 1".into());
    }
    let address = address.trim();
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
        _ => return Err(format!("peer address {address:?} is not HOST:PORT")),
    }
    Ok(Peer {
        id,
        raft_addr: address.to_string(),
    })
}

impl ServerConfig {
    /// What automatic compaction keeps (checked by [`Self::validate`]).
    pub fn retention(&self) -> Retention {
        parse_retention(&self.auto_compaction_mode, &self.auto_compaction_retention)
            .unwrap_or(Retention::Off)
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.key_bytes_max == 0 {
            return Err("--max-key-bytes must be at least 1".into());
        }
        if self.heartbeat_interval_ms == 0 {
            return Err("--heartbeat-interval-ms must be at least 1".into());
        }
        if self.election_timeout_ms < 2 * self.heartbeat_interval_ms {
            return Err(format!(
                "--election-timeout-ms ({}) must be at least twice --heartbeat-interval-ms ({})",
                self.election_timeout_ms, self.heartbeat_interval_ms
            ));
        }
        if self.snapshot_entries == 0 {
            return Err("--snapshot-entries must be at least 1".into());
        }
        parse_retention(&self.auto_compaction_mode, &self.auto_compaction_retention)?;
        if self.snapshot_log_bytes == 0 {
            return Err("--snapshot-log-bytes must be at least 1".into());
        }
        if self.backend_batch_interval_ms == 0 {
            return Err("--backend-batch-interval-ms must be at least 1".into());
        }
        if self.backend_batch_limit == 0 {
            return Err("--backend-batch-limit must be at least 1".into());
        }
        for (flag, value) in [
            ("--max-connections", self.connections_max),
            ("--max-http-connections", self.http_connections_max),
        ] {
            if !(1..=limits::CONNECTIONS_FLAG_MAX).contains(&value) {
                return Err(format!(
                    "{flag} must be between 1 and {}",
                    limits::CONNECTIONS_FLAG_MAX
                ));
            }
        }
        if self.handshake_timeout_ms == 0 || self.idle_timeout_ms == 0 {
            return Err("--handshake-timeout-ms and --idle-timeout-ms must be at least 1".into());
        }
        if self.cluster_id.is_empty() {
            return Err("--cluster-id must not be empty".into());
        }
        if self.watchers_max == 0 {
            return Err("--max-watchers must be at least 1".into());
        }
        let interval_min = crate::node::watchers::catchup::PROGRESS_NOTIFY_INTERVAL_MS_MIN;
        if self.watch_progress_notify_interval_ms < interval_min {
            return Err(format!(
                "--watch-progress-notify-interval-ms must be at least {interval_min}"
            ));
        }
        for peer in &self.peer_metrics_addrs {
            if !self.peers.iter().any(|member| member.id == peer.id) {
                return Err(format!(
                    "--peer-metrics-addrs names node {}, which is not in --peers",
                    peer.id
                ));
            }
        }
        let mut ids: Vec<u64> = self.peers.iter().map(|peer| peer.id).collect();
        ids.push(self.id);
        ids.sort_unstable();
        if ids.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(format!(
                "node ids must be unique: --id {} and --peers {:?}",
                self.id, self.peers
            ));
        }
        Ok(())
    }

    /// Every member's id, this node's included, sorted.
    pub fn members(&self) -> Vec<u64> {
        let mut members: Vec<u64> = self.peers.iter().map(|peer| peer.id).collect();
        members.push(self.id);
        members.sort_unstable();
        members
    }

    /// Worker threads of the async runtime: `--worker-threads`, else
    /// [`limits::default_worker_threads`] of the cores this process may use.
    pub fn worker_threads(&self) -> usize {
        match self.worker_threads {
            Some(threads) => threads as usize,
            None => limits::default_worker_threads(
                std::thread::available_parallelism().map_or(1, usize::from),
            ),
        }
    }

    /// Raft ticks in one election timeout.
    pub fn election_ticks(&self) -> u32 {
        (self.election_timeout_ms / self.heartbeat_interval_ms).clamp(2, u32::MAX as u64) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_parses_as_etcd() {
        assert_eq!(
            parse_retention("revision", "1000"),
            Ok(Retention::Revisions(1000))
        );
        assert_eq!(parse_retention("revision", "0"), Ok(Retention::Off));
        assert!(parse_retention("revision", "1h").is_err());
        assert_eq!(
            parse_retention("periodic", "1"),
            Ok(Retention::Period(Duration::from_secs(3600)))
        );
        assert_eq!(
            parse_retention("periodic", "30m"),
            Ok(Retention::Period(Duration::from_secs(1800)))
        );
        assert_eq!(parse_retention("periodic", "0"), Ok(Retention::Off));
        assert!(parse_retention("periodic", "soon").is_err());
        assert!(parse_retention("hourly", "1").is_err());
    }

    #[test]
    fn peers_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_peer("2=node-2:60051").unwrap(),
            Peer {
                id: 2,
                raft_addr: "node-2:60051".into()
            }
        );
        assert!(parse_peer("0=a:1").is_err());
        assert!(parse_peer("x=a:1").is_err());
        assert!(parse_peer("2=a").is_err());
        assert!(parse_peer("2=:1").is_err());
        assert!(parse_peer("2").is_err());
    }

    #[test]
    fn duplicate_ids_and_bad_timeouts_are_refused() {
        let config =
            ServerConfig::parse_from(["kvstore-server", "--id", "1", "--peers", "2=a:1,1=b:2"]);
        assert!(config.validate().unwrap_err().contains("unique"));
        let config = ServerConfig::parse_from([
            "kvstore-server",
            "--election-timeout-ms",
            "100",
            "--heartbeat-interval-ms",
            "80",
        ]);
        assert!(config.validate().unwrap_err().contains("twice"));
        let config = ServerConfig::parse_from(["kvstore-server", "--peers", "2=a:1,3=b:2"]);
        assert!(config.validate().is_ok());
        assert_eq!(config.members(), vec![1, 2, 3]);
        assert_eq!(config.election_ticks(), 10);
        let config = ServerConfig::parse_from([
            "kvstore-server",
            "--peers",
            "2=a:1",
            "--peer-metrics-addrs",
            "2=127.0.0.1:9102,3=127.0.0.1:9103",
        ]);
        assert!(config.validate().unwrap_err().contains("node 3"));
        for refused in [
            ["--max-connections", "0"],
            ["--max-http-connections", "2000000"],
            ["--handshake-timeout-ms", "0"],
            ["--idle-timeout-ms", "0"],
        ] {
            let config = ServerConfig::parse_from(["kvstore-server", refused[0], refused[1]]);
            assert!(config.validate().is_err(), "{refused:?} was accepted");
        }
    }

    #[test]
    fn worker_threads_leave_a_core_to_the_storage_threads_unless_set() {
        assert_eq!(limits::default_worker_threads(0), 1);
        assert_eq!(limits::default_worker_threads(1), 1);
        assert_eq!(limits::default_worker_threads(2), 1);
        assert_eq!(limits::default_worker_threads(8), 7);
        let config = ServerConfig::parse_from(["kvstore-server", "--worker-threads", "3"]);
        assert_eq!(config.worker_threads(), 3);
        let config = ServerConfig::parse_from(["kvstore-server"]);
        assert!(config.worker_threads() >= 1);
        for refused in ["0", "1025", "many"] {
            assert!(
                ServerConfig::try_parse_from(["kvstore-server", "--worker-threads", refused])
                    .is_err(),
                "--worker-threads {refused} was accepted"
            );
        }
    }
}
