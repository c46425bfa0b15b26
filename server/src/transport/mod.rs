//! The Raft peer transport: protobuf conversion at one boundary, outbound
//! per-peer senders, and the inbound gRPC service.

pub mod convert;
pub mod forwarder;
pub mod outbound;
pub mod peers;
pub mod reconnect;
pub mod service;
