//! `watch`: prints the events of a key or range until interrupted, as
//! etcdctl does, and resumes on another endpoint from the next revision
//! when the node it watches goes away, so nothing is missed or repeated.

use std::time::Duration;

use kvstore_proto::kv::v1 as pb;
use pb::watch_client::WatchClient;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::args::{Cli, OutputFormat, EXIT_FAILED, EXIT_OK};
use crate::client::{self, Failure};
use crate::kv::key_value_json;
use crate::{write_stdout, Outcome};

/// Pause before trying the endpoints again when none serves the watch.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Rounds over every endpoint before giving up.
const ROUNDS_MAX: usize = 20;

/// What to watch.
#[derive(Debug, Clone)]
pub struct WatchArgs {
    /// The key, or the first of the range.
    pub key: Vec<u8>,
    /// Past the last key (empty: the key alone).
    pub range_end: Vec<u8>,
    /// The first revision (0: the next one).
    pub start_revision: i64,
    /// Print each event's previous pair.
    pub prev_kv: bool,
    /// Stop after this many events.
    pub count: Option<u64>,
}

/// Why one stream ended.
enum StreamEnd {
    /// Done: interrupted or `count` events printed.
    Finished,
    /// The node went away; resume elsewhere.
    Lost(String),
    /// The server cancelled the watch (compaction, a refusal): final.
    Canceled(String),
}

/// Runs the watch until Ctrl-C, `count` events, or a cancellation.
pub async fn run(cli: &Cli, args: WatchArgs) -> Outcome {
    let mut next = args.start_revision;
    let mut printed = 0u64;
    let mut failures = 0usize;
    let endpoints = cli.endpoints.len().max(1);
    let mut at = 0usize;
    loop {
        let endpoint = &cli.endpoints[at % cli.endpoints.len()];
        match watch_on(cli, endpoint, &args, &mut next, &mut printed).await {
            Ok(StreamEnd::Finished) => return Ok(EXIT_OK),
            Ok(StreamEnd::Canceled(reason)) => {
                return Err(Failure(format!("{endpoint}: watch cancelled: {reason}")))
            }
            Ok(StreamEnd::Lost(reason)) | Err(Failure(reason)) => {
                eprintln!("kvstore-cli: watch: {reason}; resuming from revision {next} on the next endpoint");
                failures += 1;
                if failures >= ROUNDS_MAX * endpoints {
                    eprintln!("kvstore-cli: watch: no endpoint served the watch");
                    return Ok(EXIT_FAILED);
                }
                at += 1;
                if at.is_multiple_of(endpoints) {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }
}

/// One stream on `endpoint`; `next` follows the events printed.
async fn watch_on(
    cli: &Cli,
    endpoint: &str,
    args: &WatchArgs,
    next: &mut i64,
    printed: &mut u64,
) -> Result<StreamEnd, Failure> {
    let channel = client::connect_for_streams(endpoint, cli.timeout).await?;
    let mut watch = WatchClient::new(channel).max_decoding_message_size(usize::MAX);
    let (requests, outgoing) = mpsc::channel(1);
    let create = pb::WatchCreateRequest {
        key: args.key.clone(),
        range_end: args.range_end.clone(),
        start_revision: *next,
        prev_kv: args.prev_kv,
        ..pb::WatchCreateRequest::default()
    };
    requests
        .send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
        })
        .await
        .map_err(|_| Failure("the request stream closed".into()))?;
    let mut responses = watch
        .watch(ReceiverStream::new(outgoing))
        .await
        .map_err(|status| client::describe_status(endpoint, &status))?
        .into_inner();
    loop {
        let response = tokio::select! {
            response = responses.message() => response,
            _ = crate::interrupted() => return Ok(StreamEnd::Finished),
        };
        let response = match response {
            Ok(Some(response)) => response,
            Ok(None) => return Ok(StreamEnd::Lost(format!("{endpoint}: the stream ended"))),
            Err(status) => {
                return Ok(StreamEnd::Lost(
                    client::describe_status(endpoint, &status).0,
                ))
            }
        };
        if response.canceled {
            let reason = if response.compact_revision > 0 {
                format!(
                    "revision {} is compacted (compacted at {}): {}",
                    *next, response.compact_revision, response.cancel_reason
                )
            } else {
                response.cancel_reason
            };
            return Ok(StreamEnd::Canceled(reason));
        }
        if response.created && *next == 0 {
            // "From now": the next revision after the one the node had.
            *next = response
                .header
                .as_ref()
                .map_or(0, |header| header.revision + 1);
        }
        for event in &response.events {
            print_event(cli.write_out, event)?;
            if let Some(kv) = &event.kv {
                *next = kv.mod_revision + 1;
            }
            *printed += 1;
            if args.count.is_some_and(|count| *printed >= count) {
                return Ok(StreamEnd::Finished);
            }
        }
        // Keep the request side open (the server would keep the watch
        // anyway, as etcd does).
        let _ = &requests;
    }
}

fn event_type(event: &pb::Event) -> &'static str {
    match event.r#type() {
        pb::EventType::Delete => "DELETE",
        _ => "PUT",
    }
}

/// One event: etcdctl's lines (type, [previous key and value,] key,
/// value), or one JSON object per line.
fn print_event(format: OutputFormat, event: &pb::Event) -> Result<(), Failure> {
    let kv = event.kv.clone().unwrap_or_default();
    if format == OutputFormat::Json {
        let mut object = Map::new();
        object.insert("type".into(), event_type(event).into());
        object.insert("kv".into(), key_value_json(&kv));
        if let Some(previous) = &event.prev_kv {
            object.insert("prev_kv".into(), key_value_json(previous));
        }
        let line = serde_json::to_string(&Value::Object(object))
            .map_err(|error| Failure(error.to_string()))?;
        return write_stdout(format!("{line}\n").as_bytes());
    }
    let mut text = Vec::new();
    text.extend_from_slice(event_type(event).as_bytes());
    text.push(b'\n');
    if let Some(previous) = &event.prev_kv {
        text.extend_from_slice(&previous.key);
        text.push(b'\n');
        text.extend_from_slice(&previous.value);
        text.push(b'\n');
    }
    text.extend_from_slice(&kv.key);
    text.push(b'\n');
    text.extend_from_slice(&kv.value);
    text.push(b'\n');
    write_stdout(&text)
}
