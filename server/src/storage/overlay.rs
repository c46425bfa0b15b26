//! Write-behind in front of a storage engine: writes land in memory and
//! return at once; a flusher thread moves them into the engine.
//!
//! Why: rusty-leveldb inserts a key into its memtable much more slowly than
//! an ordered map does, and when the memtable is full it writes it out and
//! compacts on the thread that writes. Applying committed entries straight
//! into it put all of that in front of every answer (measurements:
//! docs/benchmarks.md, "Write-behind store"). Here writes go into an
//! ordered map, the *active generation*. When it is big or old enough it
//! is *frozen*, and the flusher writes it into the engine in key order, a
//! chunk at a time, while the next generation fills. A key written again
//! before its generation is frozen reaches the engine once.
//!
//! Reads look in the active generation, then the frozen one, then the
//! engine. A frozen generation stays readable until the engine holds all of
//! it, so a read never sees a key go back in time.
//!
//! Crash consistency: each chunk is one atomic engine batch; a generation as
//! a whole is not. After a crash the engine holds every earlier generation
//! plus a key-order prefix of the one being written. The state machine keeps
//! its applied index under a key that sorts after all data keys, so the
//! index in the engine never covers data the engine lacks, and replaying the
//! log from it rewrites what the prefix holds (puts and deletes are blind
//! writes, so replaying them twice changes nothing).
//!
//! Bounded: a generation is frozen at [`OverlayLimits::freeze_ops`] keys,
//! [`OverlayLimits::freeze_bytes`] or [`OverlayLimits::freeze_age`]. While
//! one is still being written, a write waits once the active generation holds
//! twice those (back-pressure onto whoever writes). Batches of more than
//! [`OverlayLimits::direct_batch_ops`] operations (snapshot restores) go to
//! the engine directly, after everything written before them.
//!
//! The overlay is used by one thread at a time (the store thread, or a
//! reader or the driver applying inline, holding the store's mutex); the
//! flusher shares only the generations and the engine, each behind its own
//! mutex, and holds the engine's for one chunk at a time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::{KeyRange, KeyValue, Reclaim, Store, StoreError, WriteBatch, WriteOp};
use crate::limits;

/// When the active generation is frozen, and how the flusher writes it.
#[derive(Debug, Clone, Copy)]
pub struct OverlayLimits {
    /// Freeze at this many distinct keys.
    pub freeze_ops: usize,
    /// Freeze at this many bytes of keys and values.
    pub freeze_bytes: usize,
    /// Freeze a generation this old even when it is small.
    pub freeze_age: Duration,
    /// Operations per engine batch when the flusher writes a generation (the
    /// longest a read that misses the overlay waits for the engine, unless
    /// the engine compacts).
    pub chunk_ops: usize,
    /// Batches with more operations than this go straight to the engine.
    pub direct_batch_ops: usize,
}

/// Freeze at 16 MiB (large values).
pub const FREEZE_BYTES: usize = 16 * 1024 * 1024;
/// 256 operations per engine batch: short, so that a read that misses the
/// overlay does not wait long for the engine (measurements:
/// docs/benchmarks.md, "Write-behind store").
pub const CHUNK_OPS: usize = 256;
/// Batches above 512 operations bypass the overlay: snapshot restores (1,000
/// keys a batch) and the rare huge apply batch of a node catching up.
pub const DIRECT_BATCH_OPS: usize = 512;

impl Default for OverlayLimits {
    fn default() -> Self {
        Self {
            freeze_ops: limits::BACKEND_BATCH_LIMIT_DEFAULT,
            freeze_bytes: FREEZE_BYTES,
            freeze_age: Duration::from_millis(limits::BACKEND_BATCH_INTERVAL_MS_DEFAULT),
            chunk_ops: CHUNK_OPS,
            direct_batch_ops: DIRECT_BATCH_OPS,
        }
    }
}

/// How many writes are held in memory and not yet in the engine (the keys
/// of both generations; a key in both counts twice), readable from any
/// thread: for metrics.
#[derive(Debug, Clone, Default)]
pub struct Backlog(Arc<AtomicUsize>);

