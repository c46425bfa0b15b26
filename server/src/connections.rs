//! Accepted connections on the node's ports: a cap per port, a deadline for
//! the handshake, an idle timeout and keepalive, and the file descriptors
//! they may take, so that clients can never take the files storage needs.
//!
//! Over its cap a port accepts a connection and closes it at once; the open
//! ones keep working. A connection that has not sent its first bytes (the
//! HTTP/2 preface) within the handshake timeout is closed. The gRPC ports
//! are served here on hyper's HTTP/2 server directly (tonic's own server
//! has no idle timeout): a connection without an open call for the idle
//! timeout gets a GOAWAY, and one whose peer does not answer a PING is
//! closed. On the HTTP port, a connection silent for the idle timeout is
//! closed.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::codegen::{http, Service};
use tonic::service::Routes;

use crate::limits;
use crate::transport::reconnect::ReportSchedule;

/// Bytes of the HTTP/2 client preface, which a gRPC client sends first.
pub const HTTP2_PREFACE_BYTES: usize = 24;
/// Pause after a failed `accept` (out of file descriptors, most likely)
/// before the next one, so that the loop does not spin.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The limits of one listening port.
#[derive(Debug, Clone, Copy)]
pub struct PortLimits {
    /// The port's name in log lines: "client", "raft", "metrics".
    pub port: &'static str,
    /// Most connections open at once.
    pub connections_max: usize,
    /// Time a new connection has to send its first bytes.
    pub handshake_timeout: Duration,
    /// Time a connection may go without a request.
    pub idle_timeout: Duration,
}

/// A listener that keeps at most `connections_max` connections open.
pub struct CappedListener {
    listener: TcpListener,
    limits: PortLimits,
    permits: Arc<Semaphore>,
    /// First bytes a connection must send within the handshake timeout.
    handshake_bytes: usize,
    /// Whether silence past the idle timeout closes a connection (the HTTP
    /// port; the gRPC ports go by open calls instead).
    close_when_silent: bool,
    refusals: ReportSchedule,
    accept_errors: ReportSchedule,
}

impl CappedListener {
    /// A capped listener for a gRPC port: connections must send the HTTP/2
    /// preface within the handshake timeout.
    pub fn grpc(listener: TcpListener, limits: PortLimits) -> Self {
        Self::new(listener, limits, HTTP2_PREFACE_BYTES, false)
    }

    /// A capped listener for the HTTP port: connections must send a byte
    /// within the handshake timeout, and are closed after the idle timeout
    /// without a byte either way.
    pub fn http(listener: TcpListener, limits: PortLimits) -> Self {
        Self::new(listener, limits, 1, true)
    }

    fn new(
        listener: TcpListener,
        limits: PortLimits,
        handshake_bytes: usize,
        close_when_silent: bool,
    ) -> Self {
        Self {
            listener,
            limits,
            permits: Arc::new(Semaphore::new(limits.connections_max)),
            handshake_bytes,
            close_when_silent,
            refusals: ReportSchedule::new(),
            accept_errors: ReportSchedule::new(),
        }
    }

    /// The next connection within the cap. Connections over it are closed
    /// as soon as they are accepted.
    pub async fn accept_within_cap(&mut self) -> (GuardedStream, SocketAddr) {
        loop {
            let (stream, address) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    if let Some(errors) = self.accept_errors.record(Instant::now()) {
                        tracing::warn!(port = self.limits.port, %error, errors, "accepting a connection failed");
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                drop(stream);
                if let Some(refused) = self.refusals.record(Instant::now()) {
                    tracing::warn!(
                        port = self.limits.port,
                        connections_max = self.limits.connections_max,
                        refused,
                        "connection refused: the port has as many connections open as it allows"
                    );
                }
                continue;
            };
            configure(&stream);
            let stream = GuardedStream::new(
                stream,
                permit,
                self.limits.handshake_timeout,
                self.handshake_bytes,
                self.close_when_silent.then_some(self.limits.idle_timeout),
            );
            return (stream, address);
        }
    }

