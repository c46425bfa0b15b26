//! The Raft peer transport: protobuf conversion at one boundary
//! ([`convert`]), outbound per-peer senders ([`peers`]), the inbound gRPC
//! service ([`service`]), and the interfaces the node uses: [`leader_link`]
//! (forwarding to the leader, sending Raft messages) and [`inbound`] (what
//! the service hands the node). Nothing here imports `crate::node`.

pub mod convert;
pub mod forwarder;
pub mod inbound;
pub mod leader_link;
pub mod outbound;
pub mod peers;
pub mod reconnect;
pub mod service;
