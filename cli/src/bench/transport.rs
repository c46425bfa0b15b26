//! The bench's HTTP/2 connection: each unary call leaves in one TCP write.
//!
//! Through tonic's `Channel` (hyper's HTTP/2 client), a unary request leaves
//! in three writes: the HEADERS frame alone (hyper waits for the stream's
//! flow-control capacity before the body, and the capacity is assigned only
//! once the connection task has sent the HEADERS), then the DATA frame, then
//! an empty DATA frame carrying END_STREAM (the encoded body only learns it
//! has ended when polled again, and h2 flushes a DATA frame of more than 256
//! bytes before buffering the next frame). Each write is a loopback delivery
//! that can wake the server, and a tonic server does not start a unary call
//! before END_STREAM: the extra writes cost the leader system calls and the
//! single-client put latency (measurements: docs/benchmarks.md,
//! "The bench transport's one write per call").
//!
//! Here the request body, which a unary call has ready at once, is collected
//! first and handed to h2 together with the headers and END_STREAM, before
//! the connection task runs: HEADERS and DATA go out in one write. The
//! responses are read as they come. A connection the server closed is
//! replaced on the next call. Unary calls only: a streaming request body
//! would be collected whole before sending. The same client drives etcd in
//! comparison runs, so both stores see the same requests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::client::Failure;

/// Receive window of each stream: hyper's client default, so that a large
/// value is not read in 64 KiB steps.
const STREAM_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
/// Receive window of the whole connection: hyper's client default.
const CONNECTION_WINDOW_BYTES: u32 = 5 * 1024 * 1024;

/// Boxed error, as tonic takes it from a transport.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One HTTP/2 connection for tonic's generated clients; cloning shares it.
/// When the server closes it (a restart, say), the next call opens a new
/// one, as tonic's `Channel` does.
#[derive(Clone, Debug)]
pub struct OneWriteChannel {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// `HOST:PORT` to connect to again.
    authority: String,
    /// Deadline of connecting, and of each call until its response headers
    /// arrive (as with tonic's `Channel`; a unary call's message and
    /// trailers follow them at once).
    timeout: Duration,
    current: std::sync::Mutex<Current>,
    /// Held while a new connection is opened, so that calls finding the old
    /// one gone open one between them, not one each.
    reconnecting: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct Current {
    sender: h2::client::SendRequest<Bytes>,
    /// Connections opened before this one.
    generation: u64,
}

impl OneWriteChannel {
    /// Connects to `authority` (`HOST:PORT`) within `timeout`, which then
    /// bounds every call too.
    pub async fn connect(authority: &str, timeout: Duration) -> Result<Self, Failure> {
        let sender = open(authority, timeout)
            .await
            .map_err(|error| Failure(format!("cannot connect to {authority}: {error}")))?;
        Ok(Self::with_sender(authority, timeout, sender))
    }

