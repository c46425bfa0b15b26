//! Named limits and defaults, in one place.

/// Default largest key accepted, in bytes (`--max-key-bytes`).
pub const KEY_BYTES_MAX_DEFAULT: usize = 4 * 1024;
/// Default largest value accepted, in bytes (`--max-value-bytes`).
pub const VALUE_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// Room for protobuf framing and the other fields of a request, on top of the
/// key and value limits, when sizing the gRPC decoder. Requests up to about
/// twice the value limit still reach our validation (and get a message that
/// names the limit) instead of being cut off by the decoder.
pub const REQUEST_FRAMING_BYTES: usize = 64 * 1024;
/// Most concurrent gRPC streams per client connection.
pub const CONCURRENT_STREAMS_MAX: u32 = 1024;
/// Default free space the data directory's filesystem must keep
/// (`--min-free-bytes`): room for a WAL segment, a snapshot being written
/// and LevelDB's compactions. Below it the node neither leads nor reports
/// ready.
pub const FREE_BYTES_MIN_DEFAULT: u64 = 64 * 1024 * 1024;
/// How long a graceful shutdown waits for in-flight requests before it gives up.
pub const SHUTDOWN_GRACE_MS: u64 = 10_000;

/// Largest gRPC message the servers decode, given the key and value limits.
pub fn decoding_message_bytes_max(key_bytes_max: usize, value_bytes_max: usize) -> usize {
    (key_bytes_max + 2 * value_bytes_max + REQUEST_FRAMING_BYTES).max(4 * 1024 * 1024)
}

/// Longest time applied writes stay in memory before they are written
/// behind into LevelDB (`--backend-batch-interval-ms`; etcd commits its
/// backend batch every 100 ms).
pub const BACKEND_BATCH_INTERVAL_MS_DEFAULT: u64 = 200;
/// Distinct keys held in memory before they are written behind into LevelDB
/// (`--backend-batch-limit`): about 2.5 MB with 256-byte values.
pub const BACKEND_BATCH_LIMIT_DEFAULT: usize = 8_192;
/// Cores the default worker count (`--worker-threads`) leaves to the
/// node's own threads: the WAL writer, the store and its write-behind
/// flusher. They block in fdatasync and LevelDB and are woken once per
/// batch; with a worker on every core as well, an idle worker is woken for
/// nearly every task another task wakes (tokio's work stealing), and they
/// all wait for the same cores (see `default_worker_threads`).
pub const CORES_LEFT_TO_STORAGE_THREADS: usize = 1;
/// Most async runtime worker threads (`--worker-threads`).
pub const WORKER_THREADS_MAX: usize = 1024;

/// The default number of async runtime workers on a machine with `cores`
/// cores: all but [`CORES_LEFT_TO_STORAGE_THREADS`], at least one.
pub fn default_worker_threads(cores: usize) -> usize {
    cores.saturating_sub(CORES_LEFT_TO_STORAGE_THREADS).max(1)
}

/// Default election timeout base, in milliseconds (`--election-timeout-ms`).
pub const ELECTION_TIMEOUT_MS_DEFAULT: u64 = 1_000;
/// Default heartbeat interval (one Raft tick), in milliseconds.
pub const HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 100;
/// Default applied entries between snapshots (`--snapshot-entries`): etcd's
/// `--snapshot-count` default. Each snapshot rewrites the whole state, so
/// taking one every 10,000 entries cost a put a noticeable share of its CPU
/// under load (measurements: docs/benchmarks.md, "Snapshot interval").
pub const SNAPSHOT_ENTRIES_DEFAULT: u64 = 100_000;
/// Default bytes of applied entry payloads between snapshots
/// (`--snapshot-log-bytes`): bounds the memory the log holds between
/// snapshots when values are large (100,000 entries of 1 MiB would be
/// 100 GiB), whichever of the two limits comes first.
pub const SNAPSHOT_LOG_BYTES_DEFAULT: u64 = 128 * 1024 * 1024;
/// Largest message on the raft port (entries are batched well below it).
pub const RAFT_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Longest a request waits for a leader to be known, in election timeouts.
pub const LEADER_WAIT_ELECTION_TIMEOUTS: u32 = 3;
/// Server-side deadline of a client request that names none, and the
/// longest one a client may name.
pub const REQUEST_TIMEOUT_DEFAULT_MS: u64 = 10_000;
/// The same for a `Compact` with `physical` set, which waits until the
/// node has dropped the history (at most 100,000 revisions a second).
pub const PHYSICAL_COMPACTION_WAIT_MAX_MS: u64 = 60 * 60 * 1_000;
/// Longest client-supplied request id kept (longer ones are replaced).
pub const REQUEST_ID_BYTES_MAX: usize = 128;

/// Default most client connections open at once (`--max-connections`);
/// more are closed as soon as they are accepted.
pub const CLIENT_CONNECTIONS_MAX_DEFAULT: usize = 1024;
/// Largest value `--max-connections` and `--max-http-connections` accept.
pub const CONNECTIONS_FLAG_MAX: usize = 1 << 20;
/// Most connections open at once on the raft port: each peer uses one, with
/// room for reconnects and debugging tools.
pub const RAFT_CONNECTIONS_MAX: usize = 64;
/// Default most connections open at once on the HTTP observability port
/// (`--max-http-connections`).
pub const HTTP_CONNECTIONS_MAX_DEFAULT: usize = 64;
/// Default time a new connection has to send its first bytes (the HTTP/2
/// preface, or an HTTP request) before it is closed (`--handshake-timeout-ms`).
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Default time a connection may go without a request before it is closed
/// (`--idle-timeout-ms`): on the gRPC ports, with an HTTP/2 GOAWAY once no
/// call has been open for that long.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 300_000;
/// Interval of the HTTP/2 PINGs the gRPC ports send on their connections;
/// a connection whose peer does not answer one within
/// [`HTTP2_KEEPALIVE_TIMEOUT`] is closed (a client or peer that vanished).
pub const HTTP2_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// How long an HTTP/2 PING may go unanswered.
pub const HTTP2_KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Idle time before the kernel probes an accepted connection (TCP keepalive).
pub const TCP_KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
/// File descriptors kept for the node's own files besides its connections:
/// LevelDB's table cache (rusty-leveldb's default `max_open_files`, 1024),
/// plus the WAL, snapshots, LevelDB's log and manifest, the listeners, the
/// runtime's own and the standard streams.
pub const STORAGE_FILE_DESCRIPTORS_RESERVE: u64 = 1024 + 128;
/// File descriptors kept per peer for the connections this node opens to it.
pub const FILE_DESCRIPTORS_PER_PEER: u64 = 4;

/// Longest lease time to live, in seconds (etcd's `MaxLeaseTTL`, about
/// 285 years): a grant above it fails with OUT_OF_RANGE.
pub const LEASE_TTL_SECONDS_MAX: u64 = 9_000_000_000;
