//! How results are printed: text for people and pipelines, JSON for scripts,
//! a table for status.

use base64::Engine;
use kvstore_proto::kv::v1::{ResponseHeader, Role, StatusResponse};
use kvstore_proto::status::role_name;
use serde_json::{json, Map, Value};

/// The header as JSON.
pub fn header_json(header: Option<&ResponseHeader>) -> Value {
    let header = header.cloned().unwrap_or_default();
    json!({
        "node_id": header.node_id,
        "leader_id": header.leader_id,
        "term": header.term,
        "index": header.index,
        "forwarded_by": header.forwarded_by,
        "revision": header.revision,
    })
}

/// The header as one line for `-v`.
pub fn header_line(endpoint: &str, header: Option<&ResponseHeader>) -> String {
    let header = header.cloned().unwrap_or_default();
    let forwarded = if header.forwarded_by == 0 {
        "-".to_string()
    } else {
        header.forwarded_by.to_string()
    };
    format!(
        "endpoint={endpoint} node={} leader={} term={} index={} revision={} forwarded_by={forwarded}",
        header.node_id, header.leader_id, header.term, header.index, header.revision
    )
}

/// Bytes as JSON: always `<name>_base64`, plus `<name>` when valid UTF-8.
pub fn insert_bytes(object: &mut serde_json::Map<String, Value>, name: &str, bytes: &[u8]) {
    object.insert(
        format!("{name}_base64"),
        Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
    );
    if let Ok(text) = std::str::from_utf8(bytes) {
        object.insert(name.to_string(), Value::String(text.to_string()));
    }
}

/// One endpoint's status, or why it could not be had.
pub type EndpointStatus = (String, Result<StatusResponse, String>);

/// Status of every endpoint as a JSON array.
pub fn status_json(statuses: &[EndpointStatus]) -> Value {
    Value::Array(
        statuses
            .iter()
            .map(|(endpoint, status)| match status {
                Ok(status) => {
                    let mut document = Map::new();
                    document.insert("endpoint".into(), endpoint.as_str().into());
                    document.extend(kvstore_proto::status::status_json(status));
                    Value::Object(document)
                }
                Err(error) => json!({ "endpoint": endpoint, "error": error }),
            })
            .collect(),
    )
}

const STATUS_COLUMNS: [&str; 10] = [
    "ENDPOINT",
    "ID",
    "ROLE",
    "TERM",
    "LEADER",
    "COMMIT",
    "APPLIED",
    "LAG",
    "LAST INDEX",
    "ERROR",
];

/// The highest commit index any endpoint reported: what "caught up" means.
fn highest_commit(statuses: &[EndpointStatus]) -> u64 {
    statuses
        .iter()
        .filter_map(|(_, status)| status.as_ref().ok())
        .map(|status| status.commit_index)
        .max()
        .unwrap_or(0)
}

/// The line above the table in `status --watch`: the leader, its term, the time.
pub fn watch_header(statuses: &[EndpointStatus], interval: std::time::Duration) -> String {
    let leaders: Vec<&StatusResponse> = statuses
        .iter()
        .filter_map(|(_, status)| status.as_ref().ok())
        .filter(|status| Role::try_from(status.role) == Ok(Role::Leader))
        .collect();
    let leader = match leaders.as_slice() {
        [leader] => format!("leader {} (term {})", leader.id, leader.term),
        [] => "NO LEADER".to_string(),
        many => format!("{} nodes claim to lead", many.len()),
    };
    let answered = statuses.iter().filter(|(_, status)| status.is_ok()).count();
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!(
        "kvstore cluster: {leader}, {answered}/{} nodes answering, refreshed every {interval:?} (unix time {seconds}); Ctrl-C to quit\n",
        statuses.len()
    )
}

fn status_row(
    endpoint: &str,
    status: &Result<StatusResponse, String>,
    highest_commit: u64,
) -> [String; 10] {
    match status {
        Ok(status) => [
            endpoint.to_string(),
            status.id.to_string(),
            role_name(status.role).to_string(),
            status.term.to_string(),
            status.leader_id.to_string(),
            status.commit_index.to_string(),
            status.applied_index.to_string(),
            highest_commit
                .saturating_sub(status.applied_index)
                .to_string(),
            status.last_log_index.to_string(),
            String::new(),
        ],
        Err(error) => {
            let mut row: [String; 10] = Default::default();
            row[0] = endpoint.to_string();
            row[9] = error.clone();
            row
        }
    }
}

/// Status of every endpoint as an aligned table with borders, like
/// `etcdctl endpoint status -w table`.
pub fn status_table(statuses: &[EndpointStatus]) -> String {
    let highest_commit = highest_commit(statuses);
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|(endpoint, status)| status_row(endpoint, status, highest_commit).to_vec())
        .collect();
    table(&STATUS_COLUMNS, &rows)
}

/// An aligned table with borders, as etcdctl's `-w table`.
pub fn table(columns: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = columns.iter().map(|column| column.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let border: String = {
        let cells: Vec<String> = widths.iter().map(|width| "-".repeat(width + 2)).collect();
        format!("+{}+\n", cells.join("+"))
    };
    let line = |cells: &[String]| -> String {
        let cells: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!(" {cell:<width$} "))
            .collect();
        format!("|{}|\n", cells.join("|"))
    };
    let mut table = border.clone();
    table += &line(
        &columns
            .iter()
            .map(|column| column.to_string())
            .collect::<Vec<_>>(),
    );
    table += &border;
    for row in rows {
        table += &line(row);
    }
    table += &border;
    table
}

/// Status of every endpoint as plain lines.
pub fn status_text(statuses: &[EndpointStatus]) -> String {
    let mut text = String::new();
    for (endpoint, status) in statuses {
        match status {
            Ok(status) => {
                text += &format!(
                    "{endpoint}: id={} role={} term={} leader={} commit={} applied={} last_index={}\n",
                    status.id,
                    role_name(status.role),
                    status.term,
                    status.leader_id,
                    status.commit_index,
                    status.applied_index,
                    status.last_log_index
                );
            }
            Err(error) => text += &format!("{endpoint}: error: {error}\n"),
        }
    }
    text
}