    fn with_sender(
        authority: &str,
        timeout: Duration,
        sender: h2::client::SendRequest<Bytes>,
    ) -> Self {
        OneWriteChannel {
            shared: Arc::new(Shared {
                authority: authority.to_string(),
                timeout,
                current: std::sync::Mutex::new(Current {
                    sender,
                    generation: 0,
                }),
                reconnecting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    async fn unary(
        shared: Arc<Shared>,
        request: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<ResponseBody>, BoxError> {
        let (parts, body) = request.into_parts();
        // A unary call's body is one encoded message, ready without waiting.
        let body = body.collect().await?.to_bytes();
        let (sender, generation) = shared.current();
        let mut sender = match sender.ready().await {
            Ok(sender) => sender,
            // The connection is gone and nothing of this call was sent on
            // it: send it on a new one.
            Err(_) => shared.reconnect(generation).await?.ready().await?,
        };
        let end_of_stream = body.is_empty();
        let (response, mut stream) =
            sender.send_request(http::Request::from_parts(parts, ()), end_of_stream)?;
        if !end_of_stream {
            // Queued beside the HEADERS before the connection task writes
            // either; h2 holds it until the stream has window for it.
            stream.send_data(body, true)?;
        }
        let response = response.await?;
        Ok(response.map(|stream| ResponseBody {
            stream,
            data_done: false,
        }))
    }
}

impl Shared {
    fn current(&self) -> (h2::client::SendRequest<Bytes>, u64) {
        let current = self.current.lock().expect("no panic while held");
        (current.sender.clone(), current.generation)
    }

    /// A sender on a connection newer than `generation`, opening one unless
    /// another call already has.
    async fn reconnect(&self, generation: u64) -> Result<h2::client::SendRequest<Bytes>, BoxError> {
        let _reconnecting = self.reconnecting.lock().await;
        let (sender, current_generation) = self.current();
        if current_generation != generation {
            return Ok(sender);
        }
        let sender = open(&self.authority, self.timeout).await.map_err(|error| {
            tonic::Status::unavailable(format!("cannot connect to {}: {error}", self.authority))
        })?;
        let mut current = self.current.lock().expect("no panic while held");
        current.sender = sender.clone();
        current.generation += 1;
        Ok(sender)
    }
}

/// Opens a TCP connection to `authority` and speaks HTTP/2 over it.
async fn open(
    authority: &str,
    timeout: Duration,
) -> Result<h2::client::SendRequest<Bytes>, BoxError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(authority))
        .await
        .map_err(|_| format!("no connection within {timeout:?}"))??;
    stream.set_nodelay(true)?;
    handshake(stream, timeout).await
}

/// Speaks HTTP/2 over `io`, spawning the connection's task.
async fn handshake<T>(io: T, timeout: Duration) -> Result<h2::client::SendRequest<Bytes>, BoxError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .handshake::<_, Bytes>(io);
    let (sender, connection) = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| format!("no HTTP/2 handshake within {timeout:?}"))??;
    // Ends when the server closes the connection or every sender is dropped;
    // calls still in flight then fail with the connection's error.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

impl tower_service::Service<http::Request<tonic::body::Body>> for OneWriteChannel {
    type Response = http::Response<ResponseBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call waits for h2's readiness (the server's stream limit) on
        // its own clone of the sender.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let call = Self::unary(Arc::clone(&self.shared), request);
        let timeout = self.shared.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, call).await {
                Ok(result) => result,
                // tonic passes a Status through as the call's status.
                Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                    "no answer within {timeout:?}"
                ))
                .into()),
            }
        })
    }
}

