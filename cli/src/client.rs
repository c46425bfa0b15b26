//! Connections to the cluster's endpoints, and the one-line errors the CLI prints.

use std::time::Duration;

use kvstore_proto::kv::v1::kv_client::KvClient;
use tonic::transport::{Channel, Endpoint};

/// Why a command failed: one line, no backtrace.
#[derive(Debug)]
pub struct Failure(pub String);

impl std::fmt::Display for Failure {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// Connects to one endpoint (`HOST:PORT`, or a full `http://` URL).
pub async fn connect(endpoint: &str, timeout: Duration) -> Result<KvClient<Channel>, Failure> {
    Ok(KvClient::new(connect_channel(endpoint, timeout).await?)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

/// Opens one HTTP/2 connection to `endpoint` (`HOST:PORT`, or a full
/// `http://` URL) with `timeout` for connecting and for every request.
async fn connect_channel(endpoint: &str, timeout: Duration) -> Result<Channel, Failure> {
    open_channel(endpoint, timeout, Some(timeout)).await
}

/// A connection to the first of `endpoints` that accepts one (for the
/// lease, watch and recipe commands), with its endpoint; `request_timeout`
/// bounds each call (None: streams, which live long).
pub async fn first_channel(
    endpoints: &[String],
    timeout: Duration,
    request_timeout: Option<Duration>,
) -> Result<(String, Channel), Failure> {
    let mut errors = Vec::new();
    for endpoint in endpoints {
        match open_channel(endpoint, timeout, request_timeout).await {
            Ok(channel) => return Ok((endpoint.clone(), channel)),
            Err(failure) => errors.push(failure.0),
        }
    }
    Err(Failure(match errors.len() {
        0 => "no endpoints given".to_string(),
        1 => errors.remove(0),
        _ => format!("no endpoint answered: {}", errors.join("; ")),
    }))
}

/// A connection for long-lived streams (watch, keep-alive): `timeout`
/// bounds connecting only.
pub async fn connect_for_streams(endpoint: &str, timeout: Duration) -> Result<Channel, Failure> {
    open_channel(endpoint, timeout, None).await
}

async fn open_channel(
    endpoint: &str,
    timeout: Duration,
    request_timeout: Option<Duration>,
) -> Result<Channel, Failure> {
    let mut builder = Endpoint::from_shared(endpoint_url(endpoint))
        .map_err(|error| Failure(format!("invalid endpoint {endpoint:?}: {error}")))?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    if let Some(request_timeout) = request_timeout {
        builder = builder.timeout(request_timeout);
    }
    builder.connect().await.map_err(|error| {
        Failure(format!(
            "cannot connect to {endpoint}: {}",
            root_cause(&error)
        ))
    })
}

/// `endpoint` as a URL: `HOST:PORT` becomes `http://HOST:PORT`; a URL is
/// kept as it is.
pub fn endpoint_url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// The innermost error message of a chain ("Connection refused (os error 111)").
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

/// One line for a failed gRPC call.
pub fn describe_status(endpoint: &str, status: &tonic::Status) -> Failure {
    let message = if status.message().is_empty() {
        std::error::Error::source(status)
            .map(root_cause)
            .unwrap_or_default()
    } else {
        status.message().to_string()
    };
    let code = format!("{:?}", status.code());
    Failure(format!("{endpoint}: {} ({message})", code_name(&code)))
}

/// The name of a gRPC code as gRPC spells it: `DEADLINE_EXCEEDED`.
pub fn grpc_code_name(code: tonic::Code) -> String {
    code_name(&format!("{code:?}"))
}

/// `DeadlineExceeded` → `DEADLINE_EXCEEDED`, as gRPC spells codes.
fn code_name(debug_name: &str) -> String {
    let mut name = String::new();
    for (position, character) in debug_name.chars().enumerate() {
        if character.is_ascii_uppercase() && position > 0 {
            name.push('_');
        }
        name.push(character.to_ascii_uppercase());
    }
    name
}

/// True when the server says it did not start the request because no leader
/// could serve it: another endpoint may be tried without risk of doing the
/// request twice.
pub fn surely_not_started(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && (status.message().starts_with("no leader is known")
            || status.message().starts_with("not the leader"))
}

/// Runs `call` against the endpoints in order until one answers. Moves on only
/// when the request surely did not take effect: the connection could not be
/// made, or the node answered that no leader could take the request. Any
/// other error is final, since the request may have taken effect.
pub async fn with_any_endpoint<T, F, Fut>(
    endpoints: &[String],
    timeout: Duration,
    mut call: F,
) -> Result<(String, T), Failure>
where
    F: FnMut(KvClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut errors = Vec::new();
    for endpoint in endpoints {
        let client = match connect(endpoint, timeout).await {
            Ok(client) => client,
            Err(failure) => {
                errors.push(failure.0);
                continue;
            }
        };
        match tokio::time::timeout(timeout, call(client)).await {
            Ok(Ok(answer)) => return Ok((endpoint.clone(), answer)),
            Ok(Err(status)) if surely_not_started(&status) => {
                errors.push(describe_status(endpoint, &status).0)
            }
            Ok(Err(status)) => return Err(describe_status(endpoint, &status)),
            Err(_) => {
                return Err(Failure(format!(
                    "{endpoint}: DEADLINE_EXCEEDED (no answer within {:?})",
                    timeout
                )))
            }
        }
    }
    Err(Failure(match errors.len() {
        0 => "no endpoints given".to_string(),
        1 => errors.remove(0),
        _ => format!("no endpoint answered: {}", errors.join("; ")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_grpc_spelled() {
        assert_eq!(code_name("DeadlineExceeded"), "DEADLINE_EXCEEDED");
        assert_eq!(code_name("InvalidArgument"), "INVALID_ARGUMENT");
        assert_eq!(code_name("Unavailable"), "UNAVAILABLE");
        assert_eq!(
            grpc_code_name(tonic::Code::ResourceExhausted),
            "RESOURCE_EXHAUSTED"
        );
        assert_eq!(grpc_code_name(tonic::Code::Ok), "OK");
    }
}
