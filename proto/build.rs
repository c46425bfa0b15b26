//! Generates the Rust code for every `.proto` in this crate with the pure-Rust
//! `protox` compiler (no system `protoc` needed), and writes the encoded
//! descriptor set that the servers hand to gRPC reflection.

use std::path::PathBuf;

use prost::Message;

const PROTO_FILES: &[&str] = &["kvstore/v1/kv.proto", "kvstore/raft/v1/raft.proto"];
const INCLUDE_DIRS: &[&str] = &["."];
const DESCRIPTOR_FILE: &str = "kvstore_descriptor.bin";
const RAFT_ENTRY_DATA: &str = ".kvstore.raft.v1.Entry.data";
/// The client API as it was before revisions (issue #22): compiled into its
/// own module so that tests can prove a client generated from it still
/// works against today's server.
const COMPAT_BEFORE_REVISIONS: &str = "fixtures/kv-before-revisions.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptor_set = protox::compile(PROTO_FILES, INCLUDE_DIRS)?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // `compile_fds` ignores `file_descriptor_set_path`, so reflection's
    // descriptor set is written here by hand.
    std::fs::write(
        out_dir.join(DESCRIPTOR_FILE),
        descriptor_set.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // Log entry payloads as `bytes::Bytes`: the Raft core holds them as
        // `Bytes`, so sending one to a peer clones a pointer, and a received
        // one is a slice of the message buffer rather than a copy.
        .bytes(RAFT_ENTRY_DATA)
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptor_set)?;
    println!("cargo:rerun-if-changed={COMPAT_BEFORE_REVISIONS}");
    let compat_dir = out_dir.join("compat-before-revisions");
    std::fs::create_dir_all(&compat_dir)?;
    let compat = protox::compile([COMPAT_BEFORE_REVISIONS], ["fixtures"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .out_dir(&compat_dir)
        .compile_fds(compat)?;
    Ok(())
}
