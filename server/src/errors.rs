//! Errors a request can meet, and their gRPC status: the one place where
//! errors become `tonic::Status`.

use crate::state_machine::kv_encoding::BadRequest;
use crate::state_machine::Refusal;
use crate::storage::StoreError;

/// Why a client request failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The request is malformed or breaks a limit; nothing was changed.
    #[error("{0}")]
    InvalidArgument(String),
    /// This node does not lead (any more); the request was not proposed and
    /// can be retried through the current leader.
    #[error("not the leader: {0}")]
    NotLeader(String),
    /// No leader is known, so the request cannot be served now; retry later.
    #[error("no leader is known: {0}")]
    NoLeader(String),
    /// The node cannot serve the request now (shutting down, overloaded, ...).
    #[error("{0}")]
    Unavailable(String),
    /// The request's deadline passed before it was served.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// The write was proposed but its fate is unknown: it may or may not have
    /// been applied (the leader was lost mid-request).
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// A revision below the compacted one, or one not reached yet; nothing
    /// was changed.
    #[error("{0}")]
    OutOfRange(String),
    /// The cluster cannot serve the request in its present state (its
    /// storage version is below the one the request needs, a lease id in
    /// use).
    #[error("{0}")]
    FailedPrecondition(String),
    /// What the request names does not exist (a lease).
    #[error("{0}")]
    NotFound(String),
    /// The node's storage failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
}

impl From<BadRequest> for KvError {
    fn from(error: BadRequest) -> Self {
        KvError::InvalidArgument(error.0)
    }
}

impl From<Refusal> for KvError {
    fn from(refusal: Refusal) -> Self {
        let message = refusal.to_string();
        match refusal {
            Refusal::StorageVersion { .. } => KvError::FailedPrecondition(message),
            Refusal::Revision(_) => KvError::OutOfRange(message),
            Refusal::Invalid(_) => KvError::InvalidArgument(message),
            Refusal::LeaseNotFound(_) => KvError::NotFound(message),
            Refusal::LeaseExists(_) => KvError::FailedPrecondition(message),
        }
    }
}

impl KvError {
    /// The error for a failed request forwarded to the leader. A write whose
    /// forwarding failed after it may have reached the leader has an unknown
    /// outcome; one refused before it was proposed has not happened.
    pub fn from_leader_status(leader_id: u64, status: tonic::Status, is_write: bool) -> Self {
        let message = format!("leader {leader_id}: {}", status.message());
        let never_sent = status.code() == tonic::Code::Unavailable && failed_to_connect(&status);
        match status.code() {
            tonic::Code::InvalidArgument => KvError::InvalidArgument(status.message().to_string()),
            tonic::Code::OutOfRange => KvError::OutOfRange(status.message().to_string()),
            tonic::Code::FailedPrecondition => {
                KvError::FailedPrecondition(status.message().to_string())
            }
            tonic::Code::NotFound => KvError::NotFound(status.message().to_string()),
            // Never sent: as good as "not the leader"; retried through the next leader.
            tonic::Code::Unavailable if never_sent => KvError::NotLeader(format!(
                "cannot reach leader {leader_id}: {}",
                status.message()
            )),
            tonic::Code::Unavailable if status.message().starts_with("not the leader") => {
                KvError::NotLeader(message)
            }
            tonic::Code::Unavailable => KvError::Unavailable(message),
            tonic::Code::DeadlineExceeded => KvError::DeadlineExceeded(message),
            _ if is_write => KvError::OutcomeUnknown(message),
            _ => KvError::Unavailable(message),
        }
    }
}

/// True when a client-side status comes from failing to open the connection
/// (so the request surely was not sent).
fn failed_to_connect(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        let text = error.to_string().to_ascii_lowercase();
        if text.contains("connect error")
            || text.contains("trying to connect")
            || text.contains("connection refused")
        {
            return true;
        }
        source = error.source();
    }
    false
}

impl From<KvError> for tonic::Status {
    fn from(error: KvError) -> Self {
        let message = error.to_string();
        match error {
            KvError::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            KvError::NotLeader(_) | KvError::NoLeader(_) | KvError::Unavailable(_) => {
                tonic::Status::unavailable(message)
            }
            KvError::DeadlineExceeded(_) => tonic::Status::deadline_exceeded(message),
            KvError::OutcomeUnknown(_) => tonic::Status::unknown(message),
            KvError::OutOfRange(_) => tonic::Status::out_of_range(message),
            KvError::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            KvError::NotFound(_) => tonic::Status::not_found(message),
            KvError::Storage(StoreError::Closed) => tonic::Status::unavailable(message),
            KvError::Storage(_) => tonic::Status::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_code() {
        let cases = [
            (
                KvError::InvalidArgument("x".into()),
                tonic::Code::InvalidArgument,
            ),
            (KvError::NoLeader("x".into()), tonic::Code::Unavailable),
            (KvError::NotLeader("x".into()), tonic::Code::Unavailable),
            (KvError::Unavailable("x".into()), tonic::Code::Unavailable),
            (
                KvError::DeadlineExceeded("x".into()),
                tonic::Code::DeadlineExceeded,
            ),
            (KvError::OutcomeUnknown("x".into()), tonic::Code::Unknown),
            (KvError::OutOfRange("x".into()), tonic::Code::OutOfRange),
            (
                KvError::FailedPrecondition("x".into()),
                tonic::Code::FailedPrecondition,
            ),
            (
                KvError::Storage(StoreError::Closed),
                tonic::Code::Unavailable,
            ),
            (
                KvError::Storage(StoreError::Engine("x".into())),
                tonic::Code::Internal,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(tonic::Status::from(error).code(), code);
        }
    }
}
