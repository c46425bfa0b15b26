//! Writes and reads of the multi-version layout over a [`Store`]: a
//! [`WriteTxn`] applies writes at one new revision (its reads see its own
//! earlier writes), and [`range_at`] reads a key range as it stood at any
//! revision since the last compaction. The semantics are etcd v3's
//! (`docs/design-22-mvcc.md`): the revision rises once per transaction that
//! changes something; `version` counts writes since the key's creation and
//! a delete ends the key's generation.

use std::collections::{BTreeMap, HashSet};

use super::keys::{self, HISTORY_PREFIX, LATEST_PREFIX};
use super::record::{CorruptRecord, HistoryRecord, KeyRecord};
use super::Revision;
use crate::storage::{KeyRange, Store, StoreError, WriteBatch};

/// Metadata key: the store revision.
const REVISION_KEY: &[u8] = b"m/revision";
/// Metadata key: the compacted revision (reads below it fail).
const COMPACTED_KEY: &[u8] = b"m/compacted";
/// Pairs read from the store per scan call.
const SCAN_CHUNK: usize = 1_024;

/// Why an MVCC operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    /// The storage engine failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stored bytes are not what this layout writes.
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
    /// A transaction wrote one key twice.
    #[error("duplicate key given in txn request: {key:?}")]
    DuplicateKey {
        /// The key.
        key: Vec<u8>,
    },
    /// A read asked for a revision the store has not reached.
    #[error("required revision {requested} is a future revision (current revision {current})")]
    FutureRevision {
        /// The revision asked for.
        requested: u64,
        /// The store's revision.
        current: u64,
    },
    /// A read asked for a revision compaction dropped.
    #[error("required revision {requested} has been compacted (compacted revision {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// The compacted revision.
        compacted: u64,
    },
    /// `range_end` sorts before `key`.
    #[error("range end sorts before the key")]
    InvalidRange,
    /// A put with `ignore_value` on a key that does not exist.
    #[error("key not found: {key:?}")]
    KeyNotFound {
        /// The key.
        key: Vec<u8>,
    },
    /// A put attaching a key to a lease that does not exist.
    #[error("etcdserver: requested lease not found (lease {lease:x})")]
    LeaseNotFound {
        /// The lease.
        lease: u64,
    },
}

/// The store's revision counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    /// The revision of the last transaction that changed something
    /// ([`FIRST_REVISION`] for an empty store).
    pub revision: u64,
    /// Revisions below this one may be gone (0: none compacted).
    pub compacted: u64,
}

/// The revision of an empty store: 1, as etcd's, so the first write is
/// revision 2 and tools that know etcd's numbers see the same ones.
pub const FIRST_REVISION: u64 = 1;

/// Reads the revision counters.
pub fn meta(store: &mut dyn Store) -> Result<Meta, MvccError> {
    Ok(Meta {
        revision: read_u64(store.get(REVISION_KEY)?)?.max(FIRST_REVISION),
        compacted: read_u64(store.get(COMPACTED_KEY)?)?,
    })
}

/// Writes the revision counters (a repair after a crash puts back the
/// ones recorded with the applied index).
pub fn set_meta(batch: &mut WriteBatch, meta: Meta) {
    batch.put(REVISION_KEY.to_vec(), meta.revision.to_be_bytes().to_vec());
    batch.put(
        COMPACTED_KEY.to_vec(),
        meta.compacted.to_be_bytes().to_vec(),
    );
}

/// Adds a live record of `key` written at `revision`, as a write
/// transaction would (the conversion of a single-version store writes
/// every key this way).
pub fn import_live(batch: &mut WriteBatch, key: &[u8], record: &KeyRecord, revision: Revision) {
    let encoded = HistoryRecord::Live(record.clone()).encode();
    batch.put(keys::latest_key(key), encoded.clone());
    batch.put(keys::history_key(key, revision.main), encoded);
    let mut marker = Vec::with_capacity(key.len() + 1);
    marker.push(0);
    marker.extend_from_slice(key);
    batch.put(keys::revision_key(revision), marker);
}

/// The writes after `revision` (from the revision table): their revision
/// and key, in revision order, at most `limit`.
pub fn writes_after(
    store: &mut dyn Store,
    revision: u64,
    limit: usize,
) -> Result<Vec<(Revision, Vec<u8>)>, MvccError> {
    let range = KeyRange {
        start: keys::revision_key(Revision::new(revision.saturating_add(1))),
        end: KeyRange::prefix(keys::REVISION_PREFIX.to_vec()).end,
    };
    writes_in(store, &range, limit)
}

/// The writes of the revision table's `range`, at most `limit`.
fn writes_in(
    store: &mut dyn Store,
    range: &KeyRange,
    limit: usize,
) -> Result<Vec<(Revision, Vec<u8>)>, MvccError> {
    store
        .scan(range, limit)?
        .into_iter()
        .map(|(stored, marker)| {
            let revision = keys::parse_revision_key(&stored)
                .ok_or_else(|| CorruptRecord("a malformed revision key".into()))?;
            let key = marker
                .get(1..)
                .ok_or_else(|| CorruptRecord("an empty revision record".into()))?;
            Ok((revision, key.to_vec()))
        })
        .collect()
}

