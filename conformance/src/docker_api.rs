//! Access to the docker daemon: our own bollard client (version negotiated),
//! and an API-version shim for testcontainers.
//!
//! testcontainers 0.28 (the current release) talks to the daemon with
//! bollard 0.21 at a fixed Docker API version 1.53 and never negotiates. A
//! daemon older than that (Docker Engine 20.10 speaks at most 1.41) refuses
//! every request with "client version 1.53 is too new". No testcontainers
//! release with the async API works there: 0.16 and later all pin 1.44 or
//! newer; 0.15 (bollard 0.13, API 1.40) predates the current API. So when the
//! daemon is older than testcontainers' bollard, [`prepare`] starts a tiny
//! proxy on a private unix socket that forwards to the daemon's socket and
//! rewrites the API version in each request line (`GET /v1.53/...` becomes
//! `GET /v1.41/...`), and points testcontainers at it with `DOCKER_HOST`.
//! The daemon then answers with its own API version; the requests
//! testcontainers makes (create, start, stop, inspect, logs, remove) have
//! the same shape in 1.41, and fields a 1.41 daemon does not know are
//! ignored by it. With a daemon at 1.53 or newer no shim is started.
//!
//! Only the request line's version is rewritten: the proxy looks for the
//! bytes ` /v1.53/` in the client-to-daemon stream. A request body
//! containing exactly that text would be altered too; the runner sends no
//! such body (container env, labels and names never hold it).

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::thread;

use anyhow::{anyhow, bail, Context, Result};
use testcontainers::bollard::{self, Docker};

/// Where the daemon listens, from `DOCKER_HOST` (`unix://` only) or the
/// default socket.
pub fn daemon_socket() -> Result<PathBuf> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => match host.strip_prefix("unix://") {
            Some(path) => Ok(PathBuf::from(path)),
            None => bail!(
                "DOCKER_HOST={host}: only unix:// sockets are supported by the conformance runner"
            ),
        },
        _ => Ok(PathBuf::from("/var/run/docker.sock")),
    }
}

/// A bollard client for the runner's own calls (kill, network connect and
/// disconnect, inspect), straight to the daemon at its API version.
pub async fn client(setup: &Setup) -> Result<Docker> {
    let socket = setup
        .daemon_socket
        .to_str()
        .ok_or_else(|| anyhow!("docker socket path is not UTF-8"))?;
    let docker = Docker::connect_with_unix(socket, 120, bollard::API_DEFAULT_VERSION)
        .with_context(|| format!("cannot connect to docker at {socket}"))?;
    docker
        .negotiate_version()
        .await
        .with_context(|| format!("docker at {socket} does not answer; is the daemon running?"))
}

/// The daemon's API version, e.g. `(1, 41)`, asked with a plain HTTP/1.0
/// request (no runtime needed).
fn daemon_api_version(socket: &Path) -> Result<(u32, u32)> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot connect to docker at {}; is the daemon running?",
            socket.display()
        )
    })?;
    stream.write_all(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .ok_or_else(|| anyhow!("docker /version: malformed response"))?;
    let version: serde_json::Value =
        serde_json::from_str(body).context("docker /version: malformed JSON")?;
    let text = version["ApiVersion"]
        .as_str()
        .ok_or_else(|| anyhow!("docker /version: no ApiVersion"))?;
    parse_version(text).ok_or_else(|| anyhow!("docker /version: bad ApiVersion {text:?}"))
}

fn parse_version(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// What [`prepare`] did.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The daemon's socket.
    pub daemon_socket: PathBuf,
    /// The daemon's API version.
    pub daemon_version: (u32, u32),
    /// The socket testcontainers uses: the shim's, or the daemon's.
    pub testcontainers_socket: PathBuf,
    /// Whether the version shim runs.
    pub shim: bool,
}

static SETUP: OnceLock<std::result::Result<Setup, String>> = OnceLock::new();