impl Backlog {
    /// Keys held in memory now (a key in both generations counts twice).
    pub fn keys(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn publish(&self, generations: &Generations) {
        let keys =
            generations.active.len() + generations.frozen.as_ref().map_or(0, |frozen| frozen.len());
        self.0.store(keys, Ordering::Relaxed);
    }
}

/// Keys and their latest write: `None` is a delete.
type Generation = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

#[derive(Default)]
struct Generations {
    active: Generation,
    active_bytes: usize,
    /// When the first write of the active generation landed.
    active_since: Option<Instant>,
    /// The generation the flusher is writing; readable until it is written.
    frozen: Option<Arc<Generation>>,
    /// The flusher failed (the engine refused a write, or it panicked);
    /// every later call fails with this.
    failure: Option<String>,
    /// The owner is closing: the flusher ends once nothing is frozen.
    closing: bool,
}

impl Generations {
    fn check(&self) -> Result<(), StoreError> {
        match &self.failure {
            Some(failure) => Err(StoreError::Engine(format!(
                "writing behind into the engine failed: {failure}"
            ))),
            None => Ok(()),
        }
    }

    fn is_due(&self, limits: &OverlayLimits, now: Instant) -> bool {
        self.active.len() >= limits.freeze_ops
            || self.active_bytes >= limits.freeze_bytes
            || self
                .active_since
                .is_some_and(|since| now.duration_since(since) >= limits.freeze_age)
    }

    fn is_full(&self, limits: &OverlayLimits) -> bool {
        self.active.len() >= limits.freeze_ops.saturating_mul(2)
            || self.active_bytes >= limits.freeze_bytes.saturating_mul(2)
    }

    /// A write must wait: one generation is being written and the next is
    /// full.
    fn writers_wait(&self, limits: &OverlayLimits) -> bool {
        self.frozen.is_some() && self.is_full(limits)
    }

    fn freeze(&mut self) {
        assert!(self.frozen.is_none(), "one generation is written at a time");
        self.frozen = Some(Arc::new(std::mem::take(&mut self.active)));
        self.active_bytes = 0;
        self.active_since = None;
    }

    fn insert(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let added = key.len() + value.as_ref().map_or(0, Vec::len);
        let key_bytes = key.len();
        if let Some(replaced) = self.active.insert(key, value) {
            self.active_bytes -= key_bytes + replaced.map_or(0, |value| value.len());
        }
        self.active_bytes += added;
    }

    /// The latest write of `key` held in memory, if any.
    fn lookup(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.active
            .get(key)
            .or_else(|| self.frozen.as_ref().and_then(|frozen| frozen.get(key)))
            .cloned()
    }
}

struct Shared<S> {
    generations: Mutex<Generations>,
    /// Signalled when a generation is frozen, when the flusher finishes or
    /// fails one, and on close.
    changed: Condvar,
    engine: Mutex<S>,
    limits: OverlayLimits,
    backlog: Backlog,
    /// Called by the flusher when the engine refuses a write.
    failure_handler: OnceLock<fn(&str)>,
}

impl<S> Shared<S> {
    fn generations(&self) -> MutexGuard<'_, Generations> {
        self.generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn engine(&self) -> MutexGuard<'_, S> {
        self.engine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, generations: MutexGuard<'a, Generations>) -> MutexGuard<'a, Generations> {
        self.changed
            .wait(generations)
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns once the engine holds every write made before the call
    /// (freezing the active generation early if need be).
    fn flush(&self) -> Result<(), StoreError> {
        let mut generations = self.generations();
        let mut frozen_here = false;
        loop {
            generations.check()?;
            if generations.frozen.is_some() {
                generations = self.wait(generations);
            } else if generations.active.is_empty() || frozen_here {
                // What the active generation holds now came after the call
                // (the generation frozen here has been written).
                return Ok(());
            } else {
                generations.freeze();
                frozen_here = true;
                self.changed.notify_all();
            }
        }
    }
}

/// [`OverlayStore::reclaimer`]: it does not keep the overlay alive, and
/// fails with [`StoreError::Closed`] once its owner closes it.
struct EngineReclaimer<S>(std::sync::Weak<Shared<S>>);

impl<S> EngineReclaimer<S> {
    fn shared(&self) -> Result<Arc<Shared<S>>, StoreError> {
        let shared = self.0.upgrade().ok_or(StoreError::Closed)?;
        let closing = shared.generations().closing;
        if closing {
            return Err(StoreError::Closed);
        }
        Ok(shared)
    }
}

impl<S: Store> Reclaim for EngineReclaimer<S> {
    fn settle(&self) -> Result<(), StoreError> {
        self.shared()?.flush()
    }

