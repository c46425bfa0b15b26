//! The real `kvstore-server` binary on a loopback port with a temporary data
//! directory, driven by the real `kvstore-cli` binary and the generated client.

mod support;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use kvstore_proto::kv::v1::{Consistency, DeleteRequest, GetRequest, PutRequest};
use support::{cli, cli_str, ServerProcess};

#[test]
fn cli_round_trip_and_exit_codes() {
    let directory = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&directory.path().join("node"), &[]);
    let endpoint = server.endpoint();

    let put = cli_str(&["--endpoints", &endpoint, "put", "greeting", "hello world"]);
    assert!(put.status.success(), "{put:?}");
    assert_eq!(put.stdout, b"OK\n");

    let get = cli_str(&["--endpoints", &endpoint, "get", "greeting"]);
    assert_eq!(get.status.code(), Some(0));
    assert_eq!(
        get.stdout, b"hello world",
        "the value alone, no newline when piped"
    );

    let json = cli_str(&["--endpoints", &endpoint, "-w", "json", "get", "greeting"]);
    let document: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(document["found"], true);
    assert_eq!(document["value"], "hello world");
    assert_eq!(document["header"]["node_id"], 1);

    let delete = cli_str(&["--endpoints", &endpoint, "delete", "greeting"]);
    assert_eq!(delete.stdout, b"1\n");
    let delete_again = cli_str(&["--endpoints", &endpoint, "delete", "greeting"]);
    assert_eq!(delete_again.stdout, b"0\n");

    let missing = cli_str(&["--endpoints", &endpoint, "get", "greeting"]);
    assert_eq!(missing.status.code(), Some(1), "missing key exits 1");
    assert!(missing.stdout.is_empty());
    let stderr = String::from_utf8(missing.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
    assert!(stderr.contains("key not found"), "{stderr}");

    let serializable = cli_str(&["--endpoints", &endpoint, "put", "s", "1"]);
    assert!(serializable.status.success());
    let read = cli_str(&[
        "--endpoints",
        &endpoint,
        "get",
        "s",
        "--consistency",
        "serializable",
    ]);
    assert_eq!(read.stdout, b"1");

    let verbose = cli_str(&["--endpoints", &endpoint, "-v", "get", "s"]);
    let stderr = String::from_utf8(verbose.stderr).unwrap();
    assert!(
        stderr.contains("node=1") && stderr.contains("term="),
        "{stderr}"
    );
}

