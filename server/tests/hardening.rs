//! What real machines and careless peers do to a node, with real processes:
//! forged writes on the raft port, floods of connections, and a wrong
//! `--peers` address.

// Cluster tests hold the serial lock across awaits on purpose: each test has
// its own runtime, and the lock keeps two clusters from running at once.
#![allow(clippy::await_holding_lock)]

mod support;

use std::time::Duration;

use futures::StreamExt;
use kvstore_proto::kv::v1::{Consistency, GetRequest, PutRequest};
use kvstore_proto::raft::v1 as pb;
use support::{Cluster, TEST_ELECTION_TIMEOUT};

/// A write as a follower forwards it, forged with a header the leader accepts.
fn forged_put(
    leader: u64,
    from: u64,
    term: u64,
    key: Vec<u8>,
    value: Vec<u8>,
) -> pb::ForwardRequest {
    pb::ForwardRequest {
        header: Some(pb::MessageHeader {
            cluster_id: "kvstore".into(),
            from,
            to: leader,
            term,
            storage_version_max: 0,
        }),
        request_id: "forged".into(),
        request: Some(pb::forward_request::Request::Write(pb::Command {
            operation: Some(pb::command::Operation::Put(pb::PutOperation { key, value })),
            request_id: "forged".into(),
        })),
    }
}