/// Undoes, in `batch`, one write made after the store's revision: its
/// history and revision records go, and the key's latest record is set
/// back to `before` (its newest live record at that revision).
pub fn undo_write(
    batch: &mut WriteBatch,
    key: &[u8],
    revision: Revision,
    before: Option<&KeyRecord>,
) {
    batch.delete(keys::revision_key(revision));
    batch.delete(keys::history_key(key, revision.main));
    match before {
        Some(record) => batch.put(
            keys::latest_key(key),
            HistoryRecord::Live(record.clone()).encode(),
        ),
        None => batch.delete(keys::latest_key(key)),
    };
}

/// `key`'s live record at `revision` (`None`: absent or deleted then).
pub fn record_at(
    store: &mut dyn Store,
    key: &[u8],
    revision: u64,
) -> Result<Option<KeyRecord>, MvccError> {
    Ok(match newest_at_or_below(store, key, revision)? {
        Some((_, HistoryRecord::Live(record))) => Some(record),
        _ => None,
    })
}

/// `key`'s latest live record (one point read).
pub fn latest(store: &mut dyn Store, key: &[u8]) -> Result<Option<KeyRecord>, MvccError> {
    decode_latest(store.get(&keys::latest_key(key))?)
}

/// [`latest`], unless reading means waiting for the storage engine.
pub fn latest_if_ready(
    store: &mut dyn Store,
    key: &[u8],
) -> Option<Result<Option<KeyRecord>, MvccError>> {
    match store.get_if_ready(&keys::latest_key(key))? {
        Ok(bytes) => Some(decode_latest(bytes)),
        Err(error) => Some(Err(error.into())),
    }
}

fn decode_latest(bytes: Option<Vec<u8>>) -> Result<Option<KeyRecord>, MvccError> {
    match bytes {
        None => Ok(None),
        Some(bytes) => match HistoryRecord::decode(&bytes)? {
            HistoryRecord::Live(record) => Ok(Some(record)),
            HistoryRecord::Tombstone => {
                Err(CorruptRecord("a tombstone in the latest table".into()).into())
            }
        },
    }
}

/// The revision recorded in the store, unless reading it means waiting for
/// the engine: 0 in a store that never had revisions (storage version 1),
/// where [`meta`] says [`FIRST_REVISION`].
pub fn recorded_revision_if_ready(store: &mut dyn Store) -> Option<Result<u64, MvccError>> {
    match store.get_if_ready(REVISION_KEY)? {
        Ok(bytes) => Some(read_u64(bytes).map_err(MvccError::from)),
        Err(error) => Some(Err(error.into())),
    }
}

fn read_u64(bytes: Option<Vec<u8>>) -> Result<u64, CorruptRecord> {
    match bytes {
        None => Ok(0),
        Some(bytes) => bytes
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|bytes: Vec<u8>| CorruptRecord(format!("counter of {} bytes", bytes.len()))),
    }
}

/// A key range as etcd names one: `range_end` empty is the key alone,
/// `"\0"` is every key from `key` on, anything else the half-open
/// `[key, range_end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpan {
    /// First key.
    pub key: Vec<u8>,
    /// Past the last key (see the type's documentation).
    pub range_end: Vec<u8>,
}

impl KeySpan {
    /// The key alone.
    pub fn single(key: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            range_end: Vec::new(),
        }
    }

    /// `[key, range_end)`, or from `key` on when `range_end` is `"\0"`.
    pub fn range(key: impl Into<Vec<u8>>, range_end: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            range_end: range_end.into(),
        }
    }

    /// Whether `range_end` is below `key` (a malformed request).
    pub fn check(&self) -> Result<(), MvccError> {
        if !self.range_end.is_empty() && !self.is_open_ended() && self.range_end < self.key {
            return Err(MvccError::InvalidRange);
        }
        Ok(())
    }

    fn is_open_ended(&self) -> bool {
        self.range_end == [0]
    }

    /// Whether `key` lies in the span.
    pub fn contains(&self, key: &[u8]) -> bool {
        if self.range_end.is_empty() {
            return key == self.key.as_slice();
        }
        key >= self.key.as_slice() && (self.is_open_ended() || key < self.range_end.as_slice())
    }

    /// The span's part of the latest-record table.
    fn latest_range(&self) -> KeyRange {
        let start = keys::latest_key(&self.key);
        let end = if self.range_end.is_empty() {
            let mut end = start.clone();
            end.push(0);
            Some(end)
        } else if self.is_open_ended() {
            KeyRange::prefix(LATEST_PREFIX.to_vec()).end
        } else {
            Some(keys::latest_key(&self.range_end))
        };
        KeyRange { start, end }
    }

    /// The span's part of the history table.
    fn history_range(&self) -> KeyRange {
        let mut start = HISTORY_PREFIX.to_vec();
        start.extend_from_slice(&keys::escape(&self.key));
        let end = if self.range_end.is_empty() {
            // Every history key of `key` extends its escaped form.
            KeyRange::prefix(start.clone()).end
        } else if self.is_open_ended() {
            KeyRange::prefix(HISTORY_PREFIX.to_vec()).end
        } else {
            let mut end = HISTORY_PREFIX.to_vec();
            end.extend_from_slice(&keys::escape(&self.range_end));
            Some(end)
        };
        KeyRange { start, end }
    }
}

/// Calls `visit` with every pair of `range`, in key order, reading the
/// store in chunks; stops early when `visit` returns false.
fn scan_each(
    store: &mut dyn Store,
    range: &KeyRange,
    mut visit: impl FnMut(Vec<u8>, Vec<u8>) -> Result<bool, MvccError>,
) -> Result<(), MvccError> {
    let mut next = range.clone();
    loop {
        let chunk = store.scan(&next, SCAN_CHUNK)?;
        let full = chunk.len() == SCAN_CHUNK;
        let mut last = None;
        for (key, value) in chunk {
            last = Some(key.clone());
            if !visit(key, value)? {
                return Ok(());
            }
        }
        match last {
            Some(mut key) if full => {
                key.push(0);
                next.start = key;
            }
            _ => return Ok(()),
        }
    }
}

