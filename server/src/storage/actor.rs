//! Runs a [`Store`] on its own thread and lets async code use it.
//!
//! `rusty-leveldb`'s `DB` is `Send` but not `Sync` and does blocking I/O, so
//! one dedicated thread serves requests from a channel, in the order they
//! arrive. [`StoreHandle`] is the cheap, cloneable async face.
//!
//! The store sits behind a mutex that the thread holds while it serves a
//! request. A short read may take the mutex directly when it is free
//! ([`StoreHandle::try_read`]): it skips two thread hand-offs (a wake-up of
//! the store thread and one back), which cost more than the read itself.
//! When the thread is busy (a batch being applied), the read is queued as
//! before, so no async task ever waits for that mutex. Work whose order
//! matters (applying committed entries) may run inline too, but only when
//! nothing is queued or running on the thread ([`StoreHandle::try_run_next`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread;

use tokio::sync::oneshot;

use super::{KeyRange, KeyValue, Store, StoreError, WriteBatch};

/// How many requests may wait for the store thread before senders block.
pub const STORE_QUEUE_CAPACITY: usize = 1024;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Work run on the store thread with exclusive access to the store.
type StoreTask = Box<dyn FnOnce(&mut dyn Store) + Send>;

enum StoreRequest {
    Get(Vec<u8>, Reply<Option<Vec<u8>>>),
    Write(WriteBatch, Reply<()>),
    Scan(KeyRange, usize, Reply<Vec<KeyValue>>),
    /// Runs a closure on the store thread with exclusive access.
    With(StoreTask),
}

/// Async access to a store owned by a dedicated thread.
#[derive(Clone)]
pub struct StoreHandle {
    // Declared (so dropped) before `requests`: once the thread sees the last
    // sender gone, it holds the only reference and can close the store.
    shared: Arc<Mutex<dyn Store>>,
    requests: mpsc::SyncSender<StoreRequest>,
    /// Requests sent and not yet finished by the store thread: queued, or
    /// being served.
    unfinished: Arc<AtomicUsize>,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("StoreHandle")
    }
}

/// The store thread; joining it waits until the store is closed.
pub struct StoreThread {
    thread: thread::JoinHandle<()>,
}

impl StoreThread {
    /// Waits until every handle is dropped and the store was closed.
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!("the store thread panicked");
        }
    }
}

/// Moves `store` onto a new thread. `on_close` runs on that thread once every
/// handle is gone (to close the database cleanly).
pub fn spawn<S, F>(store: S, on_close: F) -> (StoreHandle, StoreThread)
where
    S: Store + 'static,
    F: FnOnce(S) + Send + 'static,
{
    let (sender, receiver) = mpsc::sync_channel(STORE_QUEUE_CAPACITY);
    let owned = Arc::new(Mutex::new(store));
    let shared: Arc<Mutex<dyn Store>> = owned.clone();
    let unfinished = Arc::new(AtomicUsize::new(0));
    let unfinished_by_thread = unfinished.clone();
    let thread = thread::Builder::new()
        .name("kvstore-store".into())
        .spawn(move || {
            // A panic on this thread ends it. One in an inline read on
            // another thread poisons the mutex but changed nothing (reads
            // never write), so the store is whole and this thread goes on;
            // one in inline work that writes (the driver's applies) stops
            // the process (see `Driver::submit_apply`).
            let lock = || owned.lock().unwrap_or_else(PoisonError::into_inner);
            while let Ok(request) = receiver.recv() {
                // Answers leave after the mutex is released, so that the
                // caller's next inline read finds it free. The count of
                // unfinished requests drops after the mutex is released (and
                // before the answer leaves, except for a `With` task, which
                // answers for itself): whoever takes the mutex and then finds
                // the count at zero comes after every request sent before.
                let finished = || unfinished_by_thread.fetch_sub(1, Ordering::AcqRel);
                match request {
                    StoreRequest::Get(key, reply) => {
                        let value = lock().get(&key);
                        finished();
                        let _ = reply.send(value);
                    }
                    StoreRequest::Write(batch, reply) => {
                        let written = lock().write(batch);
                        finished();
                        let _ = reply.send(written);
                    }
                    StoreRequest::Scan(range, limit, reply) => {
                        let pairs = lock().scan(&range, limit);
                        finished();
                        let _ = reply.send(pairs);
                    }
                    // The task answers for itself (under the mutex).
                    StoreRequest::With(function) => {
                        function(&mut *lock());
                        finished();
                    }
                }
            }
            // Every handle is gone, and with them (dropped before their
            // senders) every other reference.
            match Arc::try_unwrap(owned) {
                Ok(store) => on_close(store.into_inner().unwrap_or_else(PoisonError::into_inner)),
                Err(_) => tracing::error!("the store is still referenced; it is not closed"),
            }
        })
        .expect("spawning the store thread");
    (
        StoreHandle {
            shared,
            requests: sender,
            unfinished,
        },
        StoreThread { thread },
    )
}

