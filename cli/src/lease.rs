//! `lease grant|revoke|keep-alive|timetolive|list`, as etcdctl's: lease ids
//! are printed and read in hex. Also the keep-alive loop that the lock and
//! election recipes run for their session lease.

use std::time::Duration;

use kvstore_proto::kv::v1 as pb;
use pb::lease_client::LeaseClient;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::args::{Cli, LeaseCommand, OutputFormat, EXIT_FAILED, EXIT_OK};
use crate::client::{self, Failure};
use crate::{print_header, print_json, write_stdout, Outcome};

/// Parses a lease id as etcdctl prints it (hex).
pub fn parse_id(text: &str) -> Result<i64, Failure> {
    i64::from_str_radix(text.trim_start_matches("0x"), 16)
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            Failure(format!(
                "{text:?} is not a lease id (hex, as `lease grant` prints it)"
            ))
        })
}

/// A lease client on the first endpoint that answers.
pub async fn connect(cli: &Cli, streams: bool) -> Result<(String, LeaseClient<Channel>), Failure> {
    let request_timeout = (!streams).then_some(cli.timeout);
    let (endpoint, channel) =
        client::first_channel(&cli.endpoints, cli.timeout, request_timeout).await?;
    Ok((endpoint, LeaseClient::new(channel)))
}

fn failed(endpoint: &str, status: &tonic::Status) -> Failure {
    client::describe_status(endpoint, status)
}

/// Grants a lease; returns its id and TTL.
pub async fn grant(cli: &Cli, ttl: i64) -> Result<(String, pb::LeaseGrantResponse), Failure> {
    let (endpoint, mut leases) = connect(cli, false).await?;
    let response = leases
        .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
        .await
        .map_err(|status| failed(&endpoint, &status))?
        .into_inner();
    Ok((endpoint, response))
}

/// Runs one `lease` subcommand.
pub async fn run(cli: &Cli, command: &LeaseCommand) -> Outcome {
    match command {
        LeaseCommand::Grant { ttl } => {
            let (endpoint, granted) = grant(cli, *ttl).await?;
            match cli.write_out {
                OutputFormat::Json => print_json(&json!({
                    "id": granted.id, "id_hex": format!("{:x}", granted.id), "ttl": granted.ttl,
                    "header": crate::output::header_json(granted.header.as_ref()),
                }))?,
                _ => write_stdout(
                    format!(
                        "lease {:x} granted with TTL({}s)\n",
                        granted.id, granted.ttl
                    )
                    .as_bytes(),
                )?,
            }
            print_header(cli, &endpoint, granted.header.as_ref());
            Ok(EXIT_OK)
        }
        LeaseCommand::Revoke { id } => {
            let id = parse_id(id)?;
            let (endpoint, mut leases) = connect(cli, false).await?;
            let response = leases
                .lease_revoke(pb::LeaseRevokeRequest { id })
                .await
                .map_err(|status| failed(&endpoint, &status))?
                .into_inner();
            match cli.write_out {
                OutputFormat::Json => print_json(&json!({
                    "id": id, "header": crate::output::header_json(response.header.as_ref()),
                }))?,
                _ => write_stdout(format!("lease {id:x} revoked\n").as_bytes())?,
            }
            print_header(cli, &endpoint, response.header.as_ref());
            Ok(EXIT_OK)
        }
        LeaseCommand::KeepAlive { id, once } => keep_alive_command(cli, parse_id(id)?, *once).await,
        LeaseCommand::Timetolive { id, keys } => {
            let id = parse_id(id)?;
            let (endpoint, mut leases) = connect(cli, false).await?;
            let response = leases
                .lease_time_to_live(pb::LeaseTimeToLiveRequest { id, keys: *keys })
                .await
                .map_err(|status| failed(&endpoint, &status))?
                .into_inner();
            match cli.write_out {
                OutputFormat::Json => print_json(&json!({
                    "id": id, "ttl": response.ttl, "granted_ttl": response.granted_ttl,
                    "keys": response.keys.iter().map(|key| String::from_utf8_lossy(key).into_owned()).collect::<Vec<_>>(),
                    "header": crate::output::header_json(response.header.as_ref()),
                }))?,
                _ if response.ttl < 0 => {
                    write_stdout(format!("lease {id:x} already expired\n").as_bytes())?
                }
                _ => {
                    let mut line = format!(
                        "lease {id:x} granted with TTL({}s), remaining({}s)",
                        response.granted_ttl, response.ttl
                    );
                    if *keys {
                        let names: Vec<String> = response
                            .keys
                            .iter()
                            .map(|key| String::from_utf8_lossy(key).into_owned())
                            .collect();
                        line += &format!(", attached keys([{}])", names.join(" "));
                    }
                    write_stdout(format!("{line}\n").as_bytes())?
                }
            }
            print_header(cli, &endpoint, response.header.as_ref());
            Ok(EXIT_OK)
        }
        LeaseCommand::List => {
            let (endpoint, mut leases) = connect(cli, false).await?;
            let response = leases
                .lease_leases(pb::LeaseLeasesRequest {})
                .await
                .map_err(|status| failed(&endpoint, &status))?
                .into_inner();
            match cli.write_out {
                OutputFormat::Json => print_json(&json!({
                    "leases": response.leases.iter().map(|lease| lease.id).collect::<Vec<_>>(),
                    "header": crate::output::header_json(response.header.as_ref()),
                }))?,
                _ => {
                    let mut text = format!("found {} leases\n", response.leases.len());
                    for lease in &response.leases {
                        text += &format!("{:x}\n", lease.id);
                    }
                    write_stdout(text.as_bytes())?
                }
            }
            print_header(cli, &endpoint, response.header.as_ref());
            Ok(EXIT_OK)
        }
    }
}

