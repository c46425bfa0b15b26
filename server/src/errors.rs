//! Errors a request can meet, and their gRPC status: the one place where
//! errors become `tonic::Status`.

use crate::storage::StoreError;

/// Why a client request failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The request is malformed or breaks a limit; nothing was changed.
    #[error("{0}")]
    InvalidArgument(String),
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
    /// The node's storage failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
}

impl From<KvError> for tonic::Status {
    fn from(error: KvError) -> Self {
        let message = error.to_string();
        match error {
            KvError::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            KvError::NoLeader(_) | KvError::Unavailable(_) => tonic::Status::unavailable(message),
            KvError::DeadlineExceeded(_) => tonic::Status::deadline_exceeded(message),
            KvError::OutcomeUnknown(_) => tonic::Status::unknown(message),
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
            (KvError::Unavailable("x".into()), tonic::Code::Unavailable),
            (
                KvError::DeadlineExceeded("x".into()),
                tonic::Code::DeadlineExceeded,
            ),
            (KvError::OutcomeUnknown("x".into()), tonic::Code::Unknown),
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
