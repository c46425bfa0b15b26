//! `kvstore-cli`: put, get, delete, txn, compact, status, watch, lease, lock,
//! elect and bench against a
//! kvstore cluster.
//!
//! Every failure is one line on stderr and an exit code (see `--help`); the
//! program never panics on a network or server error.

mod args;
mod bench;
mod client;
mod kv;
mod lease;
mod output;
mod recipes;
mod txn_syntax;
mod watch;

use std::ffi::OsString;
use std::io::{IsTerminal, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use clap::Parser;
use kvstore_proto::kv::v1::{Consistency, DeleteRequest, GetRequest, PutRequest, StatusRequest};
use serde_json::{json, Value};

use args::{Cli, Command, OutputFormat, EXIT_FAILED, EXIT_KEY_NOT_FOUND, EXIT_OK, EXIT_USAGE};
use client::{with_any_endpoint, Failure};

/// What a command produced: an exit code, having printed its output.
pub(crate) type Outcome = Result<u8, Failure>;

fn key_bytes(cli: &Cli, key: &OsString) -> Result<Vec<u8>, Failure> {
    let raw = key.as_bytes();
    if cli.hex_key {
        let text = std::str::from_utf8(raw)
            .map_err(|_| Failure("--hex-key: the key is not hex".into()))?;
        decode_hex(text).ok_or_else(|| {
            Failure(format!(
                "--hex-key: {text:?} is not an even-length hex string"
            ))
        })
    } else {
        Ok(raw.to_vec())
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|position| u8::from_str_radix(text.get(position..position + 2)?, 16).ok())
        .collect()
}

/// Completes when the user interrupts (Ctrl-C) or the process is asked to
/// terminate (SIGTERM): long-running commands then clean up (a lock is
/// released, a candidate resigns) and exit.
pub(crate) async fn interrupted() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

pub(crate) fn print_json(value: &Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|error| Failure(error.to_string()))?;
    write_stdout(format!("{text}\n").as_bytes())
}

pub(crate) fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(|error| Failure(format!("cannot write to stdout: {error}")))
}

pub(crate) fn print_header(
    cli: &Cli,
    endpoint: &str,
    header: Option<&kvstore_proto::kv::v1::ResponseHeader>,
) {
    if cli.verbose {
        eprintln!("{}", output::header_line(endpoint, header));
    }
}

async fn put(cli: &Cli, key: &OsString, value: &OsString, prev_kv: bool, lease: i64) -> Outcome {
    let key = key_bytes(cli, key)?;
    let value = if value.as_bytes() == b"-" {
        let mut value = Vec::new();
        std::io::stdin()
            .read_to_end(&mut value)
            .map_err(|error| Failure(format!("cannot read the value from stdin: {error}")))?;
        value
    } else {
        value.as_bytes().to_vec()
    };
    let request = PutRequest {
        key,
        value,
        prev_kv,
        lease,
        ..PutRequest::default()
    };
    if prev_kv {
        return kv::put_prev_kv(cli, request).await;
    }
    let (endpoint, response) = with_any_endpoint(&cli.endpoints, cli.timeout, |mut client| {
        let request = request.clone();
        async move { client.put(request).await.map(tonic::Response::into_inner) }
    })
    .await?;
    match cli.write_out {
        OutputFormat::Json => {
            print_json(&json!({ "header": output::header_json(response.header.as_ref()) }))?
        }
        _ => write_stdout(b"OK\n")?,
    }
    print_header(cli, &endpoint, response.header.as_ref());
    Ok(EXIT_OK)
}

