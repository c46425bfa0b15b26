//! What a `bench` run measured: each client's tally, merged into one summary
//! printed as a short table or one JSON object.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::args::Protocol;
use crate::bench::plan::Plan;

/// Significant decimal digits the latency histogram keeps: 1 µs resolution
/// up to 1 ms, 0.1% relative error above.
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;
/// Highest latency a new histogram tracks without growing, in microseconds.
/// Histograms grow on demand (a request may wait up to `--timeout`).
const LATENCY_US_TRACKED_INITIAL: u64 = 60 * 1_000_000;

/// A latency histogram in microseconds.
pub fn latency_histogram() -> Histogram<u64> {
    let mut histogram =
        Histogram::new_with_bounds(1, LATENCY_US_TRACKED_INITIAL, LATENCY_SIGNIFICANT_DIGITS)
            .expect("constant histogram bounds are valid");
    histogram.auto(true);
    histogram
}

/// What one client (or, merged, the whole run) counted.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Latency of each succeeded request, in microseconds.
    pub latency_us: Histogram<u64>,
    /// Requests that got an answer or an error.
    pub operations: u64,
    /// Reads among them.
    pub reads: u64,
    /// Writes among them.
    pub writes: u64,
    /// Succeeded reads that found no value.
    pub reads_not_found: u64,
    /// Failed requests by gRPC code name (`UNAVAILABLE`, ...).
    pub errors_by_code: BTreeMap<String, u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            latency_us: latency_histogram(),
            operations: 0,
            reads: 0,
            writes: 0,
            reads_not_found: 0,
            errors_by_code: BTreeMap::new(),
        }
    }
}

impl Tally {
    /// Counts a succeeded request that took `latency`.
    pub fn record_success(&mut self, latency: Duration) {
        let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // `record` grows the histogram; clamping is left for absurd values.
        if self.latency_us.record(latency_us).is_err() {
            self.latency_us.saturating_record(latency_us);
        }
        self.operations += 1;
    }

    /// Counts a failed request.
    pub fn record_error(&mut self, code_name: String) {
        *self.errors_by_code.entry(code_name).or_default() += 1;
        self.operations += 1;
    }

    /// Failed requests.
    pub fn errors(&self) -> u64 {
        self.errors_by_code.values().sum()
    }

    /// Succeeded requests.
    pub fn succeeded(&self) -> u64 {
        self.operations - self.errors()
    }

    /// Adds `other`'s counts to this one.
    pub fn merge(&mut self, other: &Tally) {
        self.latency_us
            .add(&other.latency_us)
            .expect("an auto-resizing histogram takes any other");
        self.operations += other.operations;
        self.reads += other.reads;
        self.writes += other.writes;
        self.reads_not_found += other.reads_not_found;
        for (code, count) in &other.errors_by_code {
            *self.errors_by_code.entry(code.clone()).or_default() += count;
        }
    }
}

/// Why the measured run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Every one of the `--total` requests was sent.
    OperationsReached,
    /// `--duration` (or the run-time limit) passed.
    DurationReached,
}

impl StopReason {
    fn name(self) -> &'static str {
        match self {
            StopReason::OperationsReached => "total",
            StopReason::DurationReached => "duration",
        }
    }
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The settings.
    pub plan: Plan,
    /// Every client's tally, merged.
    pub tally: Tally,
    /// From the first request sent to the last answer.
    pub elapsed: Duration,
    /// Why it ended.
    pub stop_reason: StopReason,
}

/// Latency percentiles reported, as (name in text, JSON field suffix, quantile).
const PERCENTILES: [(&str, &str, f64); 4] = [
    ("p50", "p50", 0.50),
    ("p90", "p90", 0.90),
    ("p99", "p99", 0.99),
    ("p99.9", "p99_9", 0.999),
];

/// `1234` µs as `1.234` (milliseconds with microsecond precision).
pub fn milliseconds_text(microseconds: u64) -> String {
    format!("{}.{:03}", microseconds / 1_000, microseconds % 1_000)
}

