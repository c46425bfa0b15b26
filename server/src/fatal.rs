//! Failures the process does not survive. A failed WAL or store write
//! leaves the node unsure of what is durable: it stops, and recovers from
//! its log on restart, rather than go on in a state it cannot vouch for.

/// Exit code when the node stops because its storage failed or an
/// invariant broke (EX_SOFTWARE).
pub const EXIT_CODE_STORAGE_FAILURE: i32 = 70;

/// Logs why and stops the process with [`EXIT_CODE_STORAGE_FAILURE`].
pub fn storage_failure(context: &str, error: impl std::fmt::Display) -> ! {
    tracing::error!(%error, "{context}; stopping so the node recovers from its log on restart");
    std::process::exit(EXIT_CODE_STORAGE_FAILURE);
}

/// Logs why and stops the process with [`EXIT_CODE_STORAGE_FAILURE`]: for a
/// broken invariant (a panic in the Raft driver) rather than a storage
/// failure, with the same recovery from the log on restart.
pub fn stop(context: &str, error: impl std::fmt::Display) -> ! {
    tracing::error!(%error, "{context}; stopping so the node recovers from its log on restart");
    std::process::exit(EXIT_CODE_STORAGE_FAILURE);
}