async fn get(
    cli: &Cli,
    key_argument: &OsString,
    range_end: Option<&OsString>,
    consistency: args::Consistency,
    range: &args::RangeArgs,
) -> Outcome {
    let key = key_bytes(cli, key_argument)?;
    let consistency = match consistency {
        args::Consistency::Linearizable => Consistency::Linearizable,
        args::Consistency::Serializable => Consistency::Serializable,
    };
    if range_end.is_some() || range.any() || cli.write_out == OutputFormat::Table {
        let range_end = range_end.map(|end| key_bytes(cli, end)).transpose()?;
        let range_end = kv::range_end_for(&key, range_end, range.prefix, range.from_key);
        let request = kv::range_request(key, range_end, range, consistency);
        return kv::range(cli, request).await;
    }
    let request = GetRequest {
        key: key.clone(),
        consistency: consistency as i32,
    };
    let (endpoint, response) = with_any_endpoint(&cli.endpoints, cli.timeout, |mut client| {
        let request = request.clone();
        async move { client.get(request).await.map(tonic::Response::into_inner) }
    })
    .await?;
    match cli.write_out {
        OutputFormat::Json => {
            let mut object = serde_json::Map::new();
            output::insert_bytes(&mut object, "key", &key);
            object.insert("found".into(), Value::Bool(response.found));
            if response.found {
                output::insert_bytes(&mut object, "value", &response.value);
            }
            object.insert(
                "header".into(),
                output::header_json(response.header.as_ref()),
            );
            print_json(&Value::Object(object))?;
        }
        _ if response.found => {
            write_stdout(&response.value)?;
            if std::io::stdout().is_terminal() {
                write_stdout(b"\n")?;
            }
        }
        _ => {}
    }
    print_header(cli, &endpoint, response.header.as_ref());
    if response.found {
        Ok(EXIT_OK)
    } else {
        eprintln!(
            "kvstore-cli: key not found: {}",
            key_argument.to_string_lossy()
        );
        Ok(EXIT_KEY_NOT_FOUND)
    }
}

async fn delete(
    cli: &Cli,
    key: &OsString,
    range_end: Option<&OsString>,
    prefix: bool,
    from_key: bool,
    prev_kv: bool,
) -> Outcome {
    if range_end.is_some() || prefix || from_key || prev_kv {
        let key = key_bytes(cli, key)?;
        let range_end = range_end.map(|end| key_bytes(cli, end)).transpose()?;
        let range_end = kv::range_end_for(&key, range_end, prefix, from_key);
        let request = kvstore_proto::kv::v1::DeleteRangeRequest {
            key,
            range_end,
            prev_kv,
        };
        return kv::delete_range(cli, request).await;
    }
    let request = DeleteRequest {
        key: key_bytes(cli, key)?,
    };
    let (endpoint, response) = with_any_endpoint(&cli.endpoints, cli.timeout, |mut client| {
        let request = request.clone();
        async move {
            client
                .delete(request)
                .await
                .map(tonic::Response::into_inner)
        }
    })
    .await?;
    match cli.write_out {
        OutputFormat::Json => print_json(&json!({
            "deleted": response.deleted,
            "header": output::header_json(response.header.as_ref()),
        }))?,
        // Like etcdctl: the number of keys deleted.
        _ => write_stdout(if response.deleted { b"1\n" } else { b"0\n" })?,
    }
    print_header(cli, &endpoint, response.header.as_ref());
    Ok(EXIT_OK)
}

async fn fetch_statuses(cli: &Cli) -> Vec<output::EndpointStatus> {
    let queries = cli.endpoints.iter().map(|endpoint| async move {
        let result = async {
            let mut client = client::connect(endpoint, cli.timeout)
                .await
                .map_err(|failure| failure.0)?;
            let response = tokio::time::timeout(cli.timeout, client.status(StatusRequest {}))
                .await
                .map_err(|_| format!("DEADLINE_EXCEEDED (no answer within {:?})", cli.timeout))?;
            response
                .map(tonic::Response::into_inner)
                .map_err(|status| client::describe_status(endpoint, &status).0)
        }
        .await;
        (endpoint.clone(), result)
    });
    futures::future::join_all(queries).await
}

async fn status(cli: &Cli) -> Outcome {
    let statuses = fetch_statuses(cli).await;
    match cli.write_out {
        OutputFormat::Json => print_json(&output::status_json(&statuses))?,
        OutputFormat::Table => write_stdout(output::status_table(&statuses).as_bytes())?,
        OutputFormat::Text => write_stdout(output::status_text(&statuses).as_bytes())?,
    }
    let failed = statuses
        .iter()
        .filter(|(_, status)| status.is_err())
        .count();
    if failed > 0 {
        eprintln!(
            "kvstore-cli: {failed} of {} endpoints did not answer",
            statuses.len()
        );
        return Ok(EXIT_FAILED);
    }
    Ok(EXIT_OK)
}