/// What a range read returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeResult {
    /// The pairs, in key order, at most `limit` of them.
    pub kvs: Vec<(Vec<u8>, KeyRecord)>,
    /// Whether more pairs matched than were returned.
    pub more: bool,
    /// How many pairs matched in all.
    pub count: u64,
    /// The revision read at.
    pub revision: u64,
}

/// The keys of `span` as they stood at `revision` (0: the current one), at
/// most `limit` (0: all).
pub fn range_at(
    store: &mut dyn Store,
    span: &KeySpan,
    revision: u64,
    limit: usize,
) -> Result<RangeResult, MvccError> {
    span.check()?;
    let meta = meta(store)?;
    let at = if revision == 0 {
        meta.revision
    } else {
        revision
    };
    if at > meta.revision {
        return Err(MvccError::FutureRevision {
            requested: at,
            current: meta.revision,
        });
    }
    if at < meta.compacted {
        return Err(MvccError::Compacted {
            requested: at,
            compacted: meta.compacted,
        });
    }
    let mut result = RangeResult {
        revision: at,
        ..RangeResult::default()
    };
    let mut take = |key: Vec<u8>, record: KeyRecord| {
        result.count += 1;
        if limit == 0 || result.kvs.len() < limit {
            result.kvs.push((key, record));
        } else {
            result.more = true;
        }
    };
    if at == meta.revision {
        scan_each(store, &span.latest_range(), |stored, value| {
            let key = stored[LATEST_PREFIX.len()..].to_vec();
            match HistoryRecord::decode(&value)? {
                HistoryRecord::Live(record) => take(key, record),
                HistoryRecord::Tombstone => {
                    return Err(CorruptRecord("a tombstone in the latest table".into()).into())
                }
            }
            Ok(true)
        })?;
        return Ok(result);
    }
    // History: each key's records newest first; the first at or below
    // `at` decides, the key's older records are skipped.
    let mut decided: Option<Vec<u8>> = None;
    scan_each(store, &span.history_range(), |stored, value| {
        let (key, written) = keys::parse_history_key(&stored)
            .ok_or_else(|| CorruptRecord("a malformed history key".into()))?;
        if written > at || decided.as_ref() == Some(&key) {
            return Ok(true);
        }
        if let HistoryRecord::Live(record) = HistoryRecord::decode(&value)? {
            take(key.clone(), record);
        }
        decided = Some(key);
        Ok(true)
    })?;
    Ok(result)
}

/// Key and value bytes a [`history_after`] batch stops after (at the end of
/// the revision that passes it): a catch-up response stays far below the
/// 4 MiB clients accept by default, unless one revision alone is larger.
pub const HISTORY_BATCH_BYTES_MAX: usize = 1024 * 1024;

/// Writes read from the history by [`history_after`], as watchers see them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryBatch {
    /// The compacted revision when it was read: writes at or below it may
    /// be gone.
    pub compacted: u64,
    /// Every write from the start revision through this one is in
    /// `changes` (those of keys the caller wanted).
    pub through: u64,
    /// The writes, in revision order.
    pub changes: Vec<Change>,
}

/// The writes from revision `from` on (from above the compacted revision,
/// if that is later), whole revisions only, about `writes_max` of them (a
/// single revision with more writes is read whole) and at most about
/// [`HISTORY_BATCH_BYTES_MAX`] of keys and values, with the records of
/// the keys `wanted` (and their previous records when `with_previous`).
/// Watchers catch up from here (`node::watch`).
pub fn history_after(
    store: &mut dyn Store,
    from: u64,
    writes_max: usize,
    wanted: impl Fn(&[u8]) -> bool,
    with_previous: bool,
) -> Result<HistoryBatch, MvccError> {
    let meta = meta(store)?;
    let from = from.max(meta.compacted + 1);
    let mut batch = HistoryBatch {
        compacted: meta.compacted,
        through: meta.revision,
        changes: Vec::new(),
    };
    if from > meta.revision {
        return Ok(batch);
    }
    let mut writes = writes_after(store, from - 1, writes_max.max(1))?;
    if writes.len() >= writes_max.max(1) {
        let last = writes.last().expect("a full read").0.main;
        if writes[0].0.main == last {
            // One revision holds them all: read it whole.
            let revision = KeyRange::between(
                keys::revision_key(Revision::new(last)),
                keys::revision_key(Revision::new(last + 1)),
            );
            writes = writes_in(store, &revision, usize::MAX)?;
            batch.through = last;
        } else {
            writes.retain(|(revision, _)| revision.main < last);
            batch.through = last - 1;
        }
    }
    // Bytes of keys and values read so far: past `HISTORY_BATCH_BYTES_MAX`,
    // the batch ends with the revision it is in.
    let mut bytes = 0usize;
    let mut current = None;
    for (revision, key) in writes {
        if current != Some(revision.main) {
            if bytes >= HISTORY_BATCH_BYTES_MAX {
                batch.through = current.expect("a revision read before");
                break;
            }
            current = Some(revision.main);
        }
        if !wanted(&key) {
            continue;
        }
        let record = match newest_at_or_below(store, &key, revision.main)? {
            Some((written, HistoryRecord::Live(record))) if written == revision.main => {
                Some(record)
            }
            Some((written, HistoryRecord::Tombstone)) if written == revision.main => None,
            _ => {
                return Err(CorruptRecord(format!(
                    "the revision table names a write at {} the history does not hold",
                    revision.main
                ))
                .into())
            }
        };
        let previous = if with_previous {
            record_at(store, &key, revision.main - 1)?
        } else {
            None
        };
        bytes += key.len()
            + record.as_ref().map_or(0, |record| record.value.len())
            + previous.as_ref().map_or(0, |record| record.value.len());
        batch.changes.push(Change {
            key,
            revision,
            record,
            previous,
        });
    }
    Ok(batch)
}

