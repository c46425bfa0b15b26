//! The kvstore node: storage, the client gRPC service, and the server that
//! ties them together. The binary in `main.rs` only parses flags and signals.
#![deny(missing_docs)]

pub mod config;
pub mod connections;
pub mod data_dir;
pub mod errors;
pub mod fatal;
pub mod http;
pub mod limits;
pub mod logging;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod state_machine;
pub mod status;
pub mod storage;
pub mod storage_health;
pub mod transport;