    /// Waits until every connection accepted so far is closed.
    /// Stops listening (new clients are refused at once instead of waiting
    /// in the backlog), then waits until every open connection is closed.
    async fn close_and_wait_until_all_closed(self) {
        let CappedListener {
            listener,
            limits,
            permits,
            ..
        } = self;
        drop(listener);
        let all = u32::try_from(limits.connections_max).unwrap_or(u32::MAX);
        let _ = permits.acquire_many(all).await;
    }
}

impl axum::serve::Listener for CappedListener {
    type Io = GuardedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.accept_within_cap().await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// Nagle off (an answer written in two parts must not wait ~40 ms for the
/// client's delayed ACK) and TCP keepalive on.
fn configure(stream: &TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot disable Nagle's algorithm on a connection");
    }
    let keepalive = socket2::TcpKeepalive::new().with_time(limits::TCP_KEEPALIVE_IDLE);
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(%error, "cannot enable TCP keepalive on a connection");
    }
}

/// An accepted connection: holds its place under the port's cap until it is
/// dropped, and fails its reads once a deadline passes (the handshake's,
/// then on the HTTP port the idle one).
pub struct GuardedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    deadline: Option<Pin<Box<Sleep>>>,
    /// First bytes still to come before the handshake deadline is lifted.
    handshake_bytes_left: usize,
    idle_timeout: Option<Duration>,
}

impl GuardedStream {
    fn new(
        stream: TcpStream,
        permit: OwnedSemaphorePermit,
        handshake_timeout: Duration,
        handshake_bytes: usize,
        idle_timeout: Option<Duration>,
    ) -> Self {
        Self {
            stream,
            _permit: permit,
            deadline: Some(Box::pin(tokio::time::sleep(handshake_timeout))),
            handshake_bytes_left: handshake_bytes,
            idle_timeout,
        }
    }

    /// Bytes went through: past the handshake, the deadline becomes the idle
    /// one (or none).
    fn saw_bytes(&mut self, read: usize) {
        if self.handshake_bytes_left > 0 {
            self.handshake_bytes_left = self.handshake_bytes_left.saturating_sub(read);
            if self.handshake_bytes_left > 0 {
                return;
            }
        }
        match (self.idle_timeout, self.deadline.as_mut()) {
            (Some(idle), Some(deadline)) => {
                deadline.as_mut().reset(tokio::time::Instant::now() + idle);
            }
            _ => self.deadline = None,
        }
    }