    fn reclaim_piece(
        &self,
        range: &KeyRange,
        keys: usize,
        bytes: usize,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let end = range.end.as_deref().expect("a range to reclaim has an end");
        let shared = self.shared()?;
        let mut engine = shared.engine();
        // Where the piece ends, found a few pairs at a time: values of up to
        // a megabyte must not all be in memory at once.
        let (mut seen_keys, mut seen_bytes) = (0, 0);
        let mut cursor = range.start.clone();
        loop {
            let step = engine.scan(
                &KeyRange {
                    start: cursor,
                    end: range.end.clone(),
                },
                RECLAIM_SCAN_STEP_PAIRS,
            )?;
            if step.len() < RECLAIM_SCAN_STEP_PAIRS {
                engine.compact_span(&range.start, end)?;
                return Ok(None);
            }
            for (key, value) in &step {
                seen_keys += 1;
                seen_bytes += key.len() + value.len();
            }
            let (last, _) = step.last().expect("a full step has a last pair");
            let mut rest = last.clone();
            rest.push(0);
            if seen_keys >= keys || seen_bytes >= bytes {
                engine.compact_span(&range.start, last)?;
                return Ok(Some(rest));
            }
            cursor = rest;
        }
    }
}

/// Pairs read per scan while a reclaim finds the end of its piece.
const RECLAIM_SCAN_STEP_PAIRS: usize = 32;

/// A [`Store`] that writes behind into `S` (see the module documentation).
pub struct OverlayStore<S: Store + 'static> {
    shared: Arc<Shared<S>>,
    flusher: Option<thread::JoinHandle<()>>,
}

impl<S: Store + 'static> std::fmt::Debug for OverlayStore<S> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("OverlayStore")
    }
}

impl<S: Store + 'static> OverlayStore<S> {
    /// Puts a write-behind overlay in front of `engine` and starts its
    /// flusher thread.
    pub fn new(engine: S, limits: OverlayLimits) -> Self {
        assert!(
            limits.freeze_ops > 0 && limits.chunk_ops > 0,
            "overlay limits must be positive"
        );
        let shared = Arc::new(Shared {
            generations: Mutex::new(Generations::default()),
            changed: Condvar::new(),
            engine: Mutex::new(engine),
            limits,
            backlog: Backlog::default(),
            failure_handler: OnceLock::new(),
        });
        let flusher = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("kvstore-flush".into())
                .spawn(move || run_flusher(&shared))
                .expect("spawning the flusher thread")
        };
        Self {
            shared,
            flusher: Some(flusher),
        }
    }

    /// Calls `handler` with the reason when writing behind into the engine
    /// fails. Without one, every later call fails instead; the server stops
    /// the process, since the node would otherwise answer every read with an
    /// error until its next write fails. At most one handler is kept.
    pub fn on_failure(&self, handler: fn(&str)) {
        let _ = self.shared.failure_handler.set(handler);
    }

    /// The count of keys waiting in memory for the engine, kept up to date.
    pub fn backlog(&self) -> Backlog {
        self.shared.backlog.clone()
    }

    /// Returns once the engine holds every write made so far.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        self.shared.flush()
    }

    /// A handle that frees the disk deleted records hold, working on the
    /// engine directly (between the flusher's chunks), not through the
    /// thread that owns this overlay.
    pub fn reclaimer(&self) -> Arc<dyn Reclaim> {
        Arc::new(EngineReclaimer(Arc::downgrade(&self.shared)))
    }

    /// Writes everything behind, stops the flusher and hands the engine back.
    pub fn into_engine(mut self) -> Result<S, StoreError> {
        let flushed = self.flush();
        self.stop_flusher();
        let mut shared = self.shared.clone();
        drop(self);
        // The flusher has ended and the owner is gone; a reclaimer may be
        // in the middle of a piece (it starts no other once closing).
        let shared = loop {
            match Arc::try_unwrap(shared) {
                Ok(shared) => break shared,
                Err(still_shared) => {
                    shared = still_shared;
                    thread::sleep(Duration::from_millis(1));
                }
            }
        };
        flushed.map(|()| {
            shared
                .engine
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner)
        })
    }

    fn stop_flusher(&mut self) {
        self.shared.generations().closing = true;
        self.shared.changed.notify_all();
        if let Some(flusher) = self.flusher.take() {
            if flusher.join().is_err() {
                tracing::error!("the flusher thread panicked");
            }
        }
    }
}