/// Redraws the cluster table every `interval` (in place on a terminal)
/// until interrupted or `count` refreshes were shown.
async fn watch_status(cli: &Cli, interval: std::time::Duration, count: Option<u64>) -> Outcome {
    let on_terminal = std::io::stdout().is_terminal();
    let mut shown = 0u64;
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(EXIT_OK),
        }
        let statuses = fetch_statuses(cli).await;
        let mut frame = String::new();
        if on_terminal {
            frame.push_str("\x1b[H\x1b[2J");
        } else if shown > 0 {
            frame.push('\n');
        }
        frame.push_str(&output::watch_header(&statuses, interval));
        frame.push_str(&output::status_table(&statuses));
        write_stdout(frame.as_bytes())?;
        shown += 1;
        if count.is_some_and(|count| shown >= count) {
            return Ok(EXIT_OK);
        }
    }
}

async fn run(cli: &Cli) -> Outcome {
    match &cli.command {
        Command::Put {
            key,
            value,
            prev_kv,
            lease,
        } => {
            let lease = lease.as_deref().map(lease::parse_id).transpose()?;
            put(cli, key, value, *prev_kv, lease.unwrap_or(0)).await
        }
        Command::Lease(command) => lease::run(cli, command).await,
        Command::Lock { name, command, ttl } => {
            recipes::lock(cli, &key_bytes(cli, name)?, command, *ttl).await
        }
        Command::Elect {
            name, listen: true, ..
        } => recipes::observe(cli, &key_bytes(cli, name)?).await,
        Command::Elect {
            name,
            proposal,
            ttl,
            ..
        } => {
            let proposal = proposal
                .as_ref()
                .ok_or_else(|| Failure("elect: give a PROPOSAL, or -l to observe".into()))?;
            recipes::campaign(cli, &key_bytes(cli, name)?, proposal.as_bytes(), *ttl).await
        }
        Command::Get {
            key,
            range_end,
            consistency,
            range,
        } => get(cli, key, range_end.as_ref(), *consistency, range).await,
        Command::Delete {
            key,
            range_end,
            prefix,
            from_key,
            prev_kv,
        } => delete(cli, key, range_end.as_ref(), *prefix, *from_key, *prev_kv).await,
        Command::Txn { interactive } => kv::txn(cli, *interactive).await,
        Command::Compact { revision, physical } => kv::compact(cli, *revision, *physical).await,
        Command::Status { watch: false, .. } => status(cli).await,
        Command::Status {
            watch: true,
            interval,
            count,
        } => watch_status(cli, *interval, *count).await,
        Command::Watch {
            key,
            range_end,
            prefix,
            from_key,
            rev,
            prev_kv,
            count,
        } => {
            let key = key_bytes(cli, key)?;
            let range_end = range_end
                .as_ref()
                .map(|end| key_bytes(cli, end))
                .transpose()?;
            let range_end = kv::range_end_for(&key, range_end, *prefix, *from_key);
            let args = watch::WatchArgs {
                key,
                range_end,
                start_revision: rev.unwrap_or(0),
                prev_kv: *prev_kv,
                count: *count,
            };
            watch::run(cli, args).await
        }
        Command::Bench(arguments) => bench::run(cli, arguments).await,
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version are "errors" that print to stdout and succeed.
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() {
                EXIT_USAGE
            } else {
                EXIT_OK
            });
        }
    };
    // One request needs one thread; a benchmark's many clients use them
    // all. A benchmark with one client runs on one thread too: its request
    // and its connection's task then wake each other without a second
    // thread, which lowers its latency (measurements: docs/benchmarks.md,
    // "One runtime thread for a one-client bench").
    let mut builder = match &cli.command {
        Command::Bench(bench) if bench.clients > 1 => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kvstore-cli: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("kvstore-cli: {failure}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}
