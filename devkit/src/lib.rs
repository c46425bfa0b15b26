//! Development-only helpers shared by the workspace's tests and benchmarks,
//! so that each exists once:
//!
//! - [`criterion`] (feature `criterion`): the settings of the criterion
//!   micro-benchmarks of `kvstore-raft`, `kvstore-wal` and `kvstore-server`.
//! - [`binary`]: where the workspace binaries and `target/` are, for tests
//!   that run the real `kvstore-server` and `kvstore-cli`.
//!
//! Only ever a dev-dependency (`publish = false`): nothing here is part of
//! kvstore itself.
#![deny(missing_docs)]

pub mod binary;
#[cfg(feature = "criterion")]
pub mod criterion;
