//! Helpers for tests that run the real `kvstore-server` and `kvstore-cli`
//! binaries on loopback ports with temporary data directories.
#![allow(dead_code)]

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kvstore_proto::kv::v1::kv_client::KvClient;
use tonic::transport::Channel;

/// How long a server may take to start listening.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of a workspace binary, built next to this test's executable.
pub use kvstore_devkit::binary::workspace_binary as binary;

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A free loopback port, never handed out twice in this process.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("binding an ephemeral port")
            .port();
        let mut handed_out = HANDED_OUT.lock().unwrap();
        if handed_out.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// A running `kvstore-server` process.
pub struct ServerProcess {
    /// The child process (None once it was stopped).
    pub child: Option<Child>,
    /// Where its client API listens.
    pub client_addr: SocketAddr,
    /// Where its raft API listens.
    pub raft_addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Extra flags it was started with (reused on restart).
    pub extra_args: Vec<String>,
    /// Its log file (stderr).
    pub log_path: PathBuf,
    /// Where its HTTP observability port listens (None: a free port the
    /// test does not know, so that servers never collide on the default).
    pub metrics_addr: Option<SocketAddr>,
}

impl ServerProcess {
    /// Starts a single-node server on a fresh port in `data_dir`.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Self {
        let mut server = Self::prepare(
            data_dir,
            loopback(free_port()),
            loopback(free_port()),
            extra_args,
        );
        server.spawn();
        server.wait_listening();
        server
    }

    /// A server that is not started yet.
    pub fn prepare(
        data_dir: &Path,
        client_addr: SocketAddr,
        raft_addr: SocketAddr,
        extra_args: &[&str],
    ) -> Self {
        Self {
            child: None,
            client_addr,
            raft_addr,
            data_dir: data_dir.to_path_buf(),
            extra_args: extra_args
                .iter()
                .map(|argument| argument.to_string())
                .collect(),
            log_path: data_dir.with_extension("log"),
            metrics_addr: None,
        }
    }

    /// Starts the process (without waiting for it to listen).
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("opening the server log");
        let child = Command::new(binary("kvstore-server"))
            .arg("--client-addr")
            .arg(self.client_addr.to_string())
            .arg("--raft-addr")
            .arg(self.raft_addr.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--log-format", "json", "--log-level", "debug"])
            .args(self.metrics_args())
            .args(&self.extra_args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting kvstore-server");
        self.child = Some(child);
    }

    /// `--metrics-addr` for this process: its own, else a free port, unless
    /// the extra flags name one.
    fn metrics_args(&self) -> Vec<String> {
        if self
            .extra_args
            .iter()
            .any(|argument| argument.starts_with("--metrics-addr"))
        {
            return Vec::new();
        }
        let address = self
            .metrics_addr
            .map_or_else(|| "127.0.0.1:0".to_string(), |address| address.to_string());
        vec!["--metrics-addr".into(), address]
    }

    /// Waits until the client port accepts connections.
    pub fn wait_listening(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while TcpStream::connect_timeout(&self.client_addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().unwrap())
            {
                panic!("kvstore-server exited early with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "kvstore-server did not listen in time: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `HOST:PORT` of the client API.
    pub fn endpoint(&self) -> String {
        self.client_addr.to_string()
    }

    /// True while the process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (e.g. "TERM", "STOP", "CONT") to the process.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the server is running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.take().expect("the server is running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "kvstore-server did not exit within {timeout:?}: {}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the process again with the same port, data and flags.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server before restarting it");
        self.spawn();
        self.wait_listening();
    }

    /// A generated gRPC client connected to this server.
    pub async fn client(&self) -> KvClient<Channel> {
        KvClient::connect(format!("http://{}", self.client_addr))
            .await
            .expect("connecting to kvstore-server")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `kvstore-cli` with `args`, feeding `stdin`.
pub fn cli(args: &[&std::ffi::OsStr], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(binary("kvstore-cli"))
        .args(args)
        .env_remove("KVSTORE_ENDPOINTS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting kvstore-cli");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().expect("running kvstore-cli")
}

/// Runs `kvstore-cli` with UTF-8 arguments and no stdin.
pub fn cli_str(args: &[&str]) -> Output {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    cli(&args, b"")
}

/// Fast timings for tests: 300 ms election timeout, 50 ms heartbeats.
pub const TEST_ELECTION_TIMEOUT: Duration = Duration::from_millis(300);
/// Heartbeat interval used by test clusters.
pub const TEST_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(50);

/// What one node reports through the Status RPC.
pub type Status = kvstore_proto::kv::v1::StatusResponse;

/// A cluster of real server processes on loopback.
pub struct Cluster {
    /// The nodes; node id = position + 1.
    pub nodes: Vec<ServerProcess>,
    _directory: tempfile::TempDir,
}

impl Cluster {
    /// Prepares (does not start) `size` nodes that know each other.
    pub fn prepare(size: usize, extra_args: &[&str]) -> Self {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let raft_addrs: Vec<SocketAddr> = (0..size).map(|_| loopback(free_port())).collect();
        let election = TEST_ELECTION_TIMEOUT.as_millis().to_string();
        let heartbeat = TEST_HEARTBEAT_INTERVAL.as_millis().to_string();
        let nodes = (0..size)
            .map(|position| {
                let id = (position + 1).to_string();
                let peers: Vec<String> = raft_addrs
                    .iter()
                    .enumerate()
                    .filter(|(other, _)| *other != position)
                    .map(|(other, addr)| format!("{}={addr}", other + 1))
                    .collect();
                let peers = peers.join(",");
                let mut args: Vec<&str> = vec!["--id", &id, "--peers", &peers];
                // The fast test timings, unless the test sets its own.
                if !extra_args.contains(&"--election-timeout-ms") {
                    args.extend_from_slice(&["--election-timeout-ms", &election]);
                }
                if !extra_args.contains(&"--heartbeat-interval-ms") {
                    args.extend_from_slice(&["--heartbeat-interval-ms", &heartbeat]);
                }
                args.extend_from_slice(extra_args);
                ServerProcess::prepare(
                    &directory.path().join(format!("node-{id}")),
                    loopback(free_port()),
                    raft_addrs[position],
                    &args,
                )
            })
            .collect();
        Self {
            nodes,
            _directory: directory,
        }
    }

    /// Like [`Cluster::prepare`], and every node gets a known HTTP
    /// observability port (`metrics_addr`) and knows the others'
    /// (`--peer-metrics-addrs`).
    pub fn prepare_observed(size: usize, extra_args: &[&str]) -> Self {
        let mut cluster = Self::prepare(size, extra_args);
        let addresses: Vec<SocketAddr> = (0..size).map(|_| loopback(free_port())).collect();
        for (position, node) in cluster.nodes.iter_mut().enumerate() {
            node.metrics_addr = Some(addresses[position]);
            let peers: Vec<String> = addresses
                .iter()
                .enumerate()
                .filter(|(other, _)| *other != position)
                .map(|(other, address)| format!("{}={address}", other + 1))
                .collect();
            node.extra_args
                .extend(["--peer-metrics-addrs".to_string(), peers.join(",")]);
        }
        cluster
    }

    /// Prepares (with [`Cluster::prepare_observed`]) and starts every node.
    pub fn start_observed(size: usize, extra_args: &[&str]) -> Self {
        let mut cluster = Self::prepare_observed(size, extra_args);
        for node in &mut cluster.nodes {
            node.spawn();
        }
        for node in &mut cluster.nodes {
            node.wait_listening();
        }
        cluster
    }

    /// Prepares and starts every node.
    pub fn start(size: usize, extra_args: &[&str]) -> Self {
        let mut cluster = Self::prepare(size, extra_args);
        for node in &mut cluster.nodes {
            node.spawn();
        }
        for node in &mut cluster.nodes {
            node.wait_listening();
        }
        cluster
    }

    /// The node with `id`.
    pub fn node(&mut self, id: u64) -> &mut ServerProcess {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Every node's client endpoint, comma-separated.
    pub fn endpoints(&self) -> String {
        self.nodes
            .iter()
            .map(ServerProcess::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Status of every running node (None for stopped or unreachable ones).
    pub async fn statuses(&self) -> Vec<Option<Status>> {
        let mut statuses = Vec::new();
        for node in &self.nodes {
            statuses.push(if node.is_running() {
                status_of(node.client_addr).await
            } else {
                None
            });
        }
        statuses
    }

    /// Waits until exactly one running node leads and every running node
    /// agrees on it; returns its id and term.
    pub async fn wait_for_leader(&self, timeout: Duration) -> (u64, u64) {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.statuses().await;
            let running: Vec<&Status> = statuses.iter().flatten().collect();
            let leaders: Vec<&&Status> = running.iter().filter(|status| status.role == 4).collect();
            if leaders.len() == 1 {
                let leader = leaders[0];
                if running
                    .iter()
                    .all(|status| status.leader_id == leader.id && status.term == leader.term)
                {
                    return (leader.id, leader.term);
                }
            }
            assert!(
                Instant::now() < deadline,
                "no single agreed leader within {timeout:?}: {statuses:#?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until every running node has applied at least `index`.
    pub async fn wait_for_applied(&self, index: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.statuses().await;
            let done = self.nodes.iter().zip(&statuses).all(|(node, status)| {
                !node.is_running()
                    || status
                        .as_ref()
                        .is_some_and(|status| status.applied_index >= index)
            });
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nodes did not apply {index} within {timeout:?}: {statuses:#?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|node| {
                let log = node.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                format!(
                    "--- {} (last lines) ---\n{}",
                    node.log_path.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The Status of the node at `client_addr`, or None when it does not answer.
pub async fn status_of(client_addr: SocketAddr) -> Option<Status> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{client_addr}"))
        .ok()?
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_millis(500));
    let channel = endpoint.connect().await.ok()?;
    let mut client = KvClient::new(channel);
    client
        .status(kvstore_proto::kv::v1::StatusRequest {})
        .await
        .ok()
        .map(tonic::Response::into_inner)
}

/// Waits until the node at `client_addr` serves ranges: the leader has
/// raised the cluster's storage version (an entry of its own, committed a
/// heartbeat or two after a fresh cluster's first election).
pub async fn wait_for_revisions(client_addr: SocketAddr) {
    let mut client = client_for(client_addr, Duration::from_secs(10))
        .await
        .expect("the node answers");
    client
        .range(kvstore_proto::kv::v1::RangeRequest {
            key: b"\0".to_vec(),
            ..Default::default()
        })
        .await
        .expect("the cluster reaches the storage version with revisions");
}

/// A client for `client_addr` with a per-request deadline.
pub async fn client_for(client_addr: SocketAddr, deadline: Duration) -> Option<KvClient<Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{client_addr}"))
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .timeout(deadline)
        .connect()
        .await
        .ok()?;
    Some(KvClient::new(channel))
}

/// Serializes the tests of one binary that run clusters: on a 2-core machine,
/// concurrent clusters would starve each other's timers.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A seed for test randomness: `KVSTORE_TEST_SEED` when set, else the clock.
/// Tests print it so a failure can be replayed.
pub fn test_seed() -> u64 {
    std::env::var("KVSTORE_TEST_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// A tiny deterministic generator (splitmix64) for test choices.
pub struct TestRng(pub u64);

impl TestRng {
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

/// An HTTP answer: status code, headers (names lower-cased) and body.
#[derive(Debug)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// `(name, value)`, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl HttpAnswer {
    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// `GET path` over HTTP/1.0 (the server closes the connection after the
/// answer); None when nothing answers.
pub fn http_get(address: SocketAddr, path: &str) -> Option<HttpAnswer> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Some(HttpAnswer {
        status,
        headers,
        body: body.to_string(),
    })
}