/// A response body read straight from its h2 stream: the DATA frames, then
/// the trailers (where gRPC puts the call's status).
#[derive(Debug)]
pub struct ResponseBody {
    stream: h2::RecvStream,
    data_done: bool,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if !this.data_done {
            match ready!(this.stream.poll_data(context)) {
                Some(Ok(data)) => {
                    // Read: the server may send that much more.
                    let _ = this.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => this.data_done = true,
            }
        }
        Poll::Ready(
            ready!(this.stream.poll_trailers(context))
                .transpose()
                .map(|trailers| trailers.map(Frame::trailers)),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use kvstore_proto::kv::v1::kv_client::KvClient;
    use kvstore_proto::kv::v1::PutRequest;
    use tokio::io::{DuplexStream, ReadBuf};

    use super::*;

    /// The client's end of an in-memory connection, counting the writes
    /// that carry bytes.
    struct CountingIo {
        inner: DuplexStream,
        writes: Arc<AtomicUsize>,
    }

    impl CountingIo {
        fn count(&self, result: &Poll<std::io::Result<usize>>) {
            if matches!(result, Poll::Ready(Ok(written)) if *written > 0) {
                self.writes.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    impl AsyncRead for CountingIo {
        fn poll_read(
            mut self: Pin<&mut Self>,
            context: &mut Context<'_>,
            buffer: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(context, buffer)
        }
    }

    impl AsyncWrite for CountingIo {
        fn poll_write(
            mut self: Pin<&mut Self>,
            context: &mut Context<'_>,
            buffer: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let result = Pin::new(&mut self.inner).poll_write(context, buffer);
            self.count(&result);
            result
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            context: &mut Context<'_>,
            buffers: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let result = Pin::new(&mut self.inner).poll_write_vectored(context, buffers);
            self.count(&result);
            result
        }

        fn is_write_vectored(&self) -> bool {
            // As a TcpStream: h2 then hands a large DATA payload over as a
            // second slice instead of copying it.
            true
        }

        fn poll_flush(
            mut self: Pin<&mut Self>,
            context: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(context)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            context: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(context)
        }
    }

    /// A gRPC server in miniature: answers every call with an empty message
    /// and status OK once the request's END_STREAM has arrived, as tonic
    /// does for a unary call.
    async fn serve<T: AsyncRead + AsyncWrite + Unpin>(io: T) {
        let mut connection = h2::server::handshake(io).await.expect("server handshake");
        while let Some(accepted) = connection.accept().await {
            let (request, mut respond) = accepted.expect("request");
            tokio::spawn(async move {
                let mut body = request.into_body();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.expect("request data");
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                let response = http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(())
                    .expect("response head");
                let mut stream = respond.send_response(response, false).expect("send head");
                // An empty message: not compressed, zero bytes long.
                stream
                    .send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), false)
                    .expect("send message");
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                stream.send_trailers(trailers).expect("send trailers");
            });
        }
    }

    fn put_request() -> PutRequest {
        PutRequest {
            key: b"key".to_vec(),
            // Large enough that h2 hands the DATA payload over as a slice of
            // its own (over 256 bytes), after which it flushes before
            // buffering another frame.
            value: vec![7; 256],
            ..PutRequest::default()
        }
    }

    #[tokio::test]
    async fn a_unary_call_leaves_in_one_write() {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        tokio::spawn(serve(server_io));
        let writes = Arc::new(AtomicUsize::new(0));
        let io = CountingIo {
            inner: client_io,
            writes: Arc::clone(&writes),
        };
        let timeout = Duration::from_secs(10);
        let sender = handshake(io, timeout).await.expect("client handshake");
        let channel = OneWriteChannel::with_sender("in-memory", timeout, sender);
        let mut client = KvClient::with_origin(channel, "http://kvstore.test".parse().unwrap());
        // The first call also carries the connection's settings exchange.
        client.put(put_request()).await.expect("first put");
        for call in 0..3 {
            let before = writes.load(Ordering::SeqCst);
            client.put(put_request()).await.expect("put");
            assert_eq!(
                writes.load(Ordering::SeqCst) - before,
                1,
                "call {call}: HEADERS and DATA with END_STREAM in one write"
            );
        }
    }

    #[tokio::test]
    async fn a_call_after_the_server_closed_the_connection_opens_a_new_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let authority = listener.local_addr().expect("address").to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::clone(&connections);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.expect("accept");
                let first = accepted.fetch_add(1, Ordering::SeqCst) == 0;
                tokio::spawn(async move {
                    if first {
                        // Takes the first call, then closes the connection
                        // without answering it.
                        let mut connection =
                            h2::server::handshake(stream).await.expect("handshake");
                        let _call = connection.accept().await;
                    } else {
                        serve(stream).await;
                    }
                });
            }
        });
        let channel = OneWriteChannel::connect(&authority, Duration::from_secs(10))
            .await
            .expect("connect");
        let mut client =
            KvClient::with_origin(channel, format!("http://{authority}").parse().unwrap());
        client
            .put(put_request())
            .await
            .expect_err("the connection closed under the call");
        for call in 0..3 {
            client
                .put(put_request())
                .await
                .unwrap_or_else(|status| panic!("call {call} on a new connection: {status}"));
        }
        assert_eq!(
            connections.load(Ordering::SeqCst),
            2,
            "one new connection, shared by the later calls"
        );
    }
}