/// Sends `request` alone on a `ForwardStream` call, the route followers
/// use, and returns its result.
async fn forward_once(
    raft: &mut pb::raft_client::RaftClient<tonic::transport::Channel>,
    request: pb::ForwardRequest,
) -> Result<pb::ForwardResponse, tonic::Status> {
    let call = pb::ForwardCall {
        id: 1,
        request: Some(request),
    };
    let batch = pb::ForwardBatch { calls: vec![call] };
    let mut results = raft
        .forward_stream(futures::stream::iter([batch]).chain(futures::stream::pending()))
        .await?
        .into_inner();
    let batch = tokio::time::timeout(Duration::from_secs(10), results.message())
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("no forward result in time"))??
        .ok_or_else(|| tonic::Status::unavailable("the forward stream ended"))?;
    match batch
        .results
        .into_iter()
        .next()
        .and_then(|result| result.outcome)
    {
        Some(pb::forward_result::Outcome::Response(response)) => Ok(response),
        Some(pb::forward_result::Outcome::Error(error)) => Err(tonic::Status::new(
            tonic::Code::from_i32(error.code),
            error.message,
        )),
        None => Err(tonic::Status::internal("an empty forward result")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_writes_are_checked_against_the_client_limits() {
    let _serial = support::serial();
    let cluster = Cluster::start(3, &["--max-key-bytes", "64", "--max-value-bytes", "4096"]);
    let (leader, term) = cluster.wait_for_leader(10 * TEST_ELECTION_TIMEOUT).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let leader_node = &cluster.nodes[(leader - 1) as usize];
    // The storage version's raise, an entry of the leader's own, must not
    // count as a refused write committed.
    support::wait_for_revisions(leader_node.client_addr).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", leader_node.raft_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut raft = pb::raft_client::RaftClient::new(channel)
        .max_encoding_message_size(16 * 1024 * 1024)
        .max_decoding_message_size(16 * 1024 * 1024);
    // A valid forged write goes through: the header is right.
    forward_once(
        &mut raft,
        forged_put(leader, follower, term, b"ok".to_vec(), b"v".to_vec()),
    )
    .await
    .expect("a valid forwarded write is served");
    let index_before = support::status_of(leader_node.client_addr)
        .await
        .expect("the leader answers")
        .commit_index;

    for (key, value, expected) in [
        (Vec::new(), b"v".to_vec(), "key must not be empty"),
        (vec![b'k'; 10_000], b"v".to_vec(), "(--max-key-bytes)"),
        (
            b"big".to_vec(),
            vec![7u8; 5 * 1024 * 1024],
            "(--max-value-bytes)",
        ),
    ] {
        let request = forged_put(leader, follower, term, key.clone(), value);
        let status = forward_once(&mut raft, request)
            .await
            .expect_err("an invalid forwarded write is refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(expected),
            "key of {} bytes: {}",
            key.len(),
            status.message()
        );
    }
    // Nothing was committed: the leader's commit index did not move.
    tokio::time::sleep(3 * support::TEST_HEARTBEAT_INTERVAL).await;
    let index_after = support::status_of(leader_node.client_addr)
        .await
        .expect("the leader answers")
        .commit_index;
    assert_eq!(index_after, index_before, "a refused write was committed");

    // The client API gives the same answer, and still serves valid writes.
    let mut client = leader_node.client().await;
    let status = client
        .put(PutRequest {
            key: vec![b'k'; 10_000],
            value: b"v".to_vec(),
            ..PutRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("(--max-key-bytes)"), "{status:?}");
    client
        .put(PutRequest {
            key: b"after".to_vec(),
            value: b"fine".to_vec(),
            ..PutRequest::default()
        })
        .await
        .expect("valid writes still go through");
    let read = client
        .get(GetRequest {
            key: b"after".to_vec(),
            consistency: Consistency::Linearizable as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.value, b"fine");
}

/// How long the peer tests watch the logs.
const LOG_WATCH: Duration = Duration::from_secs(3);
/// Most lines about one misconfigured peer in [`LOG_WATCH`] (before the
/// fix: about 20 a second).
const LINES_ABOUT_A_PEER_MAX: usize = 10;

/// The JSON log lines of `log` whose message is `message` and, when given,
/// whose `peer` field is `peer`.
fn lines_about(log: &str, message: &str, peer: Option<u64>) -> usize {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["message"] == message)
        .filter(|line| peer.is_none_or(|peer| line["fields"]["peer"] == peer))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_peers_address_costs_a_few_log_lines() {
    use support::{free_port, loopback, ServerProcess, TEST_HEARTBEAT_INTERVAL};
    let _serial = support::serial();
    let directory = tempfile::tempdir().unwrap();
    let election = TEST_ELECTION_TIMEOUT.as_millis().to_string();
    let heartbeat = TEST_HEARTBEAT_INTERVAL.as_millis().to_string();
    let timings = [
        "--election-timeout-ms",
        &election,
        "--heartbeat-interval-ms",
        &heartbeat,
    ];
    // Nodes 1 and 2 of three, each with node 3's address wrong: it names the
    // other node's raft port, which accepts the stream and refuses its
    // messages. Whichever leads sends "node 3" a heartbeat every 50 ms.
    let raft = [loopback(free_port()), loopback(free_port())];
    let peers_of_1 = format!("2={},3={}", raft[1], raft[1]);
    let peers_of_2 = format!("1={},3={}", raft[0], raft[0]);
    let mut pair: Vec<ServerProcess> = [("1", &peers_of_1, raft[0]), ("2", &peers_of_2, raft[1])]
        .into_iter()
        .map(|(id, peers, raft_addr)| {
            let mut args = vec!["--id", id, "--peers", peers];
            args.extend(timings);
            ServerProcess::prepare(
                &directory.path().join(format!("node-{id}")),
                loopback(free_port()),
                raft_addr,
                &args,
            )
        })
        .collect();
    // A lone node whose one peer's address is a closed loopback port.
    let closed = loopback(free_port());
    let lone_peers = format!("2={closed}");
    let mut lone_args = vec!["--peers", lone_peers.as_str()];
    lone_args.extend(timings);
    let mut lone = ServerProcess::prepare(
        &directory.path().join("lone"),
        loopback(free_port()),
        loopback(free_port()),
        &lone_args,
    );
    for node in pair.iter_mut().chain([&mut lone]) {
        node.spawn();
    }
    for node in pair.iter_mut().chain([&mut lone]) {
        node.wait_listening();
    }
    // The pair elects a leader, whose heartbeats to "node 3" are refused.
    let deadline = std::time::Instant::now() + 10 * TEST_ELECTION_TIMEOUT;
    loop {
        let mut leads = false;
        for node in &pair {
            leads |= support::status_of(node.client_addr)
                .await
                .is_some_and(|status| status.role == 4);
        }
        if leads {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no leader in the pair"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(LOG_WATCH).await;

    let mut unreachable_lines = 0;
    for node in &pair {
        let log = node.log();
        let unreachable = lines_about(&log, "peer unreachable; backing off", Some(3));
        let reachable = lines_about(&log, "peer reachable again", Some(3));
        let refused = lines_about(&log, "peer stream refused", None);
        assert_eq!(reachable, 0, "a refusing peer is not reachable: {log}");
        assert!(
            unreachable <= LINES_ABOUT_A_PEER_MAX && refused <= LINES_ABOUT_A_PEER_MAX,
            "{unreachable} lines about peer 3, {refused} about refused streams in {}",
            node.log_path.display()
        );
        unreachable_lines += unreachable;
    }
    assert!(unreachable_lines >= 1, "the leader tells the operator");
    let log = lone.log();
    let unreachable = lines_about(&log, "peer unreachable; backing off", Some(2));
    assert!(
        (1..=LINES_ABOUT_A_PEER_MAX).contains(&unreachable),
        "{unreachable} lines about peer 2: {log}"
    );
}

/// The HTTP/2 client preface and an empty SETTINGS frame: a client's half
/// of the handshake.
const HTTP2_HANDSHAKE: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
/// Longest a test waits for the server to answer or close a connection: a
/// bound on a hang, not a timing assertion.
const SERVER_ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Connects and sends `greeting`: the stream when the server answered (it
/// kept the connection), None when it closed it.
fn connect_and_greet(
    address: std::net::SocketAddr,
    greeting: &[u8],
) -> Option<std::net::TcpStream> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(SERVER_ANSWER_WAIT)).unwrap();
    stream.write_all(greeting).ok()?;
    let mut answer = [0u8; 64];
    match stream.read(&mut answer) {
        Ok(read) if read > 0 => Some(stream),
        _ => None,
    }
}

/// An HTTP/2 connection that completed its handshake, or None when refused.
fn http2_connect(address: std::net::SocketAddr) -> Option<std::net::TcpStream> {
    connect_and_greet(address, HTTP2_HANDSHAKE)
}

/// An HTTP/1.1 keep-alive connection that got an answer, or None when refused.
fn http1_connect(address: std::net::SocketAddr) -> Option<std::net::TcpStream> {
    connect_and_greet(address, b"GET /healthz HTTP/1.1\r\nHost: kvstore\r\n\r\n")
}

/// True when the server closes `stream` (whatever it sent first).
fn closed_by_server(mut stream: std::net::TcpStream) -> bool {
    use std::io::Read;
    stream.set_read_timeout(Some(SERVER_ANSWER_WAIT)).unwrap();
    let mut sink = [0u8; 1024];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) => return error.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

async fn put(
    client: &mut kvstore_proto::kv::v1::kv_client::KvClient<tonic::transport::Channel>,
    key: &str,
) {
    client
        .put(PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..PutRequest::default()
        })
        .await
        .unwrap_or_else(|status| panic!("put {key}: {status:?}"));
}

/// A single node with `args`, its HTTP port known.
fn start_node(directory: &std::path::Path, args: &[&str]) -> support::ServerProcess {
    use support::{free_port, loopback};
    let mut server = support::ServerProcess::prepare(
        &directory.join("node"),
        loopback(free_port()),
        loopback(free_port()),
        args,
    );
    server.metrics_addr = Some(loopback(free_port()));
    server.spawn();
    server.wait_listening();
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_refused_and_the_open_ones_keep_working() {
    const CAP: usize = 8;
    let directory = tempfile::tempdir().unwrap();
    let server = start_node(
        directory.path(),
        &["--max-connections", "8", "--max-http-connections", "2"],
    );
    let mut client = server.client().await;
    put(&mut client, "before").await;

    // The client above holds one place; raw HTTP/2 connections take the rest.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..3 * CAP {
        match http2_connect(server.client_addr) {
            Some(stream) => held.push(stream),
            None => refused += 1,
        }
        if refused == 3 {
            break;
        }
    }
    assert_eq!(refused, 3, "{} connections held, none refused", held.len());
    assert!(
        held.len() < CAP && held.len() >= CAP - 2,
        "{} raw connections held besides the client with a cap of {CAP}",
        held.len()
    );
    // The open client keeps working.
    put(&mut client, "during").await;

    // Once some close, new connections are accepted again.
    held.truncate(held.len() - 3);
    let mut accepted = None;
    for _ in 0..100 {
        accepted = http2_connect(server.client_addr);
        if accepted.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        accepted.is_some(),
        "no place freed after closing three connections"
    );
    let mut second = support::client_for(server.client_addr, Duration::from_secs(5))
        .await
        .expect("a new client connects");
    put(&mut second, "after").await;

    // The HTTP port has its own cap.
    let metrics = server.metrics_addr.unwrap();
    let http: Vec<_> = (0..2).map(|_| http1_connect(metrics)).collect();
    assert!(http.iter().all(Option::is_some), "two HTTP connections fit");
    assert!(http1_connect(metrics).is_none(), "a third is refused");
    assert!(
        server.log().contains("connection refused"),
        "the operator is told"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed() {
    let directory = tempfile::tempdir().unwrap();
    let server = start_node(
        directory.path(),
        &["--handshake-timeout-ms", "300", "--idle-timeout-ms", "1000"],
    );
    let mut client = server.client().await;
    put(&mut client, "first").await;
    let silent = |address| std::net::TcpStream::connect(address).unwrap();
    for (what, stream) in [
        ("client port, nothing sent", silent(server.client_addr)),
        ("raft port, nothing sent", silent(server.raft_addr)),
        (
            "HTTP port, nothing sent",
            silent(server.metrics_addr.unwrap()),
        ),
        ("client port, half a preface", {
            use std::io::Write;
            let mut stream = silent(server.client_addr);
            stream.write_all(&HTTP2_HANDSHAKE[..10]).unwrap();
            stream
        }),
        (
            "client port, handshake done, then idle",
            http2_connect(server.client_addr).unwrap(),
        ),
        (
            "HTTP port, one answer, then idle",
            http1_connect(server.metrics_addr.unwrap()).unwrap(),
        ),
    ] {
        assert!(closed_by_server(stream), "{what}: still open");
    }
    // A client whose connection was closed while idle reconnects.
    put(&mut client, "after a pause").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_never_stops_the_node() {
    const CAP: usize = 32;
    const ATTEMPTS: usize = 200;
    let directory = tempfile::tempdir().unwrap();
    let mut server = start_node(directory.path(), &["--max-connections", "32"]);
    let mut client = server.client().await;
    put(&mut client, "before").await;
    let mut held = Vec::new();
    for _ in 0..ATTEMPTS {
        held.extend(http2_connect(server.client_addr));
    }
    assert!(
        held.len() < CAP,
        "{} of {ATTEMPTS} connections held",
        held.len()
    );
    put(&mut client, "during").await;
    let running = server.child.as_mut().unwrap().try_wait().unwrap();
    assert!(running.is_none(), "the node stopped: {running:?}");
    drop(held);
    // The node sees the held connections close a little later: until then
    // it is still at its cap and closes a new one (a broken pipe), which
    // is the cap working, so a failed write is retried on a new client.
    let mut writes = 0;
    for sequence in 0..100 {
        if let Some(mut fresh) =
            support::client_for(server.client_addr, Duration::from_secs(5)).await
        {
            let request = PutRequest {
                key: format!("after-{sequence}").into(),
                value: b"v".to_vec(),
                ..Default::default()
            };
            if fresh.put(request).await.is_ok() {
                writes += 1;
                if writes == 10 {
                    break;
                }
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(writes, 10, "new clients are served after the flood");
    let running = server.child.as_mut().unwrap().try_wait().unwrap();
    assert!(running.is_none(), "the node stopped: {running:?}");
}

#[test]
fn the_open_file_limit_is_raised_and_must_fit_the_caps() {
    use support::{binary, free_port, loopback};
    let directory = tempfile::tempdir().unwrap();
    let run = |limits: &str, name: &str| {
        let client = loopback(free_port());
        let command = format!(
            "{limits} && exec {} --data-dir {} --client-addr {client} --raft-addr {} --metrics-addr {} --log-format json",
            binary("kvstore-server").display(),
            directory.path().join(name).display(),
            loopback(free_port()),
            loopback(free_port()),
        );
        let mut child = std::process::Command::new("sh")
            .args(["-c", &command])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        (client, child.stderr.take().unwrap(), child)
    };
    // The defaults need about 2,300; a hard limit of 512 cannot hold them.
    let (_, mut stderr, mut child) = run("ulimit -n 512", "small");
    let deadline = std::time::Instant::now() + support::STARTUP_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("it started with an open file limit of 512");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut output = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut output).unwrap();
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("open file limit (512)"), "{output}");
    // A soft limit of 512 under a hard one of 4096 is raised, and it starts.
    let (client, stderr, mut child) = run("ulimit -Sn 512 && ulimit -Hn 4096", "raised");
    let deadline = std::time::Instant::now() + support::STARTUP_TIMEOUT;
    while std::net::TcpStream::connect(client).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "it stopped");
        assert!(std::time::Instant::now() < deadline, "it did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let mut output = String::new();
    std::io::Read::read_to_string(&mut { stderr }, &mut output).unwrap();
    assert!(output.contains("\"open_file_limit\":4096"), "{output}");
}

#[test]
fn a_stopping_node_refuses_new_connections_while_it_drains_the_open_ones() {
    let _serial = support::serial();
    let directory = tempfile::tempdir().unwrap();
    let mut server = start_node(directory.path(), &[]);
    // A client that never answers the GOAWAY holds the shutdown in its grace
    // period.
    let held = http2_connect(server.client_addr).expect("handshake");
    server.signal("TERM");
    // Until the client port stops listening, connects still succeed; a
    // bounded wait, then a fresh connect must be refused at once rather than
    // sit in the listen backlog for the rest of the grace period.
    // Half the shutdown grace period (10 s): the node is still draining.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(server.client_addr).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the client port still accepts connections while the node drains: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let still_draining = server
        .child
        .as_mut()
        .is_some_and(|child| child.try_wait().unwrap().is_none());
    assert!(still_draining, "refused because it is draining, not gone");
    drop(held);
    assert_eq!(server.wait_exit(Duration::from_secs(20)), Some(0));
}
