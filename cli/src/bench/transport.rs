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
//! before END_STREAM. With one client that is two wake-ups per request on
//! the server and some 40-100 µs on the single-client latency (`strace` of
//! `bench put --clients 1`: three `writev` per put from the client, four
//! `recvfrom` and five `epoll_wait` per put on the leader).
//!
//! Here the request body, which a unary call has ready at once, is collected
//! first and handed to h2 together with the headers and END_STREAM, before
//! the connection task runs: HEADERS and DATA go out in one write. The
//! responses are read as they come. The same client drives etcd in
//! comparison runs, so both stores see the same requests.

use std::future::Future;
use std::pin::Pin;
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
#[derive(Clone, Debug)]
pub struct OneWriteChannel {
    sender: h2::client::SendRequest<Bytes>,
    /// Deadline of each call, from sending it to its last response byte.
    timeout: Duration,
}

impl OneWriteChannel {
    /// Connects to `authority` (`HOST:PORT`) within `timeout`, which then
    /// bounds every call too.
    pub async fn connect(authority: &str, timeout: Duration) -> Result<Self, Failure> {
        let failure = |error: &dyn std::fmt::Display| {
            Failure(format!("cannot connect to {authority}: {error}"))
        };
        let stream = tokio::time::timeout(timeout, TcpStream::connect(authority))
            .await
            .map_err(|_| failure(&format!("no connection within {timeout:?}")))?
            .map_err(|error| failure(&error))?;
        stream.set_nodelay(true).map_err(|error| failure(&error))?;
        Self::handshake(stream, timeout)
            .await
            .map_err(|error| failure(&error))
    }

    /// Speaks HTTP/2 over `io`, spawning the connection's task.
    async fn handshake<T>(io: T, timeout: Duration) -> Result<Self, BoxError>
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
        // Ends when the server closes the connection or every sender is
        // dropped; calls still in flight then fail with the connection's error.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(OneWriteChannel { sender, timeout })
    }

    async fn unary(
        sender: h2::client::SendRequest<Bytes>,
        request: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<ResponseBody>, BoxError> {
        let (parts, body) = request.into_parts();
        // A unary call's body is one encoded message, ready without waiting.
        let body = body.collect().await?.to_bytes();
        let mut sender = sender.ready().await?;
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
        let call = Self::unary(self.sender.clone(), request);
        let timeout = self.timeout;
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
    async fn serve(io: DuplexStream) {
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

    #[tokio::test]
    async fn a_unary_call_leaves_in_one_write() {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        tokio::spawn(serve(server_io));
        let writes = Arc::new(AtomicUsize::new(0));
        let io = CountingIo {
            inner: client_io,
            writes: Arc::clone(&writes),
        };
        let channel = OneWriteChannel::handshake(io, Duration::from_secs(10))
            .await
            .expect("client handshake");
        let mut client = KvClient::with_origin(channel, "http://kvstore.test".parse().unwrap());
        let request = || PutRequest {
            key: b"key".to_vec(),
            // Large enough that h2 hands the DATA payload over as a slice of
            // its own (over 256 bytes), after which it flushes before
            // buffering another frame.
            value: vec![7; 256],
        };
        // The first call also carries the connection's settings exchange.
        client.put(request()).await.expect("first put");
        for call in 0..3 {
            let before = writes.load(Ordering::SeqCst);
            client.put(request()).await.expect("put");
            assert_eq!(
                writes.load(Ordering::SeqCst) - before,
                1,
                "call {call}: HEADERS and DATA with END_STREAM in one write"
            );
        }
    }
}
