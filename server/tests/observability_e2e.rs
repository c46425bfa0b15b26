//! Observability against real tools: `promtool` on the scrape
//! configurations, a real Prometheus scraping a live three-node cluster
//! (every PromQL expression of the dashboard must return data), and the
//! status page in headless Chromium (it must show the real leader; the
//! screenshot lands in target/observability/).
//!
//! They need Debian's `prometheus` and `chromium` packages, so they are
//! ignored by a plain `cargo test`; `make test-observability` installs the
//! packages (scripts/observability-deps.sh) and runs them.

// Each test holds the cross-test `support::serial()` guard for its whole
// run, across awaits, on purpose: clusters must not run concurrently.
#![allow(clippy::await_holding_lock)]

mod observability_common;
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use observability_common::{
    background_traffic, dashboard, dashboard_queries, repository_root, target_directory, traffic,
    url_encode, with_grafana_variables,
};
use support::{http_get, Cluster, TEST_ELECTION_TIMEOUT};

/// The rate window the dashboard's `$__rate_interval` stands for here: four
/// scrape intervals of the test's Prometheus (1 s), as Grafana would pick.
const RATE_INTERVAL: &str = "4s";
/// How long every query may take to return data (Prometheus needs a few
/// scrapes for rates).
const QUERY_DEADLINE: Duration = Duration::from_secs(40);
/// The election timeout of the cluster the Chromium test looks at.
const CHROMIUM_ELECTION_TIMEOUT: Duration = Duration::from_millis(1500);
/// How many times the Chromium test loads the page when elections keep
/// moving the term under it.
const CHROMIUM_ATTEMPTS: u32 = 3;

fn tool(name: &str) -> PathBuf {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .expect("running sh");
    let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
    assert!(
        found.status.success() && !path.is_empty(),
        "{name} is not installed: run scripts/observability-deps.sh (make test-observability does)"
    );
    PathBuf::from(path)
}