/// `lease keep-alive`: renews every third of the TTL (as etcd's client)
/// until interrupted, `--once`, or the lease is gone (exit code 3).
async fn keep_alive_command(cli: &Cli, id: i64, once: bool) -> Outcome {
    let (lost, mut lost_reason) = oneshot::channel();
    let (renewed, mut renewals) = mpsc::channel(16);
    let keeper = tokio::spawn(keep_alive_loop(
        cli.endpoints.clone(),
        cli.timeout,
        id,
        None,
        renewed,
        lost,
    ));
    loop {
        tokio::select! {
            Some(ttl) = renewals.recv() => {
                match cli.write_out {
                    OutputFormat::Json => print_json(&json!({"id": id, "ttl": ttl}))?,
                    _ => write_stdout(format!("lease {id:x} keepalived with TTL({ttl})\n").as_bytes())?,
                }
                if once {
                    keeper.abort();
                    return Ok(EXIT_OK);
                }
            }
            reason = &mut lost_reason => {
                eprintln!("kvstore-cli: lease {id:x}: {}", reason.unwrap_or_else(|_| "the keep-alive stopped".into()));
                return Ok(EXIT_FAILED);
            }
            _ = crate::interrupted() => {
                keeper.abort();
                return Ok(EXIT_OK);
            }
        }
    }
}

/// Keeps lease `id` alive: one keep-alive stream, on the next endpoint when
/// one fails, a renewal every third of the TTL. Each renewal's TTL goes to
/// `renewed`. The lease is surely alive until the time its last renewal
/// was *sent* plus its TTL (the server counts from when it got it, later);
/// when no renewal succeeded by a margin before that (or the lease is
/// gone), the reason goes to `lost` and the loop ends: a lock holder then
/// stops before anyone else can take the lock. `granted_until`: the same
/// bound for a lease just granted (None: unknown until the first renewal).
pub async fn keep_alive_loop(
    endpoints: Vec<String>,
    timeout: Duration,
    id: i64,
    granted_until: Option<tokio::time::Instant>,
    renewed: mpsc::Sender<i64>,
    lost: oneshot::Sender<String>,
) {
    use tokio::time::Instant;
    let mut valid_until = granted_until;
    let mut margin = Duration::from_millis(100);
    let mut interval;
    // How long a step may wait: the request timeout, or less when the
    // lease's validity ends sooner. None: it has ended.
    let budget = |valid_until: Option<Instant>, margin: Duration| match valid_until {
        None => Some(timeout),
        Some(until) => until
            .checked_sub(margin)
            .and_then(|deadline| deadline.checked_duration_since(Instant::now()))
            .filter(|left| !left.is_zero())
            .map(|left| left.min(timeout)),
    };
    let mut at = 0usize;
    loop {
        let Some(endpoint) = endpoints.get(at % endpoints.len().max(1)) else {
            let _ = lost.send("no endpoints given".into());
            return;
        };
        at += 1;
        let Some(wait) = budget(valid_until, margin) else {
            let _ = lost.send("no renewal succeeded before the lease's TTL ran out".into());
            return;
        };
        let channel = match client::connect_for_streams(endpoint, wait).await {
            Ok(channel) => channel,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200).min(wait)).await;
                continue;
            }
        };
        let (requests, outgoing) = mpsc::channel(1);
        let opened = tokio::time::timeout(
            wait,
            LeaseClient::new(channel).lease_keep_alive(ReceiverStream::new(outgoing)),
        )
        .await;
        let mut answers = match opened {
            Ok(Ok(answers)) => answers.into_inner(),
            _ => continue,
        };
        while let Some(wait) = budget(valid_until, margin) {
            let sent = Instant::now();
            // Bounded too: a stream whose server died may stop taking
            // requests without closing.
            let queued =
                tokio::time::timeout(wait, requests.send(pb::LeaseKeepAliveRequest { id })).await;
            if !matches!(queued, Ok(Ok(()))) {
                break;
            }
            match tokio::time::timeout(wait, answers.message()).await {
                Ok(Ok(Some(answer))) if answer.ttl > 0 => {
                    let ttl = Duration::from_secs(answer.ttl as u64);
                    valid_until = Some(sent + ttl);
                    margin = (ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
                    interval = (ttl / 3).max(Duration::from_millis(500));
                    if renewed.send(answer.ttl).await.is_err() {
                        return;
                    }
                }
                Ok(Ok(Some(answer))) => {
                    let _ = lost.send(if answer.error.is_empty() {
                        "expired or revoked".into()
                    } else {
                        answer.error
                    });
                    return;
                }
                // The stream broke or stalled: the next endpoint.
                _ => break,
            }
            let pause =
                budget(valid_until, margin).map_or(Duration::ZERO, |left| interval.min(left));
            tokio::time::sleep(pause).await;
        }
    }
}
