//! Where the workspace binaries are, seen from a test executable.
//!
//! Cargo builds an integration test as `target/<profile>/deps/<test>-<hash>`
//! and the workspace binaries as `target/<profile>/<name>`; `cargo test`
//! builds the binaries of the package under test only, so a test that runs
//! another package's binary needs `cargo build --workspace --bins` first
//! (`make test` does it).

use std::path::PathBuf;

/// `target/<profile>`: the directory of the running test executable, or its
/// parent when that is `deps/`.
fn profile_directory() -> PathBuf {
    let mut path = std::env::current_exe().expect("test executable path");
    path.pop(); // the test executable
    if path.ends_with("deps") {
        path.pop();
    }
    path
}

/// Path of the workspace binary `name`, built next to this test's executable.
///
/// # Panics
///
/// If it was not built, with the command that builds it.
pub fn workspace_binary(name: &str) -> PathBuf {
    let binary = profile_directory().join(name);
    assert!(
        binary.exists(),
        "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`, or `make test`)",
        binary.display()
    );
    binary
}

/// `target/` (the parent of the profile directory), where test artifacts go.
pub fn target_directory() -> PathBuf {
    let mut path = profile_directory();
    path.pop(); // debug or release
    path
}
