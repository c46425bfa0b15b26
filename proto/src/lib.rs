//! Generated code for the kvstore protocols.
//!
//! The `.proto` files beside this crate are the source of truth:
//! - [`kv::v1`]: the client API (`kvstore.v1.KV`), served on a node's client port.
//! - [`raft::v1`]: the Raft peer protocol (`kvstore.raft.v1.Raft`), served on a
//!   node's raft port, server to server only.
//!
//! Servers, the CLI and the conformance runner depend on this crate, never on
//! generated paths.

/// The client API, package `kvstore.v1`.
pub mod kv {
    /// Version 1 of the client API.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("kvstore.v1");
    }
}

/// The path by which the generated peer protocol names the client API's
/// messages it carries (`kvstore.raft.v1` sits beside `kvstore.v1` in the
/// proto packages: `super::super::v1` from inside `raft::v1`).
#[doc(hidden)]
pub mod v1 {
    pub use super::kv::v1::*;
}

/// The Raft peer protocol, package `kvstore.raft.v1`.
pub mod raft {
    /// Version 1 of the peer protocol.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("kvstore.raft.v1");
    }
}

pub mod status;

/// Clients generated from earlier versions of the client API, kept to prove
/// that today's server still serves them (the contract is additive).
pub mod compat {
    /// `kvstore.v1` as it was before revisions (issue #22), from
    /// `proto/fixtures/kv-before-revisions.proto`.
    #[allow(missing_docs, clippy::all)]
    pub mod before_revisions {
        include!(concat!(
            env!("OUT_DIR"),
            "/compat-before-revisions/kvstore.v1.rs"
        ));
    }
}

/// Encoded `FileDescriptorSet` of every kvstore proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kvstore_descriptor");
