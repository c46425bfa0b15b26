//! Client requests a follower forwards to the leader, multiplexed over one
//! long-lived `ForwardStream` call per peer: requests go out in batches of
//! whatever is waiting, answers come back by id in any order. One HTTP/2
//! stream for all forwarded requests instead of one per request.
//!
//! Failure semantics match a unary `Forward` call: when the stream cannot be
//! opened (the connection is refused), the requests waiting for it fail with
//! that connect error, which callers treat as "never sent"; when an open
//! stream breaks, every request sent on it and not yet answered fails with
//! UNKNOWN (a write may or may not have been applied).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kvstore_proto::raft::v1 as pb;
use kvstore_proto::raft::v1::raft_client::RaftClient;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tonic::Status;

/// Forwarded requests waiting to be sent before callers are refused.
pub const FORWARD_QUEUE_CAPACITY: usize = 4_096;
/// Requests in one batch at most.
pub const FORWARD_CALLS_PER_BATCH_MAX: usize = 256;
/// Encoded request bytes in one batch: it is closed once it reaches this,
/// well below the peer message limit (one request carries at most one value
/// of up to 1 MiB by default).
pub const FORWARD_BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Batches queued for the stream's HTTP/2 body at most.
pub const FORWARD_BATCHES_QUEUED: usize = 64;

type Reply = oneshot::Sender<Result<pb::ForwardResponse, Status>>;

/// One request waiting to be sent.
struct Pending {
    request: pb::ForwardRequest,
    reply: Reply,
}

/// The requests sent on one stream and not answered yet.
#[derive(Default)]
struct InFlight {
    replies: HashMap<u64, Reply>,
    /// The stream ended: nothing may be added any more.
    ended: bool,
}

/// The open stream: where batches go and who waits for answers.
struct OpenStream {
    batches: mpsc::Sender<pb::ForwardBatch>,
    in_flight: Arc<Mutex<InFlight>>,
}

/// The forwarding side toward one peer.
#[derive(Debug, Clone)]
pub struct Forwarder {
    queue: mpsc::Sender<Pending>,
}

impl Forwarder {
    /// Starts the task that owns the stream; it connects on the first request.
    pub fn start(client: RaftClient<Channel>) -> Self {
        let (queue, receiver) = mpsc::channel(FORWARD_QUEUE_CAPACITY);
        tokio::spawn(run(client, receiver));
        Self { queue }
    }

    /// Sends `request` to the peer and waits for its answer.
    pub async fn call(&self, request: pb::ForwardRequest) -> Result<pb::ForwardResponse, Status> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Pending { request, reply })
            .map_err(|_| Status::unavailable("too many forwarded requests waiting; retry"))?;
        answer
            .await
            .map_err(|_| Status::unknown("the forwarding stream was dropped"))?
    }
}

async fn run(client: RaftClient<Channel>, mut queue: mpsc::Receiver<Pending>) {
    let mut stream: Option<OpenStream> = None;
    let mut next_id: u64 = 0;
    while let Some(first) = queue.recv().await {
        let batch = collect_batch(first, &mut queue);
        let open = match &stream {
            Some(open) if !open.in_flight.lock().expect("in-flight lock").ended => open,
            _ => stream.insert(open_stream(client.clone())),
        };
        let mut calls = Vec::with_capacity(batch.len());
        {
            let mut in_flight = open.in_flight.lock().expect("in-flight lock");
            for pending in batch {
                if in_flight.ended {
                    // Ended between the check above and now: not sent.
                    let _ = pending.reply.send(Err(Status::unavailable(
                        "the forwarding stream closed before the request was sent; retry",
                    )));
                    continue;
                }
                next_id += 1;
                in_flight.replies.insert(next_id, pending.reply);
                calls.push(pb::ForwardCall {
                    id: next_id,
                    request: Some(pending.request),
                });
            }
        }
        if calls.is_empty() {
            continue;
        }
        let ids: Vec<u64> = calls.iter().map(|call| call.id).collect();
        if open.batches.try_send(pb::ForwardBatch { calls }).is_err() {
            // Backed up or gone: these were never sent.
            let mut in_flight = open.in_flight.lock().expect("in-flight lock");
            for id in ids {
                if let Some(reply) = in_flight.replies.remove(&id) {
                    let _ = reply.send(Err(Status::unavailable(
                        "the forwarding stream is backed up; retry",
                    )));
                }
            }
        }
    }
}

/// `first` and whatever else is already waiting, up to a batch's count and
/// bytes (it may pass the byte bound by its last request).
fn collect_batch(first: Pending, queue: &mut mpsc::Receiver<Pending>) -> Vec<Pending> {
    let mut batch_bytes = prost::Message::encoded_len(&first.request);
    let mut batch = vec![first];
    while batch.len() < FORWARD_CALLS_PER_BATCH_MAX && batch_bytes < FORWARD_BATCH_BYTES_MAX {
        match queue.try_recv() {
            Ok(pending) => {
                batch_bytes += prost::Message::encoded_len(&pending.request);
                batch.push(pending);
            }
            Err(_) => break,
        }
    }
    batch
}