/// Metadata key: the compacted revision whose history is all dropped (the
/// physical part of compaction).
const COMPACTION_DONE_KEY: &[u8] = b"m/compact_done";
/// Metadata key: the revision key where the next compaction step starts
/// (it resumes from here after a restart).
const COMPACTION_RESUME_KEY: &[u8] = b"m/compact_resume";

/// Starts compacting the history below `revision`: from the returned batch
/// on, reads below it fail with [`MvccError::Compacted`]; the history is
/// dropped afterwards, in steps ([`compact_step`]), without changing any
/// allowed read.
pub fn schedule_compaction(store: &mut dyn Store, revision: u64) -> Result<WriteBatch, MvccError> {
    let meta = meta(store)?;
    if revision > meta.revision {
        return Err(MvccError::FutureRevision {
            requested: revision,
            current: meta.revision,
        });
    }
    if revision <= meta.compacted {
        return Err(MvccError::Compacted {
            requested: revision,
            compacted: meta.compacted,
        });
    }
    let mut batch = WriteBatch::new();
    batch.put(COMPACTED_KEY.to_vec(), revision.to_be_bytes().to_vec());
    Ok(batch)
}

/// The compacted revision whose history compaction has all dropped.
pub fn compacted_through(store: &mut dyn Store) -> Result<u64, MvccError> {
    Ok(read_u64(store.get(COMPACTION_DONE_KEY)?)?)
}

/// The key ranges in which a compaction through `compacted` deleted
/// records: revision records below it, and histories (anywhere). Their
/// disk is freed once the engine rewrites them ([`crate::storage::Reclaim`]).
pub fn compacted_ranges(compacted: u64) -> [KeyRange; 2] {
    [
        KeyRange::between(
            keys::revision_key(Revision::default()),
            keys::revision_key(Revision::new(compacted + 1)),
        ),
        KeyRange::prefix(HISTORY_PREFIX),
    ]
}

/// Where a physical compaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactionProgress {
    /// More history below the compacted revision remains.
    More,
    /// Everything below the compacted revision that no read needs is gone.
    Done,
}

/// One step of the physical compaction: looks at up to `revisions_max`
/// writes at or below the compacted revision, in revision order, and drops
/// each one no allowed read needs: every write but the key's newest at or
/// below the compacted revision, and that one too when it is a tombstone.
/// A write kept keeps its revision record, so that the next compaction
/// looks at it again (a later write may supersede it by then): each
/// compaction walks the writes kept so far (at most one per key) and the
/// ones since, one point lookup each. Returns the batch to write (it
/// records the progress too).
pub fn compact_step(
    store: &mut dyn Store,
    revisions_max: usize,
) -> Result<(WriteBatch, CompactionProgress), MvccError> {
    let compacted = meta(store)?.compacted;
    let mut batch = WriteBatch::new();
    if read_u64(store.get(COMPACTION_DONE_KEY)?)? >= compacted {
        return Ok((batch, CompactionProgress::Done));
    }
    let end = keys::revision_key(Revision::new(compacted + 1));
    // Where the last step stopped: the revision key to resume at.
    let start = store
        .get(COMPACTION_RESUME_KEY)?
        .unwrap_or_else(|| keys::revision_key(Revision::default()));
    let range = KeyRange {
        start,
        end: Some(end),
    };
    let writes = store.scan(&range, revisions_max)?;
    let progress = if writes.len() < revisions_max {
        CompactionProgress::Done
    } else {
        CompactionProgress::More
    };
    for (stored, marker) in &writes {
        let revision = keys::parse_revision_key(stored)
            .ok_or_else(|| CorruptRecord("a malformed revision key".into()))?;
        let key = marker
            .get(1..)
            .ok_or_else(|| CorruptRecord("an empty revision record".into()))?;
        let newest = newest_at_or_below(store, key, compacted)?;
        let keep = newest.as_ref().is_some_and(|(newest_revision, record)| {
            *newest_revision == revision.main && matches!(record, HistoryRecord::Live(_))
        });
        if !keep {
            batch.delete(keys::history_key(key, revision.main));
            batch.delete(stored.clone());
        }
    }
    match progress {
        CompactionProgress::More => {
            let mut resume_at = writes.last().expect("a full step").0.clone();
            resume_at.push(0);
            batch.put(COMPACTION_RESUME_KEY.to_vec(), resume_at);
        }
        CompactionProgress::Done => {
            // The next compaction starts over: the writes kept are first.
            batch.delete(COMPACTION_RESUME_KEY.to_vec());
            batch.put(
                COMPACTION_DONE_KEY.to_vec(),
                compacted.to_be_bytes().to_vec(),
            );
        }
    }
    Ok((batch, progress))
}