impl<S: Store + 'static> Drop for OverlayStore<S> {
    fn drop(&mut self) {
        // Dropped without `into_engine`: write behind what can be (the log
        // holds it anyway), then stop the flusher.
        if self.flusher.is_some() {
            if let Err(error) = self.flush() {
                tracing::error!(%error, "writing behind on drop failed");
            }
            self.stop_flusher();
        }
    }
}

impl<S: Store + 'static> OverlayStore<S> {
    /// The latest write of `key` held in memory, if any (failing once the
    /// flusher has failed).
    fn in_memory(&self, key: &[u8]) -> Result<Option<Option<Vec<u8>>>, StoreError> {
        let generations = self.shared.generations();
        generations.check()?;
        Ok(generations.lookup(key))
    }
}

impl<S: Store + 'static> Store for OverlayStore<S> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(value) = self.in_memory(key)? {
            return Ok(value);
        }
        // Not in memory, so the engine has its latest write: a frozen
        // generation leaves memory only once it is written, and no write can
        // land in between (the owner is here).
        self.shared.engine().get(key)
    }

    fn get_if_ready(&mut self, key: &[u8]) -> Option<Result<Option<Vec<u8>>, StoreError>> {
        match self.in_memory(key) {
            Err(error) => Some(Err(error)),
            Ok(Some(value)) => Some(Ok(value)),
            Ok(None) => self
                .shared
                .engine
                .try_lock()
                .ok()
                .map(|mut engine| engine.get(key)),
        }
    }

    fn write_atomic(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        self.flush()?;
        self.shared.engine().write(batch)
    }

    fn write(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        let limits = self.shared.limits;
        if batch.is_empty() {
            return Ok(());
        }
        if batch.len() > limits.direct_batch_ops {
            return self.write_atomic(batch);
        }
        let mut generations = self.shared.generations();
        generations.check()?;
        while generations.writers_wait(&limits) {
            generations = self.shared.wait(generations);
            generations.check()?;
        }
        for operation in batch.into_operations() {
            match operation {
                WriteOp::Put { key, value } => generations.insert(key, Some(value)),
                WriteOp::Delete { key } => generations.insert(key, None),
            }
        }
        self.shared.backlog.publish(&generations);
        let now = Instant::now();
        if generations.active_since.is_none() {
            // The flusher times the generation's age from now.
            generations.active_since = Some(now);
            self.shared.changed.notify_all();
        }
        if generations.frozen.is_none() && generations.is_due(&limits, now) {
            generations.freeze();
            self.shared.changed.notify_all();
        }
        Ok(())
    }

    /// Into memory, unless the batch goes straight to the engine or must
    /// wait for the flusher to catch up (or the overlay failed: the write
    /// then fails at once).
    fn writes_without_waiting(&self, operations: usize) -> bool {
        let limits = self.shared.limits;
        if operations > limits.direct_batch_ops {
            return false;
        }
        let generations = self.shared.generations();
        generations.failure.is_some() || !generations.writers_wait(&limits)
    }

    /// A scan merges the engine's pairs: it goes through the store thread.
    fn scan_if_ready(
        &mut self,
        _range: &KeyRange,
        _limit: usize,
    ) -> Option<Result<Vec<KeyValue>, StoreError>> {
        None
    }

    /// The engine's pairs with the writes held in memory over the range
    /// merged in.
    fn scan(&mut self, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        if range.end.as_ref().is_some_and(|end| *end <= range.start) {
            return Ok(Vec::new());
        }
        // The writes held in memory over the range, newest generation on
        // top; then the engine's pairs, as many more as deletes in memory
        // could hide. No write lands in between (the owner is here); the
        // flusher only moves a frozen generation, which wins over the
        // engine either way.
        let held: BTreeMap<Vec<u8>, Option<Vec<u8>>> = {
            let generations = self.shared.generations();
            generations.check()?;
            let mut held = BTreeMap::new();
            let layers = generations
                .frozen
                .iter()
                .map(|frozen| frozen.as_ref())
                .chain(std::iter::once(&generations.active));
            for layer in layers {
                let within = match &range.end {
                    Some(end) => layer.range(range.start.clone()..end.clone()),
                    None => layer.range(range.start.clone()..),
                };
                for (key, value) in within {
                    held.insert(key.clone(), value.clone());
                }
            }
            held
        };
        let hidden = held.values().filter(|value| value.is_none()).count();
        let wanted = limit.saturating_add(hidden);
        let engine_pairs = self.shared.engine().scan(range, wanted)?;
        let engine_exhausted = engine_pairs.len() < wanted;
        let engine_last = engine_pairs.last().map(|(key, _)| key.clone());
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = engine_pairs.into_iter().collect();
        for (key, value) in held {
            // Past the engine's last pair the engine may hold more: only
            // what sorts before it is known to be in order.
            if !engine_exhausted && engine_last.as_ref().is_some_and(|last| key > *last) {
                continue;
            }
            match value {
                Some(value) => merged.insert(key, value),
                None => merged.remove(&key),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }
}

/// Marks the overlay failed if the flusher unwinds, so that writers waiting
/// for it fail instead of waiting forever.
struct FailOnPanic<'a, S>(&'a Shared<S>);

