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
pub fn binary(name: &str) -> PathBuf {
    let mut path = std::env::current_exe().expect("test executable path");
    path.pop(); // the test executable
    if path.ends_with("deps") {
        path.pop();
    }
    let binary = path.join(name);
    assert!(
        binary.exists(),
        "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`, or `make test`)",
        binary.display()
    );
    binary
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
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Extra flags it was started with (reused on restart).
    pub extra_args: Vec<String>,
    /// Its log file (stderr).
    pub log_path: PathBuf,
}

impl ServerProcess {
    /// Starts a single-node server on a fresh port in `data_dir`.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Self {
        let client_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut server = Self {
            child: None,
            client_addr,
            data_dir: data_dir.to_path_buf(),
            extra_args: extra_args
                .iter()
                .map(|argument| argument.to_string())
                .collect(),
            log_path: data_dir.with_extension("log"),
        };
        server.spawn();
        server.wait_listening();
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("opening the server log");
        let child = Command::new(binary("kvstore-server"))
            .arg("--client-addr")
            .arg(self.client_addr.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting kvstore-server");
        self.child = Some(child);
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