/// A child process killed when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs Debian's prometheus package: make test-observability"]
fn promtool_accepts_both_scrape_configurations() {
    let promtool = tool("promtool");
    for file in [
        "observability/prometheus.yml",
        "observability/prometheus-local.yml",
    ] {
        let output = Command::new(&promtool)
            .args(["check", "config"])
            .arg(repository_root().join(file))
            .output()
            .expect("running promtool");
        assert!(
            output.status.success(),
            "promtool check config {file}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// observability/prometheus-local.yml, pointed at this test's nodes and
/// scraping every second.
fn scrape_configuration(metrics_addrs: &[SocketAddr]) -> String {
    let mut text =
        std::fs::read_to_string(repository_root().join("observability/prometheus-local.yml"))
            .expect("reading prometheus-local.yml");
    for (position, address) in metrics_addrs.iter().enumerate() {
        let default = format!("127.0.0.1:{}", 9101 + position);
        assert!(
            text.contains(&default),
            "prometheus-local.yml scrapes {default}"
        );
        text = text.replace(&format!("\"{default}\""), &format!("\"{address}\""));
    }
    text.replace("scrape_interval: 5s", "scrape_interval: 1s")
        .replace("scrape_timeout: 4s", "scrape_timeout: 900ms")
}

fn start_prometheus(directory: &Path, metrics_addrs: &[SocketAddr]) -> (Guard, SocketAddr) {
    let configuration = directory.join("prometheus.yml");
    std::fs::write(&configuration, scrape_configuration(metrics_addrs)).unwrap();
    let check = Command::new(tool("promtool"))
        .args(["check", "config"])
        .arg(&configuration)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let address = support::loopback(support::free_port());
    let log = std::fs::File::create(directory.join("prometheus.log")).unwrap();
    let child = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", configuration.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            directory.join("data").display()
        ))
        .arg(format!("--web.listen-address={address}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting prometheus");
    let guard = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(address, "/-/ready").is_none_or(|answer| answer.status != 200) {
        assert!(
            Instant::now() < deadline,
            "prometheus not ready: {}",
            std::fs::read_to_string(directory.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    (guard, address)
}

/// The result of an instant query: (number of series whose value is a
/// number, not NaN; the raw answer).
fn query(prometheus: SocketAddr, expr: &str) -> (usize, String) {
    let answer = http_get(
        prometheus,
        &format!("/api/v1/query?query={}", url_encode(expr)),
    )
    .expect("prometheus answers");
    assert_eq!(answer.status, 200, "query {expr}: {}", answer.body);
    let document: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(document["status"], "success", "{expr}: {}", answer.body);
    let series = document["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|series| {
            series["value"][1]
                .as_str()
                .is_some_and(|value| value != "NaN")
        })
        .count();
    (series, answer.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Debian's prometheus package: make test-observability"]
async fn prometheus_scrapes_the_cluster_and_every_dashboard_query_returns_data() {
    let _serial = support::serial();
    let cluster = Cluster::start_observed(3, &[]);
    let (leader, _) = cluster.wait_for_leader(20 * TEST_ELECTION_TIMEOUT).await;
    let metrics_addrs: Vec<SocketAddr> = cluster
        .nodes
        .iter()
        .map(|node| node.metrics_addr.unwrap())
        .collect();
    let directory = tempfile::tempdir().unwrap();
    let (_prometheus, prometheus) = start_prometheus(directory.path(), &metrics_addrs);
    traffic(&cluster, 3).await;
    let endpoints = cluster.nodes.iter().map(|node| node.client_addr).collect();
    let (stop, load) = background_traffic(endpoints, 20_000);

    // Every target is scraped.
    let deadline = Instant::now() + QUERY_DEADLINE;
    loop {
        let (series, body) = query(prometheus, r#"sum(up{job="kvstore"})"#);
        if series == 1 && body.contains(r#","3"]"#) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every node is scraped: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let dashboard = dashboard();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let mut empty = Vec::new();
    for (title, ref_id, expr) in &queries {
        let promql = with_grafana_variables(expr, RATE_INTERVAL);
        let mut last = String::new();
        let found = loop {
            let (series, body) = query(prometheus, &promql);
            if series > 0 {
                break true;
            }
            last = body;
            if Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        println!(
            "{:<5} {title} [{ref_id}]: {promql}",
            if found { "data" } else { "EMPTY" }
        );
        if !found {
            empty.push(format!(
                "{title} [{ref_id}]: {promql}\n  last answer: {last}"
            ));
        }
    }
    let _ = stop.send(());
    load.await.unwrap();
    assert!(
        empty.is_empty(),
        "queries without data:\n{}",
        empty.join("\n")
    );

    // And the values are the cluster's.
    let (_, body) = query(
        prometheus,
        "max(kvstore_raft_leader_id and on (instance) (kvstore_raft_is_leader == 1))",
    );
    assert!(
        body.contains(&format!(",\"{leader}\"]")),
        "leader {leader}: {body}"
    );
}

fn chromium() -> PathBuf {
    tool("chromium")
}

/// Runs headless Chromium on `url` with `arguments`; returns its stdout.
fn run_chromium(url: &str, profile: &Path, arguments: &[&str]) -> String {
    let output = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=6000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(arguments)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("running chromium");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The value of attribute `name` on the page's `<body>`.
fn body_attribute(dom: &str, name: &str) -> Option<String> {
    let body = &dom[dom.find("<body")?..];
    let tag = &body[..body.find('>')?];
    let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
    Some(tag[start..start + tag[start..].find('"')?].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Debian's chromium package: make test-observability"]
async fn status_page_in_headless_chromium_shows_the_real_leader() {
    let _serial = support::serial();
    // Chromium starting up takes both cores of a small machine for a second
    // or more; with the 300 ms test timings that alone can trigger an
    // election while the page loads. Calmer timings keep the leader still.
    let cluster = Cluster::start_observed(
        3,
        &[
            "--election-timeout-ms",
            &CHROMIUM_ELECTION_TIMEOUT.as_millis().to_string(),
            "--heartbeat-interval-ms",
            &(CHROMIUM_ELECTION_TIMEOUT / 10).as_millis().to_string(),
        ],
    );
    let (leader, _) = cluster
        .wait_for_leader(10 * CHROMIUM_ELECTION_TIMEOUT)
        .await;
    traffic(&cluster, 3).await;
    let endpoints = cluster.nodes.iter().map(|node| node.client_addr).collect();
    let (stop, load) = background_traffic(endpoints, 20_000);

    // Open the page of a follower, so that it must find the leader among
    // the others. The page is compared with the leader all nodes report
    // through the Status RPC once the dump is done; should an election
    // still have moved the term while the page loaded, the page is loaded
    // again (a page of the old term is not wrong, only stale).
    let viewer: usize = if leader == 1 { 2 } else { 1 };
    let url = format!(
        "http://{}/",
        cluster.nodes[viewer - 1].metrics_addr.unwrap()
    );
    let profile = tempfile::tempdir().unwrap();
    let mut attempts = 0;
    let (dom, leader) = loop {
        attempts += 1;
        let dom = run_chromium(&url, profile.path(), &["--dump-dom"]);
        let (leader, term) = cluster
            .wait_for_leader(10 * CHROMIUM_ELECTION_TIMEOUT)
            .await;
        let page_term = body_attribute(&dom, "data-term");
        if page_term == Some(term.to_string()) || attempts == CHROMIUM_ATTEMPTS {
            assert_eq!(page_term, Some(term.to_string()), "{dom}");
            break (dom, leader);
        }
        println!(
            "the term moved to {term} while the page loaded ({page_term:?}); loading it again"
        );
    };
    assert_eq!(
        body_attribute(&dom, "data-leader-id").as_deref(),
        Some(leader.to_string().as_str()),
        "the page shows the leader of the Status RPC:\n{dom}"
    );
    assert_eq!(
        body_attribute(&dom, "data-nodes-up").as_deref(),
        Some("3"),
        "{dom}"
    );
    assert!(
        dom.contains(&format!(
            "<div class=\"value\" id=\"leader\">node {leader}</div>"
        )),
        "{dom}"
    );
    for id in 1..=3u64 {
        let role = if id == leader { "leader" } else { "follower" };
        let row = format!("<tr data-node-id=\"{id}\" data-role=\"{role}\">");
        assert!(dom.contains(&row), "row of node {id}: {dom}");
    }

    let artifacts = target_directory().join("observability");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    run_chromium(
        &url,
        profile.path(),
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1500,620",
        ],
    );
    let _ = stop.send(());
    load.await.unwrap();
    let png = std::fs::read(&screenshot).expect("the screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    println!("screenshot: {}", screenshot.display());
}