/// The newest record of `key` at or below `revision`, with its revision.
fn newest_at_or_below(
    store: &mut dyn Store,
    key: &[u8],
    revision: u64,
) -> Result<Option<(u64, HistoryRecord)>, MvccError> {
    let span = KeySpan::single(key.to_vec());
    let range = KeyRange {
        start: keys::history_key(key, revision),
        end: span.history_range().end,
    };
    match store.scan(&range, 1)?.into_iter().next() {
        None => Ok(None),
        Some((stored, value)) => {
            let (_, written) = keys::parse_history_key(&stored)
                .ok_or_else(|| CorruptRecord("a malformed history key".into()))?;
            Ok(Some((written, HistoryRecord::decode(&value)?)))
        }
    }
}

/// One write of a transaction, as a watcher sees it: what the key became
/// and what it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: Vec<u8>,
    /// The write's revision (main: the transaction's; sub: its place in it).
    pub revision: Revision,
    /// The key's record after the write (`None`: deleted).
    pub record: Option<KeyRecord>,
    /// The key's live record before the write (`None`: it did not exist).
    pub previous: Option<KeyRecord>,
}

/// A write transaction: every write gets the same main revision (the
/// store's plus one) and its own sub revision; its reads see its own
/// earlier writes. Nothing reaches the store until [`WriteTxn::finish`]
/// hands out the batch.
pub struct WriteTxn<'s> {
    store: &'s mut dyn Store,
    before: Meta,
    main: u64,
    sub: u32,
    /// Store keys written so far, `None` for deleted.
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// User keys written so far (each at most once).
    written: HashSet<Vec<u8>>,
    /// The writes so far, in sub-revision order.
    changes: Vec<Change>,
    /// Whether the attachment index changed (the batch must then be
    /// written atomically: see `keys`).
    leases_touched: bool,
}

impl std::fmt::Debug for WriteTxn<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("WriteTxn")
            .field("main", &self.main)
            .field("writes", &self.written.len())
            .finish()
    }
}

impl<'s> WriteTxn<'s> {
    /// Starts a transaction over `store`, reading its counters.
    pub fn begin(store: &'s mut dyn Store) -> Result<Self, MvccError> {
        let before = meta(store)?;
        Ok(Self::begin_at(store, before))
    }

    /// Starts a transaction over `store`, whose counters the caller keeps
    /// (the applier's applied record): no read of the store. Reading them
    /// was a fifth of the leader's CPU under puts, the compacted revision
    /// being a LevelDB miss through every level until a compaction wrote
    /// it (`docs/benchmarks.md`, 2026-12-07 night).
    pub fn begin_at(store: &'s mut dyn Store, before: Meta) -> Self {
        Self {
            store,
            before,
            main: before.revision + 1,
            sub: 0,
            pending: BTreeMap::new(),
            written: HashSet::new(),
            changes: Vec::new(),
            leases_touched: false,
        }
    }

    /// Whether the transaction changed which keys are attached to leases.
    pub fn touches_leases(&self) -> bool {
        self.leases_touched
    }

    /// Moves `key`'s entry in the attachment index from lease `before` to
    /// lease `after` (0: none).
    fn attach(&mut self, key: &[u8], before: u64, after: u64) {
        if before == after {
            return;
        }
        if before != 0 {
            self.pending.insert(keys::attached_key(before, key), None);
        }
        if after != 0 {
            self.pending
                .insert(keys::attached_key(after, key), Some(Vec::new()));
        }
        self.leases_touched = true;
    }

    fn get_stored(&mut self, stored: &[u8]) -> Result<Option<Vec<u8>>, MvccError> {
        match self.pending.get(stored) {
            Some(value) => Ok(value.clone()),
            None => Ok(self.store.get(stored)?),
        }
    }

    /// The key's live record as this transaction sees it.
    pub fn latest(&mut self, key: &[u8]) -> Result<Option<KeyRecord>, MvccError> {
        match self.get_stored(&keys::latest_key(key))? {
            None => Ok(None),
            Some(bytes) => match HistoryRecord::decode(&bytes)? {
                HistoryRecord::Live(record) => Ok(Some(record)),
                HistoryRecord::Tombstone => {
                    Err(CorruptRecord("a tombstone in the latest table".into()).into())
                }
            },
        }
    }

    /// The keys of `span` at `revision`, a revision before this
    /// transaction's (so without its writes), as [`range_at`] reads them.
    pub fn range_past(
        &mut self,
        span: &KeySpan,
        revision: u64,
        limit: usize,
    ) -> Result<RangeResult, MvccError> {
        range_at(self.store, span, revision, limit)
    }

    /// The live keys of `span` as this transaction sees them, in key order.
    pub fn range(&mut self, span: &KeySpan) -> Result<Vec<(Vec<u8>, KeyRecord)>, MvccError> {
        span.check()?;
        let range = span.latest_range();
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        scan_each(self.store, &range, |stored, value| {
            merged.insert(stored, value);
            Ok(true)
        })?;
        for (stored, value) in &self.pending {
            if stored.starts_with(LATEST_PREFIX) && range.contains(stored) {
                match value {
                    Some(value) => merged.insert(stored.clone(), value.clone()),
                    None => merged.remove(stored),
                };
            }
        }
        merged
            .into_iter()
            .map(|(stored, value)| match HistoryRecord::decode(&value)? {
                HistoryRecord::Live(record) => Ok((stored[LATEST_PREFIX.len()..].to_vec(), record)),
                HistoryRecord::Tombstone => {
                    Err(CorruptRecord("a tombstone in the latest table".into()).into())
                }
            })
            .collect()
    }

