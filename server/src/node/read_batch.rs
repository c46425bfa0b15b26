//! A follower's concurrent linearizable reads share one ReadIndex request to
//! the leader (etcd's linearizable read loop does the same).
//!
//! A read joins the next request to be sent to its leader, never one that
//! is already in flight: the leader's read round must start after the read
//! did, or the index it confirms could predate a write the read must see.
//! One request per leader is in flight at a time; the reads that arrive
//! meanwhile go out together in the next one.

use std::collections::HashMap;
use std::sync::Mutex;

use kvstore_raft::NodeId;
use tokio::sync::oneshot;

use crate::errors::KvError;

/// A read index the leader confirmed: the reads of its batch may be served
/// locally once this node has applied `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfirmedIndex {
    /// The leader that confirmed it.
    pub leader_id: NodeId,
    /// The read index.
    pub index: u64,
    /// The leader's term.
    pub term: u64,
}

/// What every read of a batch receives.
pub type BatchResult = Result<ConfirmedIndex, KvError>;

/// A read waiting for the next request: its request id (for the logs) and
/// where its answer goes.
pub struct Waiter {
    /// The read's request id.
    pub request_id: String,
    answer: oneshot::Sender<BatchResult>,
}

#[derive(Default)]
struct LeaderQueue {
    /// Reads that joined after the request in flight (if any) was sent.
    waiting: Vec<Waiter>,
    /// Whether a task is sending requests to this leader.
    running: bool,
}

/// The reads waiting for a ReadIndex request, per leader.
#[derive(Default)]
pub struct ReadBatches {
    queues: Mutex<HashMap<NodeId, LeaderQueue>>,
}

impl ReadBatches {
    /// Queues a read for `leader_id`'s next request. Returns where its answer
    /// arrives and whether the caller must start the task that sends the
    /// requests (none is running for that leader).
    pub fn join(
        &self,
        leader_id: NodeId,
        request_id: &str,
    ) -> (oneshot::Receiver<BatchResult>, bool) {
        let (answer, receiver) = oneshot::channel();
        let mut queues = self.queues.lock().expect("read batch lock");
        let queue = queues.entry(leader_id).or_default();
        queue.waiting.push(Waiter {
            request_id: request_id.to_string(),
            answer,
        });
        let start = !queue.running;
        queue.running = true;
        (receiver, start)
    }

    /// The reads for `leader_id`'s next request, taken before it is sent.
    /// `None` when none are waiting: the sending task then stops (and the
    /// next read starts a new one).
    pub fn next_batch(&self, leader_id: NodeId) -> Option<Vec<Waiter>> {
        let mut queues = self.queues.lock().expect("read batch lock");
        let queue = queues.get_mut(&leader_id)?;
        if queue.waiting.is_empty() {
            queues.remove(&leader_id);
            return None;
        }
        Some(std::mem::take(&mut queue.waiting))
    }
}

/// Forgets `leader_id`'s queue if the task sending its requests panics:
/// its waiting reads fail at once (their answers are dropped) instead of
/// waiting for a task that is gone, and the next read starts a new one.
pub struct RestartOnPanic<'a> {
    batches: &'a ReadBatches,
    leader_id: NodeId,
}

impl<'a> RestartOnPanic<'a> {
    /// Guards the task sending `leader_id`'s requests.
    pub fn new(batches: &'a ReadBatches, leader_id: NodeId) -> Self {
        Self { batches, leader_id }
    }
}

impl Drop for RestartOnPanic<'_> {
    fn drop(&mut self) {
        // Only on a panic: after a normal end, a read may already have
        // started the next task, whose queue this must not touch.
        if std::thread::panicking() {
            if let Ok(mut queues) = self.batches.queues.lock() {
                queues.remove(&self.leader_id);
            }
        }
    }
}

/// Answers every read of a batch with the request's result.
pub fn answer_all(batch: Vec<Waiter>, result: &BatchResult) {
    for waiter in batch {
        // A read whose client gave up dropped its receiver.
        let _ = waiter.answer.send(match result {
            Ok(confirmed) => Ok(*confirmed),
            Err(error) => Err(duplicate(error)),
        });
    }
}

