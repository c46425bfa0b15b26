//! Server flags. Every flag can also be set by an environment variable
//! (`KVSTORE_ID`, `KVSTORE_CLIENT_ADDR`, ...); a flag on the command line wins.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::limits;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines for a terminal.
    Text,
    /// One JSON object per line, for ELK, Loki and friends.
    Json,
}

/// kvstore-server: one node of a Raft-replicated key-value store.
#[derive(Debug, Clone, Parser)]
#[command(name = "kvstore-server", version, about, long_about = None)]
pub struct ServerConfig {
    /// This node's id: a positive integer, unique in the cluster.
    #[arg(long, env = "KVSTORE_ID", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub id: u64,

    /// Address the client gRPC API (kvstore.v1.KV) listens on.
    #[arg(long, env = "KVSTORE_CLIENT_ADDR", default_value = "127.0.0.1:50051")]
    pub client_addr: SocketAddr,

    /// Directory holding this node's state; created when missing.
    #[arg(long, env = "KVSTORE_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Log line format.
    #[arg(long, env = "KVSTORE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter: a level (error, warn, info, debug, trace) or a tracing
    /// filter such as `info,kvstore_server=debug`.
    #[arg(long, env = "KVSTORE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Largest key accepted, in bytes.
    #[arg(long, env = "KVSTORE_MAX_KEY_BYTES", default_value_t = limits::KEY_BYTES_MAX_DEFAULT)]
    pub max_key_bytes: usize,

    /// Largest value accepted, in bytes.
    #[arg(long, env = "KVSTORE_MAX_VALUE_BYTES", default_value_t = limits::VALUE_BYTES_MAX_DEFAULT)]
    pub max_value_bytes: usize,
}

impl ServerConfig {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_key_bytes == 0 {
            return Err("--max-key-bytes must be at least 1".into());
        }
        Ok(())
    }
}