#[test]
fn cli_errors_are_one_line_with_a_distinct_exit_code() {
    let unreachable = format!("127.0.0.1:{}", support::free_port());
    let output = cli_str(&["--endpoints", &unreachable, "--timeout", "2s", "get", "k"]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot connect") && !stderr.contains("panicked"),
        "{stderr}"
    );

    let directory = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&directory.path().join("node"), &[]);
    let output = cli_str(&["--endpoints", &server.endpoint(), "put", "", "v"]);
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("INVALID_ARGUMENT") && stderr.contains("empty"),
        "{stderr}"
    );

    // The first endpoint is down, the second answers.
    let output = cli_str(&[
        "--endpoints",
        &format!("{unreachable},{}", server.endpoint()),
        "put",
        "k",
        "v",
    ]);
    assert!(output.status.success(), "{output:?}");

    let usage = cli_str(&["get"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn binary_keys_and_values_round_trip_through_cli_and_server() {
    let directory = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&directory.path().join("node"), &[]);
    let endpoint = server.endpoint();
    let value: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();

    // Value from stdin, non-UTF-8 key as a raw argument.
    let key = OsStr::from_bytes(&[b'k', 0xff, 0xfe]);
    let args = [
        OsStr::new("--endpoints"),
        OsStr::new(&endpoint),
        OsStr::new("put"),
        key,
        OsStr::new("-"),
    ];
    let output = cli(&args, &value);
    assert!(output.status.success(), "{output:?}");
    let args = [
        OsStr::new("--endpoints"),
        OsStr::new(&endpoint),
        OsStr::new("get"),
        key,
    ];
    let output = cli(&args, b"");
    assert_eq!(
        output.stdout, value,
        "get > file must round-trip binary data"
    );

    // A key with NUL bytes, given as hex.
    let output = cli_str(&[
        "--endpoints",
        &endpoint,
        "--hex-key",
        "put",
        "00ff0061",
        "nul-key",
    ]);
    assert!(output.status.success(), "{output:?}");
    let output = cli_str(&["--endpoints", &endpoint, "--hex-key", "get", "00ff0061"]);
    assert_eq!(output.stdout, b"nul-key");

    // The generated client sees the same bytes.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = server.client().await;
        let response = client
            .get(GetRequest {
                key: vec![0, 0xff, 0, b'a'],
                consistency: Consistency::Linearizable as i32,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(response.found);
        assert_eq!(response.value, b"nul-key");
        let binary_key = vec![0u8, 1, 2, 0, 0xff];
        client
            .put(PutRequest {
                key: binary_key.clone(),
                value: vec![0; 3],
                ..PutRequest::default()
            })
            .await
            .unwrap();
        let response = client
            .get(GetRequest {
                key: binary_key,
                consistency: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.value, vec![0; 3]);
    });
}

#[test]
fn bad_input_gets_invalid_argument_and_changes_nothing() {
    let directory = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        &directory.path().join("node"),
        &["--max-key-bytes", "16", "--max-value-bytes", "100"],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = server.client().await;
        let put = |key: Vec<u8>, value: Vec<u8>| PutRequest {
            key,
            value,
            ..PutRequest::default()
        };
        let cases = [
            (put(Vec::new(), b"v".to_vec()), "empty"),
            (put(vec![b'k'; 17], b"v".to_vec()), "limit of 16 bytes"),
            (put(b"k".to_vec(), vec![0; 101]), "limit of 100 bytes"),
        ];
        for (request, expected) in cases {
            let key = request.key.clone();
            let status = client.put(request).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains(expected), "{}", status.message());
            if !key.is_empty() && key.len() <= 16 {
                let read = client
                    .get(GetRequest {
                        key,
                        consistency: 0,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert!(!read.found, "a refused put must change nothing");
            }
        }
        // Values far over the limit are still refused cleanly.
        let status = client
            .put(put(b"k".to_vec(), vec![0; 150]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let status = client
            .get(GetRequest {
                key: Vec::new(),
                consistency: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let status = client
            .get(GetRequest {
                key: b"k".to_vec(),
                consistency: 99,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let status = client
            .delete(DeleteRequest {
                key: vec![b'x'; 17],
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        // Exactly at the limits is fine.
        client.put(put(vec![b'k'; 16], vec![1; 100])).await.unwrap();
    });
}

#[test]
fn garbage_on_the_client_port_does_not_hurt_the_server() {
    let directory = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&directory.path().join("node"), &[]);
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0xffu8; 4096][..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00",
    ] {
        let mut stream = std::net::TcpStream::connect(server.client_addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let _ = stream.write_all(garbage);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
    }
    let output = cli_str(&["--endpoints", &server.endpoint(), "put", "still", "alive"]);
    assert!(output.status.success(), "{output:?}\n{}", server.log());
}

#[test]
fn acknowledged_writes_survive_kill_9_and_restart() {
    let directory = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&directory.path().join("node"), &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    const WRITES: u32 = 300;
    runtime.block_on(async {
        let mut client = server.client().await;
        for index in 0..WRITES {
            client
                .put(PutRequest {
                    key: format!("key-{index}").into_bytes(),
                    value: index.to_be_bytes().repeat(64),
                    ..PutRequest::default()
                })
                .await
                .unwrap();
        }
        client
            .delete(DeleteRequest {
                key: b"key-7".to_vec(),
            })
            .await
            .unwrap();
    });
    server.kill();
    server.restart();
    let values = runtime.block_on(values_of(&server, WRITES as usize));
    for (index, value) in values.into_iter().enumerate() {
        if index == 7 {
            assert_eq!(value, None, "the acknowledged delete must survive");
        } else {
            let expected = (index as u32).to_be_bytes().repeat(64);
            assert_eq!(value, Some(expected), "key-{index}");
        }
    }
}

/// Applied writes wait in memory before LevelDB gets them (here: never, the
/// interval being an hour). A kill -9 loses that memory; the WAL, and the
/// snapshot the log was compacted into, bring every acknowledged write back.
#[test]
fn writes_held_in_memory_survive_kill_9_through_the_log_and_the_snapshot() {
    const WRITES: usize = 40;
    let directory = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(
        &directory.path().join("node"),
        &[
            "--backend-batch-interval-ms",
            "3600000",
            "--snapshot-log-bytes",
            "262144",
        ],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        put_large_values_until_snapshot(&server, WRITES, 16).await;
        let mut client = server.client().await;
        client
            .delete(DeleteRequest {
                key: b"key-3".to_vec(),
            })
            .await
            .unwrap();
    });
    server.kill();
    server.restart();
    let values = runtime.block_on(values_of(&server, WRITES));
    for (index, stored) in values.into_iter().enumerate() {
        let expected = (index != 3).then(|| large_value(index));
        assert_eq!(stored, expected, "key-{index}");
    }
    // LevelDB held none of it: the state came back from the snapshot file.
    assert!(
        server
            .log()
            .contains("restoring the state machine from the snapshot"),
        "{}",
        server.log()
    );
}

/// Bytes of each value of [`put_large_values_until_snapshot`].
const LARGE_VALUE_BYTES: usize = 16 * 1024;

fn large_value(index: usize) -> Vec<u8> {
    vec![index as u8; LARGE_VALUE_BYTES]
}

/// Puts `key-0` to `key-{writes - 1}` (16 KiB values), then waits until a
/// snapshot covers `snapshot_index` (snapshots are written in the background).
async fn put_large_values_until_snapshot(
    server: &ServerProcess,
    writes: usize,
    snapshot_index: u64,
) {
    let mut client = server.client().await;
    for index in 0..writes {
        client
            .put(PutRequest {
                key: format!("key-{index}").into_bytes(),
                value: large_value(index),
                ..PutRequest::default()
            })
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = support::status_of(server.client_addr).await.unwrap();
        if status.snapshot_index >= snapshot_index {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot at {snapshot_index} after {writes} writes of {LARGE_VALUE_BYTES} bytes: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The values of `key-0` to `key-{count - 1}` (linearizable reads).
async fn values_of(server: &ServerProcess, count: usize) -> Vec<Option<Vec<u8>>> {
    let mut client = server.client().await;
    let mut values = Vec::with_capacity(count);
    for index in 0..count {
        let response = client
            .get(GetRequest {
                key: format!("key-{index}").into_bytes(),
                consistency: 0,
            })
            .await
            .unwrap()
            .into_inner();
        values.push(response.found.then_some(response.value));
    }
    values
}

/// Large values snapshot by bytes long before the entry count is reached:
/// the log held in memory between snapshots stays bounded. Nothing is lost
/// across the snapshots and a kill -9.
#[test]
fn large_values_take_a_snapshot_by_bytes_before_the_entry_count() {
    const WRITES: usize = 40;
    let directory = tempfile::tempdir().unwrap();
    // 256 KiB: a snapshot about every 16 writes; the entry count (default
    // 100,000) would take none.
    let mut server = ServerProcess::start(
        &directory.path().join("node"),
        &["--snapshot-log-bytes", "262144"],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Wait for the second snapshot.
    runtime.block_on(put_large_values_until_snapshot(&server, WRITES, 32));
    assert!(
        server.log().contains("bytes_since_snapshot"),
        "{}",
        server.log()
    );
    server.kill();
    server.restart();
    let values = runtime.block_on(values_of(&server, WRITES));
    for (index, stored) in values.into_iter().enumerate() {
        assert_eq!(stored, Some(large_value(index)), "key-{index}");
    }
}

#[test]
fn sigterm_shuts_down_cleanly_and_a_second_server_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("node");
    let mut server = ServerProcess::start(&data_dir, &[]);
    let output = cli_str(&["--endpoints", &server.endpoint(), "put", "k", "v"]);
    assert!(output.status.success());

    let second = std::process::Command::new(support::binary("kvstore-server"))
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--client-addr")
        .arg(format!("127.0.0.1:{}", support::free_port()))
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8(second.stderr).unwrap();
    assert!(stderr.contains("in use by another process"), "{stderr}");

    server.signal("TERM");
    assert_eq!(
        server.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        server.log()
    );
    assert!(server.log().contains("stopped cleanly"));
    server.restart();
    let output = cli_str(&["--endpoints", &server.endpoint(), "get", "k"]);
    assert_eq!(output.stdout, b"v");
}

#[test]
fn reflection_and_health_are_served() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let directory = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&directory.path().join("node"), &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let url = format!("http://{}", server.client_addr);
        let channel = tonic::transport::Channel::from_shared(url).unwrap().connect().await.unwrap();
        let mut reflection = ServerReflectionClient::new(channel.clone());
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = reflection
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let response = responses.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected reflection answer {response:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|service| service.name).collect();
        assert!(names.contains(&"kvstore.v1.KV".to_string()), "{names:?}");
        assert!(names.contains(&"kvstore.v1.Watch".to_string()), "{names:?}");
        assert!(names.contains(&"kvstore.v1.Lease".to_string()), "{names:?}");
        assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");

        let mut alpha =
            tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
        let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                    "kvstore.v1.KV".into(),
                ),
            ),
        };
        let mut responses = alpha
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let response = responses.message().await.unwrap().unwrap();
        assert!(
            matches!(
                response.message_response,
                Some(tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
            ),
            "{response:?}"
        );

        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let answer = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "kvstore.v1.KV".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    });
}

#[test]
fn status_table_json_and_watch() {
    let directory = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&directory.path().join("node"), &[]);
    let endpoint = server.endpoint();
    // A single-node cluster elects itself at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let json = cli_str(&["--endpoints", &endpoint, "status", "-w", "json"]);
        let document: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        if document[0]["role"] == "leader" {
            assert_eq!(document[0]["id"], 1);
            assert_eq!(document[0]["leader_id"], 1);
            assert!(document[0]["term"].as_u64().unwrap() >= 1);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no leader: {document}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let table = cli_str(&["--endpoints", &endpoint, "status", "-w", "table"]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("| ROLE") && table.contains("LAG") && table.contains("leader"),
        "{table}"
    );

    let unreachable = format!("127.0.0.1:{}", support::free_port());
    let watch = cli_str(&[
        "--endpoints",
        &format!("{endpoint},{unreachable}"),
        "--timeout",
        "1s",
        "status",
        "--watch",
        "--interval",
        "100ms",
        "--count",
        "2",
    ]);
    assert_eq!(watch.status.code(), Some(0));
    let frames = String::from_utf8(watch.stdout).unwrap();
    assert_eq!(
        frames.matches("kvstore cluster: leader 1").count(),
        2,
        "{frames}"
    );
    assert_eq!(frames.matches("1/2 nodes answering").count(), 2, "{frames}");
    assert!(
        frames.contains("cannot connect"),
        "the down node shows its error: {frames}"
    );
}
