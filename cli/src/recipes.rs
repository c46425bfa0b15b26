//! `lock` and `elect`: etcd's concurrency recipes over kvstore's KV, Lease
//! and Watch services, with the same protocol (so the two interoperate in
//! spirit and etcd users' knowledge carries over):
//!
//! - a session is a lease (`--ttl`, 60 s by default) kept alive in the
//!   background; losing it loses the lock or the leadership;
//! - a contender creates `NAME/<lease id in hex>` with a txn on
//!   `create_revision == 0`, attached to the session lease;
//! - it holds the lock (or leads) once no key under `NAME/` has a lower
//!   create revision: it waits for the deletion of the key just before its
//!   own (one watch each, no thundering herd);
//! - its key's create revision is a fencing token: it only grows from one
//!   holder to the next (`KVSTORE_LOCK_REVISION` for the lock's command).

use std::ffi::OsString;
use std::process::Stdio;
use std::time::Duration;

use kvstore_proto::kv::v1 as pb;
use pb::kv_client::KvClient;
use pb::watch_client::WatchClient;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::args::{Cli, EXIT_FAILED, EXIT_OK};
use crate::client::{self, Failure};
use crate::{lease, write_stdout, Outcome};

/// Pause before a failed step of a recipe is tried again.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// A session: a lease kept alive in the background.
struct Session {
    lease: i64,
    /// Fires when the lease is lost.
    lost: oneshot::Receiver<String>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Session {
    async fn start(cli: &Cli, ttl: i64) -> Result<Self, Failure> {
        // The lease lives at least its TTL from before the grant was sent.
        let asked = tokio::time::Instant::now();
        let (_, granted) = lease::grant(cli, ttl).await?;
        let granted_until = asked + Duration::from_secs(u64::try_from(granted.ttl).unwrap_or(0));
        let (renewed, mut renewals) = mpsc::channel(4);
        let (lost_sender, lost) = oneshot::channel();
        let keeper = tokio::spawn(lease::keep_alive_loop(
            cli.endpoints.clone(),
            cli.timeout,
            granted.id,
            Some(granted_until),
            renewed,
            lost_sender,
        ));
        // Renewals are not reported: drain them.
        tokio::spawn(async move { while renewals.recv().await.is_some() {} });
        Ok(Self {
            lease: granted.id,
            lost,
            keeper,
        })
    }

    /// Ends the session: the lease is revoked, so its keys go at once.
    async fn close(self, cli: &Cli) {
        self.keeper.abort();
        if let Ok((_, mut leases)) = lease::connect(cli, false).await {
            let _ = leases
                .lease_revoke(pb::LeaseRevokeRequest { id: self.lease })
                .await;
        }
    }
}

/// The end of `prefix`'s range.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    crate::kv::range_end_for(prefix, None, true, false)
}

async fn kv_client(cli: &Cli) -> Result<(String, KvClient<Channel>), Failure> {
    let (endpoint, channel) =
        client::first_channel(&cli.endpoints, cli.timeout, Some(cli.timeout)).await?;
    Ok((endpoint, KvClient::new(channel)))
}

/// Creates `key` (attached to `lease`, holding `value`) unless it exists;
/// returns its create revision.
async fn create_own_key(cli: &Cli, key: &[u8], value: &[u8], lease: i64) -> Result<i64, Failure> {
    let (endpoint, mut kv) = kv_client(cli).await?;
    let request = pb::TxnRequest {
        compare: vec![pb::Compare {
            result: pb::CompareResult::Equal as i32,
            target: pb::CompareTarget::Create as i32,
            key: key.to_vec(),
            target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
            range_end: Vec::new(),
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                lease,
                ..pb::PutRequest::default()
            })),
        }],
        failure: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                key: key.to_vec(),
                ..pb::RangeRequest::default()
            })),
        }],
    };
    let response = kv
        .txn(request)
        .await
        .map_err(|status| client::describe_status(&endpoint, &status))?
        .into_inner();
    if response.succeeded {
        return Ok(response.header.map_or(0, |header| header.revision));
    }
    let existing = response
        .responses
        .into_iter()
        .find_map(|op| match op.response {
            Some(pb::response_op::Response::ResponseRange(range)) => range.kvs.into_iter().next(),
            _ => None,
        });
    existing.map(|kv| kv.create_revision).ok_or_else(|| {
        Failure(format!(
            "{endpoint}: the key {key:?} vanished while it was created"
        ))
    })
}

