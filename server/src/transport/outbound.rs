//! The queue between the driver and one outbound peer stream.
//!
//! The driver pushes messages ready to encode; the stream, polled by the HTTP/2
//! body task of the `Stream` call, takes everything pending as one batch
//! each time it is polled. Messages that arrive while a batch is on the wire
//! therefore travel together in the next one, and no task sits between the
//! driver and the connection: each message costs one wake-up of the body
//! task at most, not one of a forwarding task and then one of the body task.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures::Stream;
use kvstore_proto::raft::v1 as pb;

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// As many messages as the queue holds are waiting: the peer or its
    /// connection is slower than the messages come.
    Full,
    /// The stream ended (its call failed or the peer closed it).
    Closed,
}

/// Limits of one queue and of the batches taken from it.
#[derive(Debug, Clone, Copy)]
pub struct OutboundLimits {
    /// Messages waiting at most; more are refused with [`PushError::Full`].
    pub pending_messages_max: usize,
    /// Messages in one batch at most.
    pub batch_messages_max: usize,
    /// Encoded bytes in one batch: a batch is closed once it reaches this.
    pub batch_bytes_max: usize,
}

#[derive(Debug)]
struct Pending {
    messages: VecDeque<(pb::RaftMessage, usize)>,
    /// The body task, when it found nothing to send.
    waker: Option<Waker>,
    sender_dropped: bool,
    stream_dropped: bool,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    limits: OutboundLimits,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Nothing panics while holding it: the queue stays consistent.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The driver's end.
#[derive(Debug)]
pub struct OutboundSender {
    shared: Arc<Shared>,
}

/// The call's end: a stream of batches, ending once the sender is dropped
/// and everything queued has been taken.
#[derive(Debug)]
pub struct OutboundStream {
    shared: Arc<Shared>,
}

/// A new queue: its sender and the stream for the call's request.
pub fn channel(limits: OutboundLimits) -> (OutboundSender, OutboundStream) {
    assert!(limits.pending_messages_max > 0 && limits.batch_messages_max > 0);
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending {
            messages: VecDeque::new(),
            waker: None,
            sender_dropped: false,
            stream_dropped: false,
        }),
        limits,
    });
    (
        OutboundSender {
            shared: shared.clone(),
        },
        OutboundStream { shared },
    )
}

impl OutboundSender {
    /// Queues `message` (`bytes` encoded) behind those already waiting.
    pub fn push(&self, message: pb::RaftMessage, bytes: usize) -> Result<(), PushError> {
        let waker = {
            let mut pending = self.shared.lock();
            if pending.stream_dropped {
                return Err(PushError::Closed);
            }
            if pending.messages.len() >= self.shared.limits.pending_messages_max {
                return Err(PushError::Full);
            }
            pending.messages.push_back((message, bytes));
            pending.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// True once the stream is gone: nothing pushed would be sent.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().stream_dropped
    }
}

impl Drop for OutboundSender {
    fn drop(&mut self) {
        let waker = {
            let mut pending = self.shared.lock();
            pending.sender_dropped = true;
            pending.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Stream for OutboundStream {
    type Item = pb::MessageBatch;

    fn poll_next(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let limits = self.shared.limits;
        let mut pending = self.shared.lock();
        if pending.messages.is_empty() {
            if pending.sender_dropped {
                return Poll::Ready(None);
            }
            pending.waker = Some(context.waker().clone());
            return Poll::Pending;
        }
        let mut messages =
            Vec::with_capacity(pending.messages.len().min(limits.batch_messages_max));
        let mut bytes = 0;
        while messages.len() < limits.batch_messages_max && bytes < limits.batch_bytes_max {
            let Some((message, size)) = pending.messages.pop_front() else {
                break;
            };
            messages.push(message);
            bytes += size;
        }
        Poll::Ready(Some(pb::MessageBatch { messages }))
    }
}

impl Drop for OutboundStream {
    fn drop(&mut self) {
        let mut pending = self.shared.lock();
        pending.stream_dropped = true;
        pending.messages.clear();
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    const LIMITS: OutboundLimits = OutboundLimits {
        pending_messages_max: 4,
        batch_messages_max: 3,
        batch_bytes_max: 1_000,
    };

    /// A message told apart by its term.
    fn message(term: u64) -> pb::RaftMessage {
        pb::RaftMessage {
            message: Some(pb::raft_message::Message::TimeoutNow(
                pb::TimeoutNowRequest {
                    header: Some(pb::MessageHeader {
                        term,
                        ..Default::default()
                    }),
                },
            )),
        }
    }

    fn terms(batch: &pb::MessageBatch) -> Vec<u64> {
        batch
            .messages
            .iter()
            .map(|message| match &message.message {
                Some(pb::raft_message::Message::TimeoutNow(request)) => {
                    request.header.as_ref().expect("set").term
                }
                other => panic!("not a test message: {other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn messages_pushed_meanwhile_travel_in_one_batch_in_order() {
        let (sender, mut stream) = channel(LIMITS);
        sender.push(message(1), 10).unwrap();
        sender.push(message(2), 10).unwrap();
        assert_eq!(terms(&stream.next().await.unwrap()), vec![1, 2]);
        sender.push(message(3), 10).unwrap();
        assert_eq!(terms(&stream.next().await.unwrap()), vec![3]);
    }

    #[tokio::test]
    async fn a_batch_stops_at_its_message_and_byte_limits() {
        let (sender, mut stream) = channel(LIMITS);
        for term in 1..=4 {
            sender.push(message(term), 10).unwrap();
        }
        assert_eq!(terms(&stream.next().await.unwrap()), vec![1, 2, 3]);
        assert_eq!(terms(&stream.next().await.unwrap()), vec![4]);
        sender.push(message(5), 600).unwrap();
        sender.push(message(6), 600).unwrap();
        sender.push(message(7), 10).unwrap();
        assert_eq!(
            terms(&stream.next().await.unwrap()),
            vec![5, 6],
            "closed once the bytes reach the limit"
        );
        assert_eq!(terms(&stream.next().await.unwrap()), vec![7]);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_a_gone_stream_closes() {
        let (sender, stream) = channel(LIMITS);
        for term in 1..=4 {
            sender.push(message(term), 10).unwrap();
        }
        assert_eq!(sender.push(message(5), 10), Err(PushError::Full));
        assert!(!sender.is_closed());
        drop(stream);
        assert!(sender.is_closed());
        assert_eq!(sender.push(message(6), 10), Err(PushError::Closed));
    }

    #[tokio::test]
    async fn the_stream_wakes_on_a_push_and_ends_after_the_sender() {
        let (sender, mut stream) = channel(LIMITS);
        let reader = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(batch) = stream.next().await {
                seen.extend(terms(&batch));
            }
            seen
        });
        tokio::task::yield_now().await;
        sender.push(message(1), 10).unwrap();
        tokio::task::yield_now().await;
        sender.push(message(2), 10).unwrap();
        drop(sender);
        assert_eq!(
            reader.await.unwrap(),
            vec![1, 2],
            "what was queued is sent before the end"
        );
    }
}
