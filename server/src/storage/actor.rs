//! Runs a [`Store`] on its own thread and lets async code use it.
//!
//! `rusty-leveldb`'s `DB` is `Send` but not `Sync` and does blocking I/O, so
//! one dedicated thread owns the store and serves requests from a channel, in
//! the order they arrive. [`StoreHandle`] is the cheap, cloneable async face.

use std::sync::mpsc;
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
    requests: mpsc::SyncSender<StoreRequest>,
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
pub fn spawn<S, F>(mut store: S, on_close: F) -> (StoreHandle, StoreThread)
where
    S: Store + 'static,
    F: FnOnce(S) + Send + 'static,
{
    let (sender, receiver) = mpsc::sync_channel(STORE_QUEUE_CAPACITY);
    let thread = thread::Builder::new()
        .name("kvstore-store".into())
        .spawn(move || {
            while let Ok(request) = receiver.recv() {
                match request {
                    StoreRequest::Get(key, reply) => {
                        let _ = reply.send(store.get(&key));
                    }
                    StoreRequest::Write(batch, reply) => {
                        let _ = reply.send(store.write(batch));
                    }
                    StoreRequest::Scan(range, limit, reply) => {
                        let _ = reply.send(store.scan(&range, limit));
                    }
                    StoreRequest::With(function) => function(&mut store),
                }
            }
            on_close(store);
        })
        .expect("spawning the store thread");
    (StoreHandle { requests: sender }, StoreThread { thread })
}

impl StoreHandle {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> StoreRequest) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let request = make(reply);
        let sender = self.requests.clone();
        // `send` blocks only when the queue is full: keep that off the runtime.
        match sender.try_send(request) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(request)) => {
                tokio::task::spawn_blocking(move || sender.send(request))
                    .await
                    .map_err(|_| StoreError::Closed)?
                    .map_err(|_| StoreError::Closed)?;
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(StoreError::Closed),
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
        match self.requests.try_send(StoreRequest::With(Box::new(task))) {
            Ok(()) => Ok(()),
            Err(mpsc::TrySendError::Full(request)) => {
                tokio::task::block_in_place(|| self.requests.send(request))
                    .map_err(|_| StoreError::Closed)
            }
            Err(mpsc::TrySendError::Disconnected(_)) => Err(StoreError::Closed),
        }
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