impl Summary {
    /// Succeeded requests per second.
    pub fn throughput_per_second(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.tally.succeeded() as f64 / seconds
        } else {
            0.0
        }
    }

    /// The latency at `quantile` in microseconds; 0 with no succeeded request.
    fn latency_us_at(&self, quantile: f64) -> u64 {
        if self.tally.latency_us.is_empty() {
            0
        } else {
            self.tally.latency_us.value_at_quantile(quantile)
        }
    }

    /// True when requests were made and none succeeded.
    pub fn every_request_failed(&self) -> bool {
        self.tally.succeeded() == 0
    }

    /// One line of errors, `UNAVAILABLE 3, DEADLINE_EXCEEDED 1`, or `0`.
    fn errors_text(&self) -> String {
        if self.tally.errors_by_code.is_empty() {
            return "0".into();
        }
        let by_code: Vec<String> = self
            .tally
            .errors_by_code
            .iter()
            .map(|(code, count)| format!("{code} {count}"))
            .collect();
        format!("{} ({})", self.tally.errors(), by_code.join(", "))
    }

    /// The short table for people.
    pub fn text(&self) -> String {
        let plan = &self.plan;
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut workload = plan.workload.name().to_string();
        if plan.read_ratio > 0.0 {
            workload += &format!(" ({} reads)", plan.consistency.name());
        }
        if plan.protocol != Protocol::Kvstore {
            workload += &format!(" via the {} API", plan.protocol.name());
        }
        rows.push(("workload".into(), workload));
        rows.push((
            "clients".into(),
            format!(
                "{} over {} connection{} to {}",
                plan.clients,
                plan.connections,
                if plan.connections == 1 { "" } else { "s" },
                plan.endpoints_used().join(",")
            ),
        ));
        rows.push(("operations".into(), self.tally.operations.to_string()));
        if plan.read_ratio > 0.0 && plan.read_ratio < 1.0 {
            rows.push((
                "reads/writes".into(),
                format!("{}/{}", self.tally.reads, self.tally.writes),
            ));
        }
        if self.tally.reads_not_found > 0 {
            rows.push((
                "reads not found".into(),
                self.tally.reads_not_found.to_string(),
            ));
        }
        rows.push(("errors".into(), self.errors_text()));
        rows.push((
            "elapsed".into(),
            format!(
                "{:.3} s (stopped by {})",
                self.elapsed.as_secs_f64(),
                self.stop_reason.name()
            ),
        ));
        rows.push((
            "throughput".into(),
            format!("{:.1} ops/s", self.throughput_per_second()),
        ));
        for (name, _, quantile) in PERCENTILES {
            rows.push((
                format!("latency {name}"),
                format!("{} ms", milliseconds_text(self.latency_us_at(quantile))),
            ));
        }
        rows.push((
            "latency max".into(),
            format!("{} ms", milliseconds_text(self.tally.latency_us.max())),
        ));
        let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(name, value)| format!("{name:<width$}  {value}\n"))
            .collect()
    }

    /// One JSON object for scripts: latencies in microseconds, units last.
    pub fn json(&self) -> Value {
        let plan = &self.plan;
        let mut object = json!({
            "workload": plan.workload.name(),
            "protocol": plan.protocol.name(),
            "clients": plan.clients,
            "connections": plan.connections,
            "endpoints": plan.endpoints_used(),
            "key_size_bytes": plan.key_size_bytes,
            "value_size_bytes": plan.value_size_bytes,
            "keyspace": plan.keyspace,
            "read_ratio": plan.read_ratio,
            "consistency": if plan.read_ratio > 0.0 { Value::from(plan.consistency.name()) } else { Value::Null },
            "prefill": plan.prefill,
            "seed": plan.seed,
            "stopped_by": self.stop_reason.name(),
            "operations": self.tally.operations,
            "operations_succeeded": self.tally.succeeded(),
            "reads": self.tally.reads,
            "writes": self.tally.writes,
            "reads_not_found": self.tally.reads_not_found,
            "errors": self.tally.errors(),
            "errors_by_code": self.tally.errors_by_code,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "throughput_ops_per_s": self.throughput_per_second(),
            "latency_us_min": if self.tally.latency_us.is_empty() { 0 } else { self.tally.latency_us.min() },
            "latency_us_mean": self.tally.latency_us.mean(),
        });
        let fields = object.as_object_mut().expect("a JSON object");
        for (_, suffix, quantile) in PERCENTILES {
            fields.insert(
                format!("latency_us_{suffix}"),
                Value::from(self.latency_us_at(quantile)),
            );
        }
        fields.insert(
            "latency_us_max".into(),
            Value::from(self.tally.latency_us.max()),
        );
        object
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{Cli, Command};

    fn plan(line: &str) -> Plan {
        let cli = Cli::try_parse_from(line.split_whitespace()).unwrap();
        match &cli.command {
            Command::Bench(arguments) => Plan::new(arguments, &cli.endpoints).unwrap(),
            other => panic!("not bench: {other:?}"),
        }
    }

    /// 100 requests of 1..=100 ms, 2 of them failed.
    fn summary() -> Summary {
        let mut first = Tally::default();
        let mut second = Tally::default();
        for milliseconds in 1..=100 {
            let tally = if milliseconds % 2 == 0 {
                &mut first
            } else {
                &mut second
            };
            tally.record_success(Duration::from_millis(milliseconds));
        }
        first.reads = 60;
        second.writes = 40;
        first.record_error("UNAVAILABLE".into());
        second.record_error("UNAVAILABLE".into());
        second.record_error("DEADLINE_EXCEEDED".into());
        let mut tally = Tally::default();
        tally.merge(&first);
        tally.merge(&second);
        Summary {
            plan: plan(
                "kvstore-cli --endpoints a:1,b:2 bench mixed --clients 8 --conns 2 --ratio 0.6",
            ),
            tally,
            elapsed: Duration::from_secs(2),
            stop_reason: StopReason::OperationsReached,
        }
    }

    #[test]
    fn tallies_merge() {
        let summary = summary();
        assert_eq!(summary.tally.operations, 103);
        assert_eq!(summary.tally.succeeded(), 100);
        assert_eq!(summary.tally.errors(), 3);
        assert_eq!(summary.tally.errors_by_code["UNAVAILABLE"], 2);
        assert_eq!((summary.tally.reads, summary.tally.writes), (60, 40));
        assert_eq!(summary.tally.latency_us.len(), 100);
        assert_eq!(summary.throughput_per_second(), 50.0);
        assert!(!summary.every_request_failed());
    }

    #[test]
    fn json_has_unit_suffixed_fields() {
        let json = summary().json();
        assert_eq!(json["workload"], "mixed");
        assert_eq!(json["protocol"], "kvstore");
        assert_eq!(json["operations"], 103);
        assert_eq!(json["operations_succeeded"], 100);
        assert_eq!(json["errors"], 3);
        assert_eq!(json["errors_by_code"]["DEADLINE_EXCEEDED"], 1);
        assert_eq!(json["elapsed_s"], 2.0);
        assert_eq!(json["throughput_ops_per_s"], 50.0);
        assert_eq!(json["endpoints"], json!(["a:1", "b:2"]));
        assert_eq!(json["consistency"], "linearizable");
        assert_eq!(json["read_ratio"], 0.6);
        // 3 significant digits: each value within 0.1% of the exact one.
        for (field, exact_us) in [
            ("latency_us_p50", 50_000.0),
            ("latency_us_p90", 90_000.0),
            ("latency_us_p99", 99_000.0),
            ("latency_us_p99_9", 100_000.0),
            ("latency_us_max", 100_000.0),
            ("latency_us_min", 1_000.0),
        ] {
            let value = json[field]
                .as_u64()
                .unwrap_or_else(|| panic!("{field} missing")) as f64;
            assert!(
                (value - exact_us).abs() <= exact_us * 0.001,
                "{field} = {value}"
            );
        }
        assert!(json.get("latency_ms_p50").is_none());
    }

    #[test]
    fn text_is_a_short_table_in_milliseconds() {
        let text = summary().text();
        assert!(
            text.contains("workload       mixed (linearizable reads)\n"),
            "{text}"
        );
        assert!(
            text.contains("clients        8 over 2 connections to a:1,b:2\n"),
            "{text}"
        );
        assert!(text.contains("operations     103\n"), "{text}");
        assert!(text.contains("reads/writes   60/40\n"), "{text}");
        assert!(
            text.contains("errors         3 (DEADLINE_EXCEEDED 1, UNAVAILABLE 2)\n"),
            "{text}"
        );
        assert!(text.contains("throughput     50.0 ops/s\n"), "{text}");
        assert!(text.contains("latency p50    50.0"), "{text}");
        assert!(text.contains("latency p99.9  100."), "{text}");
        assert!(text.contains("latency max    100."), "{text}");
        assert!(
            text.contains("elapsed        2.000 s (stopped by total)\n"),
            "{text}"
        );
    }

    #[test]
    fn milliseconds_keep_microseconds() {
        assert_eq!(milliseconds_text(1_234), "1.234");
        assert_eq!(milliseconds_text(7), "0.007");
        assert_eq!(milliseconds_text(12_000), "12.000");
    }

    #[test]
    fn a_run_with_only_errors_reports_zero_latency() {
        let mut tally = Tally::default();
        tally.record_error("UNAVAILABLE".into());
        let summary = Summary {
            plan: plan("kvstore-cli bench put"),
            tally,
            elapsed: Duration::from_millis(5),
            stop_reason: StopReason::OperationsReached,
        };
        assert!(summary.every_request_failed());
        let json = summary.json();
        assert_eq!(json["latency_us_p50"], 0);
        assert_eq!(json["latency_us_max"], 0);
        assert_eq!(json["consistency"], Value::Null);
        assert!(summary
            .text()
            .contains("errors         1 (UNAVAILABLE 1)\n"));
    }

    #[test]
    fn large_latencies_grow_the_histogram() {
        let mut tally = Tally::default();
        tally.record_success(Duration::from_secs(600));
        assert!(tally.latency_us.max() >= 599_000_000);
    }
}