/// Waits until no key under `prefix` has a create revision below `mine`:
/// each time, for the deletion of the newest one below it.
async fn wait_for_turn(cli: &Cli, prefix: &[u8], mine: i64) -> Result<(), Failure> {
    loop {
        let (endpoint, mut kv) = kv_client(cli).await?;
        let ahead = kv
            .range(pb::RangeRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                max_create_revision: mine - 1,
                sort_order: pb::SortOrder::Descend as i32,
                sort_target: pb::SortTarget::Create as i32,
                limit: 1,
                ..pb::RangeRequest::default()
            })
            .await
            .map_err(|status| client::describe_status(&endpoint, &status))?
            .into_inner();
        let Some(waiter) = ahead.kvs.into_iter().next() else {
            return Ok(());
        };
        let seen = ahead.header.map_or(0, |header| header.revision);
        wait_for_delete(cli, &waiter.key, seen + 1).await?;
    }
}

/// Opens a watch stream with one watch, `create`.
async fn open_watch(
    cli: &Cli,
    create: pb::WatchCreateRequest,
) -> Result<tonic::Streaming<pb::WatchResponse>, Failure> {
    let (endpoint, channel) = client::first_channel(&cli.endpoints, cli.timeout, None).await?;
    let (requests, outgoing) = mpsc::channel(1);
    let _ = requests
        .send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
        })
        .await;
    // The server keeps the watch after the request side closes (as etcd).
    Ok(WatchClient::new(channel)
        .watch(ReceiverStream::new(outgoing))
        .await
        .map_err(|status| client::describe_status(&endpoint, &status))?
        .into_inner())
}

/// Waits until `create`'s watch reports an event (or is cancelled, or its
/// node goes away: the caller then looks at the state again).
async fn wait_for_event(cli: &Cli, create: pb::WatchCreateRequest) -> Result<(), Failure> {
    let mut responses = open_watch(cli, create).await?;
    loop {
        match responses.message().await {
            Ok(Some(response)) if response.canceled => {
                // Compacted past, or refused: the caller looks again, not
                // at once.
                tokio::time::sleep(RETRY_PAUSE).await;
                return Ok(());
            }
            Ok(Some(response)) if !response.events.is_empty() => return Ok(()),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                tokio::time::sleep(RETRY_PAUSE).await;
                return Ok(());
            }
        }
    }
}

/// Waits for the deletion of `key` at `from` or later.
async fn wait_for_delete(cli: &Cli, key: &[u8], from: i64) -> Result<(), Failure> {
    wait_for_event(
        cli,
        pb::WatchCreateRequest {
            key: key.to_vec(),
            start_revision: from,
            filters: vec![pb::WatchFilterType::Noput as i32],
            ..pb::WatchCreateRequest::default()
        },
    )
    .await
}

/// Checks, after the wait, that this contender's key is still the one it
/// created (etcd's `ErrSessionExpired`): if its session expired while it
/// waited, the key is gone (a later contender may hold the lock) and it
/// holds nothing.
async fn check_own_key(cli: &Cli, key: &[u8], revision: i64) -> Result<(), Failure> {
    let (endpoint, mut kv) = kv_client(cli).await?;
    let own = kv
        .range(pb::RangeRequest {
            key: key.to_vec(),
            ..pb::RangeRequest::default()
        })
        .await
        .map_err(|status| client::describe_status(&endpoint, &status))?
        .into_inner();
    match own.kvs.first() {
        Some(kv) if kv.create_revision == revision => Ok(()),
        _ => Err(Failure(
            "session expired: the contender's key is gone (its lease expired while it waited)"
                .into(),
        )),
    }
}

/// Creates this contender's key and waits for its turn; fails if the
/// session was lost meanwhile (or it is interrupted: `Ok(None)`). The
/// key's create revision.
async fn contend(
    cli: &Cli,
    session: &mut Session,
    key: &[u8],
    value: &[u8],
    prefix: &[u8],
) -> Result<Option<i64>, Failure> {
    let lease = session.lease;
    let turn = async {
        let revision = create_own_key(cli, key, value, lease).await?;
        wait_for_turn(cli, prefix, revision).await?;
        check_own_key(cli, key, revision).await?;
        Ok::<_, Failure>(revision)
    };
    tokio::select! {
        turn = turn => turn.map(Some),
        reason = &mut session.lost => Err(Failure(format!(
            "session lost while waiting: {}",
            reason.unwrap_or_default()
        ))),
        _ = crate::interrupted() => Ok(None),
    }
}

