//! The revision-aware commands: `get` over a range, `del` over a range,
//! `put --prev-kv`, `txn` and `compact`, printed as etcdctl prints them
//! (text), as one JSON document (`-w json`) or as a table (`-w table`).

use kvstore_proto::kv::v1 as pb;
use serde_json::{json, Map, Value};

use crate::args::{Cli, OutputFormat, RangeArgs, SortBy, SortOrder, EXIT_OK};
use crate::client::{with_any_endpoint, Failure};
use crate::output;
use crate::{print_header, print_json, write_stdout, Outcome};

/// The range end that `--prefix` (the key with its last byte raised, after
/// dropping trailing 0xff bytes; `"\0"` when nothing is left) or
/// `--from-key` (`"\0"`) stands for, else `range_end` as given.
pub fn range_end_for(
    key: &[u8],
    range_end: Option<Vec<u8>>,
    prefix: bool,
    from_key: bool,
) -> Vec<u8> {
    if from_key {
        return vec![0];
    }
    if prefix {
        let mut end = key.to_vec();
        while let Some(last) = end.pop() {
            if last < u8::MAX {
                end.push(last + 1);
                return end;
            }
        }
        return vec![0];
    }
    range_end.unwrap_or_default()
}

/// The Range request for `key`..`range_end` with `range`'s options.
pub fn range_request(
    key: Vec<u8>,
    range_end: Vec<u8>,
    range: &RangeArgs,
    consistency: pb::Consistency,
) -> pb::RangeRequest {
    pb::RangeRequest {
        key,
        range_end,
        limit: range.limit.unwrap_or(0),
        revision: range.rev.unwrap_or(0),
        sort_order: match range.order {
            None => pb::SortOrder::Unspecified,
            Some(SortOrder::Ascend) => pb::SortOrder::Ascend,
            Some(SortOrder::Descend) => pb::SortOrder::Descend,
        } as i32,
        sort_target: match range.sort_by {
            None => pb::SortTarget::Unspecified,
            Some(SortBy::Key) => pb::SortTarget::Key,
            Some(SortBy::Create) => pb::SortTarget::Create,
            Some(SortBy::Modify) => pb::SortTarget::Mod,
            Some(SortBy::Value) => pb::SortTarget::Value,
            Some(SortBy::Version) => pb::SortTarget::Version,
        } as i32,
        consistency: consistency as i32,
        keys_only: range.keys_only,
        count_only: range.count_only,
        ..pb::RangeRequest::default()
    }
}

pub(crate) fn key_value_json(pair: &pb::KeyValue) -> Value {
    let mut object = Map::new();
    output::insert_bytes(&mut object, "key", &pair.key);
    object.insert("create_revision".into(), pair.create_revision.into());
    object.insert("mod_revision".into(), pair.mod_revision.into());
    object.insert("version".into(), pair.version.into());
    output::insert_bytes(&mut object, "value", &pair.value);
    object.insert("lease".into(), pair.lease.into());
    Value::Object(object)
}

fn range_json(response: &pb::RangeResponse) -> Value {
    json!({
        "header": output::header_json(response.header.as_ref()),
        "kvs": response.kvs.iter().map(key_value_json).collect::<Vec<_>>(),
        "more": response.more,
        "count": response.count,
    })
}

/// Pairs as etcdctl prints them: the key on a line, then the value (keys
/// only with `keys_only`).
fn pairs_text(pairs: &[pb::KeyValue], keys_only: bool) -> Vec<u8> {
    let mut text = Vec::new();
    for pair in pairs {
        text.extend_from_slice(&pair.key);
        text.push(b'\n');
        if !keys_only {
            text.extend_from_slice(&pair.value);
            text.push(b'\n');
        }
    }
    text
}

fn pairs_table(pairs: &[pb::KeyValue]) -> String {
    let rows: Vec<Vec<String>> = pairs
        .iter()
        .map(|pair| {
            vec![
                String::from_utf8_lossy(&pair.key).into_owned(),
                String::from_utf8_lossy(&pair.value).into_owned(),
                pair.create_revision.to_string(),
                pair.mod_revision.to_string(),
                pair.version.to_string(),
            ]
        })
        .collect();
    output::table(&["KEY", "VALUE", "CREATE", "MOD", "VERSION"], &rows)
}