    fn claim(&mut self, key: &[u8]) -> Result<Revision, MvccError> {
        if !self.written.insert(key.to_vec()) {
            return Err(MvccError::DuplicateKey { key: key.to_vec() });
        }
        let revision = Revision {
            main: self.main,
            sub: self.sub,
        };
        self.sub += 1;
        Ok(revision)
    }

    fn record(&mut self, key: &[u8], revision: Revision, record: &HistoryRecord) {
        let encoded = record.encode();
        let latest = match record {
            HistoryRecord::Live(_) => Some(encoded.clone()),
            HistoryRecord::Tombstone => None,
        };
        self.pending.insert(keys::latest_key(key), latest);
        self.pending
            .insert(keys::history_key(key, revision.main), Some(encoded));
        let mut marker = Vec::with_capacity(key.len() + 1);
        marker.push(u8::from(matches!(record, HistoryRecord::Tombstone)));
        marker.extend_from_slice(key);
        self.pending
            .insert(keys::revision_key(revision), Some(marker));
    }

    /// Stores `value` under `key`; returns the key's previous record.
    pub fn put(
        &mut self,
        key: &[u8],
        value: Vec<u8>,
        lease: u64,
    ) -> Result<Option<KeyRecord>, MvccError> {
        if lease != 0 && self.get_stored(&keys::lease_key(lease))?.is_none() {
            return Err(MvccError::LeaseNotFound { lease });
        }
        let previous = self.latest(key)?;
        let revision = self.claim(key)?;
        self.attach(
            key,
            previous.as_ref().map_or(0, |previous| previous.lease),
            lease,
        );
        let record = KeyRecord {
            create_revision: previous
                .as_ref()
                .map_or(revision.main, |previous| previous.create_revision),
            mod_revision: revision.main,
            version: previous.as_ref().map_or(1, |previous| previous.version + 1),
            lease,
            value,
        };
        let live = HistoryRecord::Live(record);
        self.record(key, revision, &live);
        // Back out of the enum: no copy of the value on the write path.
        let HistoryRecord::Live(record) = live else {
            unreachable!("built live above")
        };
        self.changes.push(Change {
            key: key.to_vec(),
            revision,
            record: Some(record),
            previous: previous.clone(),
        });
        Ok(previous)
    }

    /// Deletes every live key of `span`; returns them as they were.
    pub fn delete_range(&mut self, span: &KeySpan) -> Result<Vec<(Vec<u8>, KeyRecord)>, MvccError> {
        let deleted = self.range(span)?;
        // All or nothing: a key written before in this transaction fails
        // the delete before any tombstone is recorded.
        if let Some((key, _)) = deleted.iter().find(|(key, _)| self.written.contains(key)) {
            return Err(MvccError::DuplicateKey { key: key.clone() });
        }
        for (key, previous) in &deleted {
            let revision = self.claim(key)?;
            self.attach(key, previous.lease, 0);
            self.record(key, revision, &HistoryRecord::Tombstone);
            self.changes.push(Change {
                key: key.clone(),
                revision,
                record: None,
                previous: Some(previous.clone()),
            });
        }
        Ok(deleted)
    }