/// Makes testcontainers usable with this daemon (see the module docs). Call
/// it once, early, before any testcontainers call: it sets `DOCKER_HOST` for
/// this process when the shim is needed. Later calls return the first result.
pub fn prepare() -> Result<Setup> {
    SETUP
        .get_or_init(|| prepare_once().map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(|error| anyhow!(error))
}

fn prepare_once() -> Result<Setup> {
    let socket = daemon_socket()?;
    let daemon_version = daemon_api_version(&socket)?;
    let client_version = (
        bollard::API_DEFAULT_VERSION.major_version as u32,
        bollard::API_DEFAULT_VERSION.minor_version as u32,
    );
    if daemon_version >= client_version {
        return Ok(Setup {
            daemon_socket: socket.clone(),
            daemon_version,
            testcontainers_socket: socket,
            shim: false,
        });
    }
    let directory =
        std::env::temp_dir().join(format!("kvstore-conformance-{}", std::process::id()));
    std::fs::create_dir_all(&directory)?;
    std::fs::set_permissions(&directory, std::fs::Permissions::from_mode(0o700))?;
    let shim_socket = directory.join("docker.sock");
    let _ = std::fs::remove_file(&shim_socket);
    let listener = UnixListener::bind(&shim_socket)
        .with_context(|| format!("cannot listen on {}", shim_socket.display()))?;
    let from = format!(" /v{}.{}/", client_version.0, client_version.1).into_bytes();
    let to = format!(" /v{}.{}/", daemon_version.0, daemon_version.1).into_bytes();
    let daemon = socket.clone();
    thread::Builder::new()
        .name("docker-api-shim".into())
        .spawn(move || {
            for connection in listener.incoming() {
                let Ok(client) = connection else { continue };
                let Ok(upstream) = UnixStream::connect(&daemon) else {
                    continue;
                };
                let (from, to) = (from.clone(), to.clone());
                let _ = thread::Builder::new()
                    .name("docker-api-shim-conn".into())
                    .spawn(move || proxy(client, upstream, from, to));
            }
        })?;
    // Called once, before testcontainers reads its configuration.
    std::env::set_var("DOCKER_HOST", format!("unix://{}", shim_socket.display()));
    Ok(Setup {
        daemon_socket: socket,
        daemon_version,
        testcontainers_socket: shim_socket,
        shim: true,
    })
}

/// Removes the shim's socket directory (call at exit).
pub fn cleanup() {
    if let Some(Ok(setup)) = SETUP.get() {
        if setup.shim {
            if let Some(directory) = setup.testcontainers_socket.parent() {
                let _ = std::fs::remove_dir_all(directory);
            }
        }
    }
}

fn proxy(client: UnixStream, upstream: UnixStream, from: Vec<u8>, to: Vec<u8>) {
    let (Ok(mut client_reader), Ok(mut upstream_writer)) =
        (client.try_clone(), upstream.try_clone())
    else {
        return;
    };
    let (mut upstream_reader, mut client_writer) = (upstream, client);
    let responses = thread::spawn(move || {
        let _ = std::io::copy(&mut upstream_reader, &mut client_writer);
        let _ = client_writer.shutdown(std::net::Shutdown::Both);
    });
    let mut rewriter = Rewriter::new(from, to);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match client_reader.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                let output = rewriter.feed(&buffer[..read]);
                if upstream_writer.write_all(&output).is_err() {
                    break;
                }
            }
        }
    }
    let _ = upstream_writer.write_all(&rewriter.finish());
    let _ = upstream_writer.shutdown(std::net::Shutdown::Write);
    let _ = responses.join();
}

/// Replaces every occurrence of `from` by `to` in a byte stream fed in
/// arbitrary pieces.
#[derive(Debug)]
pub struct Rewriter {
    from: Vec<u8>,
    to: Vec<u8>,
    pending: Vec<u8>,
}

impl Rewriter {
    /// A rewriter of `from` into `to`.
    pub fn new(from: Vec<u8>, to: Vec<u8>) -> Self {
        assert!(!from.is_empty());
        Rewriter {
            from,
            to,
            pending: Vec::new(),
        }
    }

    /// Feeds bytes; returns those that can be forwarded now.
    pub fn feed(&mut self, input: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(input);
        let mut output = Vec::with_capacity(self.pending.len());
        let mut index = 0;
        while index < self.pending.len() {
            let rest = &self.pending[index..];
            if rest.starts_with(&self.from) {
                output.extend_from_slice(&self.to);
                index += self.from.len();
            } else if self.from.starts_with(rest) {
                // Could be the start of a match split across reads: hold it.
                break;
            } else {
                output.push(self.pending[index]);
                index += 1;
            }
        }
        self.pending.drain(..index);
        output
    }

    /// Returns what is still held at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite_in_pieces(input: &[u8], split: usize) -> Vec<u8> {
        let mut rewriter = Rewriter::new(b" /v1.53/".to_vec(), b" /v1.41/".to_vec());
        let mut output = Vec::new();
        for piece in input.chunks(split.max(1)) {
            output.extend(rewriter.feed(piece));
        }
        output.extend(rewriter.finish());
        output
    }

    #[test]
    fn rewrites_request_lines_split_anywhere() {
        let input = b"GET /v1.53/containers/json HTTP/1.1\r\nHost: d\r\n\r\nPOST /v1.53/containers/x/start HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
        let expected = b"GET /v1.41/containers/json HTTP/1.1\r\nHost: d\r\n\r\nPOST /v1.41/containers/x/start HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
        for split in 1..input.len() + 1 {
            assert_eq!(
                rewrite_in_pieces(input, split),
                expected.to_vec(),
                "split {split}"
            );
        }
    }

    #[test]
    fn leaves_other_bytes_alone() {
        let input = b" /v1.5 /v1.53 /v1.53x/ v1.53/ binary\x00\xff";
        for split in 1..input.len() + 1 {
            assert_eq!(
                rewrite_in_pieces(input, split),
                input.to_vec(),
                "split {split}"
            );
        }
    }

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("1.41"), Some((1, 41)));
        assert_eq!(parse_version("1.x"), None);
        assert!((1, 41) < (1, 53));
    }
}
