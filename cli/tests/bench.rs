//! `kvstore-cli bench` against a real single-node `kvstore-server` on
//! loopback. Counts requests and errors only: no test asserts a speed.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kvstore_devkit::binary::workspace_binary;
use serde_json::Value;

/// How long the server may take to listen and elect itself.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between startup checks.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

fn free_loopback_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("binding an ephemeral loopback port")
}

/// The server process, killed when dropped (also when a test panics).
struct ServerGuard {
    child: Child,
    log_path: PathBuf,
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerGuard {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

fn cli(client_address: SocketAddr, arguments: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvstore-cli"))
        .arg("--endpoints")
        .arg(client_address.to_string())
        .args(arguments)
        .stdin(Stdio::null())
        .output()
        .expect("running kvstore-cli")
}

/// Largest value the test server accepts, so that larger ones fail every request.
const SERVER_VALUE_BYTES_MAX: usize = 1024;

/// Starts a single-node server and waits until it accepts connections and
/// leads.
fn start_server(work: &tempfile::TempDir) -> (ServerGuard, SocketAddr) {
    let client_address = free_loopback_address();
    let raft_address = free_loopback_address();
    let log_path = work.path().join("server.log");
    let log = std::fs::File::create(&log_path).expect("creating the server log");
    let child = Command::new(workspace_binary("kvstore-server"))
        .arg("--client-addr")
        .arg(client_address.to_string())
        .arg("--raft-addr")
        .arg(raft_address.to_string())
        .arg("--metrics-addr")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(work.path().join("data"))
        .arg("--max-value-bytes")
        .arg(SERVER_VALUE_BYTES_MAX.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting kvstore-server");
    let mut server = ServerGuard { child, log_path };

    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while TcpStream::connect_timeout(&client_address, POLL_INTERVAL).is_err() {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("kvstore-server exited with {status}:\n{}", server.log());
        }
        assert!(
            Instant::now() < deadline,
            "kvstore-server never listened:\n{}",
            server.log()
        );
        std::thread::sleep(POLL_INTERVAL);
    }
    loop {
        let output = cli(client_address, &["-w", "json", "status"]);
        let leads = serde_json::from_slice::<Value>(&output.stdout)
            .is_ok_and(|status| status[0]["role"] == "leader");
        if leads {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kvstore-server never led:\n{}",
            server.log()
        );
        std::thread::sleep(POLL_INTERVAL);
    }
    (server, client_address)
}

/// Runs `bench` with `-w json`, checks it succeeded and returns its summary.
fn bench_json(server: &ServerGuard, client_address: SocketAddr, arguments: &[&str]) -> Value {
    let mut all_arguments = vec!["-w", "json", "bench"];
    all_arguments.extend_from_slice(arguments);
    let output = cli(client_address, &all_arguments);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench {arguments:?}: {}\nstdout: {stdout}\nstderr: {stderr}\nserver log:\n{}",
        output.status,
        server.log()
    );
    // Not a terminal: no progress bar may reach stderr.
    assert!(
        !stderr.contains('['),
        "progress bar drawn into a pipe: {stderr}"
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|error| panic!("bench printed no JSON ({error}): {stdout}"))
}

#[test]
fn bench_runs_put_and_mixed_against_a_real_server() {
    let work = tempfile::tempdir().expect("a temporary directory");
    let (server, client_address) = start_server(&work);

    let put = bench_json(
        &server,
        client_address,
        &["put", "--total", "200", "--clients", "8"],
    );
    assert_eq!(put["workload"], "put");
    assert_eq!(put["operations"], 200, "{put}");
    assert_eq!(put["errors"], 0, "{put}");
    assert_eq!(put["writes"], 200, "{put}");
    assert_eq!(put["clients"], 8);
    for field in [
        "latency_us_p50",
        "latency_us_p90",
        "latency_us_p99",
        "latency_us_p99_9",
        "latency_us_max",
    ] {
        assert!(put[field].is_u64(), "{field} missing: {put}");
    }
    assert!(put["throughput_ops_per_s"].is_f64(), "{put}");

    let mixed = bench_json(
        &server,
        client_address,
        &[
            "mixed",
            "--total",
            "200",
            "--keyspace",
            "50",
            "--clients",
            "4",
            "--conns",
            "2",
        ],
    );
    assert_eq!(mixed["workload"], "mixed");
    assert_eq!(mixed["operations"], 200, "{mixed}");
    assert_eq!(mixed["errors"], 0, "{mixed}");
    assert_eq!(
        mixed["reads"].as_u64().unwrap() + mixed["writes"].as_u64().unwrap(),
        200,
        "{mixed}"
    );
    // The prefill wrote every key, so every read finds one.
    assert_eq!(mixed["reads_not_found"], 0, "{mixed}");

    // Text output, and a usage error exits 2 without touching the server.
    let text = cli(
        client_address,
        &[
            "bench",
            "get",
            "--total",
            "20",
            "--keyspace",
            "10",
            "--consistency",
            "serializable",
        ],
    );
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("operations     20\n"), "{text}");
    assert!(text.contains("errors         0\n"), "{text}");
    let refused = cli(
        client_address,
        &["bench", "put", "--clients", "2", "--conns", "3"],
    );
    assert_eq!(refused.status.code(), Some(2));

    // Every request refused by the server: still a summary, errors by code, exit 3.
    let too_large = (2 * SERVER_VALUE_BYTES_MAX).to_string();
    let failed = cli(
        client_address,
        &[
            "-w",
            "json",
            "bench",
            "put",
            "--total",
            "10",
            "--value-size",
            &too_large,
        ],
    );
    assert_eq!(
        failed.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
    let failed: Value = serde_json::from_slice(&failed.stdout).expect("a JSON summary");
    assert_eq!(failed["operations"], 10, "{failed}");
    assert_eq!(failed["errors"], 10, "{failed}");
    assert_eq!(failed["errors_by_code"]["INVALID_ARGUMENT"], 10, "{failed}");
}

#[test]
fn bench_exits_3_when_no_server_answers() {
    let nobody = free_loopback_address();
    let output = cli(nobody, &["--timeout", "1s", "bench", "put", "--total", "5"]);
    assert_eq!(
        output.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot connect"));
}

#[test]
fn clients_back_off_from_a_server_that_went_down() {
    let work = tempfile::tempdir().unwrap();
    let (mut server, client_address) = start_server(&work);
    let bench = Command::new(env!("CARGO_BIN_EXE_kvstore-cli"))
        .arg("--endpoints")
        .arg(client_address.to_string())
        .args(["-w", "json", "bench", "put", "--clients", "2"])
        .args(["--total", "100000000", "--duration", "3s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kvstore-cli bench");
    std::thread::sleep(Duration::from_millis(800));
    let _ = server.child.kill();
    let _ = server.child.wait();
    let output = bench.wait_with_output().expect("waiting for the bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: Value = serde_json::from_str(&stdout).unwrap_or_else(|error| {
        panic!(
            "bench printed no JSON ({error}): {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(
        summary["operations_succeeded"].as_u64().unwrap() > 0,
        "{summary}"
    );
    // Refused connections answer at once: without waiting, two clients
    // send thousands of requests a second to a node that is down. Waiting
    // 1, 2, 4 ... up to 100 ms after each UNAVAILABLE, each client sends at
    // most about 7 + 30 over the 3 s the run lasts.
    let unavailable = summary["errors_by_code"]["UNAVAILABLE"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        (1..=2 * (7 + 30)).contains(&unavailable),
        "UNAVAILABLE answers: {summary}"
    );
}
