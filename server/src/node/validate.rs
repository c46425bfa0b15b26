//! Request validation: bad input is refused with INVALID_ARGUMENT and changes
//! nothing. Every write is checked where it is proposed
//! ([`super::Node::write_as_leader`]), whichever route brought it there (the
//! client API, a follower's forward, a forged message on the raft port).

use crate::errors::KvError;
use crate::limits;
use crate::state_machine::mvcc::compare::CompareTarget;
use crate::state_machine::mvcc::txn::{self, TxnOp, TxnRequest};
use crate::state_machine::Command;

/// Size limits on client requests (`--max-key-bytes`, `--max-value-bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Largest key, in bytes.
    pub key_bytes_max: usize,
    /// Largest value, in bytes.
    pub value_bytes_max: usize,
}

impl RequestLimits {
    /// Checks a key: non-empty and within the limit.
    pub fn check_key(&self, key: &[u8]) -> Result<(), KvError> {
        if key.is_empty() {
            return Err(KvError::InvalidArgument("key must not be empty".into()));
        }
        if key.len() > self.key_bytes_max {
            return Err(KvError::InvalidArgument(format!(
                "key is {} bytes, over the limit of {} bytes (--max-key-bytes)",
                key.len(),
                self.key_bytes_max
            )));
        }
        Ok(())
    }

    /// Checks a value against the limit.
    pub fn check_value(&self, value: &[u8]) -> Result<(), KvError> {
        if value.len() > self.value_bytes_max {
            return Err(KvError::InvalidArgument(format!(
                "value is {} bytes, over the limit of {} bytes (--max-value-bytes)",
                value.len(),
                self.value_bytes_max
            )));
        }
        Ok(())
    }

    /// Checks a write: its key and value are within the limits.
    pub fn check_command(&self, command: &Command) -> Result<(), KvError> {
        match command {
            Command::Put { key, value } => {
                self.check_key(key)?;
                self.check_value(value)
            }
            Command::Delete { key } => self.check_key(key),
            Command::Txn(request) => {
                txn::validate(request)
                    .map_err(|error| KvError::InvalidArgument(error.to_string()))?;
                self.check_txn(request)
            }
            Command::LeaseGrant { ttl_seconds, .. } => check_lease_ttl(*ttl_seconds),
            Command::Compact { .. }
            | Command::SetStorageVersion { .. }
            | Command::LeaseRevoke { .. }
            | Command::LeaseCheckpoint { .. } => Ok(()),
        }
    }

    /// Checks every key and value of a txn (range ends are bounded as keys).
    fn check_txn(&self, request: &TxnRequest) -> Result<(), KvError> {
        for compare in &request.compares {
            self.check_key(&compare.span.key)?;
            self.check_range_end(&compare.span.range_end)?;
            if let CompareTarget::Value(value) = &compare.target {
                self.check_value(value)?;
            }
        }
        for op in request.success.iter().chain(&request.failure) {
            match op {
                TxnOp::Range(range) => {
                    self.check_key(&range.span.key)?;
                    self.check_range_end(&range.span.range_end)?;
                }
                TxnOp::Put { key, value, .. } => {
                    self.check_key(key)?;
                    self.check_value(value)?;
                }
                TxnOp::DeleteRange { span } => {
                    self.check_key(&span.key)?;
                    self.check_range_end(&span.range_end)?;
                }
                TxnOp::Txn(nested) => self.check_txn(nested)?,
            }
        }
        Ok(())
    }

    /// Checks a range end: empty, or within the key limit.
    pub fn check_range_end(&self, range_end: &[u8]) -> Result<(), KvError> {
        if range_end.len() > self.key_bytes_max {
            return Err(KvError::InvalidArgument(format!(
                "range_end is {} bytes, over the key limit of {} bytes (--max-key-bytes)",
                range_end.len(),
                self.key_bytes_max
            )));
        }
        Ok(())
    }
}

/// A lease's time to live: at least a second, at most
/// [`limits::LEASE_TTL_SECONDS_MAX`].
pub fn check_lease_ttl(ttl_seconds: u64) -> Result<(), KvError> {
    if ttl_seconds == 0 {
        return Err(KvError::InvalidArgument(
            "lease TTL must be at least 1 second".into(),
        ));
    }
    if ttl_seconds > limits::LEASE_TTL_SECONDS_MAX {
        return Err(KvError::OutOfRange(format!(
            "etcdserver: too large lease TTL: {ttl_seconds} s, at most {} s",
            limits::LEASE_TTL_SECONDS_MAX
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RequestLimits = RequestLimits {
        key_bytes_max: 4,
        value_bytes_max: 8,
    };

    #[test]
    fn keys_must_be_non_empty_and_within_the_limit() {
        assert!(LIMITS
            .check_key(b"")
            .unwrap_err()
            .to_string()
            .contains("empty"));
        assert!(LIMITS.check_key(b"abcd").is_ok());
        let message = LIMITS.check_key(b"abcde").unwrap_err().to_string();
        assert!(message.contains("limit of 4 bytes"), "{message}");
    }

    #[test]
    fn values_may_be_empty_but_not_over_the_limit() {
        assert!(LIMITS.check_value(b"").is_ok());
        assert!(LIMITS.check_value(&[0; 8]).is_ok());
        let message = LIMITS.check_value(&[0; 9]).unwrap_err().to_string();
        assert!(message.contains("limit of 8 bytes"), "{message}");
    }

    #[test]
    fn writes_are_checked_by_their_operation() {
        let put = |key: &[u8], value: &[u8]| Command::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        };
        let delete = |key: &[u8]| Command::Delete { key: key.to_vec() };
        assert!(LIMITS.check_command(&put(b"k", b"v")).is_ok());
        assert!(LIMITS.check_command(&delete(b"k")).is_ok());
        for refused in [
            put(b"", b"v"),
            put(b"abcde", b"v"),
            put(b"k", &[0; 9]),
            delete(b""),
            delete(b"abcde"),
        ] {
            let error = LIMITS.check_command(&refused).unwrap_err();
            assert!(
                matches!(error, KvError::InvalidArgument(_)),
                "{refused:?}: {error}"
            );
        }
    }
}
