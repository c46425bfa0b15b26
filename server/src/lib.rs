//! The kvstore node: storage, the client gRPC service and (later) Raft.
#![deny(missing_docs)]

pub mod storage;