    fn deadline_passed(&mut self, context: &mut Context<'_>) -> bool {
        self.deadline
            .as_mut()
            .is_some_and(|deadline| deadline.as_mut().poll(context).is_ready())
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buffer.filled().len();
        match Pin::new(&mut this.stream).poll_read(context, buffer) {
            Poll::Ready(Ok(())) => {
                let read = buffer.filled().len() - before;
                if read > 0 {
                    this.saw_bytes(read);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.deadline_passed(context) => {
                let what = if this.handshake_bytes_left > 0 {
                    "no handshake within the handshake timeout"
                } else {
                    "idle past the idle timeout"
                };
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
            }
            other => other,
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write(context, data);
        if let Poll::Ready(Ok(count)) = written {
            // Answers keep an HTTP connection alive, not a handshake.
            if count > 0 && this.handshake_bytes_left == 0 && this.idle_timeout.is_some() {
                this.saw_bytes(0);
            }
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write_vectored(context, buffers);
        if let Poll::Ready(Ok(count)) = written {
            if count > 0 && this.handshake_bytes_left == 0 && this.idle_timeout.is_some() {
                this.saw_bytes(0);
            }
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(context)
    }
}

/// HTTP/2 settings of a gRPC port.
#[derive(Debug, Clone, Copy)]
pub struct Http2Settings {
    /// Concurrent calls per connection.
    pub concurrent_streams_max: u32,
}

/// Serves `routes` over HTTP/2 on `listener` until `shutdown` completes,
/// then stops accepting, sends every connection a GOAWAY and waits for them
/// to close.
pub async fn serve_grpc(
    mut listener: CappedListener,
    routes: Routes,
    settings: Http2Settings,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.concurrent_streams_max)
        .keep_alive_interval(Some(limits::HTTP2_KEEPALIVE_INTERVAL))
        .keep_alive_timeout(limits::HTTP2_KEEPALIVE_TIMEOUT);
    let routes = routes.prepare();
    let (stop, stopping) = watch::channel(false);
    let idle_timeout = listener.limits.idle_timeout;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            (stream, _) = listener.accept_within_cap() => {
                let connection = Connection {
                    builder: builder.clone(),
                    routes: routes.clone(),
                    idle_timeout,
                    stopping: stopping.clone(),
                };
                tokio::spawn(connection.serve(stream));
            }
        }
    }
    let _ = stop.send(true);
    drop(stopping);
    listener.close_and_wait_until_all_closed().await;
}

/// What serving one gRPC connection needs.
struct Connection {
    builder: hyper::server::conn::http2::Builder<TokioExecutor>,
    routes: Routes,
    idle_timeout: Duration,
    stopping: watch::Receiver<bool>,
}

impl Connection {
    async fn serve(mut self, stream: GuardedStream) {
        let (open_calls, calls) = watch::channel(0usize);
        let service = TrackedRoutes {
            routes: self.routes,
            open_calls: Arc::new(open_calls),
        };
        let connection = self
            .builder
            .serve_connection(TokioIo::new(stream), service.clone());
        let mut connection = std::pin::pin!(connection);
        let mut idle = std::pin::pin!(idle_for(calls, self.idle_timeout));
        // After a GOAWAY, how long the peer may take to finish its calls and
        // answer the PING that ends the connection; then it is cut.
        let closing_deadline = tokio::time::sleep(Duration::MAX);
        let mut closing_deadline = std::pin::pin!(closing_deadline);
        let mut closing = false;
        loop {
            let grace = tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection closed with an error");
                    }
                    break;
                }
                () = &mut idle, if !closing => {
                    tracing::debug!("closing a connection idle past the idle timeout");
                    self.idle_timeout.min(limits::HTTP2_KEEPALIVE_TIMEOUT)
                }
                _ = self.stopping.wait_for(|stop| *stop), if !closing => {
                    Duration::from_millis(limits::SHUTDOWN_GRACE_MS)
                }
                () = closing_deadline.as_mut(), if closing => {
                    tracing::debug!("a closing connection did not finish in time; cut");
                    break;
                }
            };
            connection.as_mut().graceful_shutdown();
            closing_deadline
                .as_mut()
                .reset(tokio::time::Instant::now() + grace);
            closing = true;
        }
        drop(service);
    }
}