impl StoreHandle {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> StoreRequest) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let request = make(reply);
        let sender = self.requests.clone();
        let unfinished = self.unfinished.clone();
        unfinished.fetch_add(1, Ordering::AcqRel);
        // `send` blocks only when the queue is full: keep that off the runtime.
        let sent = match sender.try_send(request) {
            Ok(()) => Ok(()),
            Err(mpsc::TrySendError::Full(request)) => {
                tokio::task::spawn_blocking(move || sender.send(request).map_err(drop))
                    .await
                    .unwrap_or(Err(()))
            }
            Err(mpsc::TrySendError::Disconnected(_)) => Err(()),
        };
        if sent.is_err() {
            unfinished.fetch_sub(1, Ordering::AcqRel);
            return Err(StoreError::Closed);
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// The value stored under `key`.
    pub async fn get(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, StoreError> {
        self.call(|reply| StoreRequest::Get(key, reply)).await
    }

    /// Applies `batch` atomically.
    pub async fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.call(|reply| StoreRequest::Write(batch, reply)).await
    }

    /// Up to `limit` pairs of `range` in key order.
    pub async fn scan(&self, range: KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        self.call(|reply| StoreRequest::Scan(range, limit, reply))
            .await
    }

    /// Queues `task` to run on the store thread after everything queued
    /// before it, without waiting for it. Callers that need the order of their
    /// tasks kept (apply batches, then the reads that must see them) use this
    /// from one task. When the queue is full, this blocks the calling worker
    /// thread until there is room: that is the store's back-pressure.
    pub fn submit(
        &self,
        task: impl FnOnce(&mut dyn Store) + Send + 'static,
    ) -> Result<(), StoreError> {
        self.unfinished.fetch_add(1, Ordering::AcqRel);
        let sent = match self.requests.try_send(StoreRequest::With(Box::new(task))) {
            Ok(()) => Ok(()),
            Err(mpsc::TrySendError::Full(request)) => {
                tokio::task::block_in_place(|| self.requests.send(request)).map_err(drop)
            }
            Err(mpsc::TrySendError::Disconnected(_)) => Err(()),
        };
        sent.map_err(|()| {
            self.unfinished.fetch_sub(1, Ordering::AcqRel);
            StoreError::Closed
        })
    }

    /// Runs `work` on the calling thread with exclusive access to the store,
    /// if nothing sent to the store thread is still queued or running:
    /// then `work` comes after everything sent before, as a [`submit`]ted
    /// task would. Otherwise, or when `work` itself declines by returning
    /// `None`, this returns `None` and the caller submits instead. For
    /// short work that does not wait for other work in progress (a read of
    /// the engine's page cache at most): the caller is an async worker.
    ///
    /// [`submit`]: StoreHandle::submit
    pub fn try_run_next<T>(&self, work: impl FnOnce(&mut dyn Store) -> Option<T>) -> Option<T> {
        let mut store = self.shared.try_lock().ok()?;
        // Read with the mutex held: every request counted here is one the
        // thread has not finished; one the thread takes from now on waits
        // for the mutex, and was not sent before this call (nothing orders
        // it against a concurrent sender's, as with two submits).
        if self.unfinished.load(Ordering::Acquire) != 0 {
            return None;
        }
        work(&mut *store)
    }

    /// Runs `read` on the calling thread with exclusive access to the store,
    /// if the store thread is idle; when it is busy, this returns `None`
    /// and the caller queues its read instead. For short reads only: the
    /// store thread waits for `read` to finish before it serves its next
    /// request. Sees every request the store thread has finished, and
    /// nothing of one it is serving.
    pub fn try_read<T>(&self, read: impl FnOnce(&mut dyn Store) -> T) -> Option<T> {
        // Busy, or poisoned by a panic while held: the read goes through
        // the store thread's queue (which fails if the panic was on that
        // thread, since it ended it).
        let mut store = self.shared.try_lock().ok()?;
        Some(read(&mut *store))
    }

    /// Runs `function` on the store thread with exclusive access to the store
    /// and returns its result: for multi-step work such as building a snapshot.
    pub async fn with<T, F>(&self, function: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
    {
        self.call(|reply| {
            StoreRequest::With(Box::new(move |store| {
                let _ = reply.send(function(store));
            }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;

    use super::*;
    use crate::storage::memory::MemoryStore;

    fn started() -> (StoreHandle, StoreThread, std_mpsc::Receiver<Vec<u8>>) {
        let (closed, on_close) = std_mpsc::channel();
        let (handle, thread) = spawn(MemoryStore::new(), move |mut store: MemoryStore| {
            let value = store.get(b"k").unwrap().unwrap_or_default();
            let _ = closed.send(value);
        });
        (handle, thread, on_close)
    }

    /// Keeps the store thread busy with a task that writes `value` under
    /// "k" once the returned sender is sent to.
    fn store_thread_busy_writing(
        handle: &StoreHandle,
        value: &'static [u8],
    ) -> std_mpsc::Sender<()> {
        let (working, started_work) = std_mpsc::channel();
        let (finish, finish_work) = std_mpsc::channel::<()>();
        handle
            .submit(move |store| {
                working.send(()).unwrap();
                finish_work.recv().unwrap();
                store.put(b"k", value).unwrap();
            })
            .unwrap();
        started_work.recv().unwrap();
        finish
    }

    #[tokio::test]
    async fn an_inline_read_sees_every_finished_write() {
        let (handle, thread, closed) = started();
        let mut batch = WriteBatch::new();
        batch.put(b"k".to_vec(), b"1".to_vec());
        handle.write(batch).await.unwrap();
        let read = handle.try_read(|store| store.get(b"k").unwrap());
        assert_eq!(read, Some(Some(b"1".to_vec())));
        drop(handle);
        thread.join();
        assert_eq!(
            closed.recv().unwrap(),
            b"1".to_vec(),
            "closed with its data"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inline_work_runs_only_after_everything_sent_before_it() {
        let (handle, thread, _closed) = started();
        let finish = store_thread_busy_writing(&handle, b"1");
        // Queued behind the running task, so not runnable inline either.
        handle
            .submit(|store| store.put(b"k", b"2").unwrap())
            .unwrap();
        assert_eq!(handle.try_run_next(|_| Some(())), None, "busy");
        finish.send(()).unwrap();
        // Both finish; then the thread is idle and inline work sees them.
        assert_eq!(
            handle.get(b"k".to_vec()).await.unwrap(),
            Some(b"2".to_vec())
        );
        let inline = handle.try_run_next(|store| {
            store.put(b"k", b"3").unwrap();
            Some(store.get(b"k").unwrap())
        });
        assert_eq!(inline, Some(Some(b"3".to_vec())));
        assert_eq!(handle.try_run_next(|_| None::<()>), None, "declined");
        // A request sent and not yet taken by the thread, the mutex free:
        // inline work must still wait its turn.
        handle.unfinished.fetch_add(1, Ordering::AcqRel);
        assert_eq!(handle.try_run_next(|_| Some(())), None, "queued");
        handle.unfinished.fetch_sub(1, Ordering::AcqRel);
        assert_eq!(handle.try_run_next(|_| Some(())), Some(()));
        drop(handle);
        thread.join();
    }

    #[tokio::test]
    async fn an_inline_read_gives_way_while_the_store_thread_works() {
        let (handle, thread, _closed) = started();
        let finish = store_thread_busy_writing(&handle, b"2");
        assert_eq!(handle.try_read(|store| store.get(b"k").unwrap()), None);
        finish.send(()).unwrap();
        // Queued behind the write, so it sees it.
        assert_eq!(
            handle.get(b"k".to_vec()).await.unwrap(),
            Some(b"2".to_vec())
        );
        assert_eq!(
            handle.try_read(|store| store.get(b"k").unwrap()),
            Some(Some(b"2".to_vec()))
        );
        drop(handle);
        thread.join();
    }
}