    /// The writes so far, in the order they were made (watchers' events).
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// The writes to hand to the store, and the counters after them: the
    /// revision is raised only when something was written.
    pub fn finish(self) -> (WriteBatch, Meta) {
        let mut batch = WriteBatch::new();
        let mut after = self.before;
        if !self.written.is_empty() {
            after.revision = self.main;
            for (stored, value) in self.pending {
                match value {
                    Some(value) => batch.put(stored, value),
                    None => batch.delete(stored),
                };
            }
            // Both counters, though only the revision changed: readers
            // (every range) then find them among recent writes, not as a
            // LevelDB miss through every level.
            set_meta(&mut batch, after);
        }
        (batch, after)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::storage::memory::MemoryStore;

    fn commit(store: &mut MemoryStore, writes: impl FnOnce(&mut WriteTxn<'_>)) -> Meta {
        let mut txn = WriteTxn::begin(store).unwrap();
        writes(&mut txn);
        let (batch, after) = txn.finish();
        store.write(batch).unwrap();
        after
    }

    /// Key, value, create revision, mod revision, version.
    type Seen<'a> = (&'a [u8], &'a [u8], u64, u64, u64);

    fn values(result: &RangeResult) -> Vec<Seen<'_>> {
        result
            .kvs
            .iter()
            .map(|(key, record)| {
                (
                    key.as_slice(),
                    record.value.as_slice(),
                    record.create_revision,
                    record.mod_revision,
                    record.version,
                )
            })
            .collect()
    }

    #[test]
    fn revisions_rise_once_per_changing_transaction_as_in_etcd() {
        let mut store = MemoryStore::new();
        assert_eq!(meta(&mut store).unwrap().revision, FIRST_REVISION);
        let after = commit(&mut store, |txn| {
            txn.put(b"a", b"1".to_vec(), 0).unwrap();
            txn.put(b"b", b"1".to_vec(), 0).unwrap();
        });
        assert_eq!(after.revision, 2);
        let after = commit(&mut store, |txn| {
            assert_eq!(txn.put(b"a", b"2".to_vec(), 0).unwrap().unwrap().version, 1);
        });
        assert_eq!(after.revision, 3);
        // A delete of nothing changes nothing.
        let after = commit(&mut store, |txn| {
            assert!(txn.delete_range(&KeySpan::single("zz")).unwrap().is_empty());
        });
        assert_eq!(after.revision, 3);
        let now = range_at(&mut store, &KeySpan::range("a", [0]), 0, 0).unwrap();
        assert_eq!(
            values(&now),
            [
                (&b"a"[..], &b"2"[..], 2, 3, 2),
                (&b"b"[..], &b"1"[..], 2, 2, 1)
            ]
        );
        // Deleted at 4, created again at 5: a new generation.
        commit(&mut store, |txn| {
            assert_eq!(txn.delete_range(&KeySpan::single("a")).unwrap().len(), 1);
        });
        commit(&mut store, |txn| {
            assert!(txn.put(b"a", b"3".to_vec(), 0).unwrap().is_none());
        });
        let now = range_at(&mut store, &KeySpan::single("a"), 0, 0).unwrap();
        assert_eq!(values(&now), [(&b"a"[..], &b"3"[..], 5, 5, 1)]);
        let at_4 = range_at(&mut store, &KeySpan::single("a"), 4, 0).unwrap();
        assert_eq!(at_4.count, 0);
        let at_3 = range_at(&mut store, &KeySpan::single("a"), 3, 0).unwrap();
        assert_eq!(values(&at_3), [(&b"a"[..], &b"2"[..], 2, 3, 2)]);
        assert!(matches!(
            range_at(&mut store, &KeySpan::single("a"), 6, 0),
            Err(MvccError::FutureRevision {
                requested: 6,
                current: 5
            })
        ));
        // Compacted at 4: reading at 4 is allowed, below it is not.
        let compaction = schedule_compaction(&mut store, 4).unwrap();
        store.write(compaction).unwrap();
        assert!(matches!(
            range_at(&mut store, &KeySpan::single("a"), 3, 0),
            Err(MvccError::Compacted {
                requested: 3,
                compacted: 4
            })
        ));
        assert_eq!(
            range_at(&mut store, &KeySpan::single("b"), 4, 0)
                .unwrap()
                .count,
            1
        );
    }

    #[test]
    fn a_key_is_written_once_per_transaction() {
        let mut store = MemoryStore::new();
        let mut txn = WriteTxn::begin(&mut store).unwrap();
        txn.put(b"a", b"1".to_vec(), 0).unwrap();
        assert!(matches!(
            txn.put(b"a", b"2".to_vec(), 0),
            Err(MvccError::DuplicateKey { .. })
        ));
        assert!(matches!(
            txn.delete_range(&KeySpan::range("a", "b")),
            Err(MvccError::DuplicateKey { .. })
        ));
    }

    #[test]
    fn limits_count_everything_and_say_there_is_more() {
        let mut store = MemoryStore::new();
        commit(&mut store, |txn| {
            for key in ["a", "b", "c", "d"] {
                txn.put(key.as_bytes(), b"v".to_vec(), 0).unwrap();
            }
        });
        let result = range_at(&mut store, &KeySpan::range("b", [0]), 0, 2).unwrap();
        assert_eq!((result.kvs.len(), result.count, result.more), (2, 3, true));
        assert!(matches!(
            range_at(&mut store, &KeySpan::range("b", "a"), 0, 0),
            Err(MvccError::InvalidRange)
        ));
    }

    /// One write of the model test: a put, or a delete of `[key, end)`.
    #[derive(Debug, Clone)]
    enum Write {
        Put(u8, u8),
        Delete(u8, u8),
    }

    fn write() -> impl Strategy<Value = Write> {
        prop_oneof![
            (0u8..6, any::<u8>()).prop_map(|(key, value)| Write::Put(key, value)),
            (0u8..6, 0u8..7).prop_map(|(key, end)| Write::Delete(key, end)),
        ]
    }

    fn key(byte: u8) -> Vec<u8> {
        // Keys that prefix each other, and a zero byte.
        [
            b"k".to_vec(),
            b"k\0".to_vec(),
            b"ka".to_vec(),
            b"kab".to_vec(),
            b"l".to_vec(),
            b"m".to_vec(),
            b"n".to_vec(),
        ][usize::from(byte)]
        .clone()
    }

    proptest! {
        /// Random transactions against a model that keeps the whole state
        /// at every revision: every range at every revision agrees.
        #[test]
        fn reads_at_every_revision_agree_with_a_model(
            transactions in proptest::collection::vec(
                (proptest::collection::vec(write(), 1..4), proptest::option::of(0u8..4)),
                1..12,
            ),
            reads in proptest::collection::vec((0u8..7, 0u8..8, 0usize..12), 1..8),
        ) {
            let mut store = MemoryStore::new();
            // The state at every revision; an empty store is at revision 1.
            let mut states: Vec<BTreeMap<Vec<u8>, KeyRecord>> = vec![BTreeMap::new(); 2];
            let mut compacted = 0u64;
            for (writes, compaction) in &transactions {
                let mut model = states.last().unwrap().clone();
                let revision = states.len() as u64;
                let mut touched = HashSet::new();
                let mut txn = WriteTxn::begin(&mut store).unwrap();
                for write in writes {
                    match *write {
                        Write::Put(k, value) => {
                            let key = key(k);
                            let outcome = txn.put(&key, vec![value], 0);
                            if !touched.insert(key.clone()) {
                                prop_assert!(outcome.is_err());
                                continue;
                            }
                            prop_assert_eq!(outcome.unwrap(), model.get(&key).cloned());
                            let previous = model.get(&key);
                            let record = KeyRecord {
                                create_revision: previous.map_or(revision, |p| p.create_revision),
                                mod_revision: revision,
                                version: previous.map_or(1, |p| p.version + 1),
                                lease: 0,
                                value: vec![value],
                            };
                            model.insert(key, record);
                        }
                        Write::Delete(k, end) => {
                            let span = if end == 6 { KeySpan::range(key(k), [0]) } else { KeySpan::range(key(k), key(end)) };
                            if span.check().is_err() {
                                prop_assert!(txn.delete_range(&span).is_err());
                                continue;
                            }
                            let doomed: Vec<Vec<u8>> = model.keys().filter(|candidate| span.contains(candidate)).cloned().collect();
                            let outcome = txn.delete_range(&span);
                            if doomed.iter().any(|doomed| touched.contains(doomed)) {
                                prop_assert!(outcome.is_err());
                                continue;
                            }
                            let deleted = outcome.unwrap();
                            prop_assert_eq!(deleted.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), doomed.clone());
                            for doomed in doomed {
                                touched.insert(doomed.clone());
                                model.remove(&doomed);
                            }
                        }
                    }
                }
                let (batch, after) = txn.finish();
                store.write(batch).unwrap();
                if touched.is_empty() {
                    prop_assert_eq!(after.revision, revision - 1);
                } else {
                    prop_assert_eq!(after.revision, revision);
                    states.push(model);
                }
                // Now and then, compact to a revision between the last
                // compacted one and the current one, in small steps.
                if let Some(share) = compaction {
                    let current = states.len() as u64 - 1;
                    let target = compacted + (current - compacted) * u64::from(*share) / 3;
                    match schedule_compaction(&mut store, target) {
                        Ok(batch) => {
                            prop_assert!(target > compacted && target <= current);
                            store.write(batch).unwrap();
                            compacted = target;
                            loop {
                                let (batch, progress) = compact_step(&mut store, 2).unwrap();
                                store.write(batch).unwrap();
                                if progress == CompactionProgress::Done {
                                    break;
                                }
                            }
                        }
                        Err(_) => prop_assert!(target <= compacted || target > current),
                    }
                }
            }
            // Below the compacted revision, history holds each key's
            // newest live record at or below it, and nothing else.
            let history = store.scan(&KeyRange::prefix(HISTORY_PREFIX.to_vec()), usize::MAX).unwrap();
            for (stored, _) in history {
                let (key, written) = keys::parse_history_key(&stored).unwrap();
                if written < compacted {
                    let live = states[compacted as usize].get(&key);
                    prop_assert_eq!(live.map(|record| record.mod_revision), Some(written));
                }
            }
            // Below it, only the kept records' revision records remain (the
            // next compaction looks at them again).
            let revisions = store.scan(&KeyRange::prefix(keys::REVISION_PREFIX.to_vec()), usize::MAX).unwrap();
            for (stored, marker) in revisions {
                let revision = keys::parse_revision_key(&stored).unwrap();
                if revision.main < compacted {
                    let live = states[compacted as usize].get(&marker[1..]);
                    prop_assert_eq!(
                        live.map(|record| record.mod_revision),
                        Some(revision.main),
                        "{:?} below {}", revision, compacted
                    );
                }
            }
            for (start, end, at) in reads {
                let at = (at as u64).min(states.len() as u64 - 1);
                let span = if end == 7 { KeySpan::single(key(start)) } else if end == 6 { KeySpan::range(key(start), [0]) } else { KeySpan::range(key(start), key(end)) };
                if span.check().is_err() {
                    continue;
                }
                let revision = if at == 0 { states.len() as u64 - 1 } else { at };
                if revision < compacted {
                    let refused = matches!(range_at(&mut store, &span, at, 0), Err(MvccError::Compacted { .. }));
                    prop_assert!(refused);
                    continue;
                }
                let expected: Vec<(Vec<u8>, KeyRecord)> = states[revision as usize]
                    .iter()
                    .filter(|(key, _)| span.contains(key))
                    .map(|(key, record)| (key.clone(), record.clone()))
                    .collect();
                let result = range_at(&mut store, &span, at, 0).unwrap();
                prop_assert_eq!(result.kvs, expected);
            }
        }
    }
}