/// `lock NAME [COMMAND...]`.
pub async fn lock(cli: &Cli, name: &[u8], command: &[OsString], ttl: i64) -> Outcome {
    let mut session = Session::start(cli, ttl).await?;
    let mut key = name.to_vec();
    key.extend_from_slice(format!("/{:x}", session.lease).as_bytes());
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    let revision = match contend(cli, &mut session, &key, b"", &prefix).await {
        Ok(Some(revision)) => revision,
        Ok(None) => {
            session.close(cli).await;
            return Ok(EXIT_OK);
        }
        Err(failure) => {
            session.close(cli).await;
            return Err(failure);
        }
    };
    let code = if command.is_empty() {
        write_stdout(&[key.as_slice(), b"\n"].concat())?;
        tokio::select! {
            _ = crate::interrupted() => EXIT_OK,
            reason = &mut session.lost => {
                eprintln!("kvstore-cli: lock lost: {}", reason.unwrap_or_default());
                EXIT_FAILED
            }
        }
    } else {
        run_holding(command, &key, revision, &mut session.lost).await?
    };
    session.close(cli).await;
    Ok(code)
}

/// Runs `command` while the lock is held; kills it if the session is lost
/// (it no longer holds the lock). Its exit code.
async fn run_holding(
    command: &[OsString],
    key: &[u8],
    revision: i64,
    lost: &mut oneshot::Receiver<String>,
) -> Result<u8, Failure> {
    if let Ok(reason) = lost.try_recv() {
        return Err(Failure(format!(
            "lock lost before the command ran: {reason}"
        )));
    }
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .env("KVSTORE_LOCK_KEY", String::from_utf8_lossy(key).as_ref())
        .env("KVSTORE_LOCK_REVISION", revision.to_string())
        .stdin(Stdio::inherit())
        .spawn()
        .map_err(|error| Failure(format!("cannot run {:?}: {error}", command[0])))?;
    tokio::select! {
        status = child.wait() => {
            let status = status.map_err(|error| Failure(format!("waiting for the command: {error}")))?;
            Ok(status.code().map_or(EXIT_FAILED, |code| u8::try_from(code).unwrap_or(EXIT_FAILED)))
        }
        reason = lost => {
            let _ = child.kill().await;
            eprintln!(
                "kvstore-cli: lock lost ({}): the command was killed",
                reason.unwrap_or_default()
            );
            Ok(EXIT_FAILED)
        }
    }
}

/// `elect NAME PROPOSAL`: campaigns, prints the key and the proposal once
/// elected, leads until interrupted (or the session is lost), then resigns.
pub async fn campaign(cli: &Cli, name: &[u8], proposal: &[u8], ttl: i64) -> Outcome {
    let mut session = Session::start(cli, ttl).await?;
    let mut key = name.to_vec();
    key.extend_from_slice(format!("/{:x}", session.lease).as_bytes());
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    match contend(cli, &mut session, &key, proposal, &prefix).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            session.close(cli).await;
            return Ok(EXIT_OK);
        }
        Err(failure) => {
            session.close(cli).await;
            return Err(failure);
        }
    }
    write_stdout(&[key.as_slice(), b"\n", proposal, b"\n"].concat())?;
    let code = tokio::select! {
        _ = crate::interrupted() => EXIT_OK,
        reason = &mut session.lost => {
            eprintln!("kvstore-cli: leadership lost: {}", reason.unwrap_or_default());
            EXIT_FAILED
        }
    };
    session.close(cli).await;
    Ok(code)
}

/// `elect -l NAME`: prints the leader's proposal now and at every change,
/// until interrupted.
pub async fn observe(cli: &Cli, name: &[u8]) -> Outcome {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    let mut shown: Option<Vec<u8>> = None;
    loop {
        let (endpoint, mut kv) = kv_client(cli).await?;
        let leader = kv
            .range(pb::RangeRequest {
                key: prefix.clone(),
                range_end: prefix_end(&prefix),
                sort_order: pb::SortOrder::Ascend as i32,
                sort_target: pb::SortTarget::Create as i32,
                limit: 1,
                ..pb::RangeRequest::default()
            })
            .await
            .map_err(|status| client::describe_status(&endpoint, &status))?
            .into_inner();
        let revision = leader.header.map_or(0, |header| header.revision);
        if let Some(current) = leader.kvs.into_iter().next() {
            let line = [
                current.key.as_slice(),
                b"\n",
                current.value.as_slice(),
                b"\n",
            ]
            .concat();
            if shown.as_ref() != Some(&line) {
                write_stdout(&line)?;
                shown = Some(line);
            }
        }
        // Any change under the prefix may change the leader.
        tokio::select! {
            changed = wait_for_change(cli, &prefix, revision + 1) => changed?,
            _ = crate::interrupted() => return Ok(EXIT_OK),
        }
    }
}

/// Waits for any event under `prefix` at `from` or later.
async fn wait_for_change(cli: &Cli, prefix: &[u8], from: i64) -> Result<(), Failure> {
    wait_for_event(
        cli,
        pb::WatchCreateRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            start_revision: from,
            ..pb::WatchCreateRequest::default()
        },
    )
    .await
}