/// The same error for another read of the batch.
fn duplicate(error: &KvError) -> KvError {
    match error {
        KvError::InvalidArgument(message) => KvError::InvalidArgument(message.clone()),
        KvError::NotLeader(message) => KvError::NotLeader(message.clone()),
        KvError::NoLeader(message) => KvError::NoLeader(message.clone()),
        KvError::Unavailable(message) => KvError::Unavailable(message.clone()),
        KvError::DeadlineExceeded(message) => KvError::DeadlineExceeded(message.clone()),
        KvError::OutcomeUnknown(message) => KvError::OutcomeUnknown(message.clone()),
        KvError::OutOfRange(message) => KvError::OutOfRange(message.clone()),
        KvError::FailedPrecondition(message) => KvError::FailedPrecondition(message.clone()),
        KvError::NotFound(message) => KvError::NotFound(message.clone()),
        KvError::Storage(error) => KvError::Unavailable(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEADER: NodeId = 2;

    fn confirmed(index: u64) -> BatchResult {
        Ok(ConfirmedIndex {
            leader_id: LEADER,
            index,
            term: 3,
        })
    }

    #[test]
    fn reads_that_arrive_while_a_request_is_in_flight_wait_for_the_next_one() {
        let batches = ReadBatches::default();
        let (mut first, start) = batches.join(LEADER, "a");
        assert!(start, "the first read starts the sending task");
        let batch = batches.next_batch(LEADER).expect("one read waits");
        assert_eq!(batch.len(), 1);
        // The request for `a` is in flight; `b` and `c` arrive.
        let (mut second, start) = batches.join(LEADER, "b");
        assert!(!start, "the running task will send the next request");
        let (mut third, _) = batches.join(LEADER, "c");
        answer_all(batch, &confirmed(10));
        assert_eq!(first.try_recv().unwrap().unwrap().index, 10);
        assert!(
            second.try_recv().is_err(),
            "a read must not take an index confirmed by a round that may predate it"
        );
        let batch = batches.next_batch(LEADER).expect("two reads wait");
        assert_eq!(
            batch
                .iter()
                .map(|waiter| waiter.request_id.as_str())
                .collect::<Vec<_>>(),
            ["b", "c"]
        );
        answer_all(batch, &confirmed(12));
        assert_eq!(second.try_recv().unwrap().unwrap().index, 12);
        assert_eq!(third.try_recv().unwrap().unwrap().index, 12);
        assert!(batches.next_batch(LEADER).is_none(), "the task stops");
        let (_, start) = batches.join(LEADER, "d");
        assert!(start, "the next read starts a new task");
    }

    #[test]
    fn a_panicking_sender_lets_the_next_read_start_a_new_one() {
        let batches = ReadBatches::default();
        let (mut lost, _) = batches.join(LEADER, "a");
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _guard = RestartOnPanic::new(&batches, LEADER);
            let _batch = batches.next_batch(LEADER);
            panic!("the sending task fails");
        }));
        assert!(panicked.is_err());
        assert!(lost.try_recv().is_err(), "the read fails rather than waits");
        let (_, start) = batches.join(LEADER, "b");
        assert!(start, "the next read starts a new task");
        {
            let _guard = RestartOnPanic::new(&batches, LEADER);
        }
        let (_, start) = batches.join(LEADER, "c");
        assert!(!start, "a normal end leaves the running task's queue alone");
    }

    #[test]
    fn each_leader_has_its_own_queue_and_errors_reach_every_read() {
        let batches = ReadBatches::default();
        let (mut old, start_old) = batches.join(LEADER, "a");
        let (_new, start_new) = batches.join(LEADER + 1, "b");
        assert!(
            start_old && start_new,
            "a stuck request to an old leader holds up no read of the new one"
        );
        let batch = batches.next_batch(LEADER).unwrap();
        answer_all(
            batch,
            &Err(KvError::NotLeader("leader 2 stepped down".into())),
        );
        assert!(matches!(
            old.try_recv().unwrap(),
            Err(KvError::NotLeader(_))
        ));
        assert_eq!(batches.next_batch(LEADER + 1).unwrap().len(), 1);
    }
}
