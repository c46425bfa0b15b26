//! Log set-up: readable text for a terminal, or one JSON object per line.
//!
//! A JSON line carries `timestamp` (RFC 3339, UTC), `level`, `node_id` and
//! `term` (once the server knows them: see [`set_node_id`] and [`set_term`]),
//! `target`, `message`, `request_id` when the event names one, and the
//! event's other fields under `fields`, so ELK or Loki need no parsing
//! rules:
//!
//! ```text
//! {"timestamp":"2025-01-01T10:00:00.000000Z","level":"INFO","node_id":2,"term":3,"target":"kvstore_server::node::driver","message":"raft role or leader changed","fields":{"leader_id":2,"reason":"won election","role":"leader","term":3}}
//! ```

use std::fmt;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// This process's node id (0: not known yet).
static NODE_ID: AtomicU64 = AtomicU64::new(0);
/// The node's current Raft term.
static TERM: AtomicU64 = AtomicU64::new(0);

/// Names this process's node on every JSON log line from now on.
pub fn set_node_id(id: u64) {
    NODE_ID.store(id, Ordering::Relaxed);
}

/// Records the node's current Raft term for every JSON log line (a term
/// never decreases, so an older value is ignored).
pub fn set_term(term: u64) {
    TERM.fetch_max(term, Ordering::Relaxed);
}

/// Installs the global subscriber. Logs go to stderr; `filter` is a level or a
/// tracing filter directive.
pub fn init(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(expand_level(filter))
        .map_err(|error| format!("bad --log-level {filter:?}: {error}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.event_format(JsonLines).try_init(),
    };
    result.map_err(|error| format!("cannot install the logger: {error}"))
}

/// The JSON line format (see the module documentation).
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
    N: for<'writer> FormatFields<'writer> + 'static,
{
    fn format_event(
        &self,
        _context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writer.write_str(&json_line(event))?;
        writer.write_char('\n')
    }
}

/// Collects an event's fields: `message` and `request_id` apart, the rest
/// as JSON values.
#[derive(Default)]
struct JsonFields {
    message: Option<String>,
    request_id: Option<String>,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl JsonFields {
    fn record(&mut self, field: &Field, value: serde_json::Value) {
        match (field.name(), value) {
            ("message", serde_json::Value::String(text)) => self.message = Some(text),
            ("request_id", serde_json::Value::String(text)) => self.request_id = Some(text),
            (name, value) => {
                self.fields.insert(name.to_string(), value);
            }
        }
    }
}

impl Visit for JsonFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(field, format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.record(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record(field, value.to_string().into());
    }
}

/// Appends `"key":value,` to `line`.
fn push_member(line: &mut String, key: &str, value: &serde_json::Value) {
    line.push('"');
    line.push_str(key);
    line.push_str("\":");
    line.push_str(&value.to_string());
    line.push(',');
}

/// One event as a JSON object, keys in a fixed order (timestamp first).
fn json_line(event: &Event<'_>) -> String {
    let mut timestamp = String::new();
    if SystemTime
        .format_time(&mut Writer::new(&mut timestamp))
        .is_err()
    {
        timestamp.clear();
    }
    let mut fields = JsonFields::default();
    event.record(&mut fields);
    let metadata = event.metadata();
    let mut line = String::from("{");
    push_member(&mut line, "timestamp", &timestamp.into());
    push_member(&mut line, "level", &metadata.level().as_str().into());
    let node_id = NODE_ID.load(Ordering::Relaxed);
    if node_id != 0 {
        push_member(&mut line, "node_id", &node_id.into());
        push_member(&mut line, "term", &TERM.load(Ordering::Relaxed).into());
    }
    push_member(&mut line, "target", &metadata.target().into());
    push_member(
        &mut line,
        "message",
        &fields.message.unwrap_or_default().into(),
    );
    if let Some(request_id) = fields.request_id {
        push_member(&mut line, "request_id", &request_id.into());
    }
    if !fields.fields.is_empty() {
        push_member(&mut line, "fields", &fields.fields.into());
    }
    line.pop();
    line.push('}');
    line
}

/// Our crates whose logs a bare level applies to.
const OWN_CRATES: [&str; 4] = [
    "kvstore_server",
    "kvstore_raft",
    "kvstore_wal",
    "kvstore_proto",
];

/// A bare level (`debug`) applies to kvstore's own crates, while the
/// libraries below stay at `warn` (h2 and tonic are very chatty at debug).
/// Anything else is a tracing filter and is used as it is.
fn expand_level(filter: &str) -> String {
    let level = filter.trim();
    let is_bare_level =
        ["error", "warn", "info", "debug", "trace"].contains(&level.to_ascii_lowercase().as_str());
    if !is_bare_level {
        return filter.to_string();
    }
    let mut directives = String::from("warn");
    for name in OWN_CRATES {
        directives.push_str(&format!(",{name}={level}"));
    }
    directives
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_levels_apply_to_our_crates_and_filters_pass_through() {
        assert_eq!(
            expand_level("debug"),
            "warn,kvstore_server=debug,kvstore_raft=debug,kvstore_wal=debug,kvstore_proto=debug"
        );
        assert_eq!(expand_level("info,h2=trace"), "info,h2=trace");
    }

    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_node_term_request_id_message_and_fields() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLines)
            .with_writer(move || writer.clone())
            .finish();
        // The term is a process-wide maximum that other tests raise too
        // (metrics' soft-state test): use one above any of theirs.
        let term = 1 << 40;
        set_node_id(7);
        set_term(term);
        set_term(2);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(request_id = "7-1f", index = 5u64, reason = %"a \"quoted\" word", "committed");
            tracing::warn!("no fields");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect(line))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first = &lines[0];
        assert!(text.starts_with("{\"timestamp\":\""), "{text}");
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["node_id"], 7);
        assert_eq!(first["term"], term);
        assert_eq!(first["message"], "committed");
        assert_eq!(first["request_id"], "7-1f");
        assert_eq!(first["fields"]["index"], 5);
        assert_eq!(first["fields"]["reason"], "a \"quoted\" word");
        assert_eq!(lines[1]["level"], "WARN");
        assert!(lines[1].get("fields").is_none());
        assert!(lines[1].get("request_id").is_none());
    }
}