#[cfg(test)]
mod history_tests {
    use super::*;
    use crate::storage::memory::MemoryStore;

    #[test]
    fn a_history_batch_ends_with_the_revision_that_passes_its_byte_bound() {
        let mut store = MemoryStore::new();
        let big = vec![7u8; HISTORY_BATCH_BYTES_MAX / 2 + 1];
        for key in ["a", "b", "c"] {
            let mut txn = WriteTxn::begin(&mut store).unwrap();
            txn.put(key.as_bytes(), big.clone(), 0).unwrap();
            let (batch, _) = txn.finish();
            store.write(batch).unwrap();
        }
        let first = FIRST_REVISION + 1;
        let batch = history_after(&mut store, first, 1_000, |_| true, false).unwrap();
        let keys: Vec<&[u8]> = batch
            .changes
            .iter()
            .map(|change| change.key.as_slice())
            .collect();
        assert_eq!(keys, vec![b"a".as_slice(), b"b".as_slice()]);
        assert_eq!(
            batch.through,
            first + 1,
            "the batch ends after b's revision"
        );
        let rest = history_after(&mut store, batch.through + 1, 1_000, |_| true, false).unwrap();
        assert_eq!(rest.changes.len(), 1);
        assert_eq!(rest.through, first + 2);
    }
}