/// Starts a `ForwardStream` call; a task reads its answers and, when it
/// ends, fails what is still waiting.
fn open_stream(mut client: RaftClient<Channel>) -> OpenStream {
    let (batches, receiver) = mpsc::channel(FORWARD_BATCHES_QUEUED);
    let in_flight = Arc::new(Mutex::new(InFlight::default()));
    let answers = in_flight.clone();
    tokio::spawn(async move {
        let request = tokio_stream::wrappers::ReceiverStream::new(receiver);
        let failure = match client.forward_stream(request).await {
            // Never opened (connection refused, ...): nothing was sent.
            Err(status) => status,
            Ok(response) => {
                let mut results = response.into_inner();
                loop {
                    match results.message().await {
                        Ok(Some(batch)) => deliver(&answers, batch),
                        Ok(None) => {
                            break Status::unknown("the leader closed the forwarding stream")
                        }
                        Err(status) => {
                            break Status::unknown(format!(
                                "the forwarding stream broke: {:?}: {}",
                                status.code(),
                                status.message()
                            ))
                        }
                    }
                }
            }
        };
        let waiting = {
            let mut in_flight = answers.lock().expect("in-flight lock");
            in_flight.ended = true;
            std::mem::take(&mut in_flight.replies)
        };
        for (_, reply) in waiting {
            let _ = reply.send(Err(failure.clone()));
        }
    });
    OpenStream { batches, in_flight }
}

fn deliver(in_flight: &Mutex<InFlight>, batch: pb::ForwardResultBatch) {
    let mut in_flight = in_flight.lock().expect("in-flight lock");
    for result in batch.results {
        let Some(reply) = in_flight.replies.remove(&result.id) else {
            continue;
        };
        let outcome = match result.outcome {
            Some(pb::forward_result::Outcome::Response(response)) => Ok(response),
            Some(pb::forward_result::Outcome::Error(error)) => Err(Status::new(
                tonic::Code::from_i32(error.code),
                error.message,
            )),
            None => Err(Status::unknown("the leader sent an empty forward result")),
        };
        let _ = reply.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::KvError;
    use crate::transport::peers::lazy_client;

    fn read_request() -> pb::ForwardRequest {
        pb::ForwardRequest {
            header: None,
            request_id: "test".into(),
            request: Some(pb::forward_request::Request::ReadIndex(true)),
        }
    }

    /// Nothing listens: the requests were never sent, so a write is retried
    /// through the next leader instead of being reported as maybe applied.
    #[tokio::test]
    async fn a_refused_connection_fails_requests_as_never_sent() {
        let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = unused.local_addr().unwrap().to_string();
        drop(unused);
        let forwarder = Forwarder::start(lazy_client(&address).unwrap());
        let calls = (0..3).map(|_| forwarder.call(read_request()));
        for outcome in futures::future::join_all(calls).await {
            let status = outcome.unwrap_err();
            assert!(
                matches!(
                    KvError::from_leader_status(2, status.clone(), true),
                    KvError::NotLeader(_)
                ),
                "{status:?}"
            );
        }
    }

    /// Waiting requests are batched up to the count and byte bounds, so a
    /// batch stays far below the 64 MiB peer message limit.
    #[test]
    fn batches_are_bounded_by_count_and_bytes() {
        let pending = |value_bytes: usize| Pending {
            request: pb::ForwardRequest {
                header: None,
                request_id: String::new(),
                request: Some(pb::forward_request::Request::Write(pb::Command {
                    operation: Some(pb::command::Operation::Put(pb::PutOperation {
                        key: b"k".to_vec(),
                        value: vec![0; value_bytes],
                    })),
                    request_id: String::new(),
                })),
            },
            reply: oneshot::channel().0,
        };
        let (sender, mut queue) = mpsc::channel(FORWARD_QUEUE_CAPACITY);
        for _ in 0..100 {
            assert!(sender.try_send(pending(1024 * 1024)).is_ok());
        }
        let batch = collect_batch(pending(1024 * 1024), &mut queue);
        assert_eq!(batch.len(), 16, "16 MiB of 1 MiB values");
        let (sender, mut queue) = mpsc::channel(FORWARD_QUEUE_CAPACITY);
        for _ in 0..1_000 {
            assert!(sender.try_send(pending(10)).is_ok());
        }
        let batch = collect_batch(pending(10), &mut queue);
        assert_eq!(batch.len(), FORWARD_CALLS_PER_BATCH_MAX);
        assert_eq!(queue.len(), 1_000 + 1 - FORWARD_CALLS_PER_BATCH_MAX);
    }

    /// An answer that arrives is handed to its caller by id; an error result
    /// keeps its gRPC code.
    #[test]
    fn results_reach_their_callers_by_id() {
        let in_flight = Mutex::new(InFlight::default());
        let (first, mut first_answer) = oneshot::channel();
        let (second, mut second_answer) = oneshot::channel();
        in_flight.lock().unwrap().replies.insert(1, first);
        in_flight.lock().unwrap().replies.insert(2, second);
        deliver(
            &in_flight,
            pb::ForwardResultBatch {
                results: vec![
                    pb::ForwardResult {
                        id: 2,
                        outcome: Some(pb::forward_result::Outcome::Error(pb::ForwardError {
                            code: tonic::Code::FailedPrecondition as i32,
                            message: "no".into(),
                        })),
                    },
                    pb::ForwardResult {
                        id: 1,
                        outcome: Some(pb::forward_result::Outcome::Response(pb::ForwardResponse {
                            index: 7,
                            ..Default::default()
                        })),
                    },
                    // Unknown ids (answers to cancelled callers) are ignored.
                    pb::ForwardResult {
                        id: 99,
                        outcome: None,
                    },
                ],
            },
        );
        assert_eq!(first_answer.try_recv().unwrap().unwrap().index, 7);
        let status = second_answer.try_recv().unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(in_flight.lock().unwrap().replies.is_empty());
    }
}