impl<S> Drop for FailOnPanic<'_, S> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.generations().failure = Some("the flusher thread panicked".into());
            self.0.changed.notify_all();
        }
    }
}

fn run_flusher<S: Store>(shared: &Shared<S>) {
    let _fail_on_panic = FailOnPanic(shared);
    let limits = shared.limits;
    let mut generations = shared.generations();
    loop {
        if generations.frozen.is_none()
            && !generations.active.is_empty()
            && generations.is_due(&limits, Instant::now())
        {
            generations.freeze();
        }
        if let Some(frozen) = generations.frozen.clone() {
            drop(generations);
            let written = write_generation(shared, &frozen, limits.chunk_ops);
            generations = shared.generations();
            match written {
                Ok(()) => {
                    generations.frozen = None;
                    shared.backlog.publish(&generations);
                }
                Err(error) => {
                    tracing::error!(%error, "writing behind into the engine failed");
                    generations.failure = Some(error.to_string());
                    drop(generations);
                    if let Some(handler) = shared.failure_handler.get() {
                        handler(&error.to_string());
                    }
                    shared.changed.notify_all();
                    return;
                }
            }
            shared.changed.notify_all();
            // The written generation is freed here, by its last reference,
            // with the lock released: readers and writers need not wait for
            // thousands of frees.
            drop(generations);
            drop(frozen);
            generations = shared.generations();
            continue;
        }
        if generations.closing {
            return;
        }
        generations = match generations.active_since {
            // Wake when the active generation comes of age.
            Some(since) => {
                let due_in = limits.freeze_age.saturating_sub(since.elapsed());
                shared
                    .changed
                    .wait_timeout(generations, due_in.max(Duration::from_millis(1)))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => shared.wait(generations),
        };
    }
}

/// Writes `generation` into the engine in key order, `chunk_ops` operations
/// per batch, holding the engine for one batch at a time.
fn write_generation<S: Store>(
    shared: &Shared<S>,
    generation: &Generation,
    chunk_ops: usize,
) -> Result<(), StoreError> {
    let mut pairs = generation.iter().peekable();
    while pairs.peek().is_some() {
        let mut batch = WriteBatch::new();
        for (key, value) in pairs.by_ref().take(chunk_ops) {
            match value {
                Some(value) => batch.put(key.clone(), value.clone()),
                None => batch.delete(key.clone()),
            };
        }
        shared.engine().write(batch)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::storage::memory::MemoryStore;

    /// An engine that records its batches and can be held busy or made to
    /// fail.
    #[derive(Clone, Default)]
    struct Recording {
        store: Arc<Mutex<MemoryStore>>,
        batches: Arc<Mutex<Vec<Vec<WriteOp>>>>,
        /// Held by a test to keep the engine busy: writes wait for it.
        gate: Arc<Mutex<()>>,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Store for Recording {
        fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.store.lock().unwrap().get(key)
        }

        fn write(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
            let _busy = self.gate.lock().unwrap();
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Engine("disk full".into()));
            }
            self.batches
                .lock()
                .unwrap()
                .push(batch.operations().to_vec());
            self.store.lock().unwrap().write(batch)
        }

        fn scan(&mut self, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
            self.store.lock().unwrap().scan(range, limit)
        }
    }

    fn limits(freeze_ops: usize) -> OverlayLimits {
        OverlayLimits {
            freeze_ops,
            freeze_bytes: usize::MAX / 4,
            freeze_age: Duration::from_secs(3600),
            chunk_ops: 2,
            direct_batch_ops: 8,
        }
    }

    fn put(store: &mut dyn Store, key: &str, value: &str) {
        store.put(key.as_bytes(), value.as_bytes()).unwrap();
    }

    fn batch_keys(recording: &Recording) -> Vec<Vec<String>> {
        recording
            .batches
            .lock()
            .unwrap()
            .iter()
            .map(|batch| {
                batch
                    .iter()
                    .map(|operation| match operation {
                        WriteOp::Put { key, .. } | WriteOp::Delete { key } => {
                            String::from_utf8(key.clone()).unwrap()
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn writes_read_back_at_once_and_reach_the_engine_in_key_order_chunks() {
        let engine = Recording::default();
        let mut store = OverlayStore::new(engine.clone(), limits(100));
        for (key, value) in [("c", "1"), ("a", "1"), ("b", "1"), ("a", "2"), ("e", "1")] {
            put(&mut store, key, value);
        }
        store.delete(b"e").unwrap();
        assert_eq!(store.get(b"a").unwrap(), Some(b"2".to_vec()));
        assert_eq!(store.get(b"e").unwrap(), None);
        assert!(engine.batches.lock().unwrap().is_empty(), "not yet due");
        assert_eq!(store.backlog().keys(), 4);
        store.flush().unwrap();
        // Each key once, with its latest write; chunks of two, in key order.
        assert_eq!(batch_keys(&engine), [vec!["a", "b"], vec!["c", "e"]]);
        assert_eq!(
            engine.store.lock().unwrap().get(b"a").unwrap(),
            Some(b"2".to_vec())
        );
        assert_eq!(engine.store.lock().unwrap().get(b"e").unwrap(), None);
        assert_eq!(store.backlog().keys(), 0);
        assert_eq!(store.get(b"a").unwrap(), Some(b"2".to_vec()));
    }

    #[test]
    fn a_frozen_generation_stays_readable_while_the_engine_is_busy() {
        let engine = Recording::default();
        let mut store = OverlayStore::new(engine.clone(), limits(2));
        put(&mut store, "old", "0");
        store.flush().unwrap();
        let busy = engine.gate.lock().unwrap();
        put(&mut store, "a", "1");
        put(&mut store, "b", "1"); // freezes {a, b}; the flusher waits on the gate
        put(&mut store, "c", "1");
        assert_eq!(store.get(b"a").unwrap(), Some(b"1".to_vec()), "frozen");
        assert_eq!(store.get(b"c").unwrap(), Some(b"1".to_vec()), "active");
        assert_eq!(
            store.get_if_ready(b"b").unwrap().unwrap(),
            Some(b"1".to_vec())
        );
        // The flusher is inside a write: a read that needs the engine is not
        // ready (an inline reader must not wait), a plain get would wait.
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.shared.engine.try_lock().is_ok() {
            assert!(
                Instant::now() < deadline,
                "the flusher never took the engine"
            );
            thread::sleep(Duration::from_millis(1));
        }
        assert!(store.get_if_ready(b"old").is_none());
        drop(busy);
        assert_eq!(store.get(b"old").unwrap(), Some(b"0".to_vec()));
        store.flush().unwrap();
        let mut engine_store = engine.store.lock().unwrap().clone();
        assert_eq!(engine_store.scan(&KeyRange::all(), 10).unwrap().len(), 4);
    }

    #[test]
    fn writes_wait_while_the_flusher_is_two_generations_behind() {
        let engine = Recording::default();
        let store = OverlayStore::new(engine.clone(), limits(2));
        let busy = engine.gate.lock().unwrap();
        let (done, writes_done) = mpsc::channel();
        let writer = thread::spawn(move || {
            let mut store = store;
            for key in ["a", "b", "c", "d", "e", "f", "g", "h"] {
                put(&mut store, key, "1");
                done.send(key).unwrap();
            }
            store
        });
        // {a, b} frozen and stuck; c to f fill the active generation to
        // twice the freeze size; "g" must wait.
        for expected in ["a", "b", "c", "d", "e", "f"] {
            assert_eq!(
                writes_done.recv_timeout(Duration::from_secs(10)),
                Ok(expected)
            );
        }
        assert!(
            writes_done
                .recv_timeout(Duration::from_millis(200))
                .is_err(),
            "a write went through while the overlay was full"
        );
        drop(busy);
        for expected in ["g", "h"] {
            assert_eq!(
                writes_done.recv_timeout(Duration::from_secs(10)),
                Ok(expected)
            );
        }
        let engine_after = writer.join().unwrap().into_engine().unwrap();
        let written = engine_after
            .store
            .lock()
            .unwrap()
            .scan(&KeyRange::all(), 10);
        assert_eq!(written.unwrap().len(), 8);
    }

    #[test]
    fn says_when_a_write_would_wait() {
        let engine = Recording::default();
        let mut store = OverlayStore::new(engine.clone(), limits(2));
        assert!(store.writes_without_waiting(8));
        assert!(!store.writes_without_waiting(9), "goes to the engine");
        let busy = engine.gate.lock().unwrap();
        // {a, b} frozen and stuck behind the gate; c to f fill the active
        // generation to twice the freeze size.
        for key in ["a", "b", "c", "d", "e", "f"] {
            assert!(store.writes_without_waiting(1), "{key} goes to memory");
            put(&mut store, key, "1");
        }
        assert!(!store.writes_without_waiting(1), "full: a write would wait");
        drop(busy);
        store.flush().unwrap();
        assert!(store.writes_without_waiting(1));
    }

    #[test]
    fn an_idle_generation_is_written_when_it_comes_of_age() {
        let engine = Recording::default();
        let mut store = OverlayStore::new(
            engine.clone(),
            OverlayLimits {
                freeze_age: Duration::from_millis(20),
                ..limits(100)
            },
        );
        put(&mut store, "a", "1");
        let deadline = Instant::now() + Duration::from_secs(10);
        // Written into the engine, then let go of.
        while engine.store.lock().unwrap().get(b"a").unwrap().is_none()
            || store.backlog().keys() > 0
        {
            assert!(Instant::now() < deadline, "never written behind");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_large_batch_goes_to_the_engine_after_what_came_before() {
        let engine = Recording::default();
        let mut store = OverlayStore::new(engine.clone(), limits(100));
        put(&mut store, "k", "small");
        let mut large = WriteBatch::new();
        for index in 0..9 {
            large.put(format!("bulk{index}"), "x");
        }
        large.delete(b"k".to_vec());
        store.write(large).unwrap();
        let batches = batch_keys(&engine);
        assert_eq!(batches[0], ["k"], "the earlier write first");
        assert_eq!(batches.last().unwrap().len(), 10, "then the batch, whole");
        assert_eq!(store.get(b"k").unwrap(), None);
    }

    #[test]
    fn an_engine_failure_fails_every_later_call() {
        let engine = Recording::default();
        let mut store = OverlayStore::new(engine.clone(), limits(2));
        engine.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        put(&mut store, "a", "1");
        put(&mut store, "b", "1");
        let error = store.flush().unwrap_err();
        assert!(error.to_string().contains("disk full"), "{error}");
        assert!(store.put(b"c", b"1").is_err());
        assert!(store.get(b"a").is_err());
        assert!(store.into_engine().is_err());
    }

    #[test]
    fn an_engine_failure_calls_the_failure_handler_with_the_reason() {
        static REASON: Mutex<Option<String>> = Mutex::new(None);
        let engine = Recording::default();
        let mut store = OverlayStore::new(engine.clone(), limits(2));
        store.on_failure(|reason| *REASON.lock().unwrap() = Some(reason.to_string()));
        engine.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        put(&mut store, "a", "1");
        put(&mut store, "b", "1");
        assert!(store.flush().is_err());
        // The flusher may record the failure just before it calls the handler.
        let mut reason = None;
        for _ in 0..500 {
            reason = REASON.lock().unwrap().clone();
            if reason.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let reason = reason.expect("the handler was called");
        assert!(reason.contains("disk full"), "{reason}");
    }

    #[test]
    fn passes_the_store_suite_with_tiny_generations() {
        super::super::suite::run_suite(|| {
            Box::new(OverlayStore::new(MemoryStore::new(), limits(2)))
        });
    }

    fn directory_bytes(directory: &std::path::Path) -> u64 {
        std::fs::read_dir(directory)
            .unwrap()
            .map(|entry| entry.unwrap().metadata().unwrap().len())
            .sum()
    }

    #[test]
    fn reclaiming_frees_the_disk_of_deleted_records_and_keeps_the_rest() {
        use crate::storage::leveldb::{Durability, LevelDbStore};
        const KEYS: usize = 3_000;
        const VALUE_BYTES: usize = 4_096;
        const ROUNDS: usize = 3;
        let directory = tempfile::tempdir().unwrap();
        let engine = LevelDbStore::open(directory.path(), Durability::Flush).unwrap();
        let mut store = OverlayStore::new(engine, limits(500));
        let reclaimer = store.reclaimer();
        let key = |index: usize| format!("h/{index:06}").into_bytes();
        let value = |round: usize, index: usize| vec![((round + index) % 251) as u8; VALUE_BYTES];
        let range = KeyRange::prefix(b"h/".to_vec());
        let mut expected = Vec::new();
        // Each round writes every key, then deletes all but each tenth:
        // LevelDB keeps the values under tombstones until a compaction
        // meets both. Reclaiming pushes each round's records down through
        // the levels, so later rounds find earlier ones deeper.
        for round in 0..ROUNDS {
            for chunk in (0..KEYS).collect::<Vec<_>>().chunks(100) {
                let mut batch = WriteBatch::new();
                for &index in chunk {
                    batch.put(key(index), value(round, index));
                }
                store.write(batch).unwrap();
            }
            store.flush().unwrap();
            for chunk in (0..KEYS)
                .filter(|index| index % 10 != 0)
                .collect::<Vec<_>>()
                .chunks(100)
            {
                let mut batch = WriteBatch::new();
                for &index in chunk {
                    batch.delete(key(index));
                }
                store.write(batch).unwrap();
            }
            reclaimer.settle().unwrap();
            let before = directory_bytes(directory.path());
            assert!(
                before as usize > KEYS * VALUE_BYTES,
                "{before} bytes before"
            );
            let mut pieces = 0;
            let mut rest = Some(range.start.clone());
            while let Some(start) = rest {
                let piece = KeyRange {
                    start,
                    end: range.end.clone(),
                };
                // Pieces end at 200 KiB of pairs (about 50 keys).
                rest = reclaimer
                    .reclaim_piece(&piece, usize::MAX, 200 * 1024)
                    .unwrap();
                pieces += 1;
            }
            let after = directory_bytes(directory.path());
            assert!(pieces > 1, "{pieces} pieces");
            // What is left: the tenth kept, at most twice over.
            assert!(
                (after as usize) < KEYS * VALUE_BYTES / 5,
                "round {round}: {before} bytes before reclaiming, {after} after"
            );
            expected = (0..KEYS)
                .filter(|index| index % 10 == 0)
                .map(|index| (key(index), value(round, index)))
                .collect();
            assert_eq!(store.scan(&range, usize::MAX).unwrap(), expected);
        }
        // The reclaimer does not keep the overlay from closing.
        let mut engine = store.into_engine().unwrap();
        assert_eq!(engine.scan(&range, usize::MAX).unwrap(), expected);
        assert!(matches!(reclaimer.settle(), Err(StoreError::Closed)));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        #[test]
        fn matches_a_btreemap(operations in proptest::collection::vec(super::super::suite::operation(), 1..60)) {
            let mut store = OverlayStore::new(MemoryStore::new(), limits(3));
            super::super::suite::check_against_model(&mut store, &operations);
            let everything = store.scan(&KeyRange::all(), usize::MAX).unwrap();
            let mut engine = store.into_engine().unwrap();
            proptest::prop_assert_eq!(engine.scan(&KeyRange::all(), usize::MAX).unwrap(), everything);
        }
    }
}