/// `get` over a range.
pub async fn range(cli: &Cli, request: pb::RangeRequest) -> Outcome {
    let (endpoint, response) = with_any_endpoint(&cli.endpoints, cli.timeout, |mut client| {
        let request = request.clone();
        async move { client.range(request).await.map(tonic::Response::into_inner) }
    })
    .await?;
    match cli.write_out {
        OutputFormat::Json => print_json(&range_json(&response))?,
        OutputFormat::Table => write_stdout(pairs_table(&response.kvs).as_bytes())?,
        OutputFormat::Text if request.count_only => {
            write_stdout(format!("{}\n", response.count).as_bytes())?
        }
        OutputFormat::Text => write_stdout(&pairs_text(&response.kvs, request.keys_only))?,
    }
    print_header(cli, &endpoint, response.header.as_ref());
    Ok(EXIT_OK)
}

/// `put` with `--prev-kv`.
pub async fn put_prev_kv(cli: &Cli, request: pb::PutRequest) -> Outcome {
    let (endpoint, response) = with_any_endpoint(&cli.endpoints, cli.timeout, |mut client| {
        let request = request.clone();
        async move { client.put(request).await.map(tonic::Response::into_inner) }
    })
    .await?;
    let previous: Vec<pb::KeyValue> = response.prev_kv.iter().cloned().collect();
    match cli.write_out {
        OutputFormat::Json => print_json(&json!({
            "header": output::header_json(response.header.as_ref()),
            "prev_kv": response.prev_kv.as_ref().map(key_value_json),
        }))?,
        OutputFormat::Table => write_stdout(pairs_table(&previous).as_bytes())?,
        OutputFormat::Text => {
            let mut text = b"OK\n".to_vec();
            text.extend(pairs_text(&previous, false));
            write_stdout(&text)?
        }
    }
    print_header(cli, &endpoint, response.header.as_ref());
    Ok(EXIT_OK)
}

fn delete_range_json(response: &pb::DeleteRangeResponse) -> Value {
    json!({
        "header": output::header_json(response.header.as_ref()),
        "deleted": response.deleted,
        "prev_kvs": response.prev_kvs.iter().map(key_value_json).collect::<Vec<_>>(),
    })
}

/// `del` over a range, or with `--prev-kv`.
pub async fn delete_range(cli: &Cli, request: pb::DeleteRangeRequest) -> Outcome {
    let (endpoint, response) = with_any_endpoint(&cli.endpoints, cli.timeout, |mut client| {
        let request = request.clone();
        async move {
            client
                .delete_range(request)
                .await
                .map(tonic::Response::into_inner)
        }
    })
    .await?;
    match cli.write_out {
        OutputFormat::Json => print_json(&delete_range_json(&response))?,
        OutputFormat::Table => write_stdout(pairs_table(&response.prev_kvs).as_bytes())?,
        OutputFormat::Text => {
            let mut text = format!("{}\n", response.deleted).into_bytes();
            text.extend(pairs_text(&response.prev_kvs, false));
            write_stdout(&text)?
        }
    }
    print_header(cli, &endpoint, response.header.as_ref());
    Ok(EXIT_OK)
}

fn op_json(op: &pb::ResponseOp) -> Value {
    use pb::response_op::Response;
    match &op.response {
        Some(Response::ResponseRange(range)) => json!({ "response_range": range_json(range) }),
        Some(Response::ResponsePut(put)) => json!({
            "response_put": { "prev_kv": put.prev_kv.as_ref().map(key_value_json) }
        }),
        Some(Response::ResponseDeleteRange(delete)) => {
            json!({ "response_delete_range": delete_range_json(delete) })
        }
        Some(Response::ResponseTxn(txn)) => json!({ "response_txn": txn_json(txn) }),
        None => Value::Null,
    }
}

fn txn_json(response: &pb::TxnResponse) -> Value {
    json!({
        "header": output::header_json(response.header.as_ref()),
        "succeeded": response.succeeded,
        "responses": response.responses.iter().map(op_json).collect::<Vec<_>>(),
    })
}