/// Completes once no call has been open on the connection for `timeout`.
async fn idle_for(mut calls: watch::Receiver<usize>, timeout: Duration) {
    loop {
        if calls.wait_for(|open| *open == 0).await.is_err() {
            return;
        }
        if tokio::time::timeout(timeout, calls.wait_for(|open| *open > 0))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The routes of one connection, counting its open calls.
#[derive(Clone)]
struct TrackedRoutes {
    routes: Routes,
    open_calls: Arc<watch::Sender<usize>>,
}

/// One open call: counted until its answer has been sent (or dropped).
struct OpenCall(Arc<watch::Sender<usize>>);

impl OpenCall {
    fn new(open_calls: Arc<watch::Sender<usize>>) -> Self {
        open_calls.send_modify(|open| *open += 1);
        Self(open_calls)
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        self.0.send_modify(|open| *open -= 1);
    }
}

impl hyper::service::Service<http::Request<Incoming>> for TrackedRoutes {
    type Response = http::Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        let call = OpenCall::new(self.open_calls.clone());
        let mut routes = self.routes.clone();
        Box::pin(async move {
            std::future::poll_fn(|context| {
                Service::<http::Request<Incoming>>::poll_ready(&mut routes, context)
            })
            .await?;
            let response = routes.call(request).await?;
            Ok(response.map(|body| TrackedBody { body, _call: call }))
        })
    }
}

/// An answer's body, holding its call open until it is sent or dropped.
pub struct TrackedBody {
    body: tonic::body::Body,
    _call: OpenCall,
}

impl hyper::body::Body for TrackedBody {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The file descriptors the node may need: its connection caps, its peers
/// and the storage reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileDescriptorBudget {
    /// `--max-connections`.
    pub client_connections: u64,
    /// The raft port's cap.
    pub raft_connections: u64,
    /// `--max-http-connections`.
    pub http_connections: u64,
    /// Peers this node connects to.
    pub peers: u64,
}

impl FileDescriptorBudget {
    /// Every file descriptor the node may hold at once.
    pub fn total(&self) -> u64 {
        self.client_connections
            + self.raft_connections
            + self.http_connections
            + self.peers * limits::FILE_DESCRIPTORS_PER_PEER
            + limits::STORAGE_FILE_DESCRIPTORS_RESERVE
    }

    /// Whether the budget fits in a file descriptor limit (`None`: no limit).
    pub fn check(&self, limit: Option<u64>) -> Result<(), String> {
        let needed = self.total();
        match limit {
            Some(limit) if limit < needed => Err(format!(
                "the open file limit ({limit}) is below the {needed} file descriptors this node may need: \
                 --max-connections {} + --max-http-connections {} + {} on the raft port + {} per peer \
                 for {} peers + {} kept for storage; raise the limit (ulimit -n, systemd LimitNOFILE=, \
                 docker --ulimit nofile=) or lower the connection caps",
                self.client_connections,
                self.http_connections,
                self.raft_connections,
                limits::FILE_DESCRIPTORS_PER_PEER,
                self.peers,
                limits::STORAGE_FILE_DESCRIPTORS_RESERVE,
            )),
            _ => Ok(()),
        }
    }
}

/// Raises the soft open file limit to the hard one, and checks that
/// `budget` fits in it. Returns the limit in force.
pub fn reserve_file_descriptors(budget: FileDescriptorBudget) -> Result<Option<u64>, String> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let mut soft = limit.current;
    if soft.is_some() && soft != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => soft = limit.maximum,
            Err(error) => {
                tracing::warn!(%error, soft = ?soft, hard = ?limit.maximum, "cannot raise the open file limit to its hard limit");
            }
        }
    }
    budget.check(soft)?;
    Ok(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: FileDescriptorBudget = FileDescriptorBudget {
        client_connections: 1024,
        raft_connections: 64,
        http_connections: 64,
        peers: 2,
    };

    #[test]
    fn the_budget_counts_caps_peers_and_the_storage_reserve() {
        assert_eq!(
            BUDGET.total(),
            1024 + 64
                + 64
                + 2 * limits::FILE_DESCRIPTORS_PER_PEER
                + limits::STORAGE_FILE_DESCRIPTORS_RESERVE
        );
        assert!(BUDGET.check(None).is_ok());
        assert!(BUDGET.check(Some(BUDGET.total())).is_ok());
        let message = BUDGET.check(Some(1024)).unwrap_err();
        assert!(message.contains("open file limit (1024)"), "{message}");
        assert!(message.contains("--max-connections 1024"), "{message}");
    }

    #[test]
    fn the_storage_reserve_covers_leveldb_table_cache() {
        let leveldb = rusty_leveldb::Options::default().max_open_files as u64;
        assert!(limits::STORAGE_FILE_DESCRIPTORS_RESERVE > leveldb);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_once_no_call_was_open_for_the_timeout() {
        let (open_calls, calls) = watch::channel(0usize);
        let open_calls = Arc::new(open_calls);
        let timeout = Duration::from_secs(10);
        let idle = tokio::spawn(idle_for(calls, timeout));
        let call = OpenCall::new(open_calls.clone());
        tokio::time::sleep(3 * timeout).await;
        assert!(!idle.is_finished(), "a call is open");
        drop(call);
        tokio::time::sleep(timeout / 2).await;
        let call = OpenCall::new(open_calls.clone());
        tokio::time::sleep(timeout).await;
        assert!(!idle.is_finished(), "the call reset the idle time");
        drop(call);
        tokio::time::sleep(timeout + Duration::from_millis(1)).await;
        assert!(idle.is_finished(), "idle for the whole timeout");
    }
}