/// A txn's outcome as etcdctl prints it: SUCCESS or FAILURE, then each
/// op's output after a blank line.
fn txn_text(response: &pb::TxnResponse) -> Vec<u8> {
    use pb::response_op::Response;
    let mut text = if response.succeeded {
        b"SUCCESS\n".to_vec()
    } else {
        b"FAILURE\n".to_vec()
    };
    for op in &response.responses {
        text.push(b'\n');
        match &op.response {
            Some(Response::ResponseRange(range)) => text.extend(pairs_text(&range.kvs, false)),
            Some(Response::ResponsePut(put)) => {
                text.extend_from_slice(b"OK\n");
                text.extend(pairs_text(put.prev_kv.as_slice(), false));
            }
            Some(Response::ResponseDeleteRange(delete)) => {
                text.extend(format!("{}\n", delete.deleted).into_bytes());
                text.extend(pairs_text(&delete.prev_kvs, false));
            }
            Some(Response::ResponseTxn(nested)) => text.extend(txn_text(nested)),
            None => {}
        }
    }
    text
}

/// `txn`: reads the txn from stdin (prompting with `-i`), runs it.
pub async fn txn(cli: &Cli, interactive: bool) -> Outcome {
    let input = read_txn(interactive)?;
    let request = crate::txn_syntax::parse(&input).map_err(|error| Failure(error.to_string()))?;
    let (endpoint, response) = with_any_endpoint(&cli.endpoints, cli.timeout, |mut client| {
        let request = request.clone();
        async move { client.txn(request).await.map(tonic::Response::into_inner) }
    })
    .await?;
    match cli.write_out {
        OutputFormat::Json => print_json(&txn_json(&response))?,
        _ => write_stdout(&txn_text(&response))?,
    }
    print_header(cli, &endpoint, response.header.as_ref());
    Ok(EXIT_OK)
}

fn read_txn(interactive: bool) -> Result<String, Failure> {
    use std::io::BufRead;
    let stdin = std::io::stdin();
    if !interactive {
        let mut input = String::new();
        std::io::Read::read_to_string(&mut stdin.lock(), &mut input)
            .map_err(|error| Failure(format!("cannot read the txn from stdin: {error}")))?;
        return Ok(input);
    }
    let mut input = String::new();
    for prompt in [
        "compares:",
        "success requests (get, put, del):",
        "failure requests (get, put, del):",
    ] {
        eprintln!("{prompt}");
        loop {
            let mut line = String::new();
            let read = stdin
                .lock()
                .read_line(&mut line)
                .map_err(|error| Failure(format!("cannot read the txn from stdin: {error}")))?;
            if read == 0 || line.trim().is_empty() {
                break;
            }
            input.push_str(&line);
        }
        input.push('\n');
    }
    Ok(input)
}

/// `compact`.
pub async fn compact(cli: &Cli, revision: u64, physical: bool) -> Outcome {
    let request = pb::CompactionRequest {
        revision: i64::try_from(revision)
            .map_err(|_| Failure(format!("revision {revision} is out of range")))?,
        physical,
    };
    let (endpoint, response) =
        with_any_endpoint(&cli.endpoints, cli.timeout, |mut client| async move {
            client
                .compact(request)
                .await
                .map(tonic::Response::into_inner)
        })
        .await?;
    match cli.write_out {
        OutputFormat::Json => print_json(&json!({
            "header": output::header_json(response.header.as_ref()),
            "compacted": revision,
        }))?,
        _ => write_stdout(format!("compacted revision {revision}\n").as_bytes())?,
    }
    print_header(cli, &endpoint, response.header.as_ref());
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_from_key_compute_etcdctls_range_ends() {
        assert_eq!(range_end_for(b"a/", None, true, false), b"a0");
        assert_eq!(range_end_for(&[b'a', 0xff], None, true, false), b"b");
        assert_eq!(range_end_for(&[0xff, 0xff], None, true, false), [0]);
        assert_eq!(range_end_for(b"k", None, false, true), [0]);
        assert_eq!(range_end_for(b"a", Some(b"c".to_vec()), false, false), b"c");
        assert!(range_end_for(b"a", None, false, false).is_empty());
    }

    #[test]
    fn a_txn_prints_like_etcdctl() {
        use pb::response_op::Response;
        let pair = pb::KeyValue {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        let response = pb::TxnResponse {
            header: None,
            succeeded: false,
            responses: vec![
                pb::ResponseOp {
                    response: Some(Response::ResponseRange(pb::RangeResponse {
                        kvs: vec![pair],
                        count: 1,
                        ..Default::default()
                    })),
                },
                pb::ResponseOp {
                    response: Some(Response::ResponseDeleteRange(pb::DeleteRangeResponse {
                        deleted: 2,
                        ..Default::default()
                    })),
                },
            ],
        };
        assert_eq!(txn_text(&response), b"FAILURE\n\nk\nv\n\n2\n");
    }
}
